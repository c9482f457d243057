"""The train state carried through the whole continual run, and its one constructor."""

from __future__ import annotations

from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any


@flax.struct.dataclass
class StrategyState:
    """What a continual strategy carries, fixed in shape for the whole run.

    Attributes:
      trainable: parameters the optimizer updates with the student's (CaSSLe's predictor h, a
        classifier); ``{}`` when the strategy has none.
      frozen: pytrees that stay fixed during a task and are rewritten at its end (a previous-task
        teacher with its heads); ``{}`` when none.
      buffers: arrays the step or the end of a task rewrites without gradient (an exemplar memory,
        queues, a generator and its optimizer state); ``{}`` when none.
    """

    trainable: PyTree = flax.struct.field(default_factory=dict)
    frozen: PyTree = flax.struct.field(default_factory=dict)
    buffers: PyTree = flax.struct.field(default_factory=dict)


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
      opt_state: optimizer state of ``trainable(state)``, re-initialised at every task boundary
        under ``optimizer.reset_each_task`` (the default), carried across tasks otherwise.
      objective_state: the objective's own fixed-shape state (momentum network, queues, centre;
        ``Objective.init_state``), carried across tasks; an empty dict for objectives without one.
      strategy: the strategy's state (``StrategyState``).
      rng: the run's base key; every random draw folds in the step.
      online_probe: the online linear probe's parameters (``cl_ssl.evaluation.online``), carried
        across tasks; ``{}`` without one.
    """

    step: jax.Array
    task: jax.Array
    task_step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: optax.OptState
    objective_state: PyTree
    strategy: StrategyState
    rng: jax.Array
    online_probe: PyTree = flax.struct.field(default_factory=dict)


def trainable(state: ContinualState) -> dict[str, PyTree]:
    """What the optimizer updates: {'student': params, 'strategy': the strategy's trainable,
    'online_probe': the online probe's parameters (empty without one)}."""
    return {
        "student": state.params,
        "strategy": state.strategy.trainable,
        "online_probe": state.online_probe,
    }


class RunKeys(NamedTuple):
    """The run's keys, all derived from ``config.seed``: model init, evaluator, train steps,
    the objective's initial state (queues, banks), the strategy's (heads, memories) and the
    online probe's."""

    init: jax.Array
    eval: jax.Array
    step: jax.Array
    objective: jax.Array
    strategy: jax.Array
    online: jax.Array


def run_keys(seed: int) -> RunKeys:
    init, eval_, step = jax.random.split(jax.random.PRNGKey(seed), 3)
    return RunKeys(init, eval_, step, *(jax.random.fold_in(init, i) for i in (1, 2, 3)))


def initial_state(
    *,
    objective: Any,
    strategy: Any,
    tx: optax.GradientTransformation,
    seed: int,
    train: Any,
    online: Any = None,
) -> ContinualState:
    """The state at the start of a run: step 0, task 0, a fresh student, objective and strategy
    state, fresh optimizer state.

    Args:
      objective: the ``cl_ssl.objectives.Objective`` (its model, views and ``init_state``).
      strategy: the ``cl_ssl.strategies.Strategy`` (its ``init``).
      tx: the run's optimizer (``cl_ssl.step.make_tx``).
      seed: ``config.seed``; every key comes from it (``run_keys``).
      train: the training split (``cl_ssl.data.sources.ArraySplit``), whose shapes and labels size
        the strategy's buffers.
      online: the run's ``cl_ssl.evaluation.online.OnlineProbe``, or None.
    """
    keys = run_keys(seed)
    crop = objective.views[0].crop_size
    variables = objective.model.init(
        keys.init, np.zeros((1, crop, crop, 3), np.float32), train=True
    )
    params = variables["params"]
    state = ContinualState(
        step=jnp.zeros((), jnp.int32),
        task=jnp.zeros((), jnp.int32),
        task_step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=None,  # set below, from what the optimizer updates
        objective_state=objective.init_state(params, keys.objective),
        strategy=strategy.init(variables, keys.strategy, train),
        rng=keys.step,
        online_probe={} if online is None else online.init(keys.online),
    )
    return state.replace(opt_state=tx.init(trainable(state)))


def start_task(
    state: ContinualState,
    *,
    task: int,
    tx: optax.GradientTransformation,
    objective_state: PyTree,
    strategy_state: StrategyState,
    reset_optimizer: bool = True,
) -> ContinualState:
    """The state at the start of ``task``: schedules restart; the objective's and the strategy's
    states are replaced (the caller derives them from the old ones).

    With ``reset_optimizer`` the optimizer state is re-initialised: LARS momentum restarts with
    every task, as each task is a new training process in CaSSLe (``main_continual.py`` launches
    ``main_pretrain.py`` once per task); without it the momentum carries over, as in CCL's
    ``train.py``, which builds one optimizer for the whole stream. The learning rate comes from
    the stage's schedule either way.
    """
    opt_state = state.opt_state
    if reset_optimizer:
        opt_state = tx.init(trainable(state.replace(strategy=strategy_state)))
    return state.replace(
        task=jnp.asarray(task, jnp.int32),
        task_step=jnp.zeros((), jnp.int32),
        opt_state=opt_state,
        objective_state=objective_state,
        strategy=strategy_state,
    )
