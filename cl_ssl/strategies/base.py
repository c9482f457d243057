"""The strategy interface, the fine-tuning and offline baselines, and the frozen-teacher pieces."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from cl_ssl.models.ssl import SSLModel
from cl_ssl.objectives import Objective

PyTree = Any
Outputs = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
Distill = Callable[
    [tuple[Outputs, ...], tuple[jax.Array, ...], PyTree, PyTree], tuple[jax.Array, Metrics]
]


def each_task(train_indices: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``Strategy.stages`` of every continual strategy: one stage per task, in order."""
    return list(train_indices)


def _all_tasks_jointly(train_indices: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.concatenate(train_indices))]


def _no_teacher(params: PyTree, batch_stats: PyTree) -> PyTree:
    del params, batch_stats
    return {}


def _no_params(key: jax.Array) -> PyTree:
    del key
    return {}


def _keep_params(params: PyTree, task: int, key: jax.Array) -> PyTree:
    del task, key
    return params


def fresh_at_second_task(
    init_params: Callable[[jax.Array], PyTree],
) -> Callable[[PyTree, int, jax.Array], PyTree]:
    """``Strategy.start_task`` of CaSSLe's distillation heads: random at the second task (the
    reference's first distillation task loads a checkpoint without them), carried from the third
    on (METHODS.md 3.3)."""

    def start_task(params: PyTree, task: int, key: jax.Array) -> PyTree:
        return init_params(key) if task == 1 else params

    return start_task


@dataclasses.dataclass(frozen=True)
class Strategy:
    """A continual strategy.

    Attributes:
      name: the registry name.
      stages: per-task train indices -> the train indices of each training stage, in order. An
        evaluation row of the accuracy matrix follows every stage.
      teacher: (student params, student batch_stats) at a stage boundary -> the teacher pytree the
        next stage carries (fixed shape for the whole run; {} when the strategy needs none).
      init_params: key -> the strategy's own trainable parameters (a distillation predictor), which
        the optimizer updates with the student's; {} when it has none.
      start_task: (strategy params, index of the task about to start, the same key as
        ``init_params``) -> the strategy params that task starts from.
      distill: optional (student outputs per student view, the student's augmented views, teacher,
        strategy params) -> (weighted distillation loss added to the objective's, metrics). It
        runs inside the differentiated loss, from the second task on: on the first, whose teacher
        slot holds no teacher yet, the step skips it and adds 0 (one compiled step for all tasks).
    """

    name: str
    stages: Callable[[Sequence[np.ndarray]], list[np.ndarray]]
    teacher: Callable[[PyTree, PyTree], PyTree] = _no_teacher
    init_params: Callable[[jax.Array], PyTree] = _no_params
    start_task: Callable[[PyTree, int, jax.Array], PyTree] = _keep_params
    distill: Distill | None = None


def make_finetune(config: ml_collections.ConfigDict, objective: Objective) -> Strategy:
    """Trains on each task in turn with no mitigation (the lower bound, METHODS.md 3.1)."""
    del config, objective
    return Strategy(name="finetune", stages=each_task)


def make_offline(config: ml_collections.ConfigDict, objective: Objective) -> Strategy:
    """Trains once on the union of all tasks (the upper bound, METHODS.md 3.2); its accuracy
    matrix has one trained row."""
    del config, objective
    return Strategy(name="offline", stages=_all_tasks_jointly)


# ---------------------------------------------------------------------------------------------
# Frozen previous-task teachers (CaSSLe, PFR; METHODS.md 4.1)


def output_widths(objective: Objective) -> dict[str, int]:
    """Width of each of the student's outputs ('features', 'projection', ...), from shapes only."""
    crop = objective.views[0].crop_size
    out, _ = jax.eval_shape(
        lambda: objective.model.init_with_output(
            jax.random.PRNGKey(0), jnp.zeros((2, crop, crop, 3)), train=False
        )
    )
    return {name: value.shape[-1] for name, value in out.items()}


def snapshot(keep: Callable[[PyTree], PyTree]) -> Callable[[PyTree, PyTree], PyTree]:
    """``Strategy.teacher`` that freezes a copy of ``keep`` of the student's params and BatchNorm
    statistics (a copy: the train step donates the state, which must not hold one buffer twice)."""

    def teacher(params: PyTree, batch_stats: PyTree) -> PyTree:
        frozen = {"params": keep(params), "batch_stats": keep(batch_stats)}
        return jax.tree.map(jnp.copy, frozen)

    return teacher


def apply_teacher(
    model: SSLModel, teacher: PyTree, images: jax.Array, *, train_bn: bool, method: Any
) -> Any:
    """The frozen teacher's ``method`` outputs on ``images``, through ``stop_gradient``.

    With ``train_bn`` the teacher's BatchNorm normalises with the batch's statistics (and the
    updated running statistics are discarded), as every reference code does by never switching the
    frozen copy to eval mode (METHODS.md 3.3, 4.1); otherwise it uses the statistics frozen with it.
    """
    if train_bn:
        out, _ = model.apply(teacher, images, True, method=method, mutable=["batch_stats"])
    else:
        out = model.apply(teacher, images, False, method=method)
    return jax.tree.map(lax.stop_gradient, out)


def apply_head(head: Any, params: PyTree, x: jax.Array) -> jax.Array:
    """A strategy head on ``x`` with BatchNorm on the batch's statistics (never read at eval)."""
    out, _ = head.apply({"params": params}, x, train=True, mutable=["batch_stats"])
    return out


def teacher_distillation(
    *,
    model: SSLModel,
    method: Any,
    train_bn: bool,
    read: Callable[[Outputs], jax.Array],
    head: Any,
    head_key: str,
    loss: Callable[[list, list, PyTree], jax.Array],
    weight: float,
) -> Distill:
    """``Strategy.distill`` of a frozen previous-task teacher (CaSSLe, PFR).

    For each of the student's views: the teacher's ``method`` outputs on that view
    (``apply_teacher``) and the head ``strategy_params[head_key]`` on the student's ``read``
    output; then ``weight * loss(predictions, teacher outputs, strategy params)``, with the
    unweighted value as the metric 'distill'.
    """

    def distill(student, views, teacher, params):
        targets = [
            apply_teacher(model, teacher, x, train_bn=train_bn, method=method) for x in views
        ]
        predictions = [apply_head(head, params[head_key], read(out)) for out in student]
        value = loss(predictions, targets, params)
        return weight * value, {"distill": value}

    return distill
