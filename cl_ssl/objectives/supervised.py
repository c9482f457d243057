"""The supervised path: no self-supervised term; the strategy's cross-entropy trains the network.

Genifer (Thandiackal et al., "Generative feature-driven image replay for continual learning") and
its baselines are supervised class-incremental methods: a ResNet classifier trained with
cross-entropy on the labelled stream. In cl_ssl the classifier's output layer belongs to the
strategy (``cl_ssl.strategies.supervised``), which adds the cross-entropy (and Genifer its replay
loss); this objective contributes the backbone, the real-data view and a loss of zero. The
student sees one view: RandomCrop(32, padding 4, edge) and a horizontal flip, with no colour
augmentation (kevthan/feature-driven-image-replay ``genifer/dataloader/torchvision_loader.py``).
The second view of the step is drawn but never read.

The recipe is Genifer's first task: SGD with Nesterov momentum 0.9, learning rate 0.1, weight
decay 5e-4 (``genifer/config/examples/pretrain_classifier.json``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from cl_ssl.models import resnet
from cl_ssl.models.ssl import SSLModel
from cl_ssl.objectives.base import Objective, Recipe, make_backbone, make_views

SUPERVISED_VIEW = dict(
    crop_padding=4, jitter_prob=0.0, gray_prob=0.0, blur_prob=0.0, solarize_prob=0.0
)
"""RandomCrop(padding 4, edge) + horizontal flip, nothing else."""

RECIPE = Recipe(
    optimizer=dict(lr=0.1, weight_decay=5e-4, min_lr=0.0, exclude_bias_and_norm=False),
    views=(SUPERVISED_VIEW, SUPERVISED_VIEW),
    source="Genifer genifer/config/examples/pretrain_classifier.json (task 0)",
)


class Identity(nn.Module):
    """The supervised model's projector: the features unchanged (the strategy's classifier reads
    them)."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        del train
        return jnp.asarray(x, jnp.float32)


def default_config() -> ml_collections.ConfigDict:
    """``config.supervised``: which backbone stage's output the model also returns; unset:
    ResNet's layer3 ("stage4" in Genifer's naming, 256 x 8 x 8 for ResNet-18 on CIFAR), the
    activations Genifer distils and its discriminator judges, or the last stage of a backbone
    with fewer."""
    placeholder = ml_collections.config_dict.placeholder
    return ml_collections.ConfigDict(dict(feature_map_stage=placeholder(int)))


def make(config: ml_collections.ConfigDict) -> Objective:
    """The supervised objective: the backbone of ``config.model``, one view, a zero loss; the
    model's outputs also hold 'feature_map', the output of stage ``supervised.feature_map_stage``."""
    backbone = make_backbone(config)
    stage = resnet.feature_map_stage(
        backbone, config.supervised.feature_map_stage, "supervised.feature_map_stage"
    )
    model = SSLModel(backbone=backbone, projector=Identity(), feature_map_stage=stage)

    def loss(student, target, state, params, hyper):
        del student, target, state, params, hyper
        return jnp.zeros((), jnp.float32), {}, None

    return Objective(
        name="supervised",
        model=model,
        views=make_views(config),
        loss=loss,
        student_views=(0,),
    )
