"""The jitted, data-parallel train step shared by every task of a run.

The step takes the whole on-device training set and one batch of example indices, gathers and
augments the two views on the device, and updates the state. Everything that differs between tasks
(the task index, the learning rate, whose schedule has a different length in each task) enters as
arrays, so a run compiles the step once (ARCHITECTURE.md rule 3). The training loop computes each
stage's learning rates once, ahead of its steps, and passes one per step.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cl_ssl import optim
from cl_ssl.data import augment
from cl_ssl.objectives import Objective
from cl_ssl.parallel import batch_sharded, replicated
from cl_ssl.state import ContinualState

Metrics = dict[str, jax.Array]
StepFn = Callable[[ContinualState, jax.Array, jax.Array, jax.Array], tuple[ContinualState, Metrics]]


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


def build_step_fn(objective: Objective, tx: optax.GradientTransformation) -> StepFn:
    """The (un-jitted) train step for ``objective``.

    The returned function maps (state, images, batch_indices, lr) to (new state, metrics):
      images: uint8 [N, H, W, C], the whole training set, replicated on every device.
      batch_indices: int32 [B], this step's examples, sharded over the ``data`` mesh axis.
      lr: float32 [], this step's learning rate (see ``lr_schedule``).
      metrics: float32 scalars: 'loss', 'grad_norm' (global L2 norm of the gradients), 'lr' and the
      objective's own terms. A finite loss with a non-finite gradient norm means the updated
      parameters are not finite.
    The step's random key is the run key folded with the global step, so a resumed run draws the
    same augmentations as an uninterrupted one.
    """
    model = objective.model
    view1, view2 = objective.views

    def train_step(
        state: ContinualState, images: jax.Array, batch_indices: jax.Array, lr: jax.Array
    ) -> tuple[ContinualState, Metrics]:
        x = jnp.take(images, batch_indices, axis=0)
        key1, key2 = jax.random.split(jax.random.fold_in(state.rng, state.step))
        x1 = augment.augment_batch(key1, x, view1)
        x2 = augment.augment_batch(key2, x, view2)

        def loss_fn(params):
            out1, mutated = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                x1,
                train=True,
                mutable=["batch_stats"],
            )
            out2, mutated = model.apply(
                {"params": params, "batch_stats": mutated["batch_stats"]},
                x2,
                train=True,
                mutable=["batch_stats"],
            )
            loss, terms = objective.loss(out1, out2)
            return loss, (mutated["batch_stats"], terms)

        (loss, (batch_stats, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        opt_state = state.opt_state
        opt_state = opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": lr})
        updates, opt_state = tx.update(grads, opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            task_step=state.task_step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
        )
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": lr, **terms}
        return new_state, metrics

    return train_step


def jit_step(step_fn: StepFn, mesh: jax.sharding.Mesh) -> StepFn:
    """Jits ``step_fn`` over ``mesh``: state and images replicated, indices sharded, state donated."""
    rep, batch = replicated(mesh), batch_sharded(mesh)
    return jax.jit(
        step_fn, in_shardings=(rep, rep, batch, rep), out_shardings=(rep, rep), donate_argnums=0
    )
