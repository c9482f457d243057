"""End-to-end runs of the training pipeline on mock data with the tiny ResNet."""

import json
import os
import re
import signal
import threading
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    CONFIGS_DIR,
    ONE_EPOCH,
    initial_state,
    random_split,
    shipped_config,
    tiny_config,
    tiny_objective_config,
)
from helpers import run as _run
from test_report import _read_events

from cl_ssl import config as config_lib
from cl_ssl import losses, objectives, parallel, planning, strategies, train
from cl_ssl import step as step_lib
from cl_ssl.data import sources


@pytest.mark.parametrize("strategy", ["finetune", "offline"])
def test_end_to_end_two_tasks(finished_run, strategy):
    """Two tasks trained and evaluated; results, table and plots written (drawn for the offline run
    only, so that the finetune run is the one the resume tests share, and with task-aware matrices
    there); one trace for all tasks."""
    plots = strategy == "offline"
    result, workdir = finished_run(
        tiny_config(strategy=strategy, **{"eval.plots": plots, "eval.task_aware": plots})
    )
    stages = 2 if strategy == "finetune" else 1
    names = ["linear", "knn"] + (["linear_task_aware", "knn_task_aware"] if plots else [])
    for name in names:
        R = result["matrices"][name]
        assert R.shape == (stages + 1, 2)
        assert np.all((R >= 0) & (R <= 100))
    if plots:  # masking a prediction to its task's classes can only keep it right
        for name in ("linear", "knn"):
            assert np.all(result["matrices"][f"{name}_task_aware"] >= result["matrices"][name])
    saved = json.loads((workdir / "results.json").read_text())
    assert set(saved["matrices"]) == set(names)
    run_name = f"cifar10, class-incremental (2 tasks), simclr, {strategy}, seed 0"
    assert (workdir / "results.md").read_text().startswith(f"# Results: {run_name}\n")
    meta = saved["meta"]
    assert all(meta["wall_seconds"][k] > 0 for k in ("training", "evaluation", "checkpointing"))
    # The totals when each row was recorded: row 0's after evaluating the random network.
    at_rows = meta["wall_seconds_at_rows"]
    assert list(at_rows) == [str(r) for r in range(stages + 1)]
    assert at_rows["0"]["training"] == 0 and at_rows["0"]["evaluation"] > 0
    assert at_rows[str(stages)] == meta["wall_seconds"]
    assert (
        0 < meta["wall_seconds"]["training_waiting_for_device"] < meta["wall_seconds"]["training"]
    )
    assert all(
        at_rows[str(r)][k] <= at_rows[str(r + 1)][k] for r in range(stages) for k in at_rows["0"]
    )
    assert meta["environment"]["device_count"] == jax.device_count()  # the mesh may use fewer
    assert (workdir / "tb" / "hparams").is_dir()  # the summary metrics and the config
    for name in names:
        assert (workdir / "plots" / f"accuracy_matrix_{name}.png").exists() == plots
    assert int(result["state"].task) == stages
    assert result["traces"] == [1]
    if strategy == "finetune":
        assert "forgetting" in " ".join(result["summaries"]["linear"])
        # log_every_steps=1: every step's loss in TensorBoard, each task's last step included.
        (events,) = (workdir / "tb").glob("events.out.tfevents.*")
        events = _read_events(str(events))
        logged = {e.step for e in events for v in e.summary.value if v.tag == "train/loss"}
        assert logged == set(range(1, int(result["state"].step) + 1))


def test_preempted_mid_task_resumes_exactly(finished_run, tmp_path):
    """SIGTERM to this process once checkpoint 3 exists: the run saves at the next step it
    reaches (before the next periodic checkpoint, 9) and returns as preempted; run again, it ends
    bit-identical to an uninterrupted run. (On two processes, through the command line's exit
    status: tests/test_multihost.py.)"""
    whole, _ = finished_run(tiny_config())
    late = []  # a signal after the run's own handler is gone lands here, not in pytest's

    def send_when_checkpoint_3_exists():
        while not (tmp_path / "checkpoints" / "3").is_dir():
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, lambda *_: late.append(True))
    try:
        threading.Thread(target=send_when_checkpoint_3_exists, daemon=True).start()
        stopped = _run(tiny_config(), tmp_path)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not late and stopped["stopped"] and stopped["preempted"] == signal.SIGTERM
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert 3 < steps[-1] < 9, steps
    resumed = _run(tiny_config(), tmp_path)
    assert not resumed["stopped"] and resumed["preempted"] is None
    chex.assert_trees_all_equal(whole["state"].params, resumed["state"].params)
    chex.assert_trees_all_equal(whole["state"].batch_stats, resumed["state"].batch_stats)
    for name in whole["matrices"]:
        np.testing.assert_array_equal(whole["matrices"][name], resumed["matrices"][name])


def test_resume_across_task_boundary_and_damaged_latest(finished_run, tmp_path):
    """A damaged newest checkpoint (the periodic one at step 9, in task 2: one digit of the saved
    accuracy matrices changed, which still parses) is caught by its digest and skipped with a
    warning; the run resumes from the task boundary (step 6), saves step 9 again and ends
    identical. (Unreadable files fall back the same way: tests/test_checkpoint.py.) Stopped at
    task 1's last step first, as a signal agreed there stops it, the run saves that step and
    leaves task 1's evaluation to the next command."""
    whole, _ = finished_run(tiny_config())
    workdir = tmp_path
    stopped = _run(tiny_config(stop_after_steps=6), workdir)
    assert stopped["stopped"] and int(stopped["state"].step) == 6
    assert np.isnan(stopped["matrices"]["linear"][1]).all()  # task 1 not yet evaluated
    assert 6 in {int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()}
    with pytest.raises(ValueError, match="stop_after_steps=6, but the run resumes from step 6"):
        _run(tiny_config(stop_after_steps=6), workdir)  # would never stop
    _run(tiny_config(stop_after_steps=9), workdir)
    ckpt_dir = workdir / "checkpoints"
    newest = max(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())
    assert newest == 9
    meta = ckpt_dir / "9" / "meta" / "metadata"
    text = meta.read_text()
    number = re.search(r"\d\.\d", text)  # a digit of the first accuracy saved
    damaged = text[: number.start()] + str(9 - int(number[0][0])) + text[number.start() + 1 :]
    meta.write_text(damaged)
    assert json.loads(damaged) != json.loads(text)
    resumed = _run(tiny_config(), workdir)
    chex.assert_trees_all_equal(whole["state"].params, resumed["state"].params)
    for name in whole["matrices"]:
        np.testing.assert_array_equal(whole["matrices"][name], resumed["matrices"][name])


def test_one_and_four_devices_agree(finished_run):
    """With the online probe, whose batch is sharded too."""
    (one, _), (four, _) = (finished_run(tiny_config(**ONE_EPOCH), n) for n in (1, 4))
    chex.assert_trees_all_close(one["state"].params, four["state"].params, atol=1e-4, rtol=1e-3)
    chex.assert_trees_all_close(
        one["state"].online_probe, four["state"].online_probe, atol=1e-4, rtol=1e-3
    )
    chex.assert_trees_all_close(
        one["state"].batch_stats, four["state"].batch_stats, atol=1e-4, rtol=1e-3
    )


def test_data_in_host_memory_trains_as_on_device(finished_run, tmp_path):
    """dataset.on_device=False sends each step's batch (and the online probe's) from host memory,
    sharded over 4 devices: the same run."""
    device, _ = finished_run(tiny_config(**ONE_EPOCH), 4)
    host = _run(tiny_config(**ONE_EPOCH, **{"dataset.on_device": False}), tmp_path, 4)
    chex.assert_trees_all_close(device["state"].params, host["state"].params, atol=1e-6)
    chex.assert_trees_all_close(device["state"].online_probe, host["state"].online_probe, atol=1e-6)
    chex.assert_trees_all_close(device["state"].batch_stats, host["state"].batch_stats, atol=1e-6)
    np.testing.assert_allclose(device["matrices"]["knn"], host["matrices"]["knn"])
    assert int(host["state"].step) == int(device["state"].step) > 0


@pytest.mark.parametrize(
    "bad_loss",
    [
        lambda z1, z2, **kw: (z1.sum() + z2.sum()) * np.nan,
        # A finite loss whose gradient is not: the updated parameters would be NaN.
        lambda z1, z2, **kw: jnp.sqrt(jnp.sum(z1 * 0.0)) + jnp.mean(z2) * 0.0,
    ],
    ids=["nan_loss", "inf_gradient"],
)
def test_non_finite_step_stops_the_run(mock_cifar10, tmp_path, monkeypatch, bad_loss):
    monkeypatch.setattr(losses, "nt_xent", bad_loss)
    with pytest.raises(
        FloatingPointError, match=r"non-finite loss or gradient .* at step 1 .*checkpoint is step 0"
    ):
        _run(tiny_config(), tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["0"]


def test_a_non_finite_state_from_end_of_task_work_names_the_strategy():
    """Not the divergence message (lower the learning rate): the trained state was finite."""
    config = objectives.resolve_config(tiny_objective_config("simclr", strategy="replay"))
    objective = objectives.get_objective(config)
    strategy = strategies.get_strategy(config, objective)
    state = initial_state(
        objective, strategy, step_lib.make_tx(config, objective, strategy), random_split(8)
    )
    train._check_task_end(state, stage_id=0, strategy="replay")
    broken = state.replace(batch_stats=jax.tree.map(lambda x: x * jnp.nan, state.batch_stats))
    with pytest.raises(
        FloatingPointError,
        match=r"end of task 2 \(the end_task of strategy 'replay'\) for the replica of seed 3 left "
        r"non-finite values in the state \(\['batch_stats'\]",
    ):
        train._check_task_end(broken, stage_id=1, strategy="replay", seed=3)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"strategy": "nope"}, "--config.strategy to one of"),
        ({"objective": "nope"}, "--config.objective to one of"),
        ({"num_tasks": 3}, "do not divide"),
        ({"batch_size": 6}, "not divisible by the 4 devices"),
        ({"dataset.name": "no_such_dataset"}, "no_such_dataset"),
        ({"eval.evaluators": ("linear", "magic")}, "unknown evaluator"),
        ({"eval.forgetting": "max"}, "eval.forgetting='max'; choose among"),
        ({"eval.avg": "macro"}, "eval.avg='macro'; choose among"),
        ({"eval.batch_size": 30}, "eval.batch_size=30 is not divisible"),
        ({"keep_checkpoints": 1}, "keep at least 2"),
        (
            {"dataset.streaming": True},
            "streaming=True reads each batch.*set dataset.on_device=False",
        ),
        (
            {"dataset.streaming": True, "dataset.on_device": False, "dataset.read_threads": 0},
            "dataset.read_threads=0; set it to at least 1",
        ),
        ({"dataset.host_crop": True}, "host_crop=True crops.*set dataset.streaming=True"),
        (
            {
                "dataset.streaming": True,
                "dataset.on_device": False,
                "dataset.host_crop": True,
                "augment.view1.crop_padding": 4,
            },
            "view1 crops with padding.*set dataset.host_crop=False, or crop_padding=0",
        ),
        (
            {
                "strategy": "genifer",
                "objective": "supervised",
                "labels.fraction": 1.0,
                "dataset.streaming": True,
                "dataset.on_device": False,
                "dataset.host_crop": True,
                "augment.view1.crop_padding": 0,
                "augment.view2.crop_padding": 0,
            },
            "genifer replaces part of each batch.*set dataset.host_crop=False",
        ),
        ({"checkpoint_every_steps": 0}, "checkpoint_every_steps=0"),
        ({"dataset.holdout_fraction": 1.0}, r"dataset.holdout_fraction=1.0; set the held-out"),
        ({"epochs_per_task": 2, "optimizer.warmup_epochs": 2}, "warmup_epochs=2 must lie in"),
        ({"optimizer.name": "sgd"}, "of optimizer 'sgd' do not fit"),
        (
            {"optimizer.milestones": (0.6, 0.3)},
            r"optimizer.milestones=\(0.6, 0.3\); set increasing",
        ),
        ({"optimizer.later_tasks.name": "adam"}, r"later_tasks.name='adam'; choose among"),
        ({"optimizer.later_tasks.name": "radam"}, r"later_tasks.lr=None; set the learning rate"),
        ({"optimizer.lr": -0.1}, r"optimizer.lr=-0.1; set a finite value > 0"),
        ({"optimizer.lr": float("nan")}, r"optimizer.lr=nan; set a finite value > 0"),
        ({"optimizer.weight_decay": -1e-4}, r"optimizer.weight_decay=-0.0001; set a finite"),
        ({"eval.train_examples": 0}, r"eval.train_examples=0; set -1"),
        ({"eval.linear.epochs": 0}, r"eval.linear.epochs=0; set it to at least 1"),
        ({"eval.knn.k": 0}, r"eval.knn.k=0; set it to at least 1"),
        ({"eval.probe_data": "past"}, r"eval.probe_data='past'; choose among"),
        ({"eval.label_fraction": 0.0}, r"eval.label_fraction=0.0; set the share"),
        ({"wandb.mode": "cloud"}, r"wandb.mode='cloud'; choose 'online'"),
        (
            {"eval.task_aware": True, "scenario": "data_incremental"},
            "only class-incremental scenarios define",
        ),
    ],
)
def test_bad_config_fails_before_compiling(mock_cifar10, tmp_path, monkeypatch, overrides, message):
    def no_compile(*args, **kwargs):
        raise AssertionError("the train step was built although the config is bad")

    monkeypatch.setattr(step_lib, "build_step_fn", no_compile)
    with pytest.raises(ValueError, match=message):
        _run(tiny_config(**overrides), tmp_path, num_devices=4)
    assert not (tmp_path / "checkpoints").exists()
    assert not (tmp_path / "config.json").exists()


def test_workdir_of_another_config_is_refused(mock_cifar10, tmp_path):
    _run(tiny_config(epochs_per_task=2, stop_after_steps=1), tmp_path)
    with pytest.raises(ValueError, match="different config .*epochs_per_task"):
        _run(tiny_config(epochs_per_task=3), tmp_path)


def test_a_field_added_after_a_run_was_stored_differs_only_off_its_default():
    """A stored config lacks a field the library gained later: at its default the run is the
    same one (it resumes, its seeds group together), at another value it is not."""
    given = json.loads(tiny_config().to_json())
    stored = json.loads(tiny_config().to_json())
    del stored["eval"]["online_data"], stored["mocov2plus"]["symmetric"]
    assert config_lib.differing_fields(stored, given) == []
    assert config_lib.differing_fields(given, stored) == []
    given["eval"]["online_data"] = "seen"
    assert config_lib.differing_fields(stored, given) == ["eval.online_data"]


def test_failed_first_attempt_does_not_lock_the_workdir(mock_cifar10, tmp_path, monkeypatch):
    """A config stored by an attempt that saved no checkpoint is replaced by the next attempt."""
    from cl_ssl.evaluation import evaluate

    def broken_evaluator(*args, **kwargs):
        raise RuntimeError("evaluation failed")

    with monkeypatch.context() as patch:
        patch.setattr(evaluate, "Evaluator", broken_evaluator)
        with pytest.raises(RuntimeError, match="evaluation failed"):
            _run(tiny_config(epochs_per_task=2), tmp_path)
    assert (tmp_path / "config.json").exists()
    _run(tiny_config(epochs_per_task=3, stop_after_steps=1), tmp_path)


CONFIGS = sorted(p for p in CONFIGS_DIR.glob("*.py") if p.name != "__init__.py")
SHIPPED = (
    # CUB-200's tasks of 10 classes need the real split's 30 images per class, which random mock
    # labels do not give; its preset has its own test below.
    [(p.stem, None) for p in CONFIGS if p.stem != "cub200"]
    + [
        ("cifar100", arg)
        for arg in ("runlocal", "cassle,data_incremental", "pfr", "kaizen", "ccl", "genifer")
    ]
    + [("fashion_mnist", arg) for arg in ("strategies", "genifer")]
)
_MOCK_SPLITS = {}  # the mock splits read by this worker, by load_split's arguments


def _read_once(load_split):
    """``load_split`` that reads each mock split once per worker: the configs of one data set read
    the same mock images (ImageNet-100's 14,000 take about 10 s to generate and decode)."""

    def read(*args, **kwargs):
        key = repr((args, sorted(kwargs.items())))
        if key not in _MOCK_SPLITS:
            _MOCK_SPLITS[key] = load_split(*args, **kwargs)
        return _MOCK_SPLITS[key]

    return read


@pytest.mark.parametrize(
    "name, arg", [pytest.param(name, arg, id=f"{name}-{arg}") for name, arg in SHIPPED]
)
def test_shipped_configs_pass_validation(mock_tfds, monkeypatch, name, arg):
    """Every config file, as shipped, passes the checks that run before compiling."""
    config = shipped_config(name, arg)
    if config.dataset.name == "fashion_mnist_idx":
        if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
            pytest.skip("Debian's dataset-fashion-mnist is not installed")
        p = planning.plan(config, parallel.make_mesh(1))
    else:
        # Enough mock images for a batch of 256 in every task: ImageNet-100 keeps a tenth of
        # imagenet2012's; DomainNet reads each domain's.
        num_examples = {"imagenet100": 14_000, "domainnet": 300}.get(config.dataset.name, 2000)
        monkeypatch.setattr(sources, "load_split", _read_once(sources.load_split))
        with mock_tfds(num_examples=num_examples):
            p = planning.plan(config, parallel.make_mesh(1))
    assert len(p.stages) == (1 if config.strategy == "offline" else config.num_tasks)
    assert p.strategy.name == config.strategy


def test_cub200_preset_is_avalanches_split_cub200(mock_tfds, monkeypatch):
    """configs/cub200.py reads tfds caltech_birds2011 at 224 pixels and, on a split of its real
    shape (30 training images of each of 200 classes), plans Avalanche's SplitCUB200: classes
    0-99 in the first task, then 10 tasks of 10 in natural order, one step per epoch in those."""
    config = shipped_config("cub200")
    with mock_tfds(num_examples=8):
        mock = sources.load_split(config.dataset.name, "train", image_size=224)
    assert mock.images.shape[1:] == (224, 224, 3) and mock.num_classes == 200
    real = sources.ArraySplit(
        images=np.broadcast_to(np.zeros((1, 224, 224, 3), np.uint8), (6000, 224, 224, 3)),
        labels=np.repeat(np.arange(200, dtype=np.int32), 30),
        num_classes=200,
    )
    monkeypatch.setattr(sources, "load_split", lambda *args, **kwargs: real)
    p = planning.plan(config, parallel.make_mesh(1))
    tasks = [sorted(set(real.labels[stage.indices].tolist())) for stage in p.stages]
    assert tasks == [list(range(100))] + [list(range(c, c + 10)) for c in range(100, 200, 10)]
    assert [stage.steps_per_epoch for stage in p.stages] == [11] + [1] * 10
    for variant in ("runlocal,cassle", "kaizen", "offline"):
        variant_plan = planning.plan(shipped_config("cub200", variant), parallel.make_mesh(1))
        assert variant_plan.strategy.name == variant.split(",")[-1]
    d = config.dataset
    assert (d.on_device, d.streaming, d.host_crop) == (False, True, True)
    assert (config.model.stem, config.epochs_per_task) == ("imagenet", 400)


def test_cifar100_presets_reproduce_cassle():
    """The CaSSLe CIFAR-100 settings: 5 tasks in the seed-5 class order, 500 epochs, batch 256,
    LARS; the data-incremental variant splits with seed 42; unknown variants are named."""
    c = shipped_config("cifar100", "cassle")
    assert (c.strategy, c.scenario, c.class_order) == (
        "cassle",
        "class_incremental",
        "cifar100_cassle_seed5",
    )
    assert (c.num_tasks, c.epochs_per_task, c.batch_size) == (5, 500, 256)
    assert (c.optimizer.name, c.optimizer.kwargs.eta, c.optimizer.warmup_epochs) == (
        "lars",
        0.02,
        10,
    )
    d = shipped_config("cifar100", "data_incremental")
    assert (d.scenario, d.split_seed, d.strategy) == ("data_incremental", 42, "finetune")
    with pytest.raises(ValueError, match="unknown cifar100 config variants.*'cassle'"):
        shipped_config("cifar100", "casle")
    with pytest.raises(ValueError, match="exclude each other"):
        shipped_config("cifar100", "cassle,pfr")
    # POCON's and Genifer's recipes are class-incremental streams.
    with pytest.raises(ValueError, match="variant 'pocon' sets its paper's class-incremental"):
        shipped_config("cifar100", "pocon,data_incremental")
    with pytest.raises(ValueError, match="scenario 'domain_incremental' does not have"):
        shipped_config("domainnet", "genifer")
