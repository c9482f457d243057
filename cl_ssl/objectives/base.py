"""What every SSL objective provides to the training step."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from cl_ssl.data.augment import ViewConfig
from cl_ssl.models import heads, resnet
from cl_ssl.models.ssl import SSLModel

Outputs = dict[str, jax.Array]
LossFn = Callable[[Outputs, Outputs], tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class Objective:
    """An SSL method as the train step sees it.

    Attributes:
      name: the registry name.
      model: the student network; ``model.apply(variables, images, train)`` returns a dict with at
        least 'features' [B, F] and 'projection' [B, D].
      views: the augmentation of the first and the second view.
      loss: (outputs of view 1, outputs of view 2) -> (scalar loss, dict of scalar metrics).
    """

    name: str
    model: nn.Module
    views: tuple[ViewConfig, ViewConfig]
    loss: LossFn


def make_backbone(config: ml_collections.ConfigDict) -> nn.Module:
    """The backbone that ``config.model`` describes."""
    m = config.model
    return resnet.make_backbone(
        m.backbone,
        stem=m.stem,
        width_multiplier=m.width_multiplier,
        cifar_stem_padding=m.cifar_stem_padding,
        dtype=jnp.dtype(m.dtype),
    )


def make_views(config: ml_collections.ConfigDict) -> tuple[ViewConfig, ViewConfig]:
    """The two views of ``config.augment`` (per-view settings in ``view1`` and ``view2``)."""
    a = config.augment
    return ViewConfig(**a.view1.to_dict()), ViewConfig(**a.view2.to_dict())


def make_model(
    config: ml_collections.ConfigDict, *, hidden_dims, out_dim: int, batch_norm: bool
) -> SSLModel:
    """Backbone from ``config.model`` with an MLP projector of the given sizes."""
    projector = heads.MLPHead(
        hidden_dims=tuple(hidden_dims),
        out_dim=out_dim,
        batch_norm=batch_norm,
        dtype=jnp.dtype(config.model.dtype),
    )
    return SSLModel(backbone=make_backbone(config), projector=projector)
