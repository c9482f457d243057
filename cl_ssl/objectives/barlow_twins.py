"""Barlow Twins: 3-layer 2048-wide projector, cross-correlation loss.

Zbontar et al., ICML 2021; reference code CaSSLe ``cassle/methods/barlow_twins.py`` and
``cassle/losses/barlow.py``.
"""

from __future__ import annotations

import ml_collections

from cl_ssl import losses
from cl_ssl.objectives.base import (
    BYOL_IMAGENET_VIEWS,
    BYOL_VIEWS,
    Objective,
    Recipe,
    make_model,
    make_views,
    mlp,
)

RECIPE = Recipe(
    optimizer=dict(lr=0.3, weight_decay=1e-4, min_lr=0.0, exclude_bias_and_norm=True),
    views=BYOL_VIEWS,
    source="CaSSLe bash_files/continual/cifar/barlow*.sh",
)

IMAGENET_RECIPE = Recipe(
    optimizer=dict(lr=0.4, weight_decay=1e-4, min_lr=0.0, exclude_bias_and_norm=True),
    views=BYOL_IMAGENET_VIEWS,
    source="CaSSLe bash_files/continual/imagenet-100/class/barlow*.sh",
    linear_lr=0.1,
)


def default_config() -> ml_collections.ConfigDict:
    """``config.barlow_twins``: loss weights and head sizes of CaSSLe's CIFAR runs."""
    return ml_collections.ConfigDict(
        dict(lambd=5e-3, scale=0.1, proj_hidden_dim=2048, proj_output_dim=2048)
    )


def make(config: ml_collections.ConfigDict) -> Objective:
    """Barlow Twins from ``config.barlow_twins``.

    Projector Linear-BN-ReLU-Linear-BN-ReLU-Linear; the loss standardises each view itself.
    """
    c = config.barlow_twins
    model = make_model(
        config, mlp(config, (c.proj_hidden_dim,) * 2, c.proj_output_dim, batch_norm=True)
    )

    def loss(student, target, state, params, hyper):
        del target, state, params, hyper
        out1, out2 = student
        value = losses.barlow_twins_loss(
            out1["projection"], out2["projection"], lambd=c.lambd, scale=c.scale
        )
        return value, {"barlow_twins": value}, None

    return Objective(name="barlow_twins", model=model, views=make_views(config), loss=loss)
