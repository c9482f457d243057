"""The jitted, data-parallel train step shared by every task of a run.

The step takes the whole on-device training set and one batch of example indices, gathers and
augments the two views on the device, and updates the state. Everything that differs between tasks
(the task index, the learning rate and the objective's schedules, which have a different length in
each task) enters as arrays, so a run compiles the step once (ARCHITECTURE.md rule 3). The training
loop computes each stage's per-step scalars once, ahead of its steps (``stage_hyper``), and passes
one set per step.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from cl_ssl import optim
from cl_ssl.data import augment
from cl_ssl.objectives import Objective
from cl_ssl.parallel import batch_sharded, replicated
from cl_ssl.state import ContinualState, trainable
from cl_ssl.strategies import Strategy

Metrics = dict[str, jax.Array]
StepFn = Callable[[ContinualState, jax.Array, jax.Array, Metrics], tuple[ContinualState, Metrics]]


def make_tx(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The optimizer of ``config.optimizer`` with its learning rate injected by the step.

    The learning rate is a hyperparameter of the optimizer state (``optax.inject_hyperparams``) that
    the step overwrites from the schedule, because the schedule's length differs between tasks while
    the compiled step must not.
    """
    o = config.optimizer
    kwargs = o.kwargs.to_dict()

    def factory(learning_rate):
        return optim.make_optimizer(
            o.name, learning_rate=learning_rate, weight_decay=o.weight_decay, **kwargs
        )

    return optax.inject_hyperparams(factory)(learning_rate=0.0)


def scaled_base_lr(config: ml_collections.ConfigDict) -> float:
    """``optimizer.lr`` scaled linearly by batch_size / 256 when ``scale_lr_by_batch`` (METHODS 1.4)."""
    o = config.optimizer
    return o.lr * config.batch_size / 256 if o.scale_lr_by_batch else o.lr


def lr_schedule(
    config: ml_collections.ConfigDict, *, num_epochs: int, steps_per_epoch: int
) -> optax.Schedule:
    """The warm-up + cosine schedule of one stage, a function of the step within the stage."""
    o = config.optimizer
    return optim.warmup_cosine_schedule(
        scaled_base_lr(config),
        total_epochs=num_epochs,
        warmup_epochs=o.warmup_epochs,
        steps_per_epoch=steps_per_epoch,
        warmup_start_lr=o.warmup_start_lr,
        min_lr=o.min_lr,
        per_epoch=o.schedule_per_epoch,
    )


def build_step_fn(
    objective: Objective, strategy: Strategy, tx: optax.GradientTransformation
) -> StepFn:
    """The (un-jitted) train step for ``objective`` under ``strategy``.

    The returned function maps (state, images, batch_indices, hyper) to (new state, metrics):
      images: uint8 [N, H, W, C], the whole training set, replicated on every device; or, for a
        data set kept in host memory, this step's batch uint8 [B, H, W, C], sharded over the
        ``data`` mesh axis.
      batch_indices: int32 [B], this step's examples, sharded over the ``data`` mesh axis; None
        when ``images`` is already the batch.
      hyper: float32 scalars of this step: 'lr' (see ``lr_schedule``) and the objective's
        ``schedules`` (EMA momentum, ...).
      metrics: float32 scalars: 'loss' (the objective's plus the strategy's weighted distillation
      term), 'grad_norm' (global L2 norm of the gradients), 'lr', the objective's own terms and
      the strategy's (the unweighted 'distill'). A finite loss with a non-finite gradient norm
      means the updated parameters are not finite.
    The step's random key is the run key folded with the global step, so a resumed run draws the
    same augmentations as an uninterrupted one. The student sees ``objective.student_views``; its
    BatchNorm statistics are updated by each view in turn. The optimizer updates the student's
    params and the strategy's together (``cl_ssl.state.trainable``).
    """
    model = objective.model

    def train_step(
        state: ContinualState, images: jax.Array, batch_indices: jax.Array, hyper: Metrics
    ) -> tuple[ContinualState, Metrics]:
        x = images if batch_indices is None else jnp.take(images, batch_indices, axis=0)
        keys = jax.random.split(jax.random.fold_in(state.rng, state.step))
        views = tuple(
            augment.augment_batch(key, x, view)
            for key, view in zip(keys, objective.views, strict=True)
        )
        target = None
        if objective.target is not None:
            target = objective.target(state.objective_state, *views)
        student_views = tuple(views[v] for v in objective.student_views)

        def loss_fn(variables):
            params, strategy_params = variables
            batch_stats, outputs = state.batch_stats, []
            for view in student_views:
                out, mutated = model.apply(
                    {"params": params, "batch_stats": batch_stats},
                    view,
                    train=True,
                    mutable=["batch_stats"],
                )
                batch_stats = mutated["batch_stats"]
                outputs.append(out)
            loss, terms, aux = objective.loss(
                tuple(outputs), target, state.objective_state, params, hyper
            )
            if strategy.distill is not None:

                def distill():
                    return strategy.distill(
                        tuple(outputs), student_views, state.teacher, strategy_params
                    )

                def no_teacher_yet():
                    return jax.tree.map(jnp.zeros_like, jax.eval_shape(distill))

                # The first task skips the teacher's forward pass at run time (lax.cond).
                distill_loss, distill_terms = lax.cond(state.task > 0, distill, no_teacher_yet)
                loss, terms = loss + distill_loss, {**terms, **distill_terms}
            return loss, (batch_stats, terms, aux)

        variables = trainable(state)
        (loss, (batch_stats, terms, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            variables
        )
        opt_state = state.opt_state
        opt_state = opt_state._replace(
            hyperparams={**opt_state.hyperparams, "learning_rate": hyper["lr"]}
        )
        updates, opt_state = tx.update(grads, opt_state, variables)
        if objective.mask_updates is not None:
            updates = (objective.mask_updates(updates[0], hyper), updates[1])
        params, strategy_params = optax.apply_updates(variables, updates)
        new_state = state.replace(
            step=state.step + 1,
            task_step=state.task_step + 1,
            params=params,
            strategy_params=strategy_params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            objective_state=objective.update_state(state.objective_state, params, aux, hyper),
        )
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": hyper["lr"], **terms}
        return new_state, metrics

    return train_step


def stage_hyper(
    config: ml_collections.ConfigDict,
    objective: Objective,
    *,
    num_epochs: int,
    steps_per_epoch: int,
) -> dict[str, np.ndarray]:
    """Every per-step scalar of one stage: name -> float32 [steps]; 'lr' and the objective's."""
    lr_at = lr_schedule(config, num_epochs=num_epochs, steps_per_epoch=steps_per_epoch)
    num_steps = num_epochs * steps_per_epoch
    hyper = {"lr": np.asarray(jax.jit(jax.vmap(lr_at))(np.arange(num_steps)), np.float32)}
    for name, values in objective.schedules(num_steps, steps_per_epoch).items():
        hyper[name] = np.asarray(values, np.float32)
    return hyper


def jit_step(step_fn: StepFn, mesh: jax.sharding.Mesh, *, host_batches: bool = False) -> StepFn:
    """Jits ``step_fn`` over ``mesh``, state donated: state replicated, indices sharded, and the
    images replicated (the whole on-device data set) or, with ``host_batches``, batch-sharded (each
    step's batch from host memory, with None for the indices)."""
    rep, batch = replicated(mesh), batch_sharded(mesh)
    images = batch if host_batches else rep
    return jax.jit(
        step_fn, in_shardings=(rep, images, batch, rep), out_shardings=(rep, rep), donate_argnums=0
    )
