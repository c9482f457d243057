"""Several runs in one program: the train step mapped over a leading replica axis
(``step.jit_replicated_step``) computes, for each replica, what the step computes for that
replica's state and batch alone."""

import jax
import jax.numpy as jnp
import numpy as np
from helpers import TINY_HEADS, initial_state, random_split, tiny_config, train_data

from cl_ssl import parallel
from cl_ssl import step as step_lib
from cl_ssl.objectives import get_objective, resolve_config
from cl_ssl.strategies import get_strategy


def _close(replica, alone):
    """Equal up to float32 sums in another order: within 1e-3 of the leaf's largest magnitude, or
    1e-5 (a gradient summed over a batch may nearly cancel, so that element-wise relative errors
    mean nothing; the optimizer's traces differ by up to 1e-4 of theirs, where replicas mixed up
    would differ by their whole size)."""
    replica, alone = np.asarray(replica), np.asarray(alone)
    if not np.issubdtype(alone.dtype, np.floating):
        np.testing.assert_array_equal(replica, alone)
        return
    scale = float(np.max(np.abs(alone), initial=0.0))
    np.testing.assert_allclose(replica, alone, rtol=0, atol=max(1e-3 * scale, 1e-5))


def test_each_replica_steps_as_its_run_alone():
    """BYOL fine-tuned (a momentum network in the objective's state), two replicas of two seeds
    with their own batches."""
    config = resolve_config(
        tiny_config(objective="byol", **{f"byol.{k}": v for k, v in TINY_HEADS["byol"].items()})
    )
    obj = get_objective(config)
    strat = get_strategy(config, obj)
    tx = step_lib.make_tx(config, obj, strat)
    data = train_data(64)
    states = [initial_state(obj, strat, tx, random_split(64), seed=seed) for seed in (0, 1)]
    ids = np.stack([np.random.default_rng(r).permutation(64)[:8] for r in (0, 1)]).astype(np.int32)
    hyper = step_lib.stage_hyper(config, obj, strat, num_epochs=2, steps_per_epoch=1)
    hyper = {k: v[-1] for k, v in hyper.items()}
    fn = step_lib.build_step_fn(obj, strat, tx, extend=False)
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
    stacked, metrics = step_lib.jit_replicated_step(fn, parallel.make_mesh(2))(
        stacked, data, ids, hyper
    )
    alone = jax.jit(fn)
    for r, state in enumerate(states):
        state, alone_metrics = alone(state, data, ids[r], hyper)
        jax.tree.map(_close, jax.tree.map(lambda leaf, r=r: leaf[r], stacked), state)
        np.testing.assert_allclose(metrics["loss"][r], alone_metrics["loss"], rtol=1e-5)
    assert not np.allclose(metrics["loss"][0], metrics["loss"][1])  # two runs, not one twice
