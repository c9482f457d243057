"""Several seeds in one program (``--config.seeds``): the train step mapped over a leading replica
axis (``step.jit_replicated_step``), and the run whose replicas each end as the run of their seed
alone."""

import dataclasses
import json
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    ONE_EPOCH,
    TINY_HEADS,
    initial_state,
    random_split,
    run,
    tiny_config,
    train_data,
)

from cl_ssl import parallel, planning, rescore, train
from cl_ssl import step as step_lib
from cl_ssl.objectives import get_objective, resolve_config
from cl_ssl.strategies import get_strategy


def _close(replica, alone):
    """Equal up to float32 sums in another order: within 1e-3 of the leaf's largest magnitude, or
    1e-5 (a gradient summed over a batch may nearly cancel, so that element-wise relative errors
    mean nothing; the optimizer's traces differ by up to 1e-4 of theirs, where replicas mixed up
    would differ by their whole size). Non-finite entries (-inf marks empty slots) are equal."""
    replica, alone = np.asarray(replica), np.asarray(alone)
    if not np.issubdtype(alone.dtype, np.floating):
        np.testing.assert_array_equal(replica, alone)
        return
    finite = np.isfinite(alone)
    np.testing.assert_array_equal(replica[~finite], alone[~finite])
    scale = float(np.max(np.abs(alone[finite]), initial=0.0))
    np.testing.assert_allclose(replica[finite], alone[finite], rtol=0, atol=max(1e-3 * scale, 1e-5))


# Two seeds of the online-probed runs that test_train's device tests share; checkpoints every 2
# steps (mock CIFAR-10 gives the tasks 3 and 2 steps), for a mid-task one.
SEEDS = (0, 1)
REPLICATED = tiny_config(seeds=SEEDS, checkpoint_every_steps=2, **ONE_EPOCH)


@pytest.fixture
def replicated_run(finished_run):
    return finished_run(REPLICATED, 4)


def test_each_replica_ends_as_its_seeds_run_alone(replicated_run, finished_run):
    """On 4 devices, each replica's batch sharded over them: each replica's state (up to float32
    sums in another order, ``_close``), accuracy matrices (equal) and results files are those of
    the run of its seed alone."""
    both, workdir = replicated_run
    assert both["traces"] == [len(SEEDS)]  # one program for both tasks, the step once a replica
    stored = json.loads((workdir / "config.json").read_text())
    assert stored["seeds"] == list(SEEDS)
    for r, seed in enumerate(SEEDS):
        alone, alone_dir = finished_run(tiny_config(seed=seed, **ONE_EPOCH), 4)
        replica = both["replicas"][r]
        assert replica["seed"] == seed
        jax.tree.map(_close, jax.tree.map(lambda x, r=r: x[r], both["state"]), alone["state"])
        for name, matrix in alone["matrices"].items():  # features this close score alike
            np.testing.assert_array_equal(replica["matrices"][name], matrix)
        folder = workdir / f"seed_{seed}"
        own = json.loads((folder / "config.json").read_text())
        assert own == {
            **json.loads((alone_dir / "config.json").read_text()),
            "checkpoint_every_steps": 2,
        }
        results = json.loads((folder / "results.json").read_text())
        np.testing.assert_array_equal(results["matrices"]["knn"], replica["matrices"]["knn"])
        assert (folder / "tb").is_dir()
    # Two runs, not one twice.
    assert not np.allclose(
        both["replicas"][0]["matrices"]["knn"], both["replicas"][1]["matrices"]["knn"]
    )


def test_the_step_mapped_over_replicas_steps_each_as_alone():
    """``replica_program='vmap'``: BYOL (a momentum network in the objective's state), two
    replicas of two seeds with their own batches and labels, each stepped as alone."""
    config = resolve_config(
        tiny_config(objective="byol", **{f"byol.{k}": v for k, v in TINY_HEADS["byol"].items()})
    )
    obj = get_objective(config)
    strat = get_strategy(config, obj)
    tx = step_lib.make_tx(config, obj, strat)
    data = train_data(64)
    states = [initial_state(obj, strat, tx, random_split(64), seed=seed) for seed in SEEDS]
    ids = np.stack([np.random.default_rng(s).permutation(64)[:8] for s in SEEDS]).astype(np.int32)
    hyper = step_lib.stage_hyper(config, obj, strat, num_epochs=2, steps_per_epoch=1)
    hyper = {k: v[-1] for k, v in hyper.items()}
    fn = step_lib.build_step_fn(obj, strat, tx, extend=False)
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
    per_replica = data.replace(
        labels=jnp.stack([data.labels] * 2), tasks=jnp.stack([data.tasks] * 2)
    )
    stepped = step_lib.jit_replicated_step(fn, parallel.make_mesh(2), program="vmap")
    stacked, metrics = stepped(stacked, per_replica, ids, hyper)
    alone = jax.jit(fn)
    for r, state in enumerate(states):
        state, alone_metrics = alone(state, data, ids[r], hyper)
        jax.tree.map(_close, jax.tree.map(lambda leaf, r=r: leaf[r], stacked), state)
        np.testing.assert_allclose(metrics["loss"][r], alone_metrics["loss"], rtol=1e-5)
    assert not np.allclose(metrics["loss"][0], metrics["loss"][1])  # two runs, not one twice


def test_replicas_killed_mid_task_resume_to_the_same_numbers(replicated_run, tmp_path):
    both, workdir = replicated_run
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(workdir, resumed_dir)
    checkpoints = resumed_dir / "checkpoints"
    assert sorted(int(c.name) for c in checkpoints.iterdir()) == [0, 3, 4, 5]
    shutil.rmtree(checkpoints / "5")  # killed after checkpoint 4, mid task 2 (of 2 steps)
    resumed = run(REPLICATED, resumed_dir, 4)
    chex.assert_trees_all_equal(resumed["state"], both["state"])
    for ours, theirs in zip(resumed["replicas"], both["replicas"], strict=True):
        for name, matrix in theirs["matrices"].items():
            np.testing.assert_array_equal(ours["matrices"][name], matrix)


def test_a_non_finite_replica_stops_the_run_naming_its_seed(tmp_path):
    class Checkpoints:
        directory = tmp_path

        def latest_step(self):
            return 4

    metrics = {"loss": np.array([1.0, np.nan]), "grad_norm": np.array([2.0, 3.0])}
    with pytest.raises(FloatingPointError, match=r"replica of seed 7 .* at step 5 \(task 2"):
        train._check_finite(5, metrics, 1, Checkpoints(), seeds=[3, 7])
    train._check_finite(5, {k: v[:1] for k, v in metrics.items()}, 1, Checkpoints(), seeds=[3])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"seeds": (0, 0)}, r"seeds=\(0, 0\) names a seed twice"),
        ({"seeds": (0, -1)}, r"seeds=\(0, -1\); list non-negative integers"),
        ({"dataset.on_device": False}, "set dataset.on_device=True"),
        (
            {"strategy": "kaizen", "labels.fraction": 1.0, "kaizen.replay.sampling": "loader"},
            "kaizen.replay.sampling='loader' orders",
        ),
        (
            {
                "strategy": "replay",
                "replay.selection": "min_var",
                "replay.per_class": 1,
                "replay.mode": "mix",
            },
            "strategy 'replay' adds exemplars",
        ),
    ],
)
def test_what_replicas_cannot_share_is_refused_before_compiling(mock_cifar10, overrides, message):
    config = tiny_config(**{"seeds": (0, 1), **overrides})
    with pytest.raises(ValueError, match=message):
        planning.replica_plans(config, parallel.make_mesh(1))


def test_seeds_whose_tasks_train_different_steps_are_refused(mock_cifar10, monkeypatch):
    """No shipped setting makes a task's length depend on the seed (a strategy that adds
    exemplars to its tasks is refused first); a plan whose second task is shorter for seed 1
    stands for one that would."""
    plan = planning.plan

    def shorter_for_seed_1(config, mesh, splits=None):
        p = plan(config, mesh, splits)
        if config.seed != 1:
            return p
        last = dataclasses.replace(p.stages[-1], steps_per_epoch=p.stages[-1].steps_per_epoch - 1)
        return dataclasses.replace(p, stages=(*p.stages[:-1], last))

    monkeypatch.setattr(planning, "plan", shorter_for_seed_1)
    with pytest.raises(ValueError, match=r"seed 1's tasks train \[\d+, \d+\] steps, seed 0's"):
        planning.replica_plans(tiny_config(seeds=(0, 1)), parallel.make_mesh(1))


def test_re_evaluation_refuses_a_run_of_replicas(replicated_run):
    _, workdir = replicated_run
    with pytest.raises(ValueError, match=r"replicas of seeds \(0, 1\)"):
        rescore.reevaluate(REPLICATED, str(workdir), "again", parallel.make_mesh(1))
