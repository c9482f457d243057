"""Experience replay: an exemplar memory whose images rejoin every batch.

Each step of the second task on joins ``replay.batch_size`` rows drawn uniformly without
replacement from the memory's exemplars of earlier tasks (cycled when fewer are stored) to the
current batch, and the unchanged SSL objective trains on the union: replay rows enter the
BatchNorm statistics and the contrastive negatives, as in Kaizen (Tang et al., WACV 2024;
``kaizen/methods/base.py`` concatenates the replay batch before the forward pass). The first task,
with nothing to replay, trains exactly as ``finetune`` (its own compiled step).

The memory holds example ids into the training split (and, for data kept in host memory, the
images themselves), their classes and tasks (``cl_ssl.memory.Memory``), and ``replay.selection``
fills it:

- ``reservoir``: reservoir sampling over every presented example, inside the step (Vitter's
  Algorithm R in its top-M random keys form; Mammoth ``utils/buffer.py``);
- ``class_balanced``: a reservoir within each class, inside the step, the classes seen sharing the
  memory as Avalanche's ``ClassBalancedBuffer`` does (``memory.SHARED``: the remainder of the
  equal shares to the classes of lowest ids);
- ``herding``: iCaRL's Algorithm 4 on the backbone's features of each class of the finished task
  (Rebuffi et al., CVPR 2017), at the end of every task;
- ``random``: a uniform draw per class, at the end of every task;
- ``random_per_task``: Kaizen's data-incremental exemplars, int(``replay.fraction`` * N_t) of
  the N_t images of every task drawn uniformly without replacement, whatever their classes, at
  the end of every task (``kaizen/utils/pretrain_dataloader.py`` l.69-81 keeps the first rows of
  each task of ``torch.utils.data.random_split``, a uniform draw of that size);
- ``first_per_class``: Kaizen's first floor(``replay.fraction`` * n_c) images of every class in
  the data set's archive order (CIFAR's ``train_00000``, ...: tfds's ``id``, not its shuffled
  records; ImageNet's ``file_name``, sorted as an ImageFolder lists a class), at the end of
  every task (``kaizen/utils/pretrain_dataloader.py`` l.60-66);
- ``min_var``: CCL's label-free selection (Lin et al., ICME 2022, Sec. 3.2): k-means over the
  student's embeddings of the task's images, as many clusters as the task has classes, and in
  each cluster the ``replay.per_class`` images whose embedding moves least under augmentation
  (``cl_ssl.memory.min_var_per_cluster``), at the end of every task. With ``strategy=replay`` it
  is the SimpleReplay baseline on CCL's exemplars (CCL's own SimpleReplay draws uniformly,
  ``train.py::save_replay_image``);
- ``random_with_replacement``: CCL's SimpleReplay (``train.py`` l.386-389,
  ``np.random.randint(len(X_train), size=n_save * n_cls)``): ``replay.per_class`` times the
  task's class count draws among the task's images, uniform and with replacement (an image
  drawn twice fills two slots), at the end of every task; the labels play no part in the draw.

Budgets: a fixed total ``replay.memory_size`` shared equally by the seen classes (iCaRL), or
``replay.per_class`` exemplars per class when it is > 0 (the capacity is then per_class times the
data set's classes); ``first_per_class`` and ``random_per_task`` size the memory to their own
selections. The class-based
policies read the data set's classes (``TrainData.classes``), whether or not the learner sees the
labels; ``reservoir`` is the label-free choice.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cl_ssl import memory as memory_lib
from cl_ssl.data import augment, streaming
from cl_ssl.data.batch import Batch, TrainData, join
from cl_ssl.losses import l2_normalize
from cl_ssl.objectives import Objective
from cl_ssl.state import StrategyState
from cl_ssl.strategies.base import BufferInputs, RowInputs, Strategy, StrategySpec, TaskEnd

IN_STEP = ("reservoir", "class_balanced")
AT_TASK_END = (
    "herding",
    "random",
    "first_per_class",
    "random_per_task",
    "min_var",
    "random_with_replacement",
)
PER_TASK = ("min_var", "random_with_replacement")
"""Selections that add ``replay.per_class`` exemplars per class of the finished task, whatever
their classes, and never shrink the earlier ones."""
MIN_VAR_VIEWS = 7
"""Views per image that ``min_var`` embeds: 6 augmentations and the centre crop, last
(``moco/loader.py::MultiViewTransform``, num=6)."""
SELECTIONS = IN_STEP + AT_TASK_END


SOURCES = ("memory", "generator")
"""Where ``replay`` draws its rows from: an exemplar memory, or a GAN (``strategies.generative``)."""


MODES = ("extend", "mix")
"""How the exemplars reach the steps (``replay.mode``): ``extend``, ``batch_size`` replay rows
joined to every step's batch (``extend_batch``); ``mix``, the exemplars of earlier tasks added to
the task's data set at the task's start (``Strategy.stage_examples``): every epoch shuffles the
task's N examples and the memory's M exemplars together and runs floor((N + M) / batch size)
steps of the run's batch size, each exemplar once (CCL, ``train.py`` l.318-336: a
``ConcatDataset`` of the task's images and the saved ones, ``DataLoader(shuffle=True,
drop_last=True)``). ``mix`` needs a memory filled at the ends of tasks only (``AT_TASK_END``):
the stage's data follow from the memory as the boundary checkpointed it."""

SAMPLINGS = ("uniform", "loader")
"""How a step draws its replay rows (``replay.sampling``): ``uniform``, afresh every step
(without replacement within the step); ``loader``, as a PyTorch ``DataLoader(shuffle=True,
drop_last=True)`` over the memory cycled next to the task's loader (Kaizen, ``main_pretrain.py``
l.133-165 with Lightning's ``max_size_cycle`` of l.52): each epoch walks passes over a fresh
random order of the eligible exemplars, ``batch_size`` of them a step, the last incomplete batch
of a pass dropped."""


def default_config() -> ml_collections.ConfigDict:
    """``config.replay``: a memory of 500 exemplars filled by reservoir sampling, 32 replay rows
    drawn afresh every step (``sampling``, one of ``SAMPLINGS``).

    ``source='generator'`` draws the replay rows from a GAN instead (``cl_ssl.strategies.
    generative``; its settings are ``config.genifer.gan``), judging the backbone's stage
    ``generator_stage`` (unset: layer3)."""
    placeholder = ml_collections.config_dict.placeholder
    return ml_collections.ConfigDict(
        dict(
            memory_size=500,
            per_class=0,
            selection="reservoir",
            batch_size=32,
            fraction=0.01,
            source="memory",
            generator_stage=placeholder(int),
            sampling="uniform",
            mode="extend",
        )
    )


def capacity(
    r: ml_collections.ConfigDict, classes: np.ndarray, num_classes: int, tasks_per_class: int = 1
) -> int:
    """The memory's fixed number of slots for the replay settings ``r`` (``config.replay``) and
    the split's ``classes`` [N]; ``min_var`` keeps ``r.per_class`` images per cluster of every
    task, as many clusters as the task has classes, so it needs room for ``tasks_per_class``
    (the number of tasks each class appears in) times that."""
    if r.selection == "first_per_class":
        counts = np.bincount(classes, minlength=num_classes)
        return int(sum(int(n * r.fraction) for n in counts))  # memory.first_per_class's count
    if r.selection == "random_per_task":
        # At least the sum over tasks of int(N_t * fraction), whatever the tasks' sizes.
        return int(len(classes) * r.fraction)
    if r.selection in PER_TASK:
        return r.per_class * num_classes * tasks_per_class
    return r.per_class * num_classes if r.per_class > 0 else r.memory_size


def tasks_per_class(config: ml_collections.ConfigDict) -> int:
    """How many tasks of ``config``'s scenario show each class: 1 when class-incremental, every
    task otherwise."""
    return 1 if config.scenario == "class_incremental" else config.num_tasks


def check_config(r: ml_collections.ConfigDict, section: str = "replay") -> None:
    """ValueError naming the field of the replay settings ``r`` (``config.<section>``) that
    cannot work."""
    if r.selection not in SELECTIONS:
        raise ValueError(f"{section}.selection={r.selection!r}; choose one of {list(SELECTIONS)}")
    if r.batch_size < 1:
        raise ValueError(f"{section}.batch_size={r.batch_size}; set it to at least 1")
    if r.per_class < 0 or (r.per_class == 0 and r.memory_size < 1):
        raise ValueError(
            f"{section}.memory_size={r.memory_size}, {section}.per_class={r.per_class}; set a "
            "positive memory_size, or per_class > 0 for a fixed number of exemplars per class"
        )
    if not 0.0 < r.fraction <= 1.0:
        raise ValueError(
            f"{section}.fraction={r.fraction}; set the share of each class (first_per_class) or "
            "task (random_per_task) in (0, 1]"
        )
    mode, source = r.get("mode", "extend"), r.get("source", "memory")  # Kaizen's has neither
    if mode not in MODES:
        raise ValueError(f"{section}.mode={mode!r}; choose one of {list(MODES)}")
    if mode == "mix" and (r.selection not in AT_TASK_END or source != "memory"):
        raise ValueError(
            f"{section}.mode='mix' adds the memory's exemplars to each task's data at its start, "
            f"so it needs a memory filled at the ends of tasks: set {section}.selection to one of "
            f"{list(AT_TASK_END)} (not {r.selection!r}) and {section}.source='memory' (not "
            f"{source!r}), or {section}.mode='extend'"
        )
    if r.sampling not in SAMPLINGS:
        raise ValueError(f"{section}.sampling={r.sampling!r}; choose one of {list(SAMPLINGS)}")
    if r.sampling == "loader" and r.selection not in AT_TASK_END:
        raise ValueError(
            f"{section}.sampling='loader' walks passes over a memory that stays fixed during a "
            f"task, which {section}.selection={r.selection!r} updates at every step; set "
            f"{section}.selection to one of {list(AT_TASK_END)} or {section}.sampling='uniform'"
        )
    if r.selection in PER_TASK and r.per_class < 1:
        raise ValueError(
            f"{section}.selection={r.selection!r} keeps {section}.per_class exemplars per class "
            f"(min_var: per cluster) of every task; set {section}.per_class to at least 1 "
            "(CCL: 20)"
        )


def loader_draw(
    memory: memory_lib.Memory,
    key: jax.Array,
    size: int,
    eligible: jax.Array,
    *,
    epoch: jax.Array,
    step_in_epoch: jax.Array,
):
    """The ``size`` slots a shuffled, tail-dropping loader over the ``eligible`` slots (bool [M])
    gives at step ``step_in_epoch`` of epoch ``epoch`` (int32 []), restarted every epoch: with n
    eligible slots, a pass is floor(n / size) batches of a random order drawn from ``key``
    (constant within the stage) folded with the epoch and the pass; fewer than ``size`` eligible
    slots are cycled (the reference's loader then takes one batch of all n:
    ``batch_size=min(args.replay_batch_size, len(replay_dataset))``, Kaizen ``main_pretrain.py``
    l.162). Returns (slots int32 [size], any eligible: bool [])."""
    n = jnp.sum(eligible, dtype=jnp.int32)
    per_pass = jnp.maximum(n // size, 1)
    pass_key = jax.random.fold_in(jax.random.fold_in(key, epoch), step_in_epoch // per_pass)
    scores = jnp.where(eligible, jax.random.uniform(pass_key, eligible.shape), -jnp.inf)
    order = jnp.argsort(-scores)  # the eligible slots first, in a uniformly random order
    positions = (step_in_epoch % per_pass) * size + jnp.arange(size)
    return order[positions % jnp.maximum(n, 1)].astype(jnp.int32), n > 0


def draw(memory: memory_lib.Memory, key: jax.Array, size: int, eligible: jax.Array):
    """``size`` slots drawn uniformly without replacement among the ``eligible`` ones (bool [M]),
    cycled when fewer are eligible; returns (slots int32 [size], any eligible: bool [])."""
    slots, drawn = memory_lib.sample(memory.replace(valid=eligible), key, size)
    count = jnp.sum(drawn)
    return slots[jnp.arange(size) % jnp.maximum(count, 1)], count > 0


def memory_rows(memory: memory_lib.Memory, slots: jax.Array, data: TrainData, available) -> Batch:
    """The batch of memory ``slots``: images from the memory (data in host memory) or gathered
    from the on-device split, the labels the learner sees, valid where ``available``, and the
    slots themselves (``Batch.slots``, to look up the memory's payload)."""
    ids = memory.ids[slots]
    images = jnp.take(data.images, ids, axis=0) if memory.images is None else memory.images[slots]
    return Batch(
        images=images,
        labels=jnp.take(data.labels, ids),
        ids=ids,
        tasks=memory.tasks[slots],
        valid=jnp.broadcast_to(available, ids.shape),
        slots=slots,
    )


def in_step_update(
    selection: str, per_class: int, payload: Callable[[BufferInputs], Any] | None = None
):
    """``Strategy.update_buffers`` of a memory filled inside the step from the step's own rows;
    with ``payload``, (the step's ``BufferInputs``) -> the payload of its own rows, [B, ...] per
    leaf (what the network gave them: ``inputs.outputs``), kept with each stored row."""

    def update_buffers(inputs: BufferInputs):
        state, batch, data = inputs.state, inputs.batch, inputs.data
        memory = state.buffers["memory"]
        candidates = dict(
            ids=batch.ids,
            labels=jnp.take(data.classes, batch.ids),
            tasks=batch.tasks,
            images=None if memory.images is None else batch.images,
            payload=None if payload is None else payload(inputs),
        )
        if selection == "reservoir":
            memory = memory_lib.reservoir_update(memory, inputs.key, **candidates)
        else:
            quota = per_class if per_class > 0 else memory_lib.SHARED
            memory = memory_lib.reservoir_update(memory, inputs.key, quota=quota, **candidates)
        return {**state.buffers, "memory": memory}

    return update_buffers


def view_embeddings(objective: Objective, num_views: int = MIN_VAR_VIEWS):
    """(variables, uint8 images [b, H, W, C], uint32 key data [b, 2]) -> float32 [b, V, D]: the
    L2-normalised projections, BatchNorm in inference mode, of ``num_views - 1`` augmentations of
    each image (the objective's two views in turn, each image its own key) and of its centre crop
    (``augment.center_crop_batch``, last), for ``min_var`` (CCL's ``save_replay_image`` embeds in
    ``model.eval()``). CCL's six augmentations are all MoCo v2's one view; alternating the
    objective's two views is this library's choice for objectives with asymmetric views."""
    model = objective.model

    def embed(variables, images, key_data):
        keys = jax.random.wrap_key_data(key_data)

        def project(x):
            return l2_normalize(model.apply(variables, x, False)["projection"])

        views = []
        for v in range(num_views - 1):
            view_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, v)
            augment_view = functools.partial(augment.augment_image, cfg=objective.views[v % 2])
            views.append(project(jax.vmap(augment_view)(view_keys, images)))
        anchor = augment.center_crop_batch(
            images, objective.views[0], fraction=augment.CENTER_CROP_FRACTION
        )
        return jnp.stack([*views, project(anchor)], axis=1)

    return embed


def end_of_task_selection(
    r: ml_collections.ConfigDict,
    objective: Objective,
    payload: Callable[[TaskEnd, np.ndarray], Any] | None = None,
):
    """``Strategy.end_task`` that adds the finished task's exemplars (herding, random,
    first_per_class, random_per_task, min_var or random_with_replacement, from the replay
    settings ``r``) and shrinks the earlier classes to the new per-class quota (the last four
    size the memory so that nothing shrinks); with ``payload``, (the
    ``TaskEnd``, the chosen example ids int [K]) -> their payload, [K, ...] per leaf, kept with
    each stored exemplar."""
    embed = view_embeddings(objective) if r.selection == "min_var" else None

    def end_task(end: TaskEnd) -> StrategyState:
        strategy_state = end.state.strategy
        memory = strategy_state.buffers["memory"]
        task = end.next_task - 1
        ids = end.indices
        classes = end.train.labels[ids]
        seen = set(np.unique(classes)) | set(np.asarray(memory.labels)[np.asarray(memory.valid)])
        quota = memory_lib.class_quota(len(seen), capacity=memory.capacity, per_class=r.per_class)
        if r.selection == "first_per_class":
            rank = end.train.archive_rank
            rows = memory_lib.first_per_class(
                classes, r.fraction, order=None if rank is None else rank[ids]
            )
            priority = np.zeros(len(rows), np.float32)
            quota = memory.capacity  # sized to fit: nothing shrinks
        elif r.selection == "random_per_task":
            rows = random_per_task_rows(end.key, task, len(ids), r.fraction)
            priority = np.zeros(len(rows), np.float32)
            quota = memory.capacity  # sized to fit: nothing shrinks
        elif r.selection == "min_var":
            rows, priority = _min_var_rows(end, ids, classes, r.per_class, embed, task)
            quota = memory.capacity  # per_class per cluster, as many clusters as classes
        elif r.selection == "random_with_replacement":
            rows = random_with_replacement_rows(end.key, task, classes, r.per_class)
            priority = np.zeros(len(rows), np.float32)
            quota = memory.capacity  # per_class per class of the task, drawn over the task
        else:
            rows, priority = _ranked_rows(end, ids, classes, quota, r.selection, task)
        chosen = ids[rows]
        memory = memory_lib.keep_top_per_class(
            memory,
            ids=chosen,
            labels=classes[rows],
            tasks=task,
            priority=priority,
            valid=True,
            quota=quota,
            images=None if memory.images is None else end.train.images[chosen],
            payload=None if payload is None else payload(end, chosen),
        )
        return strategy_state.replace(buffers={**strategy_state.buffers, "memory": memory})

    return end_task


def _min_var_rows(end: TaskEnd, ids, classes, per_cluster: int, embed, task: int):
    """(rows of ``ids``, priorities -rank in cluster): CCL's min_var choice among the task's
    images; the labels only give the number of clusters (the task's class count)."""
    key = jax.random.fold_in(end.key, task)
    key_data = np.asarray(jax.random.key_data(jax.random.split(key, len(ids))))
    variables = {"params": end.state.params, "batch_stats": end.state.batch_stats}
    images = streaming.subset(end.train.images, ids)  # streamed: read a batch at a time
    embeddings = end.map_images(embed, variables, images, key_data)
    rows, _, rank = memory_lib.min_var_per_cluster(
        embeddings, num_clusters=len(np.unique(classes)), per_cluster=per_cluster, seed=task
    )
    return rows, -rank.astype(np.float32)


def _task_rng(key: jax.Array, task: int) -> np.random.Generator:
    """The host generator of a task-end draw: seeded with the strategy's ``key`` and the
    finished ``task``."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist() + [task])


def random_per_task_rows(key: jax.Array, task: int, num_rows: int, fraction: float) -> np.ndarray:
    """int [int(num_rows * fraction)]: sorted rows of the finished task's ``num_rows`` examples,
    drawn uniformly without replacement from a generator seeded with the strategy's ``key`` and
    the ``task`` (Kaizen's data-incremental exemplars; the float product truncated as its
    ``int(len(split_dataset) * proportion)``)."""
    return np.sort(_task_rng(key, task).choice(num_rows, int(num_rows * fraction), replace=False))


def random_with_replacement_rows(
    key: jax.Array, task: int, classes: np.ndarray, per_class: int
) -> np.ndarray:
    """int [per_class * (the task's class count)]: rows of the finished task's examples (whose
    classes are ``classes``), drawn uniformly with replacement from a generator seeded with the
    strategy's ``key`` and the ``task`` (CCL's SimpleReplay, ``train.py`` l.386-389)."""
    return _task_rng(key, task).integers(0, len(classes), size=per_class * len(np.unique(classes)))


def _ranked_rows(end: TaskEnd, ids, classes, quota: int, selection: str, task: int):
    """(rows of ``ids``, priorities): each class's ``quota`` rows in order, herding's or drawn at
    random, class by class in increasing label, priority -rank."""
    labels = np.unique(classes)
    counts = [min(quota, int(np.sum(classes == c))) for c in labels]
    priority = np.concatenate([-np.arange(n, dtype=np.float32) for n in counts])
    if selection == "random":
        return memory_lib.random_per_class(classes, quota, _task_rng(end.key, task)), priority
    variables = {"params": end.state.params, "batch_stats": end.state.batch_stats}
    rows = []
    for c, n in zip(labels, counts, strict=True):
        members = np.flatnonzero(classes == c)
        features = end.features(variables, streaming.subset(end.train.images, ids[members]))
        rows.append(members[np.asarray(memory_lib.herding(features, n))])
    return np.concatenate(rows), priority


def memory_state(slots_for: Callable[[Any], int], *, on_device: bool, payload: Any = None):
    """``Strategy.init`` of an empty memory of ``slots_for(train)`` slots (``train``: the run's
    training split), holding example ids when the data are on the device and the images
    themselves otherwise, and a ``payload`` per slot when given (one slot's shapes and dtypes,
    as ``cl_ssl.memory.empty_memory`` takes them)."""

    def init(variables, key, train):
        del variables, key
        slots = slots_for(train)
        if slots < 1:
            raise ValueError(
                f"replay: the memory would have {slots} slots; raise replay.fraction, "
                "replay.memory_size or replay.per_class"
            )
        image_shape = None if on_device else train.images.shape[1:]
        memory = memory_lib.empty_memory(slots, image_shape, payload)
        return StrategyState(buffers={"memory": memory})

    return init


def mixed_exemplars(state: StrategyState, stage: int) -> np.ndarray:
    """``Strategy.stage_examples`` of ``replay.mode='mix'``: the example ids of the memory's
    valid exemplars of tasks before ``stage``, in slot order (repeats kept)."""
    memory = state.buffers["memory"]
    keep = np.asarray(memory.valid) & (np.asarray(memory.tasks) < stage)
    return np.asarray(memory.ids)[keep].astype(np.int32)


def rehearsal(
    config: ml_collections.ConfigDict,
    objective: Objective,
    section: str = "replay",
    *,
    allow_mix: bool = False,
) -> Strategy:
    """Replay from the settings ``config.<section>`` (a dotted path): the memory, its selection
    and the replay sub-batch (``mode='extend'``) or the exemplars added to each task's data
    (``mode='mix'``, where ``allow_mix``: the strategies whose terms read such rows, replay and
    CCL), for any strategy that rehearses (replay itself, Kaizen, CCL); ``min_var`` embeds with
    ``objective``'s model and views, and sizes the memory for the run's scenario
    (``tasks_per_class``)."""
    r = functools.reduce(lambda c, key: c[key], section.split("."), config)
    check_config(r, section)
    mix = r.get("mode", "extend") == "mix"
    if mix and not allow_mix:
        raise ValueError(
            f"{section}.mode='mix': this strategy reads its replayed rows from a joined replay "
            f"batch; set {section}.mode='extend'"
        )
    epoch, step_in_epoch = f"{section}/epoch", f"{section}/step_in_epoch"
    init = memory_state(
        lambda train: capacity(r, train.labels, train.num_classes, tasks_per_class(config)),
        on_device=config.dataset.on_device,
    )
    # The loader's orders derive from the run's seed, the task, the epoch and the pass.
    order_key = jax.random.fold_in(jax.random.key(config.seed), 0x10AD)

    def extend_batch(inputs: RowInputs):
        memory = inputs.state.buffers["memory"]
        eligible = memory.valid & (memory.tasks < inputs.task)  # earlier tasks only
        if r.sampling == "uniform":
            slots, available = draw(memory, inputs.key, r.batch_size, eligible)
        else:
            slots, available = loader_draw(
                memory,
                jax.random.fold_in(order_key, inputs.task),
                r.batch_size,
                eligible,
                epoch=inputs.hyper[epoch].astype(jnp.int32),
                step_in_epoch=inputs.hyper[step_in_epoch].astype(jnp.int32),
            )
        return join(inputs.batch, memory_rows(memory, slots, inputs.data, available))

    def schedules(num_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        if r.sampling == "uniform":
            return {}
        steps = np.arange(num_steps)
        return {epoch: steps // steps_per_epoch, step_in_epoch: steps % steps_per_epoch}

    if mix:
        return Strategy(
            name="replay",
            init=init,
            stage_examples=mixed_exemplars,
            end_task=end_of_task_selection(r, objective),
        )
    return Strategy(
        name="replay",
        init=init,
        extend_batch=extend_batch,
        extends_batch_from=1,
        schedules=schedules,
        **(
            {"update_buffers": in_step_update(r.selection, r.per_class)}
            if r.selection in IN_STEP
            else {"end_task": end_of_task_selection(r, objective)}
        ),
    )


def make(config: ml_collections.ConfigDict, objective: Objective) -> Strategy:
    """Replay from ``config.replay``, for any objective."""
    return rehearsal(config, objective, allow_mix=True)


STRATEGY = StrategySpec(make=make, section="replay", default_config=default_config)
