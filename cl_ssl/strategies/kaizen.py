"""Kaizen (Tang et al., "Kaizen: practical self-supervised continual learning with continual
fine-tuning", WACV 2024, Sec. 3): a classifier trained through the stream next to the SSL model,
from labels whenever they exist, with distillation for both.

Networks: the student (backbone e_t and projector), a classifier g_t = Linear(F -> 1000)-ReLU-
Linear(1000 -> C) with one C-way head from the first task (no task identity at test time), and
at each task boundary a frozen copy of the backbone, projector **and classifier** (the teacher,
``kaizen/distiller_factories/base.py`` l.14-31). From the second task on:

    L = L_SSL(x^1, x^2)
      + lambda_FE * L_D(h(z^v), z-bar^v)                          (CaSSLe's distiller, via h)
      + w_C * sum_v CE(g_t(sg(e_t(x^v))), y)                      (labelled rows only)
      + lambda_C * (1/2) sum_v CE_soft(g_t(sg(e_t(x^v))), g_{t-1}(e_{t-1}(x^v)))

and on the first task L_SSL + w_C * CE. The classifier reads stop-gradient features
(``classifier_stop_gradient``, ``kaizen/methods/base.py`` l.490): labels never shape the
representation, and both classifier terms update g_t only. The classifier CE is summed over views
and its distillation averaged (``base.py`` l.500, ``distiller_factories/soft_label.py`` l.77).
Every term sees the joined batch of current and replayed rows (``base.py`` l.475-478); the
teacher's BatchNorm uses the batch's statistics (``cassle.teacher_train_bn``), as the frozen copy
is never switched to eval mode in the reference.

Replay (``kaizen.replay``): the first 1% of each past class's training images in the archive's
order (CIFAR's ``train_00000``, ...; ``kaizen/utils/pretrain_dataloader.py`` l.60-66 over
torchvision's CIFAR, tfds's ``id`` here; ImageNet's sorted ``file_name``), with their labels, 32
rows per step; in data-incremental runs (the ``:kaizen,data_incremental`` presets) the first 1% of each past task's
images in its random split order (l.69-81), a uniform draw (``random_per_task``). Any selection
of the ``replay`` strategy can replace them. The classifier has its own optimizer
group: learning rate 0.1 (0.05 for VICReg) not scaled by the batch size (only ``--lr`` is,
``kaizen/args/utils.py`` l.174), no weight decay, on the run's warm-up and cosine schedule.

Choices of this library where the reference is silent or differs:
- a batch without a single label gives a classifier CE of 0 (PyTorch's ``ignore_index`` mean gives
  NaN), so that ``labels.fraction`` may leave whole batches unlabelled;
- the feature distillation reads ``config.cassle`` (hidden width of h, temperature), as Kaizen's
  distillers are CaSSLe's; h is drawn afresh at the second task and carried from the third on;
- ``kaizen.feature_distill_weight=0`` builds no h, and with ``kaizen.classifier_distill_weight=0``
  too (the "No Distill" row) there is no teacher at all;
- ``kaizen.replay.sampling='uniform'`` draws each step's replay rows afresh, without replacement
  within the step; the ``:kaizen`` presets walk a shuffled replay loader as the reference does
  (``'loader'``: ``main_pretrain.py`` l.133-165, Lightning's ``max_size_cycle`` of l.52).
- the online evaluation of the reference scripts (``main_pretrain.py`` l.179-195, the
  ``:kaizen`` presets' ``eval.online_data='seen'``) trains on as many rows per step as the task
  (the reference: ceil(seen images / steps per epoch), one pass over the seen tasks per epoch,
  growing with every task), so that one compiled step serves every task. Its forward pass moves
  the backbone's BatchNorm statistics with images of every seen task, as the reference's does;
  those statistics are the ones the classifier and the probes are scored with.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from jax import lax

from cl_ssl import losses, optim
from cl_ssl.models import heads
from cl_ssl.objectives import Objective
from cl_ssl.objectives.base import target_params
from cl_ssl.state import StrategyState
from cl_ssl.strategies import cassle, replay
from cl_ssl.strategies.base import (
    LossInputs,
    Strategy,
    StrategySpec,
    apply_teacher,
    output_widths,
    snapshot,
)

CLASSIFIER_GROUP = "kaizen_classifier"
# The shipped scripts' classifier learning rates (bash_files/*.sh: --classifier_lr).
_CLASSIFIER_LR = {"vicreg": 0.05}
_DEFAULT_CLASSIFIER_LR = 0.1


def default_config() -> ml_collections.ConfigDict:
    """``config.kaizen``: the shipped CIFAR-100 scripts' values (``bash_files/*.sh``)."""
    placeholder = ml_collections.config_dict.placeholder
    return ml_collections.ConfigDict(
        dict(
            # lambda_FE; unset: the CaSSLe distiller's weight (1; 25 for VICReg's MSE).
            feature_distill_weight=placeholder(float),
            classifier_weight=1.0,  # w_C
            classifier_distill_weight=2.0,  # lambda_C
            classifier_hidden_dim=1000,
            # Unset: 0.1, or 0.05 for VICReg; not scaled by the batch size.
            classifier_lr=placeholder(float),
            # Width of the classifier's output; unset: the data set's class count.
            num_classes=placeholder(int),
            replay=ml_collections.ConfigDict(
                dict(
                    memory_size=500,
                    per_class=0,
                    selection="first_per_class",
                    batch_size=32,
                    fraction=0.01,
                    sampling="uniform",
                )
            ),
        )
    )


def classifier_head(hidden_dim: int, num_classes: int) -> heads.MLPHead:
    """g: Linear(F -> hidden)-ReLU-Linear(hidden -> C) (``kaizen/methods/multi_layer_classifier.py``)."""
    return heads.MLPHead(hidden_dims=(hidden_dim,), out_dim=num_classes)


def classifier_logits(params, features: jax.Array) -> jax.Array:
    """g's logits float32 [N, C] on features [N, F]; the widths are read from ``params``."""
    hidden, classes = params["linear0"]["kernel"].shape[1], params["linear1"]["kernel"].shape[1]
    return classifier_head(hidden, classes).apply({"params": params}, features, train=False)


def check_config(config: ml_collections.ConfigDict) -> None:
    """ValueError naming the ``config.kaizen`` setting (or label setting) that cannot work."""
    k = config.kaizen
    for field in ("classifier_weight", "classifier_distill_weight"):
        if not k[field] >= 0:
            raise ValueError(f"kaizen.{field}={k[field]}; set a weight >= 0")
    if k.feature_distill_weight is not None and not k.feature_distill_weight >= 0:
        raise ValueError(
            f"kaizen.feature_distill_weight={k.feature_distill_weight}; set a weight >= 0, or "
            "leave it unset for the CaSSLe distiller's own"
        )
    if k.classifier_hidden_dim < 1:
        raise ValueError(f"kaizen.classifier_hidden_dim={k.classifier_hidden_dim}; set it >= 1")
    if k.classifier_lr is not None and not k.classifier_lr > 0:
        raise ValueError(f"kaizen.classifier_lr={k.classifier_lr}; set a learning rate > 0")
    if config.labels.fraction <= 0 and k.classifier_weight > 0:
        raise ValueError(
            f"strategy 'kaizen' trains its classifier on labels, but labels.fraction="
            f"{config.labels.fraction} gives the learner none; set --config.labels.fraction in "
            "(0, 1] (1: every label, as in Kaizen's scripts)"
        )


def make(config: ml_collections.ConfigDict, objective: Objective) -> Strategy:
    """Kaizen from ``config.kaizen`` (and ``config.cassle`` for the feature distiller)."""
    check_config(config)
    k = config.kaizen
    rehearsal = replay.rehearsal(config, objective, section="kaizen.replay")
    feature = None
    if k.feature_distill_weight is None or k.feature_distill_weight > 0:
        feature = cassle.feature_distillation(config, objective, k.feature_distill_weight)
    has_teacher = feature is not None or k.classifier_distill_weight > 0
    take_teacher = snapshot(target_params)
    width = output_widths(objective)["features"]
    classifier_lr = k.classifier_lr or _CLASSIFIER_LR.get(objective.name, _DEFAULT_CLASSIFIER_LR)
    groups = {CLASSIFIER_GROUP: optim.ParamGroup(lr=classifier_lr, weight_decay=0.0)}
    names = {"classifier": CLASSIFIER_GROUP}
    if feature is not None and feature.param_groups:
        groups.update(feature.param_groups)
        names["predictor"] = "cassle_predictor"

    def distill_heads(key):
        return feature.init_heads(key) if feature is not None else {}

    def frozen(params, batch_stats, trainable):
        if not has_teacher:
            return {}
        classifier = jax.tree.map(jnp.copy, trainable["classifier"])
        return {"teacher": take_teacher(params, batch_stats), "classifier": classifier}

    def init(variables, key, train):
        num_classes = train.num_classes if k.num_classes is None else k.num_classes
        if num_classes < train.num_classes:
            raise ValueError(
                f"kaizen.num_classes={k.num_classes} is narrower than the {train.num_classes} "
                "classes of the data set; leave it unset or set at least that many"
            )
        k_classifier, k_heads = jax.random.split(key)
        head = classifier_head(k.classifier_hidden_dim, num_classes)
        trainable = {
            "classifier": head.init(k_classifier, jnp.zeros((2, width)), train=False)["params"],
            **distill_heads(k_heads),
        }
        memory = rehearsal.init(variables, key, train)
        batch_stats = variables.get("batch_stats", {})
        return StrategyState(
            trainable=trainable,
            frozen=frozen(variables["params"], batch_stats, trainable),
            buffers=memory.buffers,
        )

    def end_task(end):
        s = rehearsal.end_task(end)
        trainable = dict(s.trainable)
        if end.next_task == 1:  # h restarts from its initial draw (CaSSLe)
            trainable.update(distill_heads(jax.random.split(end.key)[1]))
        return s.replace(
            trainable=trainable,
            frozen=frozen(end.state.params, end.state.batch_stats, trainable),
        )

    def loss(inputs: LossInputs):
        features = [lax.stop_gradient(out["features"]) for out in inputs.outputs]
        logits = [classifier_logits(inputs.trainable["classifier"], f) for f in features]
        labels = jnp.where(inputs.batch.valid, inputs.batch.labels, -1)
        ce = sum(losses.labelled_cross_entropy(z, labels) for z in logits)
        total, metrics = k.classifier_weight * ce, {"classifier_ce": ce}
        if not has_teacher:
            return total, metrics

        def distillation():
            teacher = inputs.state.frozen
            targets = [
                apply_teacher(
                    objective.model,
                    teacher["teacher"],
                    x,
                    train_bn=config.cassle.teacher_train_bn,
                    method="project",
                )
                for x in inputs.views
            ]
            old = [classifier_logits(teacher["classifier"], t["features"]) for t in targets]
            soft = sum(map(losses.soft_cross_entropy, logits, old)) / len(logits)
            value, terms = k.classifier_distill_weight * soft, {"classifier_distill": soft}
            if feature is not None:
                fe = feature.distill(inputs.outputs, targets, inputs.trainable)
                value, terms = value + feature.weight * fe, {**terms, "distill": fe}
            return value, terms

        def no_teacher_yet():
            return jax.tree.map(jnp.zeros_like, jax.eval_shape(distillation))

        value, terms = lax.cond(inputs.task > 0, distillation, no_teacher_yet)
        return total + value, {**metrics, **terms}

    def classify(state: StrategyState, features: jax.Array) -> jax.Array:
        return classifier_logits(state.trainable["classifier"], features)

    return Strategy(
        name="kaizen",
        init=init,
        end_task=end_task,
        extend_batch=rehearsal.extend_batch,
        extends_batch_from=rehearsal.extends_batch_from,
        update_buffers=rehearsal.update_buffers,
        schedules=rehearsal.schedules,
        loss=loss,
        param_labels=lambda trainable: optim.label_top_level(trainable, names),
        param_groups=groups,
        classify=classify,
    )


STRATEGY = StrategySpec(
    make=make, section="kaizen", default_config=default_config, reads=("cassle",)
)
