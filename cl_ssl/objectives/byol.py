"""BYOL: predictor on the online side, momentum target, summed directions.

Grill et al., NeurIPS 2020, Sec. 3.1; reference code CaSSLe ``cassle/methods/byol.py`` and
``cassle/losses/byol.py``.
"""

from __future__ import annotations

import ml_collections

from cl_ssl import losses
from cl_ssl.objectives.base import (
    BYOL_IMAGENET_VIEWS,
    BYOL_VIEWS,
    Objective,
    Recipe,
    ema,
    make_model,
    make_views,
    mlp,
    momentum_schedules,
    momentum_target,
    target_params,
)

RECIPE = Recipe(
    optimizer=dict(lr=1.0, weight_decay=1e-5, min_lr=0.0, exclude_bias_and_norm=True),
    views=BYOL_VIEWS,
    source="CaSSLe bash_files/continual/cifar/byol*.sh",
)

IMAGENET_RECIPE = Recipe(
    optimizer=dict(lr=0.6, weight_decay=1e-5, min_lr=0.0, exclude_bias_and_norm=True),
    views=BYOL_IMAGENET_VIEWS,
    source="CaSSLe bash_files/continual/imagenet-100/class/byol*.sh",
    linear_lr=3.0,
)


def default_config() -> ml_collections.ConfigDict:
    """``config.byol``: head sizes and the EMA schedule of CaSSLe's CIFAR runs."""
    return ml_collections.ConfigDict(
        dict(
            proj_hidden_dim=4096,
            proj_output_dim=256,
            pred_hidden_dim=4096,
            base_momentum=0.99,
            final_momentum=1.0,
        )
    )


def make(config: ml_collections.ConfigDict) -> Objective:
    """BYOL from ``config.byol``."""
    c = config.byol
    model = make_model(
        config,
        mlp(config, (c.proj_hidden_dim,), c.proj_output_dim, batch_norm=True),
        predictor=mlp(config, (c.pred_hidden_dim,), c.proj_output_dim, batch_norm=True),
    )

    def init_state(params, key):
        del key
        return {"momentum": target_params(params)}

    def loss(student, target, state, params, hyper):
        del state, params, hyper
        (s1, s2), (t1, t2) = student, target
        # The two directions are summed, not averaged (as in CaSSLe's cassle/methods/byol.py).
        value = losses.byol_loss(s1["prediction"], t2["projection"]) + losses.byol_loss(
            s2["prediction"], t1["projection"]
        )
        return value, {"byol": value}, None

    def update_state(state, params, aux, hyper):
        del aux
        return {"momentum": ema(state["momentum"], target_params(params), hyper["momentum"])}

    return Objective(
        name="byol",
        model=model,
        views=make_views(config),
        loss=loss,
        init_state=init_state,
        target=momentum_target(model),
        update_state=update_state,
        schedules=momentum_schedules(c.base_momentum, c.final_momentum),
    )
