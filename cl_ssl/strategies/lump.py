"""LUMP, lifelong unsupervised mixup (Madaan et al., "Representational continuity for
unsupervised continual learning", ICLR 2022, Sec. 4).

Each step mixes the current batch with as many examples drawn from a reservoir buffer,

    x~^v = lam * x^v + (1 - lam) * x_buf^v,   lam ~ Beta(alpha, alpha), one lam per step,

for both views v with the same lam, and the SSL objective trains on the mixed pair only (the
official code, ``divyam3897/UCL`` ``models/mixup.py`` l.44-51: no term on the un-mixed images).
The buffer is a reservoir over every presented example, updated after each step with the step's
un-augmented images (``models/mixup.py`` l.60, ``utils/buffer.py`` l.12-26), so it holds the
current task's examples as well as earlier ones; the plain SSL loss runs only while it is empty,
which is the run's first step (here: lam = 1 exactly then).

Settings from the official configs (``configs/*.yaml``): alpha 0.4, a buffer of 256 examples
(``lump.memory_size``), a buffer batch as large as the current batch (the whole 256-example
buffer at batch 256). The paper pairs LUMP with SimSiam and Barlow Twins; here it combines with
every objective.

A choice of this library: both buffer views are augmented afresh with the objective's own views.
The official code augments one buffer view with a crop-and-flip transform at each draw and reuses
the other as it was augmented when the example entered the buffer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from cl_ssl.data.batch import join
from cl_ssl.objectives import Objective
from cl_ssl.strategies import replay
from cl_ssl.strategies.base import RowInputs, Strategy, StrategySpec


def default_config() -> ml_collections.ConfigDict:
    """``config.lump``: the official configs' alpha and buffer size."""
    return ml_collections.ConfigDict(dict(alpha=0.4, memory_size=256))


def make(config: ml_collections.ConfigDict, objective: Objective) -> Strategy:
    """LUMP from ``config.lump``, for any objective."""
    del objective
    c = config.lump
    if c.alpha <= 0:
        raise ValueError(f"lump.alpha={c.alpha}; the Beta(alpha, alpha) mixing needs alpha > 0")
    if c.memory_size < 1:
        raise ValueError(f"lump.memory_size={c.memory_size}; set it to at least 1")

    def extend_batch(inputs: RowInputs):
        memory, batch = inputs.state.buffers["memory"], inputs.batch
        slots, available = replay.draw(memory, inputs.key, batch.size, memory.valid)
        return join(batch, replay.memory_rows(memory, slots, inputs.data, available))

    def transform_views(views, batch, inputs: RowInputs):
        half = batch.size // 2
        lam = jax.random.beta(jax.random.fold_in(inputs.key, 3), c.alpha, c.alpha)
        lam = jnp.where(batch.valid[half], lam, 1.0)  # nothing in the buffer yet: no mixing
        return tuple(lam * v[:half] + (1.0 - lam) * v[half:] for v in views)

    return Strategy(
        name="lump",
        init=replay.memory_state(lambda train: c.memory_size, on_device=config.dataset.on_device),
        extend_batch=extend_batch,
        extends_batch_from=0,
        transform_views=transform_views,
        update_buffers=replay.in_step_update("reservoir", per_class=0),
    )


STRATEGY = StrategySpec(make=make, section="lump", default_config=default_config)
