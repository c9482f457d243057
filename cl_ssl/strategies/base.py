"""The strategy interface, the fine-tuning and offline baselines, and the frozen-teacher pieces."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from cl_ssl.data.batch import Batch, TrainData
from cl_ssl.data.sources import ArraySplit
from cl_ssl.models.ssl import SSLModel
from cl_ssl.objectives import Objective
from cl_ssl.optim import ParamGroup
from cl_ssl.state import StrategyState

PyTree = Any
Outputs = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
Hyper = dict[str, jax.Array]
Distill = Callable[
    [tuple[Outputs, ...], tuple[jax.Array, ...], PyTree, PyTree], tuple[jax.Array, Metrics]
]


@dataclasses.dataclass(frozen=True)
class RowInputs:
    """What a strategy's ``extend_batch`` and ``side_batch`` see inside the step, before the
    views are drawn.

    Attributes:
      state: the strategy's state before the step (its buffers: a memory to draw from).
      batch: the step's own rows (``Batch``).
      data: the training split (``TrainData``): images on the device, labels, classes, tasks.
      key: the strategy's key for this hook's draws, new every step; the keys of ``side_batch``,
        ``loss`` and ``update_buffers`` are ``jax.random.fold_in(key, 5 | 4 | 1)``, so draw
        further keys from it with ``jax.random.split``, not with ``fold_in`` of small integers.
      task: int32 [], the task being trained.
      hyper: the step's per-step scalars (the strategy's ``schedules`` among them: a replay
        loader's position in its epoch).
    """

    state: StrategyState
    batch: Batch
    data: TrainData
    key: jax.Array
    task: jax.Array
    hyper: Hyper


@dataclasses.dataclass(frozen=True)
class LossInputs:
    """What a strategy's loss term sees inside the differentiated loss of one step.

    The batch is the step's own rows (the first ``own_rows``) followed by the rows the strategy's
    ``extend_batch`` joined (when ``extended``); the objective's loss and the student's BatchNorm
    statistics see all of them. The rows of ``side_batch`` (the ``side`` fields) are seen by the
    strategy's term alone.

    Attributes:
      outputs: the student's outputs (``SSLModel``: 'features', 'projection', ...) of each of its
        views, rows of the joined batch.
      views: the student's augmented views, float [B, H, W, C] each.
      batch: the joined batch (``cl_ssl.data.batch.Batch``): labels (-1 where absent), ids, tasks,
        validity, and the memory slot each joined row was drawn from (``slots``, -1 for the
        step's own rows; None when no row comes from a memory).
      params: the student's parameters (differentiated).
      trainable: the strategy's trainable parameters (differentiated).
      state: the strategy's state before the step (its frozen pytrees and buffers).
      task: int32 [], the task being trained.
      hyper: the step's per-step scalars (the strategy's ``schedules`` among them).
      target: the objective's target-network outputs of each view of the joined batch, through
        ``stop_gradient`` (MoCo's keys: ``target[v]['projection']``), or None for an objective
        without a target network.
      data: the training split (``TrainData``): the classes and tasks of every example (the
        classes seen so far, for a growing classifier).
      key: the strategy's key for random draws inside its term, new every step.
      own_rows: the number of the step's own rows, first in ``batch`` (static); a strategy whose
        ``extend_batch`` replaces some of them instead of joining rows (Genifer) knows its layout.
      extended: whether this stage's step joined the strategy's rows (static): ``batch`` then has
        ``batch.size - own_rows`` of them after the step's own, and ``side`` is set when the
        strategy has a ``side_batch``.
      side: the rows of ``side_batch`` (``Batch``, with their ``slots``), or None.
      side_outputs: the student's outputs of each of its views of ``side`` (differentiated), its
        BatchNorm normalising with the side rows' own statistics and its running statistics left
        as the step's own rows set them; None without side rows.
      side_views: the student's augmented views of ``side``, float [S, H, W, C] each; or None.
      phase: the index of the stage's phase being trained (static; ``Strategy.phases``), 0 for a
        strategy without phases.
    """

    outputs: tuple[Outputs, ...]
    views: tuple[jax.Array, ...]
    batch: Batch
    params: PyTree
    trainable: PyTree
    state: StrategyState
    task: jax.Array
    hyper: Hyper
    target: tuple[Outputs | None, ...] | None = None
    data: TrainData | None = None
    key: jax.Array | None = None
    own_rows: int = 0
    extended: bool = False
    side: Batch | None = None
    side_outputs: tuple[Outputs, ...] | None = None
    side_views: tuple[jax.Array, ...] | None = None
    phase: int = 0


@dataclasses.dataclass(frozen=True)
class BufferInputs:
    """What a strategy's ``update_buffers`` sees after the optimizer update of one step.

    Attributes:
      state: the strategy's state after the update (its new trainable parameters, old buffers).
      params: the student's parameters after the update.
      batch: the step's own rows (``Batch``), without the strategy's.
      joined: the batch the step trained on, the strategy's rows (if any) after the step's own.
      target: the objective's target outputs of each view of ``joined`` (see ``LossInputs``).
      data: the training split (``TrainData``).
      key: the strategy's key of this step.
      task: int32 [], the task being trained.
      hyper: the step's per-step scalars.
      outputs: the student's outputs of each of its views of ``joined``, from this step's forward
        pass (before the update), through ``stop_gradient``: what the network gave the rows it
        trained on (the first ``batch.size`` rows are the step's own unless ``extend_batch``
        replaced some of them, as Genifer's does), to store without a second
        forward pass.
      side: the rows of ``side_batch`` this step, or None (see ``LossInputs``).
      side_outputs: the student's outputs of each view of ``side``, as ``outputs``; or None.
    """

    state: StrategyState
    params: PyTree
    batch: Batch
    joined: Batch
    target: tuple[Outputs | None, ...] | None
    data: TrainData
    key: jax.Array
    task: jax.Array
    hyper: Hyper
    outputs: tuple[Outputs, ...] = ()
    side: Batch | None = None
    side_outputs: tuple[Outputs, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Progress:
    """Checkpoints of a strategy's own training loop inside ``end_task`` (Genifer's GAN), so that
    a run killed there resumes where it was; kept per stage boundary, apart from the run's.

    Attributes:
      save: (iterations done, pytree) -> None; writes before returning.
      restore: (a pytree of the saved structure, e.g. the loop's initial state) -> the newest
        saved pytree, or None when this boundary saved none.
      stop_requested: (iterations done) -> whether a signal asks the run to stop there; call it
        after every iteration (on several processes all must, with the same iterations), and when
        True, save and raise ``cl_ssl.preemption.Stopped``.
    """

    save: Callable[[int, PyTree], None]
    restore: Callable[[PyTree], PyTree | None]
    stop_requested: Callable[[int], bool] = lambda iterations: False


@dataclasses.dataclass(frozen=True)
class TaskEnd:
    """What a strategy sees on the host when a stage ends, to build the next stage's state.

    Attributes:
      state: the run's state after the stage's last step (``ContinualState``).
      next_task: the index of the stage about to start.
      key: the strategy's key (the one ``Strategy.init`` got); fold in ``next_task`` for draws.
      indices: int32 [N_stage], the finished stage's training examples (rows of ``train``).
      train: the training split (``ArraySplit``: images in host memory or streamed, the data set's
        labels).
      features: (variables {'params', 'batch_stats'}, uint8 images [N, H, W, C]) -> float32 [N, F]
        backbone features in inference mode, as the evaluator computes them.
      map_images: (fn, variables, *host arrays of N rows) -> ``fn(variables, *chunks)`` over the
        rows in fixed-size batches sharded over the devices, concatenated [N, ...] (``fn`` jitted
        once): for a strategy's own computations over the task's images (CCL's embeddings of
        several views).
      mesh: the run's device mesh, for a strategy's own jitted training loop.
      progress: that loop's checkpoints at this boundary (``Progress``).
      log_scalars: (name -> value, iteration) -> None: TensorBoard scalars of that loop.
      log_image: (file name, uint8 [H, W, C] image, TensorBoard tag) -> None: writes
        plots/<name>.png and the image to TensorBoard (process 0 only).
    """

    state: Any
    next_task: int
    key: jax.Array
    indices: np.ndarray
    train: ArraySplit
    features: Callable[[PyTree, np.ndarray], np.ndarray]
    map_images: Callable[..., np.ndarray]
    mesh: jax.sharding.Mesh | None = None
    progress: Progress | None = None
    log_scalars: Callable[[dict[str, float], int], None] = lambda values, step: None
    log_image: Callable[[str, np.ndarray, str], None] = lambda name, image, tag: None


@dataclasses.dataclass(frozen=True)
class Phase:
    """One of the consecutive parts a stage's training is split into (POCON's expert phase, then
    its adaptation-retrospection phase: Gomez-Villa et al., WACV 2024; ``alviur/pocon_wacv2024``
    ``src/approach/copyOPscratch.py`` l.525-578), each over the stage's examples for its own
    number of epochs.

    Every phase restarts the learning-rate schedule and the objective's and strategy's
    ``schedules`` (each phase is a training process of its own, as the stage is), and every phase
    after a stage's first starts with ``Strategy.start_phase`` and, under
    ``optimizer.reset_each_task``, a fresh optimizer state. The step compiles once per phase
    index: the phases of every stage must agree in ``objective`` and in the names of ``hyper``.

    Attributes:
      epochs: the phase's epochs (>= 1).
      objective: whether the objective trains in this phase. False skips the objective's target
        network, loss and state update, and runs the student's backbone alone ('features' are the
        only outputs its term sees): the strategy's term is the whole loss, and the student's heads
        receive no gradient (``Strategy.student_labels`` can let them rest in an optimizer group
        with an ``active`` switch).
      hyper: name -> value of per-step scalars held for the whole phase, passed in the step's
        ``hyper`` to every hook and to the optimizer groups' ``active`` switches (a group that
        trains in one phase only).
    """

    epochs: int
    objective: bool = True
    hyper: Mapping[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class PhaseStart:
    """What ``Strategy.start_phase`` sees on the host when a phase after a stage's first starts.

    Attributes:
      state: the run's state after the previous phase's last step (``ContinualState``).
      stage: the index of the stage being trained.
      phase: the index of the phase about to start (>= 1).
      key: the strategy's key (the one ``Strategy.init`` got); fold in the stage and the phase
        for draws.
    """

    state: Any
    stage: int
    phase: int
    key: jax.Array


def combine_schedules(
    *parts: Callable[[int, int], dict[str, np.ndarray]],
) -> Callable[[int, int], dict[str, np.ndarray]]:
    """``Strategy.schedules`` of a strategy built from others: the union of their schedules."""

    def schedules(num_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        return {k: v for part in parts for k, v in part(num_steps, steps_per_epoch).items()}

    return schedules


def each_task(train_indices: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``Strategy.stages`` of every continual strategy: one stage per task, in order."""
    return list(train_indices)


def _all_tasks_jointly(train_indices: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.concatenate(train_indices))]


def _empty_state(variables: PyTree, key: jax.Array, train: ArraySplit) -> StrategyState:
    del variables, key, train
    return StrategyState()


def _keep_state(end: TaskEnd) -> StrategyState:
    return end.state.strategy


def _no_schedules(num_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
    del num_steps, steps_per_epoch
    return {}


@dataclasses.dataclass(frozen=True)
class Strategy:
    """A continual strategy: its fixed-shape state and the hooks it fills, each optional.

    The step and the loop call the hooks without knowing the strategy: the step extends the batch,
    lets the strategy rewrite the views, adds its loss term and updates its buffers; the loop calls
    ``end_task`` on the host between stages. Every shape in the state is fixed for the whole run,
    so the step compiles at most twice: once for the stages before ``extends_batch_from`` and once
    for the others.

    Attributes:
      name: the registry name.
      stages: per-task train indices -> the train indices of each training stage, in order. An
        evaluation row of the accuracy matrix follows every stage.
      init: (the student's initial variables {'params', 'batch_stats'}, the strategy's key, the
        training split) -> the ``StrategyState`` at the start of the run.
      end_task: ``TaskEnd`` -> the strategy's state for the next stage (snapshot a teacher, select
        exemplars, train a generator); by default the state as it is.
      extend_batch: optional ``RowInputs`` -> the batch with the strategy's rows joined after
        the step's own (a replay sub-batch with its validity), inside the jitted step, from stage
        ``extends_batch_from`` on. The step's rows
        come first and whole: views cropped on the host (``TrainData.crops``) are theirs. Joined
        rows are ordinary rows to the objective: they enter its loss and the student's BatchNorm
        statistics whatever their ``valid`` flag, which only the strategy's own term reads (a
        strategy whose memory may have nothing to draw yet joins from a later stage, or draws
        ``side_batch`` rows instead).
      side_batch: optional ``RowInputs`` -> a ``Batch`` of rows that only the strategy's
        term sees (DER's replayed images): the step augments them with the objective's views and
        runs the student on them apart from the joined batch, so they reach neither the
        objective's loss nor the student's BatchNorm statistics (``LossInputs.side_outputs``),
        from stage ``extends_batch_from`` on; their ``valid`` flag is the strategy's to apply.
      extends_batch_from: the first stage whose step calls ``extend_batch`` and ``side_batch``.
      transform_views: optional (augmented views of the extended batch, that batch, the
        ``RowInputs`` ``extend_batch`` got, its key included) -> the views the student and the
        objective see (LUMP's mixup; Genifer's float generated images, drawn again from those
        inputs); with ``extend_batch`` only.
      loss: optional ``LossInputs`` -> (weighted term added to the objective's loss, metrics),
        with its own gating (a term that needs a previous task's teacher is 0 on the first task).
      update_buffers: optional ``BufferInputs`` -> the new ``buffers`` (a queue of the step's
        keys, a teacher's per-epoch EMA, a memory filled from the step's own rows).
      schedules: (steps in the stage, steps per epoch) -> name -> float32 [steps] values the step
        passes in ``hyper`` to every hook, restarting with every stage (an EMA that moves at
        epoch ends only); names must not clash with the objective's (``combine_schedules`` joins
        those of the strategies one is built from).
      start_objective: optional (the objective's state at a stage boundary, the student's
        params) -> the objective's state for the next stage (CCL restarts MoCo's key encoder from
        the student).
      param_labels: optional (trainable params) -> the same structure naming each leaf's optimizer
        group (``cl_ssl.optim.label_top_level``); None: the run's default group.
      param_groups: the groups ``param_labels`` names besides the default one.
      classify: optional (strategy state, backbone features float32 [N, F]) -> logits float32
        [N, C] of the classifier the strategy trains (Kaizen's g); the evaluator then scores it
        after every stage, as the ``classifier`` accuracy matrix.
      evaluated: optional (the run's state, ``ContinualState``, after a stage) -> the (params,
        BatchNorm statistics) the evaluator scores instead of the student's (CCL's teacher).
      networks: name -> a function like ``evaluated``: other networks the strategy trains, which
        ``--config.eval.network=NAME`` scores instead (POCON's expert), also when re-scoring a
        finished run (``cl_ssl.rescore``).
      stage_examples: optional (the strategy's state at a stage's start, as the previous
        boundary's ``end_task`` left it; the stage) -> int [M] ids of training examples (repeats
        allowed) that join the stage's own N in its data, on the host: every epoch shuffles the
        N + M ids together (``planning.epoch_order``) and runs floor((N + M) / batch_size) steps,
        each id once (CCL's exemplars concatenated to the task's data set). The joined rows are
        the step's own rows with their own task ids (``batch.tasks < task``). Read again when a
        killed stage resumes, so the ids must follow from the checkpointed state alone (a
        memory that only ``end_task`` fills).
      phases: optional stage -> its ``Phase``s, in order (POCON's expert and adaptation phases);
        the stage trains for the sum of their epochs and is evaluated after the last. None: one
        phase of ``config.epochs_per_task`` epochs in which the objective trains.
      start_phase: optional ``PhaseStart`` -> (the student's params, its BatchNorm statistics,
        the strategy's state) for the phase about to start, on the host (POCON snapshots the
        trained expert and puts the main network in the student's place). A killed run resumes
        from the last checkpoint and calls it again when it reaches the phase, so it must be a
        function of the state alone.
      student_labels: optional (the student's params, the objective's labels of them) -> the
        labels the optimizer uses for them (POCON moves the projector into a group that rests
        while the objective does); None: the objective's.
    """

    name: str
    stages: Callable[[Sequence[np.ndarray]], list[np.ndarray]] = each_task
    init: Callable[[PyTree, jax.Array, ArraySplit], StrategyState] = _empty_state
    end_task: Callable[[TaskEnd], StrategyState] = _keep_state
    extend_batch: Callable[..., Batch] | None = None
    side_batch: Callable[..., Batch] | None = None
    extends_batch_from: int = 0
    transform_views: Callable[..., tuple[jax.Array, ...]] | None = None
    loss: Callable[[LossInputs], tuple[jax.Array, Metrics]] | None = None
    update_buffers: Callable[[BufferInputs], PyTree] | None = None
    schedules: Callable[[int, int], dict[str, np.ndarray]] = _no_schedules
    start_objective: Callable[[PyTree, PyTree], PyTree] | None = None
    param_labels: Callable[[PyTree], PyTree] | None = None
    param_groups: dict[str, ParamGroup] = dataclasses.field(default_factory=dict)
    classify: Callable[[StrategyState, jax.Array], jax.Array] | None = None
    evaluated: Callable[[Any], tuple[PyTree, PyTree]] | None = None
    networks: Mapping[str, Callable[[Any], tuple[PyTree, PyTree]]] = dataclasses.field(
        default_factory=dict
    )
    stage_examples: Callable[[StrategyState, int], np.ndarray] | None = None
    phases: Callable[[int], tuple[Phase, ...]] | None = None
    start_phase: Callable[[PhaseStart], tuple[PyTree, PyTree, StrategyState]] | None = None
    student_labels: Callable[[PyTree, PyTree], PyTree] | None = None

    def extends_batch(self, stage: int) -> bool:
        """Whether the step of ``stage`` joins the strategy's rows to the batch or draws its side
        rows."""
        has_rows = self.extend_batch is not None or self.side_batch is not None
        return has_rows and stage >= self.extends_batch_from


@dataclasses.dataclass(frozen=True)
class StrategySpec:
    """What a strategy module declares, as its module-level ``STRATEGY``, for a run to select it
    by name: ``--config.strategy=cassle`` (a built-in) or ``package.module`` (any importable
    module: a user's own, registered exactly as the built-ins are). A strategy with a config
    section is named in the config file by ``cl_ssl.config.use_strategy``, which adds the section
    (a run refuses a config that lacks it).

    Attributes:
      make: (the run's config, ``Objective``) -> ``Strategy``. It runs before anything compiles:
        check the strategy's settings here and raise ValueError naming the field to change.
      section: the name of the strategy's own config section (``config.<section>``, overridden
        as ``--config.<section>.<field>=...``), or None without one.
      default_config: () -> that section's defaults (``ml_collections.ConfigDict``).
      reads: other strategies' sections ``make`` reads too (Kaizen's feature distiller reads
        ``cassle``), so that a resumed run compares them.
      supervised: whether it trains with ``objective='supervised'`` (the supervised path); the
        others need a self-supervised objective.
    """

    make: Callable[[ml_collections.ConfigDict, Objective], Strategy]
    section: str | None = None
    default_config: Callable[[], ml_collections.ConfigDict] | None = None
    reads: tuple[str, ...] = ()
    supervised: bool = False

    def __post_init__(self):
        if (self.section is None) != (self.default_config is None):
            raise ValueError(
                "StrategySpec: give section and default_config together (a strategy with "
                "settings), or neither"
            )


def make_finetune(config: ml_collections.ConfigDict, objective: Objective) -> Strategy:
    """Trains on each task in turn with no mitigation: the lower bound of every continual method."""
    del config, objective
    return Strategy(name="finetune")


def make_offline(config: ml_collections.ConfigDict, objective: Objective) -> Strategy:
    """Trains once on the union of all tasks: the upper bound (CaSSLe, Fini et al., CVPR 2022,
    Sec. 5); its accuracy matrix has one trained row."""
    del config, objective
    return Strategy(name="offline", stages=_all_tasks_jointly)


FINETUNE = StrategySpec(make=make_finetune)
OFFLINE = StrategySpec(make=make_offline)


# ---------------------------------------------------------------------------------------------
# Frozen previous-task teachers (CaSSLe, Fini et al., CVPR 2022, Sec. 4; PFR, Gomez-Villa et al.,
# CLVision 2022)


def output_widths(objective: Objective) -> dict[str, int]:
    """Width of each of the student's outputs ('features', 'projection', ...), from shapes only."""
    model, crop = objective.model, objective.views[0].crop_size
    try:
        return dict(_widths(model, crop))
    except TypeError:  # a model with an unhashable field (a user's own) is traced each time
        return dict(_widths.__wrapped__(model, crop))


@functools.lru_cache(maxsize=32)
def _widths(model, crop: int) -> tuple[tuple[str, int], ...]:
    """``output_widths`` of a (hashable) Flax model at ``crop`` pixels, kept: tracing the model
    takes a quarter of a second, and a run builds its strategy once per seed and per rescoring,
    a table's commands once per row."""
    out, _ = jax.eval_shape(
        lambda: model.init_with_output(
            jax.random.PRNGKey(0), jnp.zeros((2, crop, crop, 3)), train=False
        )
    )
    return tuple((name, value.shape[-1]) for name, value in out.items())


def snapshot(keep: Callable[[PyTree], PyTree]) -> Callable[[PyTree, PyTree], PyTree]:
    """(student params, student BatchNorm statistics) -> a frozen copy of ``keep`` of both, as
    {'params', 'batch_stats'} (a copy: the train step donates the state, which must not hold one
    buffer twice)."""

    def teacher(params: PyTree, batch_stats: PyTree) -> PyTree:
        frozen = {"params": keep(params), "batch_stats": keep(batch_stats)}
        return jax.tree.map(jnp.copy, frozen)

    return teacher


def apply_teacher(
    model: SSLModel, teacher: PyTree, images: jax.Array, *, train_bn: bool, method: Any
) -> Any:
    """The frozen teacher's ``method`` outputs on ``images``, through ``stop_gradient``.

    With ``train_bn`` the teacher's BatchNorm normalises with the batch's statistics (and the
    updated running statistics are discarded), as the reference code does by never switching the
    frozen copy to eval mode (CaSSLe ``cassle/distillers/*.py`` copy the backbone with
    ``deepcopy`` and call it in the module's train mode); otherwise it uses the statistics frozen
    with it.
    """
    if train_bn:
        out, _ = model.apply(teacher, images, True, method=method, mutable=["batch_stats"])
    else:
        out = model.apply(teacher, images, False, method=method)
    return jax.tree.map(lax.stop_gradient, out)


def apply_head(head: Any, params: PyTree, x: jax.Array) -> jax.Array:
    """A strategy head on ``x`` with BatchNorm on the batch's statistics (never read at eval)."""
    out, _ = head.apply({"params": params}, x, train=True, mutable=["batch_stats"])
    return out


def head_distillation(
    *,
    read: Callable[[Outputs], jax.Array],
    head: Any,
    head_key: str,
    loss: Callable[[list, list, PyTree], jax.Array],
) -> Callable[[tuple[Outputs, ...], list, PyTree], jax.Array]:
    """(student outputs per view, teacher outputs per view, strategy trainable params) -> the
    unweighted distillation ``loss(predictions, teacher outputs, params)``, where each view's
    prediction is the head ``params[head_key]`` on the student's ``read`` output (CaSSLe's h)."""

    def distill(student, targets, params):
        predictions = [apply_head(head, params[head_key], read(out)) for out in student]
        return loss(predictions, targets, params)

    return distill


def teacher_distillation(
    *,
    model: SSLModel,
    method: Any,
    train_bn: bool,
    distill: Callable[[tuple[Outputs, ...], list, PyTree], jax.Array],
    weight: float,
) -> Distill:
    """(student outputs per view, the student's views, teacher, strategy trainable params) ->
    (weighted term, metrics): the distillation of a frozen previous-task teacher (CaSSLe, PFR).

    The teacher's ``method`` outputs on each of the student's views (``apply_teacher``), then
    ``weight * distill(student outputs, teacher outputs, params)`` (``head_distillation``), with
    the unweighted value as the metric 'distill'.
    """

    def term(student, views, teacher, params):
        targets = [
            apply_teacher(model, teacher, x, train_bn=train_bn, method=method) for x in views
        ]
        value = distill(student, targets, params)
        return weight * value, {"distill": value}

    return term


def frozen_teacher_strategy(
    *,
    name: str,
    keep: Callable[[PyTree], PyTree],
    init_heads: Callable[[jax.Array], PyTree],
    distill: Distill,
    param_labels: Callable[[PyTree], PyTree] | None = None,
    param_groups: dict[str, ParamGroup] | None = None,
) -> Strategy:
    """The life cycle of a frozen previous-task teacher with trainable distillation heads.

    - The state: the heads ``init_heads(key)`` (trainable) and the teacher, ``keep`` of the
      student's params and BatchNorm statistics (frozen; at the first task a copy of the initial
      student, never read).
    - At the end of each task the teacher becomes a copy of the student; the heads restart from
      their initial draw at the second task (the reference's first distillation task loads a
      checkpoint without them) and are carried from the third on.
    - The loss is ``distill`` from the second task on; the first task skips the teacher's forward
      pass at run time (``lax.cond``), so every task runs the same compiled step.
    """
    take = snapshot(keep)

    def init(variables, key, train):
        del train
        teacher = take(variables["params"], variables.get("batch_stats", {}))
        return StrategyState(trainable=init_heads(key), frozen={"teacher": teacher})

    def end_task(end):
        s = end.state
        heads = init_heads(end.key) if end.next_task == 1 else s.strategy.trainable
        teacher = take(s.params, s.batch_stats)
        return StrategyState(
            trainable=heads, frozen={"teacher": teacher}, buffers=s.strategy.buffers
        )

    def loss(inputs):
        def term():
            teacher = inputs.state.frozen["teacher"]
            return distill(inputs.outputs, inputs.views, teacher, inputs.trainable)

        def no_teacher_yet():
            return jax.tree.map(jnp.zeros_like, jax.eval_shape(term))

        return lax.cond(inputs.task > 0, term, no_teacher_yet)

    return Strategy(
        name=name,
        init=init,
        end_task=end_task,
        loss=loss,
        param_labels=param_labels,
        param_groups=param_groups or {},
    )
