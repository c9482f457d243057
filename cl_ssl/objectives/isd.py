"""ISD, iterative similarity distillation (Tejankar et al., ICCV 2021), in its ISD-plus form.

Reference code: ``UMBCvision/ISD`` ``train_isd_plus.py`` and ``run_isd_plus.sh``.

The student (backbone, projector, predictor) sees the strong first view; an EMA teacher
(backbone, projector) sees the weak second view. Both embeddings are L2-normalised and compared
with a FIFO bank of past teacher embeddings; the student matches the teacher's similarity
distribution (``losses.similarity_kl``). The batch's teacher embeddings enter the bank after the
loss, so the positive is never an anchor.

ISD has no continual or CIFAR reference setup, so these are project choices: the ResNet-18
``run_isd_plus.sh`` variant (tau_t 0.02, tau_s 0.2, m 0.99, heads d -> 2d -> d/4), a bank of
4,096 anchors (ISD's 128,000 exceeds a CIFAR-100 task's 10,000 images; 4,096 is 16 batches of
256), and the Barlow Twins / VICReg LARS values (lr 0.3, wd 1e-4) in place of ISD's plain SGD.
Shuffle-BN is not needed: under ``jit`` the teacher's BatchNorm already sees the global batch.
"""

from __future__ import annotations

import ml_collections

from cl_ssl import losses, memory
from cl_ssl.losses import l2_normalize
from cl_ssl.objectives.base import (
    Objective,
    Recipe,
    ema,
    make_model,
    make_views,
    mlp,
    momentum_target,
    target_params,
)

RECIPE = Recipe(
    optimizer=dict(lr=0.3, weight_decay=1e-4, min_lr=0.0, exclude_bias_and_norm=True),
    views=(
        # Student: MoCo-v2 strong views (blur off on CIFAR, as in CaSSLe's CIFAR scripts).
        dict(min_scale=0.2, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1),
        # Teacher: random resized crop and flip only.
        dict(min_scale=0.2, jitter_prob=0.0, gray_prob=0.0, blur_prob=0.0, solarize_prob=0.0),
    ),
    source="UMBCvision/ISD train_isd_plus.py views; optimizer a project choice",
)


def default_config() -> ml_collections.ConfigDict:
    """``config.isd``: the ResNet-18 ISD-plus values and a CIFAR-sized bank."""
    return ml_collections.ConfigDict(
        dict(
            student_temperature=0.2,
            teacher_temperature=0.02,
            momentum=0.99,
            bank_size=4096,
            proj_hidden_dim=1024,
            proj_output_dim=128,
            pred_hidden_dim=1024,
        )
    )


def make(config: ml_collections.ConfigDict) -> Objective:
    """ISD from ``config.isd``; the bank size must be a multiple of the batch."""
    c = config.isd
    memory.check_fits("isd.bank_size", c.bank_size, config.batch_size)
    model = make_model(
        config,
        mlp(config, (c.proj_hidden_dim,), c.proj_output_dim, batch_norm=True),
        predictor=mlp(config, (c.pred_hidden_dim,), c.proj_output_dim, batch_norm=True),
    )

    def init_state(params, key):
        return {
            "momentum": target_params(params),
            "bank": memory.random_unit_queue(key, c.bank_size, c.proj_output_dim),
        }

    def loss(student, target, state, params, hyper):
        del params, hyper
        (s,), (_, t) = student, target
        s, t = l2_normalize(s["prediction"]), l2_normalize(t["projection"])
        anchors = state["bank"].items
        value = losses.similarity_kl(
            s @ anchors.T,
            t @ anchors.T,
            student_temperature=c.student_temperature,
            teacher_temperature=c.teacher_temperature,
        )
        return value, {"similarity_kl": value}, t

    def update_state(state, params, teacher_embeddings, hyper):
        del hyper
        return {
            "momentum": ema(state["momentum"], target_params(params), c.momentum),
            "bank": memory.push(state["bank"], teacher_embeddings),
        }

    return Objective(
        name="isd",
        model=model,
        views=make_views(config),
        loss=loss,
        student_views=(0,),
        init_state=init_state,
        # Only the second (weak) view reaches the teacher.
        target=momentum_target(model, views=(1,)),
        update_state=update_state,
    )
