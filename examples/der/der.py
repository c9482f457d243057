"""DER, dark experience replay (Buzzega et al., "Dark Experience for General Continual Learning: a
Strong, Simple Baseline", NeurIPS 2020, Sec. 3), for self-supervised continual learning: a
strategy written outside cl_ssl on its public interface, selected with
``--config.strategy=examples.der.der``.

DER keeps past examples in a reservoir memory together with what the network output for them when
they were stored, and adds a term that holds today's network to those outputs:

    L = L_SSL(batch) + alpha * mean_{(x, z) in M_b} ||f(aug(x)) - z||^2 / D

with M_b a sub-batch drawn from the memory without replacement, z [D] the stored output and the
mean over the sub-batch's rows and the D dimensions (Mammoth ``models/der.py``: ``alpha *
F.mse_loss(buf_outputs, buf_logits)``). Without labels there are no logits: f is the backbone's
features (``der.output``, or any other output of the model such as 'projection'). The replayed
rows are seen by DER's term alone (``Strategy.side_batch``): as in Mammoth's DER, where the
replayed images enter only ``F.mse_loss``, they do not train the SSL loss, and they are normalised
with their own batch statistics in train mode. A choice of this example: the running BatchNorm
statistics their forward pass would move (Mammoth's train-mode pass moves them) are not kept, so
the evaluation's statistics are the task's images' alone.

- The memory: ``der.memory_size`` slots (200), reservoir sampling over every example the step
  trains on, each stored with the output of its first view in that step (the memory's payload:
  no second forward pass). As Mammoth's ``utils/buffer.py``, the memory holds the current task's
  examples too, and is drawn from from the first step on.
- The draw: ``der.batch_size`` (32) rows uniformly without replacement, fewer while the memory
  holds fewer (the others are masked out), each augmented afresh with the objective's first view.
- ``der.alpha``: 0.5. (Mammoth's ``best_args.py`` tunes alpha per data set; at a 200-example
  buffer it gives 0.3 on Seq-CIFAR-10: ``--config.der.alpha=0.3``.)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections

from cl_ssl import memory as memory_lib
from cl_ssl.strategies import LossInputs, RowInputs, Strategy, StrategySpec
from cl_ssl.strategies.base import output_widths
from cl_ssl.strategies.replay import in_step_update, memory_rows, memory_state

STORED = "output"
"""The key of the stored output in the memory's payload."""


def default_config() -> ml_collections.ConfigDict:
    """``config.der``: a 200-example buffer, 32 replayed rows, alpha 0.5, the backbone's features."""
    return ml_collections.ConfigDict(
        dict(memory_size=200, batch_size=32, alpha=0.5, output="features")
    )


def masked_mse(predicted: jax.Array, stored: jax.Array, valid: jax.Array) -> jax.Array:
    """mean over the valid rows and the D columns of (predicted - stored)^2; 0 without a valid row.

    Args:
      predicted, stored: float [S, D].
      valid: bool [S].
    """
    squared = jnp.where(valid[:, None], jnp.square(predicted - stored), 0.0)
    count = jnp.sum(valid) * predicted.shape[-1]
    return jnp.sum(squared) / jnp.maximum(count, 1)


def make(config: ml_collections.ConfigDict, objective) -> Strategy:
    """DER from ``config.der``, for any self-supervised objective."""
    c = config.der
    if c.memory_size < 1:
        raise ValueError(f"der.memory_size={c.memory_size}; set it to at least 1")
    if c.batch_size < 1:
        raise ValueError(f"der.batch_size={c.batch_size}; set it to at least 1")
    if not (math.isfinite(c.alpha) and c.alpha > 0):
        raise ValueError(f"der.alpha={c.alpha}; set a finite weight > 0")
    widths = output_widths(objective)
    if c.output not in widths:
        raise ValueError(f"der.output={c.output!r}; choose one of the model's {sorted(widths)}")
    slot = {STORED: jax.ShapeDtypeStruct((widths[c.output],), jnp.float32)}

    def side_batch(inputs: RowInputs):
        memory = inputs.state.buffers["memory"]
        slots, drawn = memory_lib.sample(memory, inputs.key, c.batch_size)
        return memory_rows(memory, slots, inputs.data, drawn)

    def loss(inputs: LossInputs):
        side = inputs.side
        stored = inputs.state.buffers["memory"].payload[STORED][side.slots]
        value = masked_mse(inputs.side_outputs[0][c.output], stored, side.valid)
        return c.alpha * value, {"der": value}

    def stored_outputs(inputs):
        return {STORED: inputs.outputs[0][c.output][: inputs.batch.size]}

    return Strategy(
        name="der",
        init=memory_state(
            lambda train: c.memory_size, on_device=config.dataset.on_device, payload=slot
        ),
        side_batch=side_batch,
        extends_batch_from=0,
        loss=loss,
        update_buffers=in_step_update("reservoir", per_class=0, payload=stored_outputs),
    )


STRATEGY = StrategySpec(make=make, section="der", default_config=default_config)
