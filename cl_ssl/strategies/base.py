"""The strategy interface, and the fine-tuning and offline baselines."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

PyTree = Any


def _each_task(train_indices: Sequence[np.ndarray]) -> list[np.ndarray]:
    return list(train_indices)


def _all_tasks_jointly(train_indices: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.concatenate(train_indices))]


def _no_teacher(params: PyTree, batch_stats: PyTree) -> PyTree:
    del params, batch_stats
    return {}


@dataclasses.dataclass(frozen=True)
class Strategy:
    """A continual strategy.

    Attributes:
      name: the registry name.
      stages: per-task train indices -> the train indices of each training stage, in order. An
        evaluation row of the accuracy matrix follows every stage.
      teacher: (student params, student batch_stats) at a stage boundary -> the teacher pytree the
        next stage carries (fixed shape for the whole run; {} when the strategy needs none).
    """

    name: str
    stages: Callable[[Sequence[np.ndarray]], list[np.ndarray]]
    teacher: Callable[[PyTree, PyTree], PyTree]


finetune = Strategy(name="finetune", stages=_each_task, teacher=_no_teacher)
"""Trains on each task in turn with no mitigation (the lower bound)."""

offline = Strategy(name="offline", stages=_all_tasks_jointly, teacher=_no_teacher)
"""Trains once on the union of all tasks (the upper bound); its matrix has one trained row."""
