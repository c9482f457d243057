"""SimCLR: projector Linear-ReLU-Linear without BN, NT-Xent over both views.

Chen et al., ICML 2020, Sec. 2.1; reference code CaSSLe ``cassle/methods/simclr.py`` and
``cassle/losses/simclr.py``.
"""

from __future__ import annotations

import ml_collections

from cl_ssl import losses
from cl_ssl.objectives.base import (
    BYOL_VIEWS,
    SIMCLR_IMAGENET_VIEWS,
    SIMCLR_VIEWS,
    Objective,
    Recipe,
    make_model,
    make_views,
    mlp,
)

RECIPE = Recipe(
    optimizer=dict(lr=0.4, weight_decay=1e-5, min_lr=0.0, exclude_bias_and_norm=True),
    views=SIMCLR_VIEWS,
    source="CaSSLe bash_files/continual/cifar/simclr*.sh",
)

KAIZEN_RECIPE = Recipe(
    optimizer=dict(lr=1.0, weight_decay=1e-5, min_lr=0.0, exclude_bias_and_norm=True),
    views=BYOL_VIEWS,
    source="Kaizen bash_files/simclr_cifar_distill_classifier_l1000_soft_label_replay_0.01_b32.sh",
)

IMAGENET_RECIPE = Recipe(
    optimizer=dict(lr=0.4, weight_decay=1e-4, min_lr=0.0, exclude_bias_and_norm=True),
    views=SIMCLR_IMAGENET_VIEWS,
    source="CaSSLe bash_files/continual/imagenet-100/class/simclr*.sh",
    linear_lr=1.0,
)


def default_config() -> ml_collections.ConfigDict:
    """``config.simclr``: CaSSLe's CIFAR values."""
    return ml_collections.ConfigDict(
        dict(temperature=0.2, proj_hidden_dim=2048, proj_output_dim=256)
    )


def make(config: ml_collections.ConfigDict) -> Objective:
    """SimCLR from ``config.simclr`` (temperature, proj_hidden_dim, proj_output_dim)."""
    c = config.simclr
    model = make_model(
        config, mlp(config, (c.proj_hidden_dim,), c.proj_output_dim, batch_norm=False)
    )

    def loss(student, target, state, params, hyper):
        del target, state, params, hyper
        out1, out2 = student
        value = losses.nt_xent(out1["projection"], out2["projection"], temperature=c.temperature)
        return value, {"nt_xent": value}, None

    return Objective(name="simclr", model=model, views=make_views(config), loss=loss)
