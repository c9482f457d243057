"""VICReg: the Barlow Twins projector, invariance + variance + covariance.

Bardes et al., ICLR 2022, Sec. 3; reference code CaSSLe ``cassle/methods/vicreg.py`` and
``cassle/losses/vicreg.py``.
"""

from __future__ import annotations

import ml_collections

from cl_ssl import losses
from cl_ssl.objectives.base import MILD_JITTER, Objective, Recipe, make_model, make_views, mlp

RECIPE = Recipe(
    optimizer=dict(lr=0.3, weight_decay=1e-4, min_lr=0.0, exclude_bias_and_norm=True),
    views=(dict(min_scale=0.2, solarize_prob=0.1, **MILD_JITTER),) * 2,
    source="CaSSLe bash_files/continual/cifar/vicreg*.sh",
    online_lr=0.3,  # the scripts pass no --classifier_lr: cassle/methods/base.py l.202's default
)

IMAGENET_RECIPE = Recipe(
    optimizer=dict(lr=0.4, weight_decay=1e-4, min_lr=0.0, exclude_bias_and_norm=True),
    views=(dict(min_scale=0.2, solarize_prob=0.1, blur_prob=0.5, **MILD_JITTER),) * 2,
    source="CaSSLe bash_files/continual/imagenet-100/class/vicreg*.sh",
    linear_lr=0.3,
)


def default_config() -> ml_collections.ConfigDict:
    """``config.vicreg``: term weights and head sizes of CaSSLe's CIFAR runs."""
    return ml_collections.ConfigDict(
        dict(
            sim_weight=25.0,
            var_weight=25.0,
            cov_weight=1.0,
            proj_hidden_dim=2048,
            proj_output_dim=2048,
        )
    )


def make(config: ml_collections.ConfigDict) -> Objective:
    """VICReg from ``config.vicreg``."""
    c = config.vicreg
    model = make_model(
        config, mlp(config, (c.proj_hidden_dim,) * 2, c.proj_output_dim, batch_norm=True)
    )

    def loss(student, target, state, params, hyper):
        del target, state, params, hyper
        out1, out2 = student
        terms = losses.vicreg_terms(out1["projection"], out2["projection"])
        value = (
            c.sim_weight * terms["invariance"]
            + c.var_weight * terms["variance"]
            + c.cov_weight * terms["covariance"]
        )
        return value, terms, None

    return Objective(name="vicreg", model=model, views=make_views(config), loss=loss)
