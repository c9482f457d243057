"""Fingerprints of the jitted train step: one hash per strategy of the lowered program.

    python experiments/step_program.py --strategies=finetune,cassle,replay,kaizen

lowers (no compilation, no run) each strategy's train step at the second task, with the
strategy's rows joined when it joins any, on CIFAR-shaped random data, and prints the SHA-256 of
its StableHLO text with source locations stripped. Run it at two commits (``PYTHONPATH`` pointing
at each tree): equal hashes mean the two steps are the same program, so a change between them
moved neither what the step computes from its inputs nor its speed (the host's part of a run,
such as data order and exemplar selection, is not covered).
"""

from __future__ import annotations

import hashlib
import re

import jax
import numpy as np
from absl import app, flags

from cl_ssl import config as config_lib
from cl_ssl import parallel
from cl_ssl import state as state_lib
from cl_ssl import step as step_lib
from cl_ssl.data.batch import TrainData
from cl_ssl.data.sources import ArraySplit
from cl_ssl.objectives import get_objective, resolve_config
from cl_ssl.strategies import get_strategy

_STRATEGIES = flags.DEFINE_list("strategies", ["finetune"], "Strategies whose step to lower.")
_OBJECTIVE = flags.DEFINE_string("objective", "simclr", "SSL objective.")
_BACKBONE = flags.DEFINE_string("backbone", "resnet18", "Backbone (model.backbone).")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Global batch size.")
NUM_IMAGES = 2048  # 1% of each of 10 classes is 2 images: Kaizen's memory is not empty
NUM_CLASSES = 10


def program_text(strategy_name: str) -> str:
    """The StableHLO text of the strategy's train step, without source locations."""
    config = config_lib.base_config()
    config.update(strategy=strategy_name, objective=_OBJECTIVE.value, batch_size=_BATCH.value)
    config.model.backbone = _BACKBONE.value
    config.labels.fraction = 1.0  # strategies that train a classifier need labels
    config = resolve_config(config)
    objective = get_objective(config)
    strategy = get_strategy(config, objective)
    tx = step_lib.make_tx(config, objective, strategy)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, NUM_CLASSES, NUM_IMAGES).astype(np.int32)
    train = ArraySplit(
        images=rng.integers(0, 256, (NUM_IMAGES, 32, 32, 3), np.uint8),
        labels=labels,
        num_classes=NUM_CLASSES,
    )
    state = jax.eval_shape(
        lambda: state_lib.initial_state(
            objective=objective, strategy=strategy, tx=tx, seed=0, train=train
        )
    )
    data = TrainData(
        images=train.images,
        labels=labels,
        classes=labels,
        tasks=np.zeros(NUM_IMAGES, np.int32),
    )
    step = step_lib.jit_step(
        step_lib.build_step_fn(objective, strategy, tx, extend=strategy.extends_batch(1)),
        parallel.make_mesh(),
    )
    # The step's scalars are inputs of the program: their values do not change its text.
    epochs = config.optimizer.warmup_epochs + 1
    hyper = step_lib.stage_hyper(config, objective, strategy, num_epochs=epochs, steps_per_epoch=1)
    hyper = {name: values[-1] for name, values in hyper.items()}
    ids = np.arange(_BATCH.value, dtype=np.int32)
    text = step.lower(state, data, ids, hyper).as_text(debug_info=False)
    return re.sub(r"loc\([^)]*\)", "", text)


def main(argv):
    del argv
    for name in _STRATEGIES.value:
        digest = hashlib.sha256(program_text(name).encode()).hexdigest()
        print(f"{name} {digest[:16]}")


if __name__ == "__main__":
    app.run(main)
