"""Tests of the exemplar memory in cl_ssl.memory against NumPy transcriptions, hand-made cases and
sampling statistics (vmapped over PRNG keys)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cl_ssl import memory

TRIALS = 2000  # PRNG keys per statistical test
SIGMAS = 5.0  # tolerance of the statistical tests, in binomial standard deviations

# Jitted once for the whole file: calls with the same shapes share one compilation.
keep_top = jax.jit(memory.keep_top)
keep_top_per_class = jax.jit(memory.keep_top_per_class)  # the quota is traced
reservoir_update = jax.jit(memory.reservoir_update)
herding = jax.jit(memory.herding, static_argnums=1)
sample = jax.jit(memory.sample, static_argnums=2)


def _assert_frequencies(counts, probability, trials=TRIALS):
    """Each empirical frequency counts / trials is within SIGMAS binomial sigmas of probability."""
    sigma = np.sqrt(probability * (1 - probability) / trials)
    np.testing.assert_array_less(np.abs(np.asarray(counts) / trials - probability), SIGMAS * sigma)


def _stored(mem):
    """The memory's valid entries as NumPy arrays (ids, labels, tasks, priority)."""
    valid = np.asarray(mem.valid)
    return tuple(np.asarray(x)[valid] for x in (mem.ids, mem.labels, mem.tasks, mem.priority))


# ---------------------------------------------------------------------------------------------
# NumPy references, with explicit loops.


def np_herding(features, num_exemplars):
    """iCaRL Algorithm 4, line by line, in float64 (strict < keeps the lowest index on ties)."""
    features = np.asarray(features, np.float64)
    phi = features / np.linalg.norm(features, axis=1, keepdims=True)
    mu = phi.mean(axis=0)
    chosen = []
    for k in range(1, num_exemplars + 1):
        best, best_distance = None, np.inf
        for i in range(len(phi)):
            if i in chosen:
                continue
            distance = np.linalg.norm(mu - (phi[i] + sum(phi[j] for j in chosen)) / k)
            if distance < best_distance:
                best, best_distance = i, distance
        chosen.append(best)
    return np.array(chosen)


def avalanche_group_lengths(max_size, num_groups):
    """Avalanche's ``BalancedExemplarsBuffer.get_group_lengths`` with ``adaptive_size``
    (``avalanche/training/storage_policy.py``), transcribed."""
    lengths = [max_size // num_groups for _ in range(num_groups)]
    rem = max_size - sum(lengths)
    for i in range(rem):
        lengths[i] += 1
    return lengths


def np_keep(mem, ids, labels, tasks, priority, valid, quota=None):
    """The union of the memory's valid slots and the valid candidates; with a quota, each class
    (labels >= 0 only) keeps its ``quota`` highest priorities (with ``memory.SHARED``, its length
    as Avalanche's ``ClassBalancedBuffer`` pairs its set of seen classes with the group lengths);
    then the ``capacity`` highest. Ties go to the memory first, then the candidates in order.
    Returns the packed expected arrays."""
    stored = list(zip(*_stored(mem), strict=True))  # the memory's valid slots, in slot order
    presented = [
        e for e, v in zip(zip(ids, labels, tasks, priority, strict=True), valid, strict=True) if v
    ]
    # (position in the union, id, label, task, priority)
    entries = [(pos, *entry) for pos, entry in enumerate(stored + presented)]
    if quota is not None:
        seen_classes = {e[2] for e in entries if e[2] >= 0}
        if quota == memory.SHARED:
            lengths = avalanche_group_lengths(mem.capacity, len(seen_classes))
            quotas = dict(zip(seen_classes, lengths, strict=True))
        else:
            quotas = dict.fromkeys(seen_classes, quota)
        kept = []
        for label, class_quota in quotas.items():
            in_class = sorted((e for e in entries if e[2] == label), key=lambda e: (-e[4], e[0]))
            kept += in_class[:class_quota]
        entries = kept
    entries = sorted(entries, key=lambda e: (-e[4], e[0]))[: mem.capacity]
    pad = mem.capacity - len(entries)
    return {
        "ids": np.array([e[1] for e in entries] + [-1] * pad, np.int32),
        "labels": np.array([e[2] for e in entries] + [-1] * pad, np.int32),
        "tasks": np.array([e[3] for e in entries] + [-1] * pad, np.int32),
        "priority": np.array([e[4] for e in entries] + [-np.inf] * pad, np.float32),
        "valid": np.array([True] * len(entries) + [False] * pad),
    }


def _assert_memory_equals(mem, expected):
    for name, value in expected.items():
        np.testing.assert_array_equal(getattr(mem, name), value, err_msg=name)


def _candidates(seed, batch, num_classes=3, first_id=0):
    """Random candidates with tied integer priorities, some invalid, some with label -1."""
    rng = np.random.default_rng(seed)
    return {
        "ids": np.arange(first_id, first_id + batch, dtype=np.int32),
        "labels": rng.integers(-1, num_classes, batch).astype(np.int32),
        "tasks": rng.integers(0, 3, batch).astype(np.int32),
        "priority": rng.integers(0, 4, batch).astype(np.float32),
        "valid": rng.random(batch) < 0.8,
    }


# ---------------------------------------------------------------------------------------------
# The pytree


def test_empty_memory_and_nbytes():
    mem = memory.empty_memory(10, (4, 4, 3))
    assert mem.capacity == 10
    assert mem.ids.dtype == mem.labels.dtype == mem.tasks.dtype == jnp.int32
    assert mem.priority.dtype == jnp.float32 and mem.valid.dtype == jnp.bool_
    assert mem.images.shape == (10, 4, 4, 3) and mem.images.dtype == jnp.uint8
    assert not mem.valid.any() and (mem.ids == -1).all() and (mem.priority == -np.inf).all()
    assert memory.nbytes(mem) == 10 * (4 + 4 + 4 + 4 + 1) + 10 * 4 * 4 * 3
    assert memory.empty_memory(10).images is None
    assert memory.nbytes(memory.empty_memory(10)) == 10 * (4 + 4 + 4 + 4 + 1)


# ---------------------------------------------------------------------------------------------
# keep_top and keep_top_per_class


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_keep_top_matches_numpy_reference(seed):
    mem = memory.empty_memory(6)
    for step in range(4):
        candidates = _candidates(10 * seed + step, 5, first_id=5 * step)
        expected = np_keep(mem, **candidates)
        mem = keep_top(mem, **candidates)
        _assert_memory_equals(mem, expected)


@pytest.mark.parametrize("seed, quota", [(0, 1), (1, 2), (2, 3), (3, 10)])
def test_keep_top_per_class_matches_numpy_reference(seed, quota):
    mem = memory.empty_memory(7)
    for step in range(4):
        candidates = _candidates(10 * seed + step, 6, first_id=6 * step)
        expected = np_keep(mem, **candidates, quota=quota)
        mem = keep_top_per_class(mem, **candidates, quota=jnp.int32(quota))
        _assert_memory_equals(mem, expected)
        assert (np.asarray(mem.labels)[np.asarray(mem.valid)] >= 0).all()


@pytest.mark.parametrize(
    "seed, capacity, num_classes", [(0, 7, 3), (1, 8, 3), (2, 9, 5), (3, 2, 5), (4, 3, 6)]
)
def test_shared_quota_is_avalanches_class_balanced_buffer(seed, capacity, num_classes):
    """``quota=SHARED``: the classes present share the capacity, the remainder going to the first
    classes of the set of their ids, as in Avalanche; with more classes than slots (the last two
    cases), the classes of lowest ids keep one each."""
    shared = jax.jit(functools.partial(memory.keep_top_per_class, quota=memory.SHARED))
    mem = memory.empty_memory(capacity)
    for step in range(5):
        candidates = _candidates(10 * seed + step, 6, num_classes, first_id=6 * step)
        expected = np_keep(mem, **candidates, quota=memory.SHARED)
        mem = shared(mem, **candidates)
        _assert_memory_equals(mem, expected)
    assert int(mem.valid.sum()) == capacity  # every slot used, none left by a floored share


def test_keep_top_per_class_shrinks_classes_to_a_lower_quota():
    mem = memory.empty_memory(8)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    priority = np.arange(8, dtype=np.float32)
    mem = keep_top(mem, ids=np.arange(8), labels=labels, tasks=0, priority=priority, valid=True)
    shrunk = keep_top_per_class(
        mem, ids=np.zeros(1), labels=0, tasks=0, priority=0.0, valid=False, quota=2
    )
    np.testing.assert_array_equal(shrunk.ids, [7, 6, 3, 2, -1, -1, -1, -1])


# ---------------------------------------------------------------------------------------------
# Reservoir sampling


def _stream(update, ids, labels, batch, capacity, **kwargs):
    """Presents ``ids`` batch by batch to TRIALS memories at once, each drawing its own keys.

    Returns the memories after each batch as NumPy arrays [TRIALS, num_batches, capacity]."""
    step = jax.jit(
        jax.vmap(
            lambda mem, key, batch_ids, batch_labels: update(
                mem, key, ids=batch_ids, labels=batch_labels, tasks=0, **kwargs
            ),
            (0, 0, None, None),
        )
    )
    mem = jax.tree.map(
        lambda x: jnp.broadcast_to(x, (TRIALS, *x.shape)), memory.empty_memory(capacity)
    )
    history = []
    for start in range(0, len(ids), batch):
        keys = jax.random.split(jax.random.key(start), TRIALS)
        mem = step(mem, keys, ids[start : start + batch], labels[start : start + batch])
        history.append(mem)
    return jax.tree.map(lambda *steps: np.stack(steps, axis=1), *history)


def test_reservoir_inclusion_probability_is_m_over_n():
    capacity, n, batch = 10, 40, 4
    ids = np.random.default_rng(0).permutation(100)[:n].astype(np.int32)  # arbitrary ids
    history = _stream(
        memory.reservoir_update,
        ids,
        np.zeros(n, np.int32),
        batch,
        capacity=capacity,
    )
    valid = np.asarray(history.valid)  # [trials, batches, capacity]
    seen = batch * np.arange(1, n // batch + 1)
    np.testing.assert_array_equal(
        valid.sum(-1), np.broadcast_to(np.minimum(capacity, seen), valid.shape[:2])
    )
    final_ids, final_valid = np.asarray(history.ids)[:, -1], valid[:, -1]
    for trial_ids in final_ids:
        assert len(set(trial_ids)) == capacity and set(trial_ids) <= set(ids)
    counts = [np.sum((final_ids == i) & final_valid) for i in ids]
    _assert_frequencies(counts, capacity / n)


def test_reservoir_ignores_invalid_candidates():
    mem = reservoir_update(
        memory.empty_memory(8),
        jax.random.key(1),
        ids=np.arange(6),
        labels=0,
        tasks=2,
        valid=np.array([True, False, True, True, False, True]),
    )
    ids, _, tasks, _ = _stored(mem)
    assert sorted(ids) == [0, 2, 3, 5] and (tasks == 2).all()
    assert not np.asarray(mem.valid)[4:].any()  # valid slots packed first


def test_class_balanced_quota_and_uniformity_within_class():
    capacity, quota, batch = 16, 5, 4
    sizes = {0: 20, 1: 12, 2: 4}
    labels_by_id = np.repeat(list(sizes), list(sizes.values())).astype(np.int32)
    ids = np.random.default_rng(1).permutation(len(labels_by_id)).astype(np.int32)  # stream order
    history = _stream(
        memory.reservoir_update,
        ids,
        labels_by_id[ids],
        batch,
        capacity=capacity,
        quota=jnp.int32(quota),
    )
    valid, hist_ids = np.asarray(history.valid), np.asarray(history.ids)
    np.testing.assert_array_equal(np.asarray(history.labels)[valid], labels_by_id[hist_ids[valid]])
    per_class = np.stack([((np.asarray(history.labels) == c) & valid).sum(-1) for c in sizes], -1)
    assert per_class.max() <= quota
    np.testing.assert_array_equal(per_class[:, -1], np.broadcast_to([5, 5, 4], (TRIALS, 3)))
    final_ids, final_valid = hist_ids[:, -1], valid[:, -1]
    for c, size in sizes.items():
        counts = [np.sum((final_ids == i) & final_valid) for i in np.flatnonzero(labels_by_id == c)]
        if size <= quota:
            assert min(counts) == TRIALS
        else:
            _assert_frequencies(counts, quota / size)


# ---------------------------------------------------------------------------------------------
# Herding


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_herding_matches_icarl_algorithm_4(seed):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((24, 6)) * rng.uniform(0.1, 10.0, (24, 1))  # rows of any norm
    features = features.astype(np.float32)
    indices = herding(features, 24)
    assert indices.dtype == jnp.int32 and indices.shape == (24,)
    np.testing.assert_array_equal(indices, np_herding(features, 24))
    assert sorted(np.asarray(indices)) == list(range(24))  # a permutation when m = N


def test_herding_ties_go_to_the_lowest_index():
    base = np.random.default_rng(4).standard_normal((5, 4)).astype(np.float32)
    features = np.concatenate([base, base, base])  # each row three times: exact ties
    features = features[np.random.default_rng(5).permutation(15)]
    indices = np.asarray(herding(features, 12))
    np.testing.assert_array_equal(indices, np_herding(features, 12))
    # Of identical rows, the earliest is picked first.
    first = {}
    for i in indices:
        assert i >= first.setdefault(features[i].tobytes(), i)
    assert len(first) == 5


def test_herding_prefix_is_the_smaller_selection():
    features = np.random.default_rng(6).standard_normal((12, 5)).astype(np.float32)
    np.testing.assert_array_equal(herding(features, 3), herding(features, 5)[:3])
    assert herding(features, 0).shape == (0,)


def test_herding_rejects_more_exemplars_than_rows():
    with pytest.raises(ValueError, match="cannot choose 6 exemplars among 5 rows"):
        memory.herding(np.ones((5, 3), np.float32), 6)


# ---------------------------------------------------------------------------------------------
# Host-side choices


def test_first_per_class_hand_made_case():
    labels = np.array([1, 1, 0, 2, 1, 0, 2, 0, 1, 0, 2, 1, 2])
    # class 0: rows 2 5 7 9 -> 2, 5; class 1: rows 0 1 4 8 11 -> floor(2.5) = 2 -> 0, 1;
    # class 2: rows 3 6 10 12 -> 3, 6.
    np.testing.assert_array_equal(memory.first_per_class(labels, 0.5), [0, 1, 2, 3, 5, 6])
    np.testing.assert_array_equal(memory.first_per_class(labels, 0.25), [0, 2, 3])
    np.testing.assert_array_equal(memory.first_per_class(labels, 1.0), np.arange(13))
    assert memory.first_per_class(labels, 0.0).size == 0
    # 100 * 0.29 is 28.999999999999996 in floats, which the reference's int() truncates.
    assert len(memory.first_per_class(np.zeros(100, int), 0.29)) == 28
    with pytest.raises(ValueError, match="fraction"):
        memory.first_per_class(labels, 1.5)
    # In another order (the archive's): the rows come first by it, here the last rows first.
    reverse = np.arange(13)[::-1]
    # class 0: 9 7 5 2 -> 9, 7; class 1: 11 8 4 1 0 -> 11, 8; class 2: 12 10 6 3 -> 12, 10.
    np.testing.assert_array_equal(
        memory.first_per_class(labels, 0.5, order=reverse), [7, 8, 9, 10, 11, 12]
    )


def test_random_per_class_counts_membership_and_determinism():
    labels = np.random.default_rng(7).permutation(np.repeat([0, 1, 2], [3, 7, 10]))
    drawn = memory.random_per_class(labels, 5, np.random.default_rng(0))
    assert len(set(drawn)) == len(drawn) == 3 + 5 + 5
    np.testing.assert_array_equal(labels[drawn], np.repeat([0, 1, 2], [3, 5, 5]))  # class by class
    np.testing.assert_array_equal(
        drawn, memory.random_per_class(labels, 5, np.random.default_rng(0))
    )
    assert not np.array_equal(drawn, memory.random_per_class(labels, 5, np.random.default_rng(1)))
    counts = np.zeros(len(labels))
    for seed in range(TRIALS):
        np.add.at(counts, memory.random_per_class(labels, 5, np.random.default_rng(seed)), 1)
    _assert_frequencies(counts[labels == 1], 5 / 7)
    _assert_frequencies(counts[labels == 2], 5 / 10)
    assert (counts[labels == 0] == TRIALS).all()


def test_class_quota():
    assert memory.class_quota(10, capacity=2000, per_class=20) == 20
    assert memory.class_quota(10, capacity=2000, per_class=0) == 200
    assert memory.class_quota(3, capacity=2000, per_class=0) == 666
    with pytest.raises(ValueError, match="0 exemplars per class"):
        memory.class_quota(10, capacity=5, per_class=0)
    with pytest.raises(ValueError, match="num_seen_classes"):
        memory.class_quota(0, capacity=5, per_class=0)


# ---------------------------------------------------------------------------------------------
# Sampling replay batches


def _memory_with(num_valid, capacity):
    return keep_top(
        memory.empty_memory(capacity),
        ids=100 + np.arange(num_valid),
        labels=0,
        tasks=0,
        priority=np.zeros(num_valid, np.float32),
        valid=True,
    )


@pytest.mark.parametrize("batch_size", [5, 10, 16])
def test_sample_draws_distinct_valid_slots(batch_size):
    mem = _memory_with(7, 12)
    for seed in range(3):
        slots, mask = sample(mem, jax.random.key(seed), batch_size)
        assert slots.dtype == jnp.int32 and slots.shape == mask.shape == (batch_size,)
        slots, mask = np.asarray(slots), np.asarray(mask)
        np.testing.assert_array_equal(mask, np.arange(batch_size) < min(batch_size, 7))
        assert len(set(slots[mask])) == mask.sum() and np.asarray(mem.valid)[slots[mask]].all()
        assert ((0 <= slots) & (slots < 12)).all()


def test_sample_is_uniform():
    mem = _memory_with(7, 12)
    keys = jax.random.split(jax.random.key(3), TRIALS)
    slots, mask = jax.jit(jax.vmap(memory.sample, (None, 0, None)), static_argnums=2)(mem, keys, 3)
    assert np.asarray(mask).all()
    counts = np.bincount(np.asarray(slots).ravel(), minlength=12)
    assert counts[7:].sum() == 0
    _assert_frequencies(counts[:7], 3 / 7)


# ---------------------------------------------------------------------------------------------
# Images


def test_images_follow_their_ids():
    images = np.random.default_rng(8).integers(0, 256, (40, 2, 3, 1), dtype=np.uint8)
    balanced = jax.jit(functools.partial(memory.reservoir_update, quota=3))
    mem_r = mem_b = memory.empty_memory(8, (2, 3, 1))
    for step in range(5):
        ids = np.arange(8 * step, 8 * step + 8)
        key = jax.random.key(step)
        mem_r = reservoir_update(mem_r, key, ids=ids, labels=ids % 3, tasks=0, images=images[ids])
        mem_b = balanced(mem_b, key, ids=ids, labels=ids % 3, tasks=0, images=images[ids])
        for mem in (mem_r, mem_b):
            valid = np.asarray(mem.valid)
            assert valid.sum() == 8
            np.testing.assert_array_equal(
                np.asarray(mem.images)[valid], images[np.asarray(mem.ids)[valid]]
            )
    with pytest.raises(ValueError, match="images"):
        memory.reservoir_update(mem_r, jax.random.key(0), ids=np.arange(2), labels=0, tasks=0)


def test_queue_push_wraps_around_when_the_rows_do_not_tile_it():
    queue = memory.zeros_queue(4, 1)
    queue = memory.push(queue, jnp.array([[1.0], [2.0], [3.0]]))
    queue = memory.push(queue, jnp.array([[4.0], [5.0], [6.0]]))
    np.testing.assert_array_equal(queue.items[:, 0], [5.0, 6.0, 3.0, 4.0])
    assert int(queue.ptr) == 2
    with pytest.raises(ValueError, match="do not fit"):
        memory.push(queue, jnp.zeros((5, 1)))


# ---------------------------------------------------------------------------------------------
# CCL's min_var selection


def np_augmentation_variance(embeddings):
    """save_replay_image l.450-455 image by image: normalised views, normalised mean, summed
    squared distances."""
    scores = []
    for views in np.asarray(embeddings, np.float64):
        f = [v / np.linalg.norm(v) for v in views]
        m = np.mean(f, axis=0)
        m = m / np.linalg.norm(m)
        scores.append(sum(float(np.sum((v - m) ** 2)) for v in f))
    return np.array(scores)


def test_augmentation_variance_matches_numpy_and_a_hand_made_case():
    embeddings = np.random.default_rng(0).standard_normal((5, 7, 4))
    np.testing.assert_allclose(
        memory.augmentation_variance(embeddings), np_augmentation_variance(embeddings), rtol=1e-12
    )
    # Equal views (up to scale) do not spread; two orthogonal unit views: m-hat = (1, 1)/sqrt(2),
    # each at squared distance 2 - sqrt(2).
    hand = np.array([[[1.0, 0.0], [3.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]])
    np.testing.assert_allclose(memory.augmentation_variance(hand), [0.0, 2 * (2 - np.sqrt(2))])


def test_min_var_keeps_the_most_invariant_images_of_each_cluster():
    """Two well-separated groups of centre crops (around +e1 and -e1); within each, the images
    whose augmented views spread least are kept, in increasing score."""
    rng = np.random.default_rng(1)
    n, views = 12, 4
    side = np.where(np.arange(n) < 6, 1.0, -1.0)
    spread = rng.uniform(0.01, 1.0, n)
    embeddings = np.zeros((n, views, 3))
    embeddings[:, :, 0] = side[:, None]
    embeddings[:, :-1, 1:] = spread[:, None, None] * rng.standard_normal((n, views - 1, 2))
    rows, cluster, rank = memory.min_var_per_cluster(
        embeddings, num_clusters=2, per_cluster=3, seed=0
    )
    scores = np_augmentation_variance(embeddings)
    expected = {
        tuple(sorted(np.argsort(np.where(side == s, scores, np.inf))[:3])) for s in (1.0, -1.0)
    }
    kept = {tuple(sorted(rows[cluster == c])) for c in (0, 1)}
    assert kept == expected
    for c in (0, 1):
        in_cluster = rows[cluster == c]
        assert list(rank[cluster == c]) == [0, 1, 2]
        assert np.all(np.diff(scores[in_cluster]) >= 0)
    # A cluster smaller than per_cluster gives all its images.
    rows, cluster, _ = memory.min_var_per_cluster(
        embeddings, num_clusters=2, per_cluster=10, seed=0
    )
    assert sorted(rows) == list(range(n))
    with pytest.raises(ValueError, match="13 clusters for 12 images"):
        memory.min_var_per_cluster(embeddings, num_clusters=13, per_cluster=1, seed=0)


def test_push_where_writes_the_kept_rows_in_order_and_the_last_ones_on_overflow():
    """CCL's extra sample queue: only the replayed rows' keys enter, first in first out; a batch
    keeping more rows than the queue holds leaves its last ``capacity`` kept rows."""
    queue = memory.zeros_queue(4, 1)
    rows = jnp.arange(1.0, 7.0)[:, None]
    queue = memory.push_where(queue, rows, jnp.array([0, 1, 0, 1, 1, 0], bool))
    np.testing.assert_array_equal(queue.items[:, 0], [2.0, 4.0, 5.0, 0.0])
    assert int(queue.ptr) == 3
    queue = memory.push_where(queue, rows, jnp.array([1, 0, 0, 0, 0, 1], bool))
    np.testing.assert_array_equal(queue.items[:, 0], [6.0, 4.0, 5.0, 1.0])
    assert int(queue.ptr) == 1
    unchanged = memory.push_where(queue, rows, jnp.zeros(6, bool))
    np.testing.assert_array_equal(unchanged.items, queue.items)
    assert int(unchanged.ptr) == 1
    full = memory.push_where(queue, rows, jnp.ones(6, bool))
    assert sorted(np.asarray(full.items[:, 0])) == [3.0, 4.0, 5.0, 6.0]
    assert int(full.ptr) == 1
