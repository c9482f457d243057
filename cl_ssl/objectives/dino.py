"""DINO with two views: EMA teacher, centred and sharpened teacher distribution over prototypes.

Caron et al., ICCV 2021, Sec. 3.1, as CaSSLe's code runs it (``cassle/methods/dino.py``,
``cassle/losses/dino.py``), whose defaults are this module's: a 3-layer head (Linear-BN-GELU to
2048, twice, then Linear to the 256-d bottleneck; kernels N(0, 0.02^2), zero biases, l.47-78)
then 4,096 unit-norm prototypes on the normalised bottleneck (``norm_last_layer``), frozen during
the first ``freeze_prototypes_epochs`` epoch of each task (``--freeze_last_layer 1``, l.168,
l.280-282: their optimizer group skips those steps, as SwAV's). The teacher temperature follows
``np.linspace(warmup_teacher_temperature, teacher_temperature, warmup_teacher_epochs)`` over the
first epochs of each task, then stays at ``teacher_temperature`` (``cassle/losses/dino.py``
l.43-48); the centre is c <- m c + (1 - m) mean(teacher scores of both views), m = 0.9; student
temperature 0.1; the teacher's EMA goes from 0.996 to 1 (the DINO paper's). CaSSLe ships no DINO
script: the recipe (lr 0.3, wd 1e-6, BYOL's CIFAR views) is a project choice.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np

from cl_ssl import losses, optim
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
    """``config.dino``: CaSSLe's DINO defaults (``cassle/methods/dino.py`` l.167-180)."""
    return ml_collections.ConfigDict(
        dict(
            proj_hidden_dim=2048,
            proj_output_dim=256,
            num_prototypes=4096,
            student_temperature=0.1,
            warmup_teacher_temperature=0.04,
            teacher_temperature=0.07,
            warmup_teacher_epochs=50,
            freeze_prototypes_epochs=1,
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
        mlp(
            config,
            (c.proj_hidden_dim,) * 2,
            c.proj_output_dim,
            batch_norm=True,
            gelu=True,
            init_std=0.02,
        ),
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
        warm = c.warmup_teacher_epochs
        # np.linspace over the warm-up epochs: its last value at epoch warm - 1.
        ramp = np.minimum(epoch / (warm - 1), 1.0) if warm > 1 else (epoch >= warm) * 1.0
        temperature = c.warmup_teacher_temperature + ramp * (
            c.teacher_temperature - c.warmup_teacher_temperature
        )
        return {
            "momentum": cosine_momentum(c.base_momentum, c.final_momentum, num_steps),
            "teacher_temperature": temperature.astype(np.float32),
            "prototype_grad": (epoch >= c.freeze_prototypes_epochs).astype("float32"),
        }

    def param_labels(params):
        return optim.label_top_level(params, {"prototypes": "dino_prototypes"})

    return Objective(
        name="dino",
        model=model,
        views=make_views(config),
        loss=loss,
        init_state=init_state,
        target=momentum_target(model),
        update_state=update_state,
        schedules=schedules,
        param_labels=param_labels,
        param_groups={"dino_prototypes": optim.ParamGroup(active="prototype_grad")},
    )
