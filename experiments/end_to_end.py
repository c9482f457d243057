"""One continual run end to end on synthetic data shaped like its data set: its wall time split
into training, evaluation and checkpointing, and extrapolated to the preset's epochs and to a
table of such runs.

    python experiments/end_to_end.py --config=configs/cifar100.py:cassle --epochs=2 \\
        --config.model.dtype=bfloat16 --config.seeds=0,1,2 --workdir=/tmp/e2e

The data loader is replaced by random images and balanced labels of the data set's shapes
(CIFAR-100: 50,000 training and 10,000 test images of 32x32x3 in 100 classes), so the run needs
no download: its accuracies mean nothing, its times are the preset's (the online probe, the
offline evaluation and the checkpoints included). The run trains ``--epochs`` per task instead of
the preset's. From the totals the run records at each row of its accuracy matrices
(``results.json``'s ``wall_seconds_at_rows``), stages 3 onward give the training seconds of one
epoch: the first stage compiles the plain step and the second the distillation step. The rest of
the training time (compilation, end-of-task work) counts once. Extrapolated to E epochs per task:

    training(E) = rest + tasks * E * seconds per epoch
    evaluation(E) = evaluation (the probes do not depend on the training epochs)
    checkpointing(E) = seconds per save * the saves a run of E epochs makes

With ``--config.seeds`` the R seeds train as one program: its times are summed over the seeds,
and a table of ``--table_runs`` runs takes ``table_runs / R`` such programs.
"""

from __future__ import annotations

import json
import os
from unittest import mock

import numpy as np
from absl import app, flags
from ml_collections import config_flags
from wall_time import checkpoint_saves, extrapolate

from cl_ssl import parallel, planning, storage
from cl_ssl import train as train_lib
from cl_ssl.data import sources

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/cifar100.py:cassle", "The run's config (a preset and --config.* fields)."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's folder.", required=True)
_EPOCHS = flags.DEFINE_integer("epochs", 2, "Training epochs per task of the measured run.")
_TARGET_EPOCHS = flags.DEFINE_integer(
    "target_epochs", 0, "Epochs per task to extrapolate to; 0: the config's epochs_per_task."
)
_TABLE_RUNS = flags.DEFINE_integer(
    "table_runs", 36, "Runs of the table to extrapolate to (CaSSLe's CIFAR-100 figure: 36)."
)
_TRAIN_EXAMPLES = flags.DEFINE_integer(
    "train_examples", 0, "Synthetic training images; 0: the data set's number."
)
_OUTPUT = flags.DEFINE_string("output", "", "Optional JSON file for the figures.")

# Training images, test images, image shape and classes of the data sets this script imitates.
SHAPES = {
    "cifar100": (50_000, 10_000, (32, 32, 3), 100),
    "cifar10": (50_000, 10_000, (32, 32, 3), 10),
    "fashion_mnist_idx": (60_000, 10_000, (28, 28, 1), 10),
}


def synthetic_split(name: str, split: str, train_examples: int = 0) -> sources.ArraySplit:
    """Random uint8 images and balanced labels (classes in turn, shuffled) of ``name``'s shapes."""
    if name not in SHAPES:
        raise app.UsageError(
            f"no synthetic shapes for dataset.name={name!r}; choose among {sorted(SHAPES)}"
        )
    num_train, num_test, shape, classes = SHAPES[name]
    size = (train_examples or num_train) if split == "train" else num_test
    rng = np.random.default_rng(0 if split == "train" else 1)
    labels = rng.permutation(np.arange(size) % classes).astype(np.int32)
    images = rng.integers(0, 256, (size, *shape), np.uint8)
    return sources.ArraySplit(images=images, labels=labels, num_classes=classes)


def _summed_rows(folders: list[str]) -> dict[str, dict[str, float]]:
    """``wall_seconds_at_rows`` of the runs in ``folders``, summed over them (the replicas of one
    program each hold their share)."""
    runs = [
        json.loads((storage.path(f) / "results.json").read_text())["meta"]["wall_seconds_at_rows"]
        for f in folders
    ]
    return {row: {k: sum(run[row][k] for run in runs) for k in runs[0][row]} for row in runs[0]}


def main(argv):
    del argv
    config = _CONFIG.value
    target_epochs = _TARGET_EPOCHS.value or config.epochs_per_task
    config.epochs_per_task = _EPOCHS.value
    # The learning rate's schedule changes no time; its warm-up must fit the shorter run.
    config.optimizer.warmup_epochs = min(config.optimizer.warmup_epochs, _EPOCHS.value - 1)
    workdir = _WORKDIR.value

    def load_split(name, split, **_):
        return synthetic_split(name, split, _TRAIN_EXAMPLES.value)

    with mock.patch.object(sources, "load_split", load_split):
        train_lib.run(config, workdir)
        single = config.copy_and_resolve_references()
        single.seeds = ()
        steps_per_epoch = [
            s.steps_per_epoch for s in planning.plan(single, parallel.make_mesh()).stages
        ]
    every = config.checkpoint_every_steps
    seeds = list(config.seeds) or [config.seed]
    folders = [os.path.join(workdir, f"seed_{s}") for s in seeds] if config.seeds else [workdir]
    times = extrapolate(
        _summed_rows(folders),
        epochs=_EPOCHS.value,
        target_epochs=target_epochs,
        # The last row is recorded before the run's last checkpoint.
        saves=checkpoint_saves([n * _EPOCHS.value for n in steps_per_epoch], every) - 1,
        target_saves=checkpoint_saves([n * target_epochs for n in steps_per_epoch], every),
    )
    programs = _TABLE_RUNS.value / len(seeds)
    table_hours = programs * times["extrapolated"]["total"] / 3600
    m, x = times["measured"], times["extrapolated"]
    print(
        f"\n{len(seeds)} seed(s) in one program, {len(steps_per_epoch)} tasks; seconds\n"
        f"| | {_EPOCHS.value} epochs per task (measured) | {target_epochs} epochs per task |\n"
        "|---|---:|---:|"
    )
    for key, label in [
        ("training", "training"),
        ("rest", "of which compilation and end-of-task work"),
        ("evaluation", "evaluation"),
        ("checkpointing", "checkpointing"),
        ("total", "total"),
    ]:
        print(f"| {label} | {m[key]:,.1f} | {x[key]:,.1f} |")
    step_ms = 1000 * m["seconds_per_epoch"] / np.mean(steps_per_epoch[2:])
    print(
        f"\nTraining from task 3: {m['seconds_per_epoch']:.2f} s per epoch, {step_ms:.1f} ms per "
        f"step of the program, {100 * m['host_share']:.0f}% of it the host's own work (the rest "
        f"waiting for the device). A table of {_TABLE_RUNS.value} runs as {programs:g} such "
        f"programs: {table_hours:.2f} hours."
    )
    if _OUTPUT.value:
        result = {
            "seeds": seeds,
            "epochs": _EPOCHS.value,
            "target_epochs": target_epochs,
            "table_runs": _TABLE_RUNS.value,
            "table_hours": table_hours,
            "step_ms": step_ms,
            **times,
        }
        with open(_OUTPUT.value, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    app.run(main)
