"""SimSiam: predictor, stop-gradient on the other view's projection, no momentum network.

Chen and He, CVPR 2021. Beyond CaSSLe's seeds: LUMP (Madaan et al., ICLR 2022; code
``divyam3897/UCL``) needs it. Heads and recipe are solo-learn's CIFAR SimSiam
(``scripts/pretrain/cifar/simsiam.yaml``: projector 2048-2048-2048 with BN after every layer,
predictor 2048 -> 512 -> 2048; lr 0.5, wd 1e-5; the ``symmetric_weak`` views: jitter 0.4, 0.4,
0.4, 0.1 at 0.8, grayscale 0.2, blur 0.5, no solarisation, on both views). The predictor trains
at the base learning rate throughout, without warm-up or decay (``static_lr``, solo-learn
``solo/methods/simsiam.py`` l.97, CaSSLe ``cassle/methods/simsiam.py`` l.73). The optimizer is the
pipeline's (CaSSLe's LARS and per-epoch warm-up), where solo-learn's yaml takes plain SGD with a
per-step warm-up; the images are normalised with CaSSLe's CIFAR constants, not solo-learn's
CIFAR-100 ones; the projector's last BatchNorm keeps its scale and shift (the original has none).
"""

from __future__ import annotations

import ml_collections

from cl_ssl import losses, optim
from cl_ssl.objectives.base import Objective, Recipe, make_model, make_views, mlp

RECIPE = Recipe(
    optimizer=dict(lr=0.5, weight_decay=1e-5, min_lr=0.0, exclude_bias_and_norm=True),
    views=(dict(min_scale=0.08, saturation=0.4, blur_prob=0.5, solarize_prob=0.0),) * 2,
    source=(
        "solo-learn scripts/pretrain/cifar/simsiam.yaml with augmentations/symmetric_weak.yaml"
    ),
)


def default_config() -> ml_collections.ConfigDict:
    """``config.simsiam``: head sizes."""
    return ml_collections.ConfigDict(
        dict(proj_hidden_dim=2048, proj_output_dim=2048, pred_hidden_dim=512)
    )


def make(config: ml_collections.ConfigDict) -> Objective:
    """SimSiam from ``config.simsiam``."""
    c = config.simsiam
    model = make_model(
        config,
        mlp(
            config,
            (c.proj_hidden_dim,) * 2,
            c.proj_output_dim,
            batch_norm=True,
            last_batch_norm=True,
        ),
        predictor=mlp(config, (c.pred_hidden_dim,), c.proj_output_dim, batch_norm=True),
    )

    def loss(student, target, state, params, hyper):
        del target, state, params, hyper
        out1, out2 = student
        # The two directions are averaged; simsiam_loss stops the gradient of the projection.
        value = 0.5 * (
            losses.simsiam_loss(out1["prediction"], out2["projection"])
            + losses.simsiam_loss(out2["prediction"], out1["projection"])
        )
        return value, {"simsiam": value}, None

    def param_labels(params):
        return optim.label_top_level(params, {"predictor": "simsiam_predictor"})

    return Objective(
        name="simsiam",
        model=model,
        views=make_views(config),
        loss=loss,
        param_labels=param_labels,
        param_groups={"simsiam_predictor": optim.ParamGroup(static=True)},
    )
