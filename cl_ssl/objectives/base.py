"""What every SSL objective provides to the training step, and the pieces objectives share."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from cl_ssl.data.augment import ViewConfig
from cl_ssl.models import heads, resnet
from cl_ssl.models.ssl import Prototypes, SSLModel
from cl_ssl.optim import ParamGroup

PyTree = Any
Outputs = dict[str, jax.Array]
Hyper = dict[str, jax.Array]
"""Per-step scalars the training loop computes ahead of a stage: 'lr' and each objective's
``schedules`` (EMA momentum, temperature warm-up, epoch-dependent switches)."""
Metrics = dict[str, jax.Array]
LossFn = Callable[
    [tuple[Outputs, ...], PyTree, PyTree, PyTree, Hyper], tuple[jax.Array, Metrics, PyTree]
]


def _no_state(params: PyTree, key: jax.Array) -> PyTree:
    del params, key
    return {}


def _keep_state(state: PyTree, *args) -> PyTree:
    del args
    return state


def _no_schedules(num_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
    del num_steps, steps_per_epoch
    return {}


@dataclasses.dataclass(frozen=True)
class Objective:
    """An SSL method as the train step sees it.

    One step runs: the student on the views ``student_views`` (and, when ``target`` is set, the
    target network on both views, without gradient); ``loss``; the optimizer update;
    ``update_state`` with the updated parameters. Every array in the objective's state has a fixed
    shape for the whole run.

    Attributes:
      name: the registry name.
      model: the student network; ``model.apply(variables, images, train)`` returns a dict with at
        least 'features' [B, F] and 'projection' [B, D] (see ``SSLModel``).
      views: the augmentation of the first and the second view.
      loss: (student outputs, one dict per entry of ``student_views``; target outputs (or None);
        objective state; student params (differentiated); hyper) -> (scalar loss, dict of scalar
        metrics, aux pytree for ``update_state``).
      student_views: which views (0, 1) the student sees; ISD's student sees only the first.
      init_state: (initial student params, key) -> the objective's state ({} when it has none).
      target: (objective state, view 1, view 2) -> the target network's outputs of both views,
        already through ``stop_gradient``; None when the objective has no target network.
      update_state: (state, updated student params, aux, hyper) -> state after the step.
      start_task: (state) -> state at the start of every task after the first.
      schedules: (steps in the stage, steps per epoch) -> name -> float32 [steps] values the step
        reads from ``hyper``; they restart with every task, as in CaSSLe, where each task is a
        new run of ``main_pretrain.py`` (launched by ``main_continual.py``).
      param_labels: optional (student params) -> a pytree of the same structure naming each leaf's
        optimizer group (``cl_ssl.optim.label_top_level``); None: every leaf in the default group.
      param_groups: the groups ``param_labels`` names besides the default one (SwAV's prototypes,
        frozen during the first epochs of each task).
    """

    name: str
    model: nn.Module
    views: tuple[ViewConfig, ViewConfig]
    loss: LossFn
    student_views: tuple[int, ...] = (0, 1)
    init_state: Callable[[PyTree, jax.Array], PyTree] = _no_state
    target: Callable[[PyTree, jax.Array, jax.Array], tuple[Outputs, Outputs]] | None = None
    update_state: Callable[[PyTree, PyTree, PyTree, Hyper], PyTree] = _keep_state
    start_task: Callable[[PyTree], PyTree] = _keep_state
    schedules: Callable[[int, int], dict[str, np.ndarray]] = _no_schedules
    param_labels: Callable[[PyTree], PyTree] | None = None
    param_groups: dict[str, ParamGroup] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """An objective's training recipe: the config values left unset (None) take these.

    Attributes:
      optimizer: values for ``config.optimizer`` fields (lr, weight_decay, min_lr) and for
        ``config.optimizer.kwargs.exclude_bias_and_norm`` where the optimizer has that argument.
      views: augmentation values (``ViewConfig`` fields) of the first and the second view.
      source: where the values come from.
      linear_lr: the offline linear probe's learning rate (``config.eval.linear.learning_rate``),
        where the recipe's scripts set one per method (CaSSLe ``bash_files/linear/**``).
      online_lr: the online probe's learning rate (``config.eval.online_lr``): CaSSLe's scripts
        pass ``--classifier_lr 0.1``, except VICReg's, which leave its default 0.3
        (``cassle/methods/base.py`` l.202).
    """

    optimizer: dict[str, Any]
    views: tuple[dict[str, Any], dict[str, Any]]
    source: str
    linear_lr: float | None = None
    online_lr: float = 0.1


STRONG_JITTER = dict(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2)
MILD_JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
SIMCLR_VIEWS = (dict(min_scale=0.08, **STRONG_JITTER),) * 2
"""SimCLR's and SwAV's CIFAR views: strong jitter, no blur or solarisation.

CaSSLe ``bash_files/continual/cifar/{simclr,swav}*.sh``.
"""
BYOL_VIEWS = (
    dict(min_scale=0.08, solarize_prob=0.0, **MILD_JITTER),
    dict(min_scale=0.08, solarize_prob=0.2, **MILD_JITTER),
)
"""BYOL's and Barlow Twins' CIFAR views: mild jitter, solarisation on the second.

CaSSLe ``bash_files/continual/cifar/{byol,barlow}*.sh``.
"""
SIMCLR_IMAGENET_VIEWS = (dict(min_scale=0.08, blur_prob=0.5, **STRONG_JITTER),) * 2
"""SimCLR's and SwAV's ImageNet-100 views: the CIFAR views with blur at 0.5.

CaSSLe ``bash_files/continual/imagenet-100/class/{simclr,swav}*.sh``.
"""
BYOL_IMAGENET_VIEWS = (
    dict(min_scale=0.08, blur_prob=1.0, solarize_prob=0.0, **MILD_JITTER),
    dict(min_scale=0.08, blur_prob=0.1, solarize_prob=0.2, **MILD_JITTER),
)
"""BYOL's and Barlow Twins' ImageNet-100 views: blur 1.0 / 0.1, solarisation 0 / 0.2."""


def make_backbone(config: ml_collections.ConfigDict) -> nn.Module:
    """The backbone that ``config.model`` describes."""
    m = config.model
    return resnet.make_backbone(
        m.backbone,
        stem=m.stem,
        width_multiplier=m.width_multiplier,
        cifar_stem_padding=m.cifar_stem_padding,
        dtype=jnp.dtype(m.dtype),
        batch_norm_group=m.get("batch_norm_group", 0),
    )


def make_views(config: ml_collections.ConfigDict) -> tuple[ViewConfig, ViewConfig]:
    """The two views of ``config.augment`` (per-view settings in ``view1`` and ``view2``)."""
    a = config.augment
    return ViewConfig(**a.view1.to_dict()), ViewConfig(**a.view2.to_dict())


def mlp(
    config: ml_collections.ConfigDict,
    hidden_dims: Sequence[int],
    out_dim: int,
    *,
    batch_norm: bool,
    last_batch_norm: bool = False,
    gelu: bool = False,
    init_std: float = 0.0,
) -> heads.MLPHead:
    """An MLP head in the model's compute dtype (``heads.MLPHead``'s fields)."""
    return heads.MLPHead(
        hidden_dims=tuple(hidden_dims),
        out_dim=out_dim,
        batch_norm=batch_norm,
        last_batch_norm=last_batch_norm,
        dtype=jnp.dtype(config.model.dtype),
        batch_norm_group=config.model.get("batch_norm_group", 0),
        gelu=gelu,
        init_std=init_std,
    )


def make_model(
    config: ml_collections.ConfigDict,
    projector: nn.Module,
    *,
    predictor: nn.Module | None = None,
    prototypes: Prototypes | None = None,
) -> SSLModel:
    """Backbone from ``config.model`` with the given heads."""
    return SSLModel(
        backbone=make_backbone(config),
        projector=projector,
        predictor=predictor,
        prototypes=prototypes,
    )


# ---------------------------------------------------------------------------------------------
# Momentum (EMA) target networks: MoCoV2+, BYOL, ISD, DINO


def target_params(params: PyTree) -> PyTree:
    """The part of the student's params the momentum network copies: all but the predictor."""
    return {k: v for k, v in params.items() if k != "predictor"}


def momentum_target(model: SSLModel, views: tuple[int, ...] = (0, 1)) -> Callable:
    """``Objective.target`` for a momentum copy stored as ``state['momentum']`` (its params).

    The momentum network runs ``model.project`` on the ``views`` listed (the other entries of the
    returned pair are None) with BatchNorm on the batch statistics (train mode, as in every
    reference code, which never switches its momentum networks to eval mode); its running
    statistics are never read, so they are not kept.
    """

    def apply(state: PyTree, x: jax.Array) -> Outputs:
        out, _ = model.apply(
            {"params": state["momentum"]}, x, True, method="project", mutable=["batch_stats"]
        )
        return lax.stop_gradient(out)

    def target(state: PyTree, x1: jax.Array, x2: jax.Array) -> tuple[Outputs | None, ...]:
        return tuple(apply(state, x) if v in views else None for v, x in enumerate((x1, x2)))

    return target


def ema(target: PyTree, online: PyTree, tau: jax.Array) -> PyTree:
    """theta_m <- tau * theta_m + (1 - tau) * theta for every leaf of ``target``.

    The momentum update of MoCo (He et al., CVPR 2020, Eq. 2) and BYOL (Grill et al., NeurIPS
    2020, Sec. 3.1).
    """
    return optax.incremental_update(online, target, step_size=1.0 - tau)


def cosine_momentum(base: float, end: float, num_steps: int) -> np.ndarray:
    """tau_k = end - (end - base) (cos(pi k / K) + 1) / 2 for k = 0..K-1.

    BYOL's cosine schedule (Grill et al., NeurIPS 2020), as in solo-learn
    ``solo/utils/momentum.py`` and Kaizen ``kaizen/utils/momentum.py``.

    The update after step k of a task uses tau_k: ``base`` at the first step, approaching ``end``.
    """
    k = np.arange(num_steps, dtype=np.float64)
    return (end - (end - base) * (np.cos(math.pi * k / num_steps) + 1.0) / 2.0).astype(np.float32)


def momentum_schedules(base: float, end: float) -> Callable[[int, int], dict[str, np.ndarray]]:
    """``Objective.schedules`` giving 'momentum', the cosine EMA schedule from base to end."""

    def schedules(num_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        del steps_per_epoch
        return {"momentum": cosine_momentum(base, end, num_steps)}

    return schedules


def epoch_of_step(num_steps: int, steps_per_epoch: int) -> np.ndarray:
    """float32 [num_steps]: the epoch (0-based, within the task) of each step."""
    return (np.arange(num_steps) // steps_per_epoch).astype(np.float32)
