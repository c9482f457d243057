"""The train state carried through the whole continual run."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

PyTree = Any


@flax.struct.dataclass
class ContinualState:
    """Everything a run needs to continue exactly, as one pytree.

    Attributes:
      step: int32 [], optimizer steps taken since the start of the run.
      task: int32 [], index of the task being trained (0-based); equals the number of tasks when the
        run is complete.
      task_step: int32 [], optimizer steps taken within the current task; with the task's steps per
        epoch it gives the epoch and the position inside it.
      params: the student's parameters (backbone and heads).
      batch_stats: the student's BatchNorm statistics.
      strategy_params: the strategy's own trainable parameters (CaSSLe's distillation predictor),
        updated by the same optimizer as ``params``; an empty dict for strategies without any.
      opt_state: optimizer state of ``trainable(state)``, re-initialised at every task boundary.
      teacher: the strategy's frozen pytree (for example the previous task's model); an empty dict
        for strategies that need none. Its shape is fixed for the whole run.
      objective_state: the objective's own fixed-shape state (momentum network, queues, centre;
        ``Objective.init_state``), carried across tasks; an empty dict for objectives without one.
      rng: uint32 [2], the run's base key; every random draw folds in the step.
    """

    step: jax.Array
    task: jax.Array
    task_step: jax.Array
    params: PyTree
    batch_stats: PyTree
    strategy_params: PyTree
    opt_state: optax.OptState
    teacher: PyTree
    objective_state: PyTree
    rng: jax.Array


def trainable(state: ContinualState) -> tuple[PyTree, PyTree]:
    """What the optimizer updates: (student params, strategy params)."""
    return state.params, state.strategy_params


def create_state(
    *,
    variables: PyTree,
    tx: optax.GradientTransformation,
    teacher: PyTree,
    objective_state: PyTree,
    strategy_params: PyTree,
    rng: jax.Array,
) -> ContinualState:
    """The state at the start of a run: step 0, task 0, fresh optimizer state."""
    params = variables["params"]
    return ContinualState(
        step=jnp.zeros((), jnp.int32),
        task=jnp.zeros((), jnp.int32),
        task_step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        strategy_params=strategy_params,
        opt_state=tx.init((params, strategy_params)),
        teacher=teacher,
        objective_state=objective_state,
        rng=rng,
    )


def start_task(
    state: ContinualState,
    *,
    task: int,
    tx: optax.GradientTransformation,
    teacher: PyTree,
    objective_state: PyTree,
    strategy_params: PyTree,
) -> ContinualState:
    """The state at the start of ``task``: optimizer and schedules restart; the teacher, the
    objective's state and the strategy's params are replaced (the caller derives them from the
    old ones).

    The optimizer state is re-initialised (LARS momentum and the learning-rate schedule's count
    restart with every task, as each task is a new process in the reference code, METHODS.md 1.6).
    """
    return state.replace(
        task=jnp.asarray(task, jnp.int32),
        task_step=jnp.zeros((), jnp.int32),
        strategy_params=strategy_params,
        opt_state=tx.init((state.params, strategy_params)),
        teacher=teacher,
        objective_state=objective_state,
    )
