"""CaSSLe (Fini et al., CVPR 2022, Sec. 4): the SSL loss turned into distillation.

From the second task on, the previous task's backbone and projector (and SwAV's or DINO's
prototypes) are a frozen teacher, and a learnable predictor h, Linear(D -> 2048)-BN-ReLU-
Linear(2048 -> D), maps the student's projection z^v of each view onto the teacher's projection
z-bar^v of the same view, through a loss of the objective's own kind:

    L = L_SSL + lambda * L_D(h(z^1), h(z^2); z-bar^1, z-bar^2)

The reference details kept here: the teacher runs its BatchNorm on the batch's statistics (train
mode, ``cassle.teacher_train_bn``); h is random at the start of the second task and carried from
the third on (the reference's first distillation task loads a checkpoint without h); h trains with
the student's optimizer, learning rate and weight decay, except BYOL's predictive distiller, whose
h trains at lr / lambda when lambda < 1 (``cassle/distillers/predictive.py`` l.48; its own
parameter group). The teacher slot and h exist from the first task on, which has no teacher yet
and skips the term, so every task runs the same compiled step.

Which distiller each objective uses (``DISTILLERS``): the reference's for SimCLR, MoCoV2+, BYOL,
Barlow Twins, SwAV and VICReg; for ISD, SimSiam and DINO, the one of the same kind (project choices).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from cl_ssl import losses, optim
from cl_ssl.losses import l2_normalize
from cl_ssl.models import heads
from cl_ssl.models.ssl import Prototypes
from cl_ssl.objectives import Objective
from cl_ssl.objectives.base import target_params
from cl_ssl.strategies.base import (
    Strategy,
    StrategySpec,
    frozen_teacher_strategy,
    head_distillation,
    output_widths,
    teacher_distillation,
)


@dataclasses.dataclass(frozen=True)
class Distiller:
    """How CaSSLe distils one objective.

    Attributes:
      kind: the loss: 'contrastive', 'predictive', 'decorrelative', 'mse', 'knowledge',
        'similarity' or 'cosine' (``cl_ssl.losses.<kind>_distillation``).
      weight: lambda, the distillation weight when ``cassle.weight`` is unset.
      normalize_input: h reads the L2-normalised projection (MoCo's query), not the raw one.
    """

    kind: str
    weight: float = 1.0
    normalize_input: bool = False


DISTILLERS = {
    "simclr": Distiller("contrastive"),
    # h reads the normalised query, as CaSSLe's MoCoV2+ returns it as z (cassle/methods/mocov2plus.py).
    "mocov2plus": Distiller("contrastive", normalize_input=True),
    # h reads BYOL's projection, not the output of BYOL's own predictor.
    "byol": Distiller("predictive"),
    "barlow_twins": Distiller("decorrelative"),
    "swav": Distiller("knowledge"),
    # 25 mirrors VICReg's invariance weight.
    "vicreg": Distiller("mse", weight=25.0),
    "isd": Distiller("similarity"),
    "simsiam": Distiller("cosine"),
    "dino": Distiller("knowledge"),
}
_TEMPERATURES = {"contrastive": 0.2, "knowledge": 0.1}


def default_config() -> ml_collections.ConfigDict:
    """``config.cassle``: CaSSLe's values; weight and temperature unset take the distiller's."""
    return ml_collections.ConfigDict(
        dict(
            weight=ml_collections.config_dict.placeholder(float),
            pred_hidden_dim=2048,
            temperature=ml_collections.config_dict.placeholder(float),
            teacher_train_bn=True,
        )
    )


def _loss(
    kind: str, config: ml_collections.ConfigDict, prototypes: Prototypes | None
) -> Callable[..., jax.Array]:
    """(predictions per view, teacher outputs per view, strategy params) -> L_D; ``prototypes``:
    the module of the knowledge distiller's new prototypes."""
    c, b, i = config.cassle, config.barlow_twins, config.isd
    temperature = c.temperature if c.temperature is not None else _TEMPERATURES.get(kind)
    if kind == "knowledge":

        def knowledge(predictions, teacher, params):
            scores = [prototypes.apply({"params": params["prototypes"]}, p) for p in predictions]
            return losses.knowledge_distillation(
                scores, [t["scores"] for t in teacher], temperature=temperature
            )

        return knowledge
    on_projections = {
        "contrastive": functools.partial(losses.contrastive_distillation, temperature=temperature),
        "predictive": losses.predictive_distillation,
        "cosine": losses.cosine_distillation,
        "mse": losses.mse_distillation,
        "decorrelative": functools.partial(
            losses.decorrelative_distillation, lambd=b.lambd, scale=b.scale
        ),
        "similarity": functools.partial(
            losses.similarity_distillation,
            student_temperature=i.student_temperature,
            teacher_temperature=i.teacher_temperature,
        ),
    }[kind]

    def distillation(predictions, teacher, params):
        del params
        return on_projections(predictions, [t["projection"] for t in teacher])

    return distillation


@dataclasses.dataclass(frozen=True)
class FeatureDistillation:
    """CaSSLe's distillation of one objective, for any strategy that snapshots ``target_params``
    of the student as its teacher (CaSSLe itself, Kaizen's feature-extractor term).

    Attributes:
      weight: lambda.
      init_heads: key -> the trainable heads {'predictor'} (and SwAV's or DINO's new
        'prototypes').
      distill: (student outputs per view, the teacher's ``project`` outputs per view, strategy
        trainable params) -> the unweighted L_D.
      teacher_train_bn: the teacher's BatchNorm normalises with the batch's statistics.
      param_labels: optional (strategy trainable params) -> optimizer group names.
      param_groups: the groups ``param_labels`` names besides the default one.
    """

    weight: float
    init_heads: Callable[[jax.Array], dict]
    distill: Callable[..., jax.Array]
    teacher_train_bn: bool
    param_labels: Callable[[dict], dict] | None
    param_groups: dict[str, optim.ParamGroup]


def feature_distillation(
    config: ml_collections.ConfigDict, objective: Objective, weight: float | None
) -> FeatureDistillation:
    """CaSSLe's distiller of ``objective`` from ``config.cassle``, at ``weight`` (None: the
    distiller's own lambda); ValueError for an objective it cannot distil."""
    if objective.name not in DISTILLERS:
        raise ValueError(
            f"CaSSLe has no distiller for objective {objective.name!r}; choose one of "
            f"{sorted(DISTILLERS)}"
        )
    c, spec = config.cassle, DISTILLERS[objective.name]
    if c.temperature is not None and spec.kind not in _TEMPERATURES:
        raise ValueError(
            f"cassle.temperature={c.temperature} has no effect on the {spec.kind!r} distiller of "
            f"{objective.name!r}; leave it unset (it applies to {sorted(_TEMPERATURES)} only)"
        )
    weight = spec.weight if weight is None else weight
    dim = output_widths(objective)["projection"]
    predictor = heads.MLPHead(hidden_dims=(c.pred_hidden_dim,), out_dim=dim, batch_norm=True)
    # New prototypes W_d, built as the objective's (a learnable norm too, as CaSSLe's
    # distill_prototypes), score the predictions (CaSSLe's SwAV distiller).
    prototypes = objective.model.prototypes.clone(parent=None) if spec.kind == "knowledge" else None

    def init_heads(key):
        k1, k2 = jax.random.split(key)
        z = jnp.zeros((2, dim))
        params = {"predictor": predictor.init(k1, z, train=False)["params"]}
        if prototypes is not None:
            params["prototypes"] = prototypes.init(k2, z)["params"]
        return params

    def read(out):
        return l2_normalize(out["projection"]) if spec.normalize_input else out["projection"]

    # The reference trains the predictive distiller's h at lr / lambda when lambda < 1.
    groups = {}
    if spec.kind == "predictive" and 0 < weight < 1:
        groups = {"cassle_predictor": optim.ParamGroup(lr_scale=1.0 / weight)}
    return FeatureDistillation(
        weight=weight,
        init_heads=init_heads,
        distill=head_distillation(
            read=read,
            head=predictor,
            head_key="predictor",
            loss=_loss(spec.kind, config, prototypes),
        ),
        teacher_train_bn=c.teacher_train_bn,
        param_labels=(
            (lambda heads: optim.label_top_level(heads, {"predictor": "cassle_predictor"}))
            if groups
            else None
        ),
        param_groups=groups,
    )


def make(config: ml_collections.ConfigDict, objective: Objective) -> Strategy:
    """CaSSLe for ``objective`` from ``config.cassle``; ValueError for an objective it cannot distil."""
    parts = feature_distillation(config, objective, config.cassle.weight)
    return frozen_teacher_strategy(
        name="cassle",
        # The online backbone and projector (and prototypes), never a momentum copy.
        keep=target_params,
        init_heads=parts.init_heads,
        distill=teacher_distillation(
            model=objective.model,
            method="project",
            train_bn=parts.teacher_train_bn,
            distill=parts.distill,
            weight=parts.weight,
        ),
        param_labels=parts.param_labels,
        param_groups=parts.param_groups,
    )


STRATEGY = StrategySpec(make=make, section="cassle", default_config=default_config)
