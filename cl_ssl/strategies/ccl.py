"""CCL (Lin, Wang and Lin, "Continual contrastive learning for image classification", ICME 2022):
MoCo with exemplar rehearsal, self-supervised knowledge distillation on the replayed images and
an extra sample queue of their keys.

From the second task on, with q^v the student's projections of view v and k^v the key encoder's,
the reference (paper section 3, ``moco/builder.py`` l.186-255) trains MoCo in one direction:

    L = InfoNCE(q^1, k^2, Q)                                                      (L_MoCo)
      + 0.1 * InfoNCE(q^1, k^2, ESQ)                                              (L_ESQ, every row)
      + 0.1 * KL(softmax(S_T^1 / 0.04) || softmax(S_S^1 / 0.07))                  (L_KD, replayed rows)

with Q MoCo's queue of view-2 keys, ESQ the extra sample queue of the replayed images' view-2
keys, S_S^v[i, j] = n(q^v_i) . n(student embedding of the centre crop of replayed image j) and
S_T^v the same with the teacher's embedding of view v (``cl_ssl.losses.relational_distillation``);
the first task trains L_MoCo alone. This is CCL over ``mocov2plus.symmetric=False``, as the
``:ccl`` presets set it. Over the symmetric MoCoV2+ (``mocov2plus.symmetric=True``, CaSSLe's,
with a queue per view) every term is symmetrised the same way:

    L = L_MoCo
      + 0.1 * (1/2) [InfoNCE(q^1, k^2, ESQ^2) + InfoNCE(q^2, k^1, ESQ^1)]
      + 0.1 * (1/2) sum_v KL(softmax(S_T^v / 0.04) || softmax(S_S^v / 0.07))

with ESQ^v the replayed images' view-v keys. Reference code ``VDIGPKU/ContinualContrastiveLearning``,
``moco/builder.py`` (``MoCoCCL.forward_train``, l.173-260) and ``train.py``:

- **Teacher:** a copy of the student's backbone and projector; at the start of each task after the
  first the teacher and MoCo's key encoder are overwritten with the student's weights
  (``reset_teacher``, ``reset_k``); during a task the teacher follows a per-epoch EMA of the
  student, momentum 0.996, applied after the last step of every epoch (``train.py`` calls
  ``update_teacher`` after each epoch). Its BatchNorm normalises with the batch's statistics in
  every epoch. The reference's does so from the second epoch of a task on, where ``train.py``'s
  ``model.train()`` (l.478) overrides the ``teacher.eval()`` of the reset (``builder.py`` l.181);
  in the first epoch of tasks 2, 3, ... its teacher runs in eval mode on running statistics that
  only its own train-mode passes update (the reset copies parameters, not buffers): PyTorch's
  initial mean 0 and variance 1 in task 2, whose first epoch thus distils from an un-normalised
  network. This teacher keeps no running statistics, and that first epoch is not reproduced.
- **Extra sample queue (ESQ):** 256 keys, taken at the first incremental step from the first 256
  rows of MoCo's queue (``begin_incremental``, l.62-63); afterwards only the key encoder's keys of
  replayed images enter it, first in first out (``_dequeue_and_enqueue``, l.89-111), the view-2
  keys ``k`` that also enter MoCo's queue (l.84, l.258; ``train.py`` l.493 passes the second
  view as ``im_k``).
- **Exemplars:** ``ccl.replay``, by default the reference's ``min_var`` selection of 20 images per
  cluster and task (``cl_ssl.strategies.replay``). With ``ccl.replay.mode='mix'`` (the ``:ccl``
  presets) they join each task's data set as the reference's ``ConcatDataset`` of the task's
  images and the saved ones (``train.py`` l.318-336): every epoch shuffles the N + M images
  together, floor((N + M) / 256) steps of 256 rows, each exemplar once
  (``Strategy.stage_examples``); the old rows are those whose task precedes the current one
  (the reference's ``is_from_old``).
- **Distillation per GPU (``mix``):** the reference's DDP computes L_KD on each of its 8 GPUs
  over that GPU's 32 rows (``moco/builder.py`` l.233-255): the GPU's old rows are both the
  queries and the anchors (``s_anchor[idx]``), KL ``batchmean`` over them, no term on a GPU
  without old rows, and DDP averages the GPUs' gradients. Here the batch is cut into
  consecutive groups of ``ccl.group_size`` rows (32; it must divide the batch size) and the
  term is the mean over the groups, an empty group counting 0 (``groupwise_relational_
  distillation``); the teacher's and the anchors' forward passes run group by group, BatchNorm
  on each group's statistics, over every row of the group as in the reference (which embeds
  its GPU's whole batch, then keeps the old rows).

Choices of this library:
- The objective is this library's MoCoV2+; with ``mocov2plus.symmetric=True`` (its default,
  CaSSLe's) CCL's terms are symmetrised as above: one ESQ per view, whose keys are the negatives
  of the other view's queries as in MoCoV2+, and the distillation averaged over the two views'
  queries. The ``:ccl`` presets set ``mocov2plus.symmetric=False``, the reference's one direction.
- ``ccl.replay.mode='extend'`` (the default outside the presets): replayed images come as a
  dedicated replay sub-batch of ``ccl.replay.batch_size`` rows joined to every batch, and the
  distillation reads exactly those rows, as one group: its networks see the replayed rows
  alone (the student embeds their centre crops and the teacher their queries and centre crops,
  in train mode, BatchNorm on the statistics of the old images). The reference's mixed data
  give a GPU's batch of 32 some 0.5 to 4 old images on ImageNet-Sub and distillation matrices
  of 1x1 to 4x4, or none.
- In both modes the student's queries come from the step's forward pass, BatchNorm on the
  statistics of the whole batch (the reference's: its GPU's 32 rows); the distillation's own
  forward passes keep no BatchNorm statistics.
- The anchor is the ImageNet evaluation crop (``augment.CENTER_CROP_FRACTION``, Resize(256) +
  CenterCrop(224)) on every data set, 28 of 32 pixels on CIFAR; the reference has no code for
  smaller images. On ImageNet-Sub the images are stored as their 224-pixel central squares
  (``configs/imagenet100.py``): the anchor is 196 pixels of that square resized to 224 (the
  reference's region, at less detail), and min_var's six augmentations crop the square, not the
  whole image (``train.py`` l.292-294).
- ``ccl.evaluate_teacher`` scores the teacher's weights with the student's BatchNorm statistics
  (the teacher here keeps none; the reference's teacher keeps its own running statistics from its
  train-mode passes), and the student for the first task's row, where no teacher has been reset
  from the student yet (the EMA then still holds part of the initial weights).

MoCo's shuffled BatchNorm is the ``:ccl`` presets' ``model.batch_norm_group=32`` (the student's
and the key encoder's statistics per GPU's rows, ``cl_ssl.models.resnet.GroupBatchNorm``) with
``mocov2plus.shuffle_keys=True`` (``moco/builder.py`` l.113-158, 194-200); the distillation's
passes, one group of ``ccl.group_size`` rows each, then see one BatchNorm group when the two sizes
are equal (the presets'), several when ``model.batch_norm_group`` divides ``ccl.group_size``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from cl_ssl import losses
from cl_ssl import memory as memory_lib
from cl_ssl.data import augment
from cl_ssl.objectives import Objective, mocov2plus
from cl_ssl.objectives.base import ema, target_params
from cl_ssl.state import StrategyState
from cl_ssl.strategies import replay
from cl_ssl.strategies.base import (
    BufferInputs,
    LossInputs,
    Strategy,
    StrategySpec,
    TaskEnd,
    apply_teacher,
    combine_schedules,
    output_widths,
)

TEACHER_MOMENTUM = "ccl/teacher_momentum"
"""The per-step schedule of the teacher's EMA momentum: ``ccl.teacher_momentum`` after the last
step of every epoch, 1 (no move) after the others."""


def default_config() -> ml_collections.ConfigDict:
    """``config.ccl``: the reference's constants (``moco/builder.py``, ``train.py`` arguments)."""
    replay_config = replay.default_config()
    replay_config.update(selection="min_var", per_class=20, batch_size=32)
    return ml_collections.ConfigDict(
        dict(
            esq_size=256,  # --ccl-k
            esq_weight=0.1,
            distill_weight=0.1,
            student_temperature=0.07,
            teacher_temperature=0.04,
            teacher_momentum=0.996,  # --ccl-teacher-m
            # Evaluate the teacher's backbone instead of the student's (lincls_eval.py
            # --use_teacher_weight).
            evaluate_teacher=False,
            # replay.mode='mix': the rows of one GPU's batch in the reference (256 over 8 GPUs),
            # over whose old rows each distillation term runs.
            group_size=32,
            # --n_save 20 images per cluster and task; 32 replayed rows per step.
            replay=replay_config,
        )
    )


def teacher_momentum_schedule(momentum: float):
    """``Strategy.schedules``: TEACHER_MOMENTUM, ``momentum`` at each epoch's last step, else 1."""

    def schedules(num_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        tau = np.ones(num_steps, np.float32)
        tau[steps_per_epoch - 1 :: steps_per_epoch] = momentum
        return {TEACHER_MOMENTUM: tau}

    return schedules


def _copy(tree):
    # A copy: the train step donates the state, which must not hold one buffer twice.
    return jax.tree.map(jnp.copy, tree)


def check_config(config: ml_collections.ConfigDict, objective: Objective) -> None:
    """ValueError naming the setting that CCL cannot work with."""
    c = config.ccl
    if objective.name != "mocov2plus":
        raise ValueError(
            f"strategy=ccl extends MoCoV2+ (its key encoder and queues), not "
            f"{objective.name!r}; set --config.objective=mocov2plus"
        )
    if not 1 <= c.esq_size <= config.mocov2plus.queue_size:
        raise ValueError(
            f"ccl.esq_size={c.esq_size}; the extra sample queue starts from MoCo's queue, so set "
            f"it between 1 and mocov2plus.queue_size={config.mocov2plus.queue_size}"
        )
    for field in ("student_temperature", "teacher_temperature"):
        if c[field] <= 0:
            raise ValueError(f"ccl.{field}={c[field]}; set a temperature > 0")
    for field in ("esq_weight", "distill_weight"):
        if c[field] < 0:
            raise ValueError(f"ccl.{field}={c[field]}; set a weight >= 0")
    if not 0.0 <= c.teacher_momentum <= 1.0:
        raise ValueError(f"ccl.teacher_momentum={c.teacher_momentum}; set it in [0, 1]")
    if c.replay.get("mode", "extend") == "mix" and (
        c.group_size < 1 or config.batch_size % c.group_size
    ):
        raise ValueError(
            f"ccl.group_size={c.group_size} must divide batch_size={config.batch_size} "
            "(ccl.replay.mode='mix' distils within groups of that many rows, one GPU's batch of "
            "the reference); set a divisor of the batch size"
        )
    bn_group = config.model.get("batch_norm_group", 0)
    if c.replay.get("mode", "extend") == "mix" and bn_group and c.group_size % bn_group:
        raise ValueError(
            f"model.batch_norm_group={bn_group} must divide ccl.group_size={c.group_size} "
            "(ccl.replay.mode='mix' passes each group of ccl.group_size rows through the networks "
            "apart, and BatchNorm splits each pass into groups of model.batch_norm_group rows); "
            "set equal sizes, as the :ccl presets do, or a divisor"
        )


def groupwise_relational_distillation(
    student_queries: jax.Array,
    student_anchors: jax.Array,
    teacher_queries: jax.Array,
    teacher_anchors: jax.Array,
    *,
    old: jax.Array,
    group_size: int,
    student_temperature: float,
    teacher_temperature: float,
) -> jax.Array:
    """CCL's distillation as its DDP computes it (``moco/builder.py`` l.233-255, one process per
    GPU): the batch [B, D] cut into B / ``group_size`` consecutive groups, each GPU's batch; in
    each group, ``losses.relational_distillation`` of its ``old`` rows (bool [B]) against its own
    old rows' anchors (KL batchmean over the group's old rows; 0 for a group without one, whose
    process adds no term); then the mean over the groups (DDP averages the processes'
    gradients)."""

    def groups(x):
        return x.reshape(-1, group_size, *x.shape[1:])

    def one_group(sq, sa, tq, ta, valid):
        return losses.relational_distillation(
            sq,
            sa,
            tq,
            ta,
            student_temperature=student_temperature,
            teacher_temperature=teacher_temperature,
            valid=valid,
        )

    per_group = jax.vmap(one_group)(
        *(groups(x) for x in (student_queries, student_anchors, teacher_queries, teacher_anchors)),
        groups(old),
    )
    return jnp.mean(per_group)


def make(config: ml_collections.ConfigDict, objective: Objective) -> Strategy:
    """CCL from ``config.ccl`` over MoCoV2+ (``config.mocov2plus``)."""
    check_config(config, objective)
    c = config.ccl
    rehearsal = replay.rehearsal(config, objective, section="ccl.replay", allow_mix=True)
    mix = c.replay.mode == "mix"  # the exemplars are rows of the task's data, not a sub-batch
    model = objective.model
    temperature = config.mocov2plus.temperature
    replayed_rows = c.replay.batch_size
    anchor_view = objective.views[0]
    # The views whose keys MoCo's queues and the ESQs hold, and the views whose queries meet
    # them: both views with the symmetric MoCoV2+, view 2's keys and view 1's queries with the
    # one-direction one (the reference's).
    key_views = mocov2plus.key_views(config)
    query_views = tuple(sorted(1 - v for v in key_views))

    def init(variables, key, train):
        state = rehearsal.init(variables, key, train)
        width = output_widths(objective)["projection"]
        buffers = {
            **state.buffers,
            "teacher": _copy(target_params(variables["params"])),
            # esq[j] holds keys of view key_views[j], as MoCo's queues[j]; replaced by MoCo's
            # first keys at the first incremental step.
            "esq": tuple(memory_lib.zeros_queue(c.esq_size, width) for _ in key_views),
        }
        return state.replace(buffers=buffers)

    def end_task(end: TaskEnd) -> StrategyState:
        state = rehearsal.end_task(end)
        esq = state.buffers["esq"]
        if end.next_task == 1:
            esq = tuple(
                memory_lib.Queue(items=queue.items[: c.esq_size], ptr=jnp.zeros((), jnp.int32))
                for queue in end.state.objective_state["queues"]
            )
        teacher = _copy(target_params(end.state.params))
        return state.replace(buffers={**state.buffers, "teacher": teacher, "esq": esq})

    def update_buffers(inputs: BufferInputs):
        buffers = inputs.state.buffers
        if rehearsal.update_buffers is not None:
            buffers = rehearsal.update_buffers(inputs)
        teacher = ema(
            buffers["teacher"], target_params(inputs.params), inputs.hyper[TEACHER_MOMENTUM]
        )
        buffers = {**buffers, "teacher": teacher}
        if mix:  # the old rows are among the step's own
            start = 0
        elif inputs.joined.size == inputs.batch.size:  # no replayed rows in this stage's step
            return buffers
        else:
            start = inputs.batch.size
        old = inputs.joined.valid[start:] & (inputs.joined.tasks[start:] < inputs.task)
        esq = tuple(
            memory_lib.push_where(
                queue, losses.l2_normalize(inputs.target[v]["projection"][start:]), old
            )
            for queue, v in zip(buffers["esq"], key_views, strict=True)
        )
        return {**buffers, "esq": esq}

    def loss(inputs: LossInputs):
        def incremental_terms():
            q = [out["projection"] for out in inputs.outputs]
            k = [out["projection"] for out in inputs.target]
            esq = inputs.state.buffers["esq"]
            if len(key_views) == 2:
                esq_loss = 0.5 * (
                    losses.info_nce(q[0], k[1], esq[1].items, temperature=temperature)
                    + losses.info_nce(q[1], k[0], esq[0].items, temperature=temperature)
                )
            else:  # the view-2 keys' ESQ against view 1's queries (builder.py l.225-230)
                esq_loss = losses.info_nce(q[0], k[1], esq[0].items, temperature=temperature)
            if mix:
                distill = mixed_distillation(q)
                total = c.esq_weight * esq_loss + c.distill_weight * distill
                return total, {"esq": esq_loss, "distill": distill}
            start = inputs.batch.size - replayed_rows
            old = inputs.batch.valid[start:] & (inputs.batch.tasks[start:] < inputs.task)
            anchors = augment.center_crop_batch(
                inputs.batch.images[start:], anchor_view, fraction=augment.CENTER_CROP_FRACTION
            )
            student_anchors, _ = model.apply(
                {"params": inputs.params}, anchors, True, method="project", mutable=["batch_stats"]
            )
            teacher = {"params": inputs.state.buffers["teacher"]}

            def teacher_projection(x):
                out = apply_teacher(model, teacher, x, train_bn=True, method="project")
                return out["projection"]

            teacher_anchors = teacher_projection(anchors)
            distill = sum(
                losses.relational_distillation(
                    q[v][start:],
                    student_anchors["projection"],
                    teacher_projection(inputs.views[v][start:]),
                    teacher_anchors,
                    student_temperature=c.student_temperature,
                    teacher_temperature=c.teacher_temperature,
                    valid=old,
                )
                for v in query_views
            ) / len(query_views)
            total = c.esq_weight * esq_loss + c.distill_weight * distill
            return total, {"esq": esq_loss, "distill": distill}

        def mixed_distillation(q):
            # Every row through the networks, each group of group_size rows apart (BatchNorm on
            # that group's statistics, as on the reference's GPUs); the old rows distil.
            old = inputs.batch.valid & (inputs.batch.tasks < inputs.task)
            anchors = augment.center_crop_batch(
                inputs.batch.images, anchor_view, fraction=augment.CENTER_CROP_FRACTION
            )

            def per_group(fn, x):
                out = jax.vmap(fn)(x.reshape(-1, c.group_size, *x.shape[1:]))
                return out.reshape(-1, *out.shape[2:])

            def student_projection(x):
                out, _ = model.apply(
                    {"params": inputs.params}, x, True, method="project", mutable=["batch_stats"]
                )
                return out["projection"]

            teacher = {"params": inputs.state.buffers["teacher"]}

            def teacher_projection(x):
                out = apply_teacher(model, teacher, x, train_bn=True, method="project")
                return out["projection"]

            student_anchors = per_group(student_projection, anchors)
            teacher_anchors = per_group(teacher_projection, anchors)
            return sum(
                groupwise_relational_distillation(
                    q[v],
                    student_anchors,
                    per_group(teacher_projection, inputs.views[v]),
                    teacher_anchors,
                    old=old,
                    group_size=c.group_size,
                    student_temperature=c.student_temperature,
                    teacher_temperature=c.teacher_temperature,
                )
                for v in query_views
            ) / len(query_views)

        def first_task():
            return jax.tree.map(jnp.zeros_like, jax.eval_shape(incremental_terms))

        return lax.cond(inputs.task > 0, incremental_terms, first_task)

    def evaluated(state):
        if int(state.task) == 0:  # no teacher reset from the student yet
            return state.params, state.batch_stats
        return state.strategy.buffers["teacher"], state.batch_stats

    return Strategy(
        name="ccl",
        init=init,
        end_task=end_task,
        extend_batch=rehearsal.extend_batch,
        stage_examples=rehearsal.stage_examples,
        extends_batch_from=rehearsal.extends_batch_from,
        loss=loss,
        update_buffers=update_buffers,
        schedules=combine_schedules(
            teacher_momentum_schedule(c.teacher_momentum), rehearsal.schedules
        ),
        start_objective=mocov2plus.restart_key_encoder,
        evaluated=evaluated if c.evaluate_teacher else None,
    )


STRATEGY = StrategySpec(make=make, section="ccl", default_config=default_config)
