"""DINO with two views: EMA teacher, centred and sharpened teacher distribution over prototypes.

Beyond CaSSLe's seeds. Head: a 3-layer MLP (2048, 2048 -> 256 bottleneck, ReLU in place of GELU)
then 4,096 unit-norm prototypes on the normalised bottleneck (``norm_last_layer``). The teacher
temperature warms up linearly per epoch from ``warmup_teacher_temperature`` to
``teacher_temperature`` over ``warmup_teacher_epochs`` epochs of each task; the centre is
c <- m c + (1 - m) mean(teacher scores of both views). Hyper-parameters follow the DINO paper's
defaults; the recipe (lr 0.3, wd 1e-6) is a project choice.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np

from cl_ssl import losses
from cl_ssl.models.ssl import Prototypes
from cl_ssl.objectives.base import (
    BYOL_VIEWS,
    Objective,
    Recipe,
    cosine_momentum,
    ema,
    epoch_of_step,
    make_model,
    make_views,
    mlp,
    momentum_target,
    target_params,
)

RECIPE = Recipe(
    optimizer=dict(lr=0.3, weight_decay=1e-6, min_lr=0.0, exclude_bias_and_norm=True),
    views=BYOL_VIEWS,
    source="project choice (the BYOL CIFAR views; CaSSLe ships no DINO script)",
)


def default_config() -> ml_collections.ConfigDict:
    """``config.dino``: the DINO paper's temperatures, centring and EMA schedule."""
    return ml_collections.ConfigDict(
        dict(
            proj_hidden_dim=2048,
            proj_output_dim=256,
            num_prototypes=4096,
            student_temperature=0.1,
            warmup_teacher_temperature=0.04,
            teacher_temperature=0.07,
            warmup_teacher_epochs=50,
            center_momentum=0.9,
            base_momentum=0.996,
            final_momentum=1.0,
        )
    )


def make(config: ml_collections.ConfigDict) -> Objective:
    """DINO from ``config.dino``."""
    c = config.dino
    model = make_model(
        config,
        mlp(config, (c.proj_hidden_dim,) * 2, c.proj_output_dim, batch_norm=False),
        prototypes=Prototypes(c.num_prototypes),
    )

    def init_state(params, key):
        del key
        return {
            "momentum": target_params(params),
            "center": jnp.zeros((c.num_prototypes,), jnp.float32),
        }

    def loss(student, target, state, params, hyper):
        del params
        (s1, s2), (t1, t2) = student, target
        kwargs = dict(
            student_temperature=c.student_temperature,
            teacher_temperature=hyper["teacher_temperature"],
        )
        center = state["center"]
        value = 0.5 * (
            losses.dino_loss(s1["scores"], t2["scores"], center, **kwargs)
            + losses.dino_loss(s2["scores"], t1["scores"], center, **kwargs)
        )
        batch_center = 0.5 * (t1["scores"].mean(axis=0) + t2["scores"].mean(axis=0))
        return value, {"dino": value}, batch_center

    def update_state(state, params, batch_center, hyper):
        m = c.center_momentum
        return {
            "momentum": ema(state["momentum"], target_params(params), hyper["momentum"]),
            "center": m * state["center"] + (1.0 - m) * batch_center,
        }

    def schedules(num_steps, steps_per_epoch):
        epoch = epoch_of_step(num_steps, steps_per_epoch)
        warm = max(c.warmup_teacher_epochs, 1)
        ramp = np.minimum(epoch / warm, 1.0)
        temperature = c.warmup_teacher_temperature + ramp * (
            c.teacher_temperature - c.warmup_teacher_temperature
        )
        return {
            "momentum": cosine_momentum(c.base_momentum, c.final_momentum, num_steps),
            "teacher_temperature": temperature.astype(np.float32),
        }

    return Objective(
        name="dino",
        model=model,
        views=make_views(config),
        loss=loss,
        init_state=init_state,
        target=momentum_target(model),
        update_state=update_state,
        schedules=schedules,
    )
