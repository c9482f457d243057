"""PFR, projected functional regularisation (Gomez-Villa et al., CLVision 2022, Sec. 3).

CaSSLe's mechanics on the backbone features instead of the projections: from the second task on
the previous task's backbone is a frozen teacher, and a temporal projector h,
Linear(F -> F/2)-BN-ReLU-Linear(F/2 -> F) (512 -> 256 -> 512 on a ResNet-18), maps the student's
features of each view onto the teacher's:

    L = L_SSL + lambda * L_PFR,   L_PFR = -(1/2) sum_v cos(h(f^v), sg(f-bar^v)),   lambda = 1

The teacher's BatchNorm mode, the per-task restarts and h (random at the second task, carried
from the third) follow the CaSSLe framework PFR is built in.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from cl_ssl import losses
from cl_ssl.models import heads
from cl_ssl.models.ssl import SSLModel
from cl_ssl.objectives import Objective
from cl_ssl.strategies.base import (
    Strategy,
    StrategySpec,
    frozen_teacher_strategy,
    head_distillation,
    output_widths,
    teacher_distillation,
)


def default_config() -> ml_collections.ConfigDict:
    """``config.pfr``: weight 1; the hidden width unset (-1) is half the feature width."""
    return ml_collections.ConfigDict(dict(weight=1.0, pred_hidden_dim=-1, teacher_train_bn=True))


def _backbone(module: SSLModel, images, train):
    return module.backbone(images, train=train)


def _features(out):
    return out["features"]


def _cosine(predictions, targets, params):
    del params
    return losses.cosine_distillation(predictions, targets)


def _backbone_only(tree):
    return {"backbone": tree["backbone"]}


def make(config: ml_collections.ConfigDict, objective: Objective) -> Strategy:
    """PFR from ``config.pfr``, for any objective (it reads the backbone features only)."""
    c = config.pfr
    width = output_widths(objective)["features"]
    hidden = c.pred_hidden_dim if c.pred_hidden_dim > 0 else width // 2
    projector = heads.MLPHead(hidden_dims=(hidden,), out_dim=width, batch_norm=True)

    def init_params(key):
        return {"projector": projector.init(key, jnp.zeros((2, width)), train=False)["params"]}

    return frozen_teacher_strategy(
        name="pfr",
        keep=_backbone_only,
        init_heads=init_params,
        distill=teacher_distillation(
            model=objective.model,
            method=_backbone,
            train_bn=c.teacher_train_bn,
            distill=head_distillation(
                read=_features, head=projector, head_key="projector", loss=_cosine
            ),
            weight=c.weight,
        ),
    )


STRATEGY = StrategySpec(make=make, section="pfr", default_config=default_config)
