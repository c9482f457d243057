"""SSL objectives selectable by name (``--config.objective=NAME``).

An objective bundles the student network (backbone + heads), the two augmentation views, the
loss and its extra state (momentum network, queues, centre); ``supervised`` has no
self-supervised term and serves the supervised strategies (Genifer and its baselines), whose
cross-entropy trains the network. ``get_objective(config)`` builds the
one the config names; ``resolve_config(config)`` first fills the config fields left unset (the
learning rate, weight decay and augmentations) from that objective's ``Recipe``.
"""

from __future__ import annotations

import dataclasses
import types

import ml_collections

from cl_ssl.data.augment import ViewConfig
from cl_ssl.objectives import (
    barlow_twins,
    byol,
    dino,
    isd,
    mocov2plus,
    simclr,
    simsiam,
    supervised,
    swav,
    vicreg,
)
from cl_ssl.objectives.base import Objective, Recipe

__all__ = [
    "OBJECTIVES",
    "SSL_OBJECTIVES",
    "SUPERVISED",
    "Objective",
    "Recipe",
    "default_configs",
    "get_objective",
    "resolve_config",
]

_MODULES: dict[str, types.ModuleType] = {
    "simclr": simclr,
    "mocov2plus": mocov2plus,
    "byol": byol,
    "barlow_twins": barlow_twins,
    "vicreg": vicreg,
    "swav": swav,
    "isd": isd,
    "simsiam": simsiam,
    "dino": dino,
    "supervised": supervised,
}
OBJECTIVES = tuple(_MODULES)
"""The registered objective names."""
SUPERVISED = "supervised"
"""The objective of the supervised path (no self-supervised term), for the supervised strategies."""
SSL_OBJECTIVES = tuple(name for name in OBJECTIVES if name != SUPERVISED)
"""The self-supervised objectives."""


def default_configs() -> dict[str, ml_collections.ConfigDict]:
    """name -> the objective's own config section (``config.<name>``), reference defaults."""
    return {name: module.default_config() for name, module in _MODULES.items()}


def _check_name(config: ml_collections.ConfigDict) -> types.ModuleType:
    if config.objective not in _MODULES:
        raise ValueError(
            f"unknown objective {config.objective!r}; set --config.objective to one of "
            f"{list(OBJECTIVES)}"
        )
    return _MODULES[config.objective]


# config.recipe -> the module attributes that may hold it, the first one present wins.
_RECIPES = {
    "cifar": ("RECIPE",),
    "imagenet": ("IMAGENET_RECIPE",),
    "kaizen": ("KAIZEN_RECIPE", "RECIPE"),
    "ccl": ("CCL_RECIPE",),
}


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``config`` whose unset (None) recipe fields hold the objective's values.

    Filled: ``optimizer.lr``, ``optimizer.weight_decay``, ``optimizer.min_lr``,
    ``eval.online_lr``, ``eval.linear.learning_rate`` (where the recipe has one),
    ``optimizer.kwargs.exclude_bias_and_norm`` (when the optimizer takes it) and every unset field
    of ``augment.view1`` / ``augment.view2`` (from the recipe, else ``ViewConfig``'s default). A
    value given in the config or on the command line always wins. ``config.recipe`` picks the
    recipe: ``'cifar'`` (CaSSLe's CIFAR-100 scripts), ``'imagenet'`` (its ImageNet-100 scripts,
    also used for DomainNet; only SimCLR, BYOL, Barlow Twins, SwAV and VICReg have one here:
    CaSSLe's MoCoV2+ ImageNet-100 script, plain SGD at lr 0.4, is not transcribed) or
    ``'kaizen'`` (Kaizen's CIFAR-100 scripts; they differ from CaSSLe's for SimCLR only, the
    other objectives take their CIFAR recipe) or ``'ccl'`` (CCL's ImageNet command, MoCoV2+ only).
    """
    if config.recipe not in _RECIPES:
        raise ValueError(f"recipe={config.recipe!r}; choose one of {sorted(_RECIPES)}")
    module = _check_name(config)
    recipe: Recipe | None = next(
        (getattr(module, a) for a in _RECIPES[config.recipe] if hasattr(module, a)), None
    )
    if recipe is None:
        raise ValueError(
            f"objective {config.objective!r} has no {config.recipe!r} recipe in this library; "
            "use --config.recipe=cifar and set optimizer.lr, "
            "optimizer.weight_decay and the augment fields for this data set"
        )
    resolved = ml_collections.ConfigDict(config.to_dict())
    o = resolved.optimizer
    for key, value in recipe.optimizer.items():
        fields = o.kwargs if key == "exclude_bias_and_norm" else o
        if key in fields and fields[key] is None:
            fields[key] = value
    if resolved.eval.online_lr is None:
        resolved.eval.online_lr = recipe.online_lr
    if resolved.eval.linear.learning_rate is None:
        if recipe.linear_lr is None:
            raise ValueError(
                f"the {config.recipe!r} recipe of {config.objective!r} sets no linear-probe "
                "learning rate; set --config.eval.linear.learning_rate"
            )
        resolved.eval.linear.learning_rate = recipe.linear_lr
    defaults = {f.name: f.default for f in dataclasses.fields(ViewConfig)}
    for name, preset in zip(("view1", "view2"), recipe.views, strict=True):
        view = resolved.augment[name]
        for key in defaults:
            if view.get(key) is None:
                view[key] = preset.get(key, defaults[key])
    return resolved


def get_objective(config: ml_collections.ConfigDict) -> Objective:
    """Builds the objective named by ``config.objective`` from a resolved config.

    ValueError for an unknown name or settings the objective cannot use (e.g. a queue length that
    is not a multiple of the batch).
    """
    return _check_name(config).make(config)
