"""Fixed-shape memories as pytrees with pure updates: FIFO queues and an exemplar memory.

Both keep their shapes for the whole run, so the train step never compiles again however full
they are.

* ``Queue`` (MoCo keys, SwAV features, ISD anchors) is a ring buffer: ``push`` overwrites the
  oldest rows, ``push_where`` with a masked subset of a batch.
* ``Memory`` holds exemplars of past tasks (replay and distillation) as example ids, labels, tasks
  and a priority per slot, with their images for data sets kept in host memory and an optional
  payload pytree per slot (the features or logits a strategy stored with them). Every update is the
  union of the memory and a batch of candidates, cut back to the capacity by priority
  (``keep_top``), optionally with a per-class quota first (``keep_top_per_class``). Random
  priorities make it a reservoir sampler, overall or within each class (``reservoir_update``).
  ``herding`` orders a class's examples as iCaRL does, while ``first_per_class`` (Kaizen),
  ``random_per_class`` and ``min_var_per_cluster`` (CCL) choose exemplars on the host, in NumPy
  (``strategies.replay``'s task-end selections). ``sample`` draws replay batches.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cl_ssl.losses import l2_normalize

# ``keep_top_per_class``'s quota that shares the capacity among the classes present.
SHARED = "shared"


@flax.struct.dataclass
class Queue:
    """A FIFO of ``capacity`` rows.

    Attributes:
      items: [capacity, ...] the stored rows; order inside does not matter to any user.
      ptr: int32 [], the row the next push starts at.
    """

    items: jax.Array
    ptr: jax.Array

    @property
    def capacity(self) -> int:
        return self.items.shape[0]


def random_unit_queue(key: jax.Array, capacity: int, dim: int) -> Queue:
    """A queue of ``capacity`` random L2-normalised rows of width ``dim`` (MoCo's initial keys)."""
    items = l2_normalize(jax.random.normal(key, (capacity, dim), jnp.float32))
    return Queue(items=items, ptr=jnp.zeros((), jnp.int32))


def zeros_queue(capacity: int, dim: int) -> Queue:
    """A queue of ``capacity`` zero rows of width ``dim`` (SwAV's queue as created at a task start)."""
    return Queue(items=jnp.zeros((capacity, dim), jnp.float32), ptr=jnp.zeros((), jnp.int32))


def check_fits(name: str, capacity: int, batch: int) -> None:
    """ValueError unless pushes of ``batch`` rows tile a queue of ``capacity`` rows exactly."""
    if capacity < batch or capacity % batch:
        raise ValueError(
            f"{name}={capacity} must be a positive multiple of the global batch size {batch} (each "
            f"step pushes one batch); set it to {max(1, round(capacity / batch)) * batch}"
        )


def push(queue: Queue, rows: jax.Array) -> Queue:
    """The queue with ``rows`` [B, ...] written over its B oldest rows (no gradient flows).

    B <= capacity. When B divides the capacity (``check_fits``: the reference's queues take one
    batch per step) the rows are written as one slice; otherwise, as when a strategy's replay rows
    join the batch, row i goes to slot (ptr + i) mod capacity.
    """
    rows = lax.stop_gradient(rows).astype(queue.items.dtype)
    size = rows.shape[0]
    if size > queue.capacity:
        raise ValueError(f"push: {size} rows do not fit a queue of {queue.capacity}")
    if queue.capacity % size == 0:
        start = (queue.ptr,) + (0,) * (rows.ndim - 1)
        items = lax.dynamic_update_slice(queue.items, rows, start)
    else:
        items = queue.items.at[(queue.ptr + jnp.arange(size)) % queue.capacity].set(rows)
    return Queue(items=items, ptr=(queue.ptr + size) % queue.capacity)


def push_where(queue: Queue, rows: jax.Array, keep: jax.Array) -> Queue:
    """The queue with the ``keep`` rows of ``rows`` [B, ...] (bool [B]) written, in order, over its
    oldest rows; a fixed-shape push of a varying number of rows (CCL's extra sample queue takes
    the keys of a batch's replayed images only, ``moco/builder.py::_dequeue_and_enqueue``). When
    more than ``capacity`` rows are kept, the last ``capacity`` of them are written."""
    rows = lax.stop_gradient(rows).astype(queue.items.dtype)
    keep = keep.astype(bool)
    count = jnp.sum(keep, dtype=jnp.int32)
    surplus = jnp.maximum(count - queue.capacity, 0)
    position = jnp.cumsum(keep, dtype=jnp.int32) - 1 - surplus
    write = keep & (position >= 0)
    slots = jnp.where(write, (queue.ptr + position) % queue.capacity, queue.capacity)
    items = queue.items.at[slots].set(rows, mode="drop")
    return Queue(items=items, ptr=(queue.ptr + count - surplus) % queue.capacity)


# ---------------------------------------------------------------------------------------------
# Exemplar memory


@flax.struct.dataclass
class Memory:
    """A fixed-shape set of ``capacity`` exemplars; valid slots come first after every update.

    Attributes:
      ids: int32 [M], example ids (rows of the training set); -1 in empty slots.
      labels: int32 [M], class labels of the exemplars (-1 where unknown or empty).
      tasks: int32 [M], the task each exemplar came from; -1 in empty slots.
      priority: float32 [M], higher is kept first when the memory must shrink; -inf in empty slots.
      valid: bool [M], which slots hold an exemplar.
      images: uint8 [M, H, W, C], the exemplars' images, only for data sets kept in host memory
        (whatever is left over in empty slots); None otherwise.
      payload: a pytree of [M, ...] arrays a strategy stores with each exemplar (DER's features
        or logits, a task id), or None. Every update moves it with its slot: row i of each leaf
        always belongs to the exemplar in slot i (whatever is left over in empty slots).
    """

    ids: jax.Array
    labels: jax.Array
    tasks: jax.Array
    priority: jax.Array
    valid: jax.Array
    images: jax.Array | None = None
    payload: Any = None

    @property
    def capacity(self) -> int:
        return self.ids.shape[0]


def empty_memory(
    capacity: int, image_shape: tuple[int, ...] | None = None, payload: Any = None
) -> Memory:
    """A memory of ``capacity`` empty slots, with uint8 images of ``image_shape`` (H, W, C) if
    given, and with ``payload``, a pytree of one slot's shape and dtype (arrays or
    ``jax.ShapeDtypeStruct``, e.g. ``{'features': jax.ShapeDtypeStruct((512,), jnp.float32)}``),
    as zeros [capacity, ...] per leaf, if given."""
    images = None if image_shape is None else jnp.zeros((capacity, *image_shape), jnp.uint8)
    if payload is not None:
        payload = jax.tree.map(lambda x: jnp.zeros((capacity, *x.shape), x.dtype), payload)
    return Memory(
        ids=jnp.full((capacity,), -1, jnp.int32),
        labels=jnp.full((capacity,), -1, jnp.int32),
        tasks=jnp.full((capacity,), -1, jnp.int32),
        priority=jnp.full((capacity,), -jnp.inf, jnp.float32),
        valid=jnp.zeros((capacity,), jnp.bool_),
        images=images,
        payload=payload,
    )


def _check_payload(memory: Memory, payload: Any, size: int) -> Any:
    """The candidates' ``payload`` cast to the memory's dtypes; ValueError unless it has the
    memory's structure and one row of each leaf's slot shape for each of the ``size``
    candidates."""
    if (payload is None) != (memory.payload is None):
        raise ValueError(
            "pass a candidate payload exactly when the memory stores one (empty_memory's "
            f"payload): the memory has payload={memory.payload is not None}, the call "
            f"payload={payload is not None}"
        )
    if payload is None:
        return None
    expected = jax.tree.structure(memory.payload)
    if jax.tree.structure(payload) != expected:
        raise ValueError(
            f"the candidates' payload has the structure {jax.tree.structure(payload)}; the "
            f"memory's is {expected}"
        )

    def cast(stored, given):
        if jnp.shape(given) != (size, *stored.shape[1:]):
            raise ValueError(
                f"a candidate payload leaf of shape {jnp.shape(given)} does not match the "
                f"memory's {stored.shape}: it must be [{size}, "
                f"{', '.join(map(str, stored.shape[1:]))}], one row per candidate"
            )
        return jnp.asarray(given).astype(stored.dtype)

    return jax.tree.map(cast, memory.payload, payload)


def _pool(memory: Memory, ids, labels, tasks, priority, valid, images, payload=None) -> Memory:
    """The memory's M slots followed by the B candidates, as one Memory of M + B entries.

    ``labels``, ``tasks``, ``priority`` and ``valid`` broadcast to the shape [B] of ``ids``;
    ``payload`` is [B, ...] per leaf, exactly when the memory stores one.
    """
    if (images is None) != (memory.images is None):
        raise ValueError(
            "pass candidate images exactly when the memory stores images (empty_memory's "
            f"image_shape): the memory has images={memory.images is not None}, the call "
            f"images={images is not None}"
        )
    if images is not None and jnp.shape(images)[1:] != memory.images.shape[1:]:
        raise ValueError(
            f"candidate images of shape {jnp.shape(images)} do not match the memory's images "
            f"{memory.images.shape}: they must be [B, {', '.join(map(str, memory.images.shape[1:]))}]"
        )
    shape = jnp.shape(ids)
    candidates = Memory(
        ids=jnp.asarray(ids, jnp.int32),
        labels=jnp.broadcast_to(labels, shape).astype(jnp.int32),
        tasks=jnp.broadcast_to(tasks, shape).astype(jnp.int32),
        priority=jnp.broadcast_to(priority, shape).astype(jnp.float32),
        valid=jnp.broadcast_to(valid, shape).astype(jnp.bool_),
        images=None if images is None else jnp.asarray(images).astype(memory.images.dtype),
        payload=_check_payload(memory, payload, shape[0]),
    )
    return jax.tree.map(lambda old, new: jnp.concatenate([old, new]), memory, candidates)


def _select(pool: Memory, keep: jax.Array, capacity: int) -> Memory:
    """Of the entries of ``pool`` marked in ``keep``, the ``capacity`` of highest priority, packed
    first in decreasing priority.

    Ties go to the lower pool index (the memory's slots, then the candidates in order); slots left
    over are emptied.
    """
    index = jnp.arange(keep.shape[0])
    *_, ranked = lax.sort(
        (jnp.logical_not(keep).astype(jnp.int32), -pool.priority, index), num_keys=2
    )
    chosen = ranked[:capacity]
    kept = jax.tree.map(lambda x: x[chosen], pool)
    valid = keep[chosen]
    return kept.replace(
        ids=jnp.where(valid, kept.ids, -1),
        labels=jnp.where(valid, kept.labels, -1),
        tasks=jnp.where(valid, kept.tasks, -1),
        priority=jnp.where(valid, kept.priority, -jnp.inf),
        valid=valid,
    )


def keep_top(
    memory: Memory,
    *,
    ids: jax.Array,
    labels: jax.Array,
    tasks: jax.Array,
    priority: jax.Array,
    valid: jax.Array,
    images: jax.Array | None = None,
    payload: Any = None,
) -> Memory:
    """The ``capacity`` entries of highest priority among the memory's valid slots and the valid
    candidates.

    Ties go to the memory's existing entries first, then to the candidates in order. The kept
    entries are packed into the first slots in decreasing priority; the remaining slots are empty.
    Candidates are not matched against the memory: an id presented twice takes two slots.

    Args:
      memory: the memory, of capacity M.
      ids: int [B], the candidates' example ids.
      labels: int [B] (or a scalar), their class labels (-1 where unknown).
      tasks: int [B] (or a scalar), the task they come from.
      priority: float [B], their priorities (higher is kept first).
      valid: bool [B] (or a scalar); invalid candidates are ignored.
      images: uint8 [B, H, W, C], their images, exactly when the memory stores images.
      payload: their payload, [B, ...] per leaf, exactly when the memory stores one; each kept
        candidate's row lands in its slot.

    Returns:
      The updated Memory of capacity M.
    """
    pool = _pool(memory, ids, labels, tasks, priority, valid, images, payload)
    return _select(pool, pool.valid, memory.capacity)


def keep_top_per_class(
    memory: Memory,
    *,
    ids: jax.Array,
    labels: jax.Array,
    tasks: jax.Array,
    priority: jax.Array,
    valid: jax.Array,
    quota: jax.Array | int | str,
    images: jax.Array | None = None,
    payload: Any = None,
) -> Memory:
    """``keep_top`` with at most ``quota`` entries per class: among the memory's valid slots and the
    valid candidates, each class keeps its ``quota`` entries of highest priority, then the union is
    cut to the capacity by priority (ties as in ``keep_top``).

    With ``quota=SHARED``, the n classes present (in the memory or among the candidates) share the
    capacity M as Avalanche's ``ClassBalancedBuffer`` does (``avalanche/training/
    storage_policy.py``, ``BalancedExemplarsBuffer.get_group_lengths``): floor(M / n) entries each,
    and one more for the M mod n classes first in its order, the order of a Python set of the
    class ids, increasing for ids below the set's table size (any data set's here). With more
    classes than slots, the M classes of lowest ids keep one entry each.

    Per-class keeping needs labels: entries with a label < 0, in the memory or among the
    candidates, are dropped. The class-wise rank is computed on the device: the entries are sorted
    by (label, decreasing priority, position) and ranked within each label's segment.

    Args:
      memory: the memory, of capacity M.
      ids, labels, tasks, priority, valid, images, payload: the B candidates, as in
        ``keep_top``.
      quota: int32 scalar (may be traced), the most entries any class keeps, or ``SHARED``.

    Returns:
      The updated Memory of capacity M.
    """
    pool = _pool(memory, ids, labels, tasks, priority, valid, images, payload)
    eligible = pool.valid & (pool.labels >= 0)
    index = jnp.arange(eligible.shape[0])
    # Eligible entries first, grouped by label, each group in the order ``_select`` ranks them.
    *keys, order = lax.sort(
        (jnp.logical_not(eligible).astype(jnp.int32), pool.labels, -pool.priority, index),
        num_keys=3,
    )
    sorted_labels = keys[1]
    starts = jnp.concatenate([jnp.ones(1, jnp.bool_), sorted_labels[1:] != sorted_labels[:-1]])
    rank_in_class = index - lax.cummax(jnp.where(starts, index, 0))
    if isinstance(quota, str):
        if quota != SHARED:
            raise ValueError(f"keep_top_per_class: quota={quota!r}; give a number or SHARED")
        # The class's position among the eligible classes, by increasing label.
        class_start = starts & (keys[0] == 0)
        position = jnp.cumsum(class_start) - 1
        num_classes = jnp.maximum(jnp.sum(class_start), 1)
        capacity = memory.capacity
        sorted_quota = capacity // num_classes + (position < capacity % num_classes)
        quota = jnp.zeros_like(index).at[order].set(sorted_quota)
    rank = jnp.zeros_like(index).at[order].set(rank_in_class)
    return _select(pool, eligible & (rank < quota), memory.capacity)


def reservoir_update(
    memory: Memory,
    key: jax.Array,
    *,
    ids: jax.Array,
    labels: jax.Array,
    tasks: jax.Array,
    valid: jax.Array | None = None,
    images: jax.Array | None = None,
    quota: jax.Array | int | str | None = None,
    payload: Any = None,
) -> Memory:
    """Reservoir sampling (Vitter 1985, "Random sampling with a reservoir", ACM TOMS 11(1)) in its
    "top-M random keys" form, optionally within each class.

    Each presented candidate draws a priority u ~ U(0, 1) from ``key``, and the memory keeps the M
    highest keys among everything presented so far (``keep_top``). After n examples the memory is
    a uniform random subset of size min(M, n), so every presented example is kept with probability
    min(1, M / n), as with Vitter's Algorithm R. Use a fresh ``key`` for every call.

    With ``quota``, the class-balanced reservoir (``keep_top_per_class``): each class keeps the
    ``quota`` highest keys among its presented examples, a uniform random subset of size
    min(quota, n_c) of its n_c examples (Vitter's argument within each class), and the union is cut
    to the capacity by priority. Lowering the quota (more classes seen, see ``class_quota``)
    shrinks every class to a uniform subset of what it held. Labels must then be >= 0; candidates
    with a label < 0 are dropped.

    Args:
      memory: the memory, of capacity M.
      key: PRNG key for this batch's priorities.
      ids, labels, tasks, images, payload: the B candidates, as in ``keep_top``.
      valid: bool [B]; None presents every candidate.
      quota: None, an int32 scalar (may be traced), the most exemplars per class, or ``SHARED``
        (the capacity shared by the classes seen, ``keep_top_per_class``).

    Returns:
      The updated Memory of capacity M.
    """
    candidates = dict(
        ids=ids,
        labels=labels,
        tasks=tasks,
        priority=jax.random.uniform(key, jnp.shape(ids), jnp.float32),
        valid=True if valid is None else valid,
        images=images,
        payload=payload,
    )
    if quota is None:
        return keep_top(memory, **candidates)
    return keep_top_per_class(memory, quota=quota, **candidates)


def class_quota(num_seen_classes: int, *, capacity: int, per_class: int) -> int:
    """The number of exemplars each class may keep.

    ``per_class`` when it is > 0 (a fixed number per class, the memory growing with the classes up
    to its capacity); otherwise ``capacity // num_seen_classes`` (a fixed total shared equally by
    the seen classes: iCaRL's m = K / t, Rebuffi et al., CVPR 2017, Alg. 2).
    """
    if per_class > 0:
        return per_class
    if num_seen_classes < 1:
        raise ValueError(
            f"class_quota: num_seen_classes must be >= 1 to share the capacity, got {num_seen_classes}"
        )
    quota = capacity // num_seen_classes
    if quota == 0:
        raise ValueError(
            f"class_quota: a memory of capacity {capacity} shared by {num_seen_classes} classes "
            f"leaves 0 exemplars per class; raise the capacity to at least {num_seen_classes} or "
            f"set a fixed number per class"
        )
    return quota


def herding(features: jax.Array, num_exemplars: int) -> jax.Array:
    """iCaRL's herding selection (Rebuffi et al., CVPR 2017, Sec. 2.2 and Algorithm 4).

    With phi_i the L2-normalised rows of ``features`` and mu their mean, for k = 1, ..., m:

      p_k = argmin_{i not in {p_1, ..., p_{k-1}}} || mu - (1/k) (phi_i + sum_{j<k} phi_{p_j}) ||

    ties going to the lowest index. The order is greedy, so the first q indices are the herding
    selection of size q: shrinking a class's exemplar set is a slice. Jit-compatible with
    ``num_exemplars`` static.

    Args:
      features: float [N, D], the features of one class's examples (not normalised).
      num_exemplars: m <= N, the number of exemplars to choose.

    Returns:
      int32 [m], indices into the rows of ``features``, in priority order.
    """
    n = features.shape[0]
    if not 0 <= num_exemplars <= n:
        raise ValueError(
            f"herding: cannot choose {num_exemplars} exemplars among {n} rows; num_exemplars must "
            f"be between 0 and the number of rows"
        )
    features = jnp.asarray(features)
    phi = l2_normalize(features.astype(jnp.promote_types(features.dtype, jnp.float32)))
    mean = jnp.mean(phi, axis=0)

    def pick(carry, k):
        taken, picked_sum = carry
        distance = jnp.sum(jnp.square(mean - (picked_sum + phi) / k), axis=-1)
        best = jnp.argmin(jnp.where(taken, jnp.inf, distance)).astype(jnp.int32)
        return (taken.at[best].set(True), picked_sum + phi[best]), best

    ks = jnp.arange(1, num_exemplars + 1, dtype=phi.dtype)
    _, order = lax.scan(pick, (jnp.zeros(n, jnp.bool_), jnp.zeros_like(mean)), ks)
    return order


def first_per_class(
    labels: np.ndarray, fraction: float, order: np.ndarray | None = None
) -> np.ndarray:
    """Kaizen's exemplars (Tang et al., "Kaizen: Practical self-supervised continual learning with
    continual fine-tuning", WACV 2024): for each class, its first ``int(n_c * fraction)`` rows in
    data set order (``kaizen/utils/pretrain_dataloader.py`` l.60-66: ``nonzero()`` of the class
    over torchvision's CIFAR, in the archive's order; the float product truncated as there, so
    0.29 of 100 rows keeps 28). Host-side NumPy.

    Args:
      labels: int [N], the class of each row.
      fraction: in [0, 1], the share of each class to keep.
      order: int [N], each row's position in the data set's order (``ArraySplit.archive_rank``);
        None: the rows' own order.

    Returns:
      int [K], the kept row indices, sorted.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"first_per_class: fraction must be in [0, 1], got {fraction}")
    labels = np.asarray(labels)
    order = np.arange(len(labels)) if order is None else np.asarray(order)
    kept = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        rows = rows[np.argsort(order[rows], kind="stable")]
        kept.append(rows[: int(len(rows) * fraction)])
    return np.sort(np.concatenate([np.zeros(0, np.int64), *kept]))


def random_per_class(
    labels: np.ndarray, num_per_class: int, rng: np.random.Generator
) -> np.ndarray:
    """For each class, min(num_per_class, n_c) of its rows drawn uniformly without replacement.
    Host-side NumPy.

    Args:
      labels: int [N], the class of each row.
      num_per_class: the number of rows to draw from each class.
      rng: the generator to draw with (the result is a function of its state).

    Returns:
      int [K], the drawn row indices, class by class in increasing label, each class's rows in the
      order drawn (its priority order).
    """
    labels = np.asarray(labels)
    drawn = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        drawn.append(rng.choice(rows, size=min(num_per_class, len(rows)), replace=False))
    return np.concatenate([np.zeros(0, np.int64), *drawn])


def augmentation_variance(embeddings: np.ndarray) -> np.ndarray:
    """CCL's "min_var" score of each image: how far its views' embeddings spread.

    With f^(v) the L2-normalised embedding of view v and m-hat the L2-normalised mean of an
    image's V embeddings, the score is sum_v ||f^(v) - m-hat||^2 (Lin et al., ICME 2022, Sec. 3.2;
    ``VDIGPKU/ContinualContrastiveLearning`` ``train.py::save_replay_image`` l.450-455, whose
    embeddings come normalised from ``forward_encoder_q``).

    Args:
      embeddings: float [N, V, D], V views of each of N images.

    Returns:
      float64 [N], lower for images whose embedding changes less under augmentation.
    """
    f = np.asarray(embeddings, np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
    mean = f.mean(axis=1, keepdims=True)
    mean = mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)
    return np.sum(np.square(f - mean), axis=(1, 2))


def min_var_per_cluster(
    embeddings: np.ndarray, *, num_clusters: int, per_cluster: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CCL's label-free exemplar selection (``train.py::save_replay_image``, "min_var").

    The images are clustered by the embedding of their last view (the centre crop) with k-means,
    ``num_clusters`` clusters standing in for the task's classes; within each cluster the
    ``per_cluster`` images of lowest ``augmentation_variance`` are kept (all of a smaller
    cluster). K-means is scikit-learn's ``KMeans`` as in the reference (k-means++ initialisation,
    10 restarts, seeded here).

    Args:
      embeddings: float [N, V, D], V views of each image, the centre crop last.
      num_clusters: k.
      per_cluster: exemplars kept per cluster.
      seed: k-means' random state.

    Returns:
      (rows int64 [M], cluster int32 [M], rank int32 [M]): the kept rows of ``embeddings``, their
      cluster and their rank in it (0: the lowest score), cluster by cluster.
    """
    from sklearn.cluster import KMeans  # noqa: PLC0415 -- only the end of a CCL task needs it

    embeddings = np.asarray(embeddings)
    if not 1 <= num_clusters <= embeddings.shape[0]:
        raise ValueError(
            f"min_var: {num_clusters} clusters for {embeddings.shape[0]} images; need between 1 "
            "and the number of images"
        )
    anchors = embeddings[:, -1].astype(np.float64)
    clusters = KMeans(n_clusters=num_clusters, n_init=10, random_state=seed).fit_predict(anchors)
    scores = augmentation_variance(embeddings)
    rows, cluster, rank = [], [], []
    for c in range(num_clusters):
        members = np.flatnonzero(clusters == c)
        kept = members[np.argsort(scores[members], kind="stable")[:per_cluster]]
        rows.append(kept)
        cluster.append(np.full(len(kept), c, np.int32))
        rank.append(np.arange(len(kept), dtype=np.int32))
    return np.concatenate(rows), np.concatenate(cluster), np.concatenate(rank)


def sample(memory: Memory, key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """A uniform draw of ``batch_size`` slots without replacement among the memory's valid slots.

    Every slot draws a random key (-inf for empty slots) and the ``batch_size`` highest are taken
    (``lax.top_k``). When fewer than ``batch_size`` slots are valid, the extra rows are masked out
    and point at slot 0. Jit-compatible with ``batch_size`` static.

    Returns:
      (slots, mask): int32 [batch_size] slot indices and bool [batch_size], True for drawn rows.
    """
    scores = jnp.where(memory.valid, jax.random.uniform(key, (memory.capacity,)), -jnp.inf)
    scores = jnp.pad(scores, (0, max(0, batch_size - memory.capacity)), constant_values=-jnp.inf)
    values, slots = lax.top_k(scores, batch_size)
    mask = values > -jnp.inf
    return jnp.where(mask, slots, 0).astype(jnp.int32), mask


def nbytes(memory: Memory) -> int:
    """The memory's size in bytes (the sum over its arrays), for reporting."""
    return sum(leaf.nbytes for leaf in jax.tree.leaves(memory))
