"""Supervised class-incremental strategies: a classifier trained with cross-entropy through the
backbone, the path of Genifer (Thandiackal et al., "Generative feature-driven image replay for
continual learning") and of its baselines.

- ``finetune_supervised``: cross-entropy on each task in turn, no mitigation;
- ``replay_supervised``: the same with an exemplar memory (``config.replay``; Genifer's evidence
  keeps 20 random images per class) whose labelled rows join every batch from the second task on.

Both need ``objective=supervised`` (no self-supervised term; its single view is RandomCrop with
padding 4 and a flip), and labels: the classifier trains on the rows that have one.

The output layer grows as Genifer's does (kevthan/feature-driven-image-replay
``genifer/model/continual_model.py``: the previous output layer becomes ``prev_readout`` and a
newly initialised ``curr_readout`` is appended for the new task's classes). To keep every shape
fixed for the whole run, cl_ssl holds one Linear(F -> C) over all the data set's classes and
restricts its logits to the classes seen so far (those of the tasks up to the current one), in
training and in evaluation; at every task boundary the columns of the classes not yet seen are
drawn afresh from the initialiser, so that the new task's readout starts as a new layer would
(weight decay has shrunk the unused columns meanwhile). The classifier's parameters are in the
run's default optimizer group, with the backbone's learning rate and weight decay.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from cl_ssl import losses
from cl_ssl.data.batch import TrainData
from cl_ssl.models import heads
from cl_ssl.objectives import SUPERVISED, Objective
from cl_ssl.state import StrategyState
from cl_ssl.strategies import replay
from cl_ssl.strategies.base import (
    BufferInputs,
    LossInputs,
    Strategy,
    StrategySpec,
    TaskEnd,
    output_widths,
)


def output_layer(num_classes: int) -> heads.MLPHead:
    """The classifier's output layer: one Linear(F -> C) with PyTorch's initialisation."""
    return heads.MLPHead(hidden_dims=(), out_dim=num_classes)


def seen_classes(data: TrainData, task: jax.Array, num_classes: int) -> jax.Array:
    """bool [C]: the classes of the training examples of tasks 0..``task`` (int32 []), i.e. the
    output units of the growing layer at ``task``."""
    known = (data.tasks >= 0) & (data.tasks <= task)
    return jnp.zeros((num_classes,), bool).at[data.classes].max(known)


def restrict(logits: jax.Array, seen: jax.Array) -> jax.Array:
    """Logits float32 [N, C] with the classes outside ``seen`` (bool [C]) set to -inf; unchanged
    while no class is seen yet (the untrained classifier of the accuracy matrix's first row)."""
    keep = seen | ~jnp.any(seen)
    return jnp.where(keep, logits, -jnp.inf)


def check_objective(objective: Objective, strategy: str) -> None:
    """ValueError unless ``objective`` is the supervised one."""
    if objective.name != SUPERVISED:
        raise ValueError(
            f"strategy {strategy!r} trains a classifier with cross-entropy through the backbone, "
            f"on the supervised path; set --config.objective={SUPERVISED} (objective "
            f"{objective.name!r} is self-supervised: use a self-supervised strategy with it)"
        )


def check_labels(config: ml_collections.ConfigDict) -> None:
    """ValueError when the learner sees no labels at all."""
    if config.labels.fraction <= 0:
        raise ValueError(
            f"strategy {config.strategy!r} learns from labels, but labels.fraction="
            f"{config.labels.fraction} gives the learner none; set --config.labels.fraction in "
            "(0, 1]"
        )


def classifier_state(variables, key: jax.Array, num_classes: int, width: int) -> StrategyState:
    """The classifier's initial state: the output layer (trainable) and the seen classes (none)."""
    del variables
    layer = output_layer(num_classes).init(key, jnp.zeros((2, width)), train=False)["params"]
    return StrategyState(
        trainable={"classifier": layer}, buffers={"seen": jnp.zeros((num_classes,), bool)}
    )


def grow(state: StrategyState, key: jax.Array) -> StrategyState:
    """``state`` with the output columns of the classes not seen yet drawn afresh from ``key``."""
    layer = state.trainable["classifier"]
    kernel = layer["linear0"]["kernel"]
    fresh = output_layer(kernel.shape[1]).init(key, jnp.zeros((2, kernel.shape[0])), train=False)
    seen = state.buffers["seen"]
    layer = jax.tree.map(lambda old, new: jnp.where(seen, old, new), layer, fresh["params"])
    return state.replace(trainable={**state.trainable, "classifier": layer})


def logits(classifier, features: jax.Array) -> jax.Array:
    """The output layer's logits float32 [N, C] on features [N, F], every class."""
    classes = classifier["linear0"]["kernel"].shape[1]
    return output_layer(classes).apply({"params": classifier}, features, train=False)


def make_finetune_supervised(config: ml_collections.ConfigDict, objective: Objective) -> Strategy:
    """``finetune_supervised``: the classifier trained on each task in turn."""
    return _make(config, objective, name="finetune_supervised", rehearse=False)


def make_replay_supervised(config: ml_collections.ConfigDict, objective: Objective) -> Strategy:
    """``replay_supervised``: the classifier with the labelled replay rows of ``config.replay``."""
    return _make(config, objective, name="replay_supervised", rehearse=True)


def _make(config, objective: Objective, *, name: str, rehearse: bool) -> Strategy:
    check_objective(objective, name)
    check_labels(config)
    rehearsal = replay.rehearsal(config, objective) if rehearse else None
    width = output_widths(objective)["features"]

    def init(variables, key, train):
        state = classifier_state(variables, key, train.num_classes, width)
        if rehearsal is None:
            return state
        return state.replace(
            buffers={**state.buffers, **rehearsal.init(variables, key, train).buffers}
        )

    def end_task(end: TaskEnd) -> StrategyState:
        state = end.state.strategy
        if rehearsal is not None:
            state = rehearsal.end_task(end)
        return grow(state, jax.random.fold_in(end.key, end.next_task))

    def loss(inputs: LossInputs):
        classifier = inputs.trainable["classifier"]
        seen = seen_classes(inputs.data, inputs.task, classifier["linear0"]["bias"].shape[0])
        labels = jnp.where(inputs.batch.valid, inputs.batch.labels, -1)
        (out,) = inputs.outputs
        ce = losses.labelled_cross_entropy(
            restrict(logits(classifier, out["features"]), seen), labels
        )
        return ce, {"ce": ce}

    def update_buffers(inputs: BufferInputs):
        buffers = dict(inputs.state.buffers)
        if rehearsal is not None and rehearsal.update_buffers is not None:
            buffers = rehearsal.update_buffers(inputs)
        num_classes = buffers["seen"].shape[0]
        return {**buffers, "seen": seen_classes(inputs.data, inputs.task, num_classes)}

    def classify(state: StrategyState, features: jax.Array) -> jax.Array:
        return restrict(logits(state.trainable["classifier"], features), state.buffers["seen"])

    return Strategy(
        name=name,
        init=init,
        end_task=end_task,
        extend_batch=None if rehearsal is None else rehearsal.extend_batch,
        extends_batch_from=1 if rehearsal is None else rehearsal.extends_batch_from,
        **({} if rehearsal is None else {"schedules": rehearsal.schedules}),
        loss=loss,
        update_buffers=update_buffers,
        classify=classify,
    )


FINETUNE_SUPERVISED = StrategySpec(make=make_finetune_supervised, supervised=True)
REPLAY_SUPERVISED = StrategySpec(make=make_replay_supervised, reads=("replay",), supervised=True)
