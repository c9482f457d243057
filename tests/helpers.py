"""Shared helpers of the end-to-end tests: tiny run configs, the shipped configs, a run on a forced
mesh, and the result files of a finished run."""

import gzip
import importlib.util
import json
import pathlib

import chex
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from cl_ssl import checkpoint, parallel, train
from cl_ssl import config as config_lib
from cl_ssl import state as state_lib
from cl_ssl import step as step_lib
from cl_ssl.data.batch import TrainData
from cl_ssl.data.sources import ArraySplit
from cl_ssl.evaluation import metrics, report
from cl_ssl.objectives import resolve_config
from cl_ssl.strategies.base import BufferInputs

CONFIGS_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


def shipped_config(name, arg=None):
    """``get_config(arg)`` of configs/<name>.py."""
    spec = importlib.util.spec_from_file_location(name, CONFIGS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def tiny_config(**overrides):
    """SimCLR with the tiny ResNet on mock CIFAR-10, 2 tasks, a few steps per task."""
    c = config_lib.base_config()
    c.dataset.name = "cifar10"
    c.num_tasks = 2
    c.model.backbone = "resnet_tiny"
    c.simclr.proj_hidden_dim = 32
    c.simclr.proj_output_dim = 16
    c.batch_size = 8
    c.epochs_per_task = 2
    c.optimizer.warmup_epochs = 1
    c.eval.batch_size = 32
    c.eval.linear.epochs = 2
    c.eval.linear.batch_size = 16
    c.eval.knn.k = 5
    c.eval.plots = False  # 4 s of matplotlib per run; test_end_to_end_two_tasks draws them
    c.checkpoint_every_steps = 3
    c.log_every_steps = 1
    c.progress_bar = False
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return c


# Small heads for every objective, so a CPU step takes milliseconds.
TINY_HEADS = {
    "simclr": dict(proj_hidden_dim=32, proj_output_dim=16),
    "mocov2plus": dict(proj_hidden_dim=32, proj_output_dim=16, queue_size=32),
    "byol": dict(proj_hidden_dim=32, proj_output_dim=16, pred_hidden_dim=32),
    "barlow_twins": dict(proj_hidden_dim=32, proj_output_dim=16),
    "vicreg": dict(proj_hidden_dim=32, proj_output_dim=16),
    "swav": dict(
        proj_hidden_dim=32,
        proj_output_dim=16,
        num_prototypes=10,
        queue_size=16,
        queue_start_epoch=1,
        freeze_prototypes_epochs=1,
    ),
    "isd": dict(proj_hidden_dim=32, proj_output_dim=16, pred_hidden_dim=32, bank_size=32),
    "simsiam": dict(proj_hidden_dim=32, proj_output_dim=16, pred_hidden_dim=8),
    "dino": dict(
        proj_hidden_dim=32, proj_output_dim=16, num_prototypes=10, warmup_teacher_epochs=1
    ),
}


# Two compiled programs that compute the same numbers (a strategy whose term is off against fine-
# tuning, a view cropped in another program) agree up to float rounding: XLA may fuse and order
# their float operations differently. A real difference (a term that leaks, another draw) is orders
# of magnitude larger.
SAME_UP_TO_ROUNDING = {"rtol": 1e-5, "atol": 1e-7}


# One epoch per task, no warm-up, kNN and the online probe: the runs the device tests share.
ONE_EPOCH = {
    "epochs_per_task": 1,
    "optimizer.warmup_epochs": 0,
    "eval.evaluators": ("knn",),
    "eval.online": True,
}


def tiny_objective_config(name, **overrides):
    """``tiny_config`` for objective ``name`` with its tiny heads."""
    heads = {f"{name}.{k}": v for k, v in TINY_HEADS[name].items()}
    return tiny_config(objective=name, **{**heads, **overrides})


def run(config, workdir, num_devices=1):
    """``train.run`` on a mesh of ``num_devices`` CPU devices. The result also holds ``traces``:
    for every train step the run built (in order), how often it was traced."""
    traces = []
    build = step_lib.build_step_fn

    def counting_build(*args, **kwargs):
        step = build(*args, **kwargs)
        index = len(traces)
        traces.append(0)

        def counted(*step_args):
            traces[index] += 1
            return step(*step_args)

        return counted

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(step_lib, "build_step_fn", counting_build)
        result = train.run(config, str(workdir), mesh=parallel.make_mesh(num_devices))
    return {**result, "traces": traces}


def initial_state(objective, strategy, tx, train, seed=0):
    """``state.initial_state``, compiled as one program (op by op, its many small random draws
    each compile on their own, which costs seconds)."""
    return jax.jit(
        lambda: state_lib.initial_state(
            objective=objective, strategy=strategy, tx=tx, seed=seed, train=train
        )
    )()


def random_split(n, num_classes=4, seed=4):
    """An ``ArraySplit`` of ``n`` random 32x32 RGB images, labels cycling over ``num_classes``."""
    images = np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int32) % num_classes
    return ArraySplit(images=images, labels=labels, num_classes=num_classes)


def train_data(n, *, tasks=0, labelled=True, seed=4):
    """``TrainData`` of ``random_split(n)`` on the default device, every example in ``tasks``."""
    split = random_split(n, seed=seed)
    labels = split.labels if labelled else np.full(n, -1, np.int32)
    return jax.device_put(
        TrainData(
            images=split.images,
            labels=labels,
            classes=split.labels,
            tasks=np.broadcast_to(np.asarray(tasks, np.int32), (n,)).copy(),
        )
    )


def damage_newest_checkpoint(workdir):
    """Rewrites the newest checkpoint of ``workdir`` with NaN parameters, as damaged bytes that
    still decode would leave it; the next run must fall back to the checkpoint before."""
    ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), keep=3)
    step = ckpt.latest_step()
    restored = ckpt._manager.restore(
        step,
        args=checkpoint.ocp.args.Composite(
            state=checkpoint.ocp.args.StandardRestore(), meta=checkpoint.ocp.args.JsonRestore()
        ),
    )
    state = jax.tree.map(np.asarray, restored["state"])
    state["params"] = jax.tree.map(lambda x: np.full_like(x, np.nan), state["params"])
    ckpt._manager.delete(step)
    ckpt._manager.save(
        step,
        args=checkpoint.ocp.args.Composite(
            state=checkpoint.ocp.args.StandardSave(state),
            meta=checkpoint.ocp.args.JsonSave(restored["meta"]),
        ),
        force=True,
    )
    ckpt.close()


def assert_resumes_exactly(config, whole, workdir, *, mid_task_kill=True):
    """Killed at step 5 (task 1 of a run with 4 steps per task and checkpoints every 3 steps),
    resumed from the boundary checkpoint of step 4 (checkpoint 5 damaged: NaN parameters that
    must be skipped), with ``mid_task_kill`` killed again at step 7 and resumed from the mid-task
    checkpoint 6, then run across the next boundary: the final state and accuracies equal
    ``whole``'s, the uninterrupted run of ``config(**overrides)``."""
    assert run(config(stop_after_steps=5), workdir)["stopped"]
    damage_newest_checkpoint(workdir)  # the run resumes from the boundary's, step 4
    if mid_task_kill:
        assert run(config(stop_after_steps=7), workdir)["stopped"]
    resumed = run(config(), workdir)
    for field in ("params", "batch_stats", "strategy", "objective_state"):
        chex.assert_trees_all_equal(
            getattr(whole["state"], field), getattr(resumed["state"], field)
        )
    for name, matrix in whole["matrices"].items():
        np.testing.assert_array_equal(matrix, resumed["matrices"][name])


def write_finished_run(workdir, config, final_row, *, rows_evaluated=6):
    """The result files of a finished run of ``config`` (report.write_results, no plots), with one
    'linear' matrix: 5 tasks, the first with 4,000 test images and the others 1,500; row 0 (random
    init) all 60, rows 1-4 all 70, row 5 ``final_row``. Rows from ``rows_evaluated`` on are NaN,
    as in a run not yet finished."""
    rows = np.array([[60.0] * 5] + [[70.0] * 5] * 4 + [final_row])
    summaries = {"linear": metrics.summarize(rows, task_sizes=[4000, 1500, 1500, 1500, 1500])}
    rows[rows_evaluated:] = np.nan
    report.write_results(
        str(workdir),
        matrices={"linear": rows},
        summaries=summaries if rows_evaluated == 6 else {},
        meta={"config": json.loads(resolve_config(config).to_json()), "rows_evaluated": 6},
        plots=False,
    )


def _write_idx(path: pathlib.Path, values: np.ndarray) -> None:
    """A gzip-compressed IDX file of uint8 ``values`` (the Fashion-MNIST file format)."""
    header = bytes([0, 0, 0x08, values.ndim]) + np.asarray(values.shape, ">u4").tobytes()
    path.write_bytes(gzip.compress(header + values.astype(np.uint8).tobytes()))


# The README's runlocal demo (configs/fashion_mnist.py:runlocal) shrunk to 5 steps of 8 images per
# task on the tiny IDX files of write_tiny_fashion_mnist's defaults, checkpoints every 2 steps.
TINY_DEMO_OVERRIDES = {
    "dataset.on_device": False,
    "num_tasks": 2,
    "batch_size": 8,
    "checkpoint_every_steps": 2,
    "eval.train_examples": 40,
    "eval.evaluators": ("knn",),
    "eval.knn.k": 5,
    "progress_bar": False,
}


def write_tiny_fashion_mnist(folder, *, num_classes=10, train_per_class=8, test_per_class=4):
    """Fashion-MNIST IDX files of random 28x28 images in ``folder`` (a ``pathlib.Path``), for runs
    of the Fashion-MNIST configs (``--config.dataset.data_dir=folder``) in processes of their own,
    which the tfds mock does not reach; returns ``folder``."""
    rng = np.random.default_rng(0)
    for prefix, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.tile(np.arange(num_classes), per_class)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
        _write_idx(
            folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (labels.size, 28, 28))
        )
    return folder


class ClSslTestImages(tfds.core.GeneratorBasedBuilder):
    """A tiny data set that tfds prepares without TensorFlow (tensor images, no PNG encoding)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(4, 4, 3), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=7),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(11), "test": self._generate_examples(3)}

    def _generate_examples(self, num):
        for i in range(num):
            yield i, {"image": np.full((4, 4, 3), i, np.uint8), "label": i % 7}


def update_buffers(
    strategy, state, batch, data, *, params=None, joined=None, target=None, task=1, hyper=None
):
    """``strategy.update_buffers`` on ``batch`` (joined rows ``joined``, default the batch) at
    ``task`` with the step's key 0."""
    return strategy.update_buffers(
        BufferInputs(
            state=state,
            params=params,
            batch=batch,
            joined=batch if joined is None else joined,
            target=target,
            data=data,
            key=jax.random.PRNGKey(0),
            task=jax.numpy.int32(task),
            hyper=hyper or {},
        )
    )
