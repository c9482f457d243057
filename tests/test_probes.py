"""Linear probe, weighted kNN, per-task accuracy (task-agnostic and task-aware) and the
class-balanced label subsets of cl_ssl.evaluation.probes."""

import numpy as np
import pytest

from cl_ssl.evaluation import probes


def _clusters(rng, num_classes, dim, per_class, scale=6.0):
    """Well separated Gaussian clusters, shuffled: float32 [num_classes * per_class, dim], int32 labels."""
    means = scale * rng.standard_normal((num_classes, dim))
    labels = np.repeat(np.arange(num_classes), per_class)
    features = means[labels] + rng.standard_normal((labels.size, dim))
    order = rng.permutation(labels.size)
    return features[order].astype(np.float32), labels[order].astype(np.int32)


def _accuracy(predictions, labels):
    return 100.0 * np.mean(predictions == labels)


def test_linear_probe_separates_gaussian_clusters():
    features, labels = _clusters(np.random.default_rng(0), num_classes=4, dim=8, per_class=100)
    logits = probes.linear_probe(
        features[:200], labels[:200], features[200:], num_classes=4, epochs=20, batch_size=32
    )
    assert logits.shape == (200, 4) and logits.dtype == np.float32
    assert _accuracy(logits.argmax(-1), labels[200:]) >= 99.0


def test_linear_probe_is_at_chance_on_random_labels():
    rng = np.random.default_rng(2)
    features = rng.standard_normal((800, 8)).astype(np.float32)
    labels = rng.integers(0, 4, size=800).astype(np.int32)
    logits = probes.linear_probe(
        features[:400], labels[:400], features[400:], num_classes=4, epochs=20, batch_size=32
    )
    # chance = 25 %; binomial std over 400 test samples is about 2.2 points
    assert 15.0 <= _accuracy(logits.argmax(-1), labels[400:]) <= 35.0


def test_linear_probe_returns_the_logits_of_the_fitted_classifier():
    rng = np.random.default_rng(3)
    features = rng.standard_normal((90, 6)).astype(np.float32)
    labels = rng.integers(0, 3, size=90).astype(np.int32)
    kwargs = dict(num_classes=3, epochs=4, batch_size=16, seed=7)
    kernel, bias = probes.fit_linear_classifier(features, labels, **kwargs)
    assert kernel.shape == (6, 3) and bias.shape == (3,) and kernel.dtype == np.float32
    logits = probes.linear_probe(features, labels, features, **kwargs)
    np.testing.assert_allclose(logits, features @ kernel + bias, rtol=1e-5, atol=1e-5)


def test_fit_linear_classifier_is_deterministic_for_a_seed():
    rng = np.random.default_rng(3)
    features = rng.standard_normal((90, 6)).astype(np.float32)
    labels = rng.integers(0, 3, size=90).astype(np.int32)
    kwargs = dict(num_classes=3, epochs=4, batch_size=16)
    first = probes.fit_linear_classifier(features, labels, seed=7, **kwargs)
    second = probes.fit_linear_classifier(features, labels, seed=7, **kwargs)
    other = probes.fit_linear_classifier(features, labels, seed=8, **kwargs)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], other[0])  # the seed drives the shuffling


def test_fit_linear_classifier_matches_full_batch_numpy_reference():
    # With one batch per epoch the shuffling cannot matter, so the probe must equal plain full-batch SGD with
    # PyTorch-style momentum, weight decay on all parameters and lr x0.1 after epochs 3 and 7 of 10.
    rng = np.random.default_rng(4)
    train_x = rng.standard_normal((24, 5))
    train_y = rng.integers(0, 3, size=24)
    lr, momentum, wd, epochs = 0.5, 0.9, 0.01, 10
    kernel, bias = probes.fit_linear_classifier(
        train_x.astype(np.float32),
        train_y.astype(np.int32),
        num_classes=3,
        epochs=epochs,
        batch_size=256,
        learning_rate=lr,
        momentum=momentum,
        weight_decay=wd,
        milestones=(0.3, 0.7),
    )

    expected_kernel, expected_bias = np.zeros((5, 3)), np.zeros(3)
    kernel_buffer, bias_buffer = np.zeros_like(expected_kernel), np.zeros_like(expected_bias)
    onehot = np.eye(3)[train_y]
    for epoch in range(epochs):
        step_lr = lr * 0.1 ** ((epoch >= 3) + (epoch >= 7))
        z = train_x @ expected_kernel + expected_bias
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad_z = (p - onehot) / len(train_y)
        kernel_buffer = momentum * kernel_buffer + train_x.T @ grad_z + wd * expected_kernel
        bias_buffer = momentum * bias_buffer + grad_z.sum(0) + wd * expected_bias
        expected_kernel -= step_lr * kernel_buffer
        expected_bias -= step_lr * bias_buffer
    np.testing.assert_allclose(kernel, expected_kernel, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bias, expected_bias, rtol=1e-4, atol=1e-5)


def test_standardize_trains_on_standardised_features_and_applies_to_raw_ones():
    # standardize=True must equal training on features standardised by hand with the train mean and std,
    # with the returned classifier acting on the raw features.
    rng = np.random.default_rng(1)
    features, labels = _clusters(rng, num_classes=3, dim=8, per_class=40)
    features = features * rng.uniform(1.0, 50.0, size=8).astype(np.float32) + 100.0
    mean, std = features.mean(0), np.sqrt(features.var(0) + 1e-6)
    kwargs = dict(num_classes=3, epochs=5, batch_size=32)
    kernel, bias = probes.fit_linear_classifier(features, labels, standardize=True, **kwargs)
    kernel_by_hand, bias_by_hand = probes.fit_linear_classifier(
        (features - mean) / std, labels, **kwargs
    )
    np.testing.assert_allclose(
        features @ kernel + bias,
        ((features - mean) / std) @ kernel_by_hand + bias_by_hand,
        rtol=1e-3,
        atol=1e-3,
    )
    assert _accuracy(np.argmax(features @ kernel + bias, -1), labels) >= 95.0


def test_linear_probe_validation():
    x = np.zeros((10, 4), np.float32)
    y = np.zeros(10, np.int32)
    with pytest.raises(ValueError, match="train_labels must lie"):
        probes.linear_probe(x, y + 5, x, num_classes=3)
    with pytest.raises(ValueError, match="dimensions differ"):
        probes.linear_probe(x, y, np.zeros((3, 5), np.float32), num_classes=3)
    with pytest.raises(ValueError, match="shape"):
        probes.linear_probe(x, y[:5], x, num_classes=3)
    with pytest.raises(ValueError, match="milestones"):
        probes.linear_probe(x, y, x, num_classes=3, milestones=(0.8, 0.6))
    with pytest.raises(ValueError, match="epochs"):
        probes.linear_probe(x, y, x, num_classes=3, epochs=0)


def _knn_reference(train_x, train_y, test_x, num_classes, k, temperature):
    """[N_test, C] class scores: the sum of exp(s / T) over each class's neighbours among the k of
    highest cosine similarity s."""
    train_n = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    test_n = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    scores = np.zeros((len(test_x), num_classes))
    for row, query in enumerate(test_n):
        similarity = train_n @ query
        for index in np.argsort(-similarity)[:k]:
            scores[row, train_y[index]] += np.exp(similarity[index] / temperature)
    return scores


@pytest.mark.parametrize("k, temperature", [(20, 0.07), (5, 0.5), (1, 0.07)])
def test_knn_matches_numpy_brute_force(k, temperature):
    rng = np.random.default_rng(5)
    train_x = rng.standard_normal((300, 16))
    train_y = rng.integers(0, 5, size=300)
    test_x = rng.standard_normal((100, 16))
    expected = _knn_reference(train_x, train_y, test_x, 5, k, temperature)
    scores = probes.knn_scores(
        train_x.astype(np.float32),
        train_y.astype(np.int32),
        test_x.astype(np.float32),
        num_classes=5,
        k=k,
        temperature=temperature,
        batch_size=32,
    )
    assert scores.dtype == np.float32 and scores.shape == (100, 5)
    np.testing.assert_array_equal(scores.argmax(-1), expected.argmax(-1))
    # Equal up to a positive factor per test sample (the kernel subtracts the top similarity).
    np.testing.assert_allclose(
        scores / scores.sum(-1, keepdims=True),
        expected / expected.sum(-1, keepdims=True),
        rtol=1e-4,
        atol=1e-6,
    )


def test_knn_is_independent_of_batch_size_and_finds_near_duplicates():
    rng = np.random.default_rng(6)
    train_x = rng.standard_normal((50, 8)).astype(np.float32)
    train_y = rng.integers(0, 4, size=50).astype(np.int32)
    test_x = train_x[:23] + 1e-3 * rng.standard_normal((23, 8)).astype(np.float32)
    small = probes.knn_scores(train_x, train_y, test_x, num_classes=4, k=1, batch_size=7)
    large = probes.knn_scores(train_x, train_y, test_x, num_classes=4, k=1)
    np.testing.assert_array_equal(small.argmax(-1), train_y[:23])
    np.testing.assert_allclose(large, small, rtol=1e-6)


def test_knn_validation():
    x = np.ones((10, 4), np.float32)
    y = np.zeros(10, np.int32)
    with pytest.raises(ValueError, match="k must lie"):
        probes.knn_scores(x, y, x, num_classes=2, k=11)
    with pytest.raises(ValueError, match="temperature"):
        probes.knn_scores(x, y, x, num_classes=2, k=3, temperature=0.0)


def test_per_task_accuracy_by_hand():
    predictions = np.array([0, 1, 2, 3, 0, 1])
    labels = np.array([0, 1, 0, 3, 1, 1])
    # correct:          T  T  F  T  F  T
    contiguous = probes.per_task_accuracy(
        predictions, labels, [np.array([0, 1]), np.array([2, 3, 4, 5])]
    )
    np.testing.assert_allclose(contiguous, [100.0, 50.0])  # 2/2, 2/4
    interleaved = probes.per_task_accuracy(
        predictions, labels, [np.array([0, 2, 4]), np.array([1, 3, 5])]
    )
    np.testing.assert_allclose(interleaved, [100.0 / 3.0, 100.0])  # 1/3, 3/3
    with pytest.raises(ValueError, match="non-empty"):
        probes.per_task_accuracy(predictions, labels, [np.array([], dtype=int)])
    with pytest.raises(ValueError, match="lie in"):
        probes.per_task_accuracy(predictions, labels, [np.array([6])])
    with pytest.raises(ValueError, match="equal shape"):
        probes.per_task_accuracy(predictions[:3], labels, [np.array([0])])


def test_top_k_hits_by_hand():
    """Labels 2, 0, 1, 3 against scores whose two highest classes are (3, 2), (1, 2), (1, 0),
    (0, 1): top-1 hits the third row, top-2 the first and third, top-5 (more than the 4 classes)
    every row."""
    scores = np.array(
        [[0.1, 0.0, 0.5, 0.9], [0.0, 0.9, 0.5, 0.1], [0.5, 0.9, 0.0, 0.1], [0.9, 0.5, 0.0, 0.1]]
    )
    labels = np.array([2, 0, 1, 3])
    np.testing.assert_array_equal(probes.top_k_hits(scores, labels, k=1), [-1, -1, 1, -1])
    np.testing.assert_array_equal(probes.top_k_hits(scores, labels, k=2), [2, -1, 1, -1])
    np.testing.assert_array_equal(probes.top_k_hits(scores, labels, k=5), labels)


def test_task_aware_predictions_by_hand():
    # Task 0 holds classes {0, 2}, task 1 {1, 3}; sample 3 belongs to no task.
    scores = np.array(
        [
            [0.1, 0.9, 0.3, 0.0],  # task 0: class 1 masked out, class 2 wins
            [0.5, 0.2, 0.1, 0.4],  # task 1: class 0 masked out, class 3 wins
            [0.0, 0.0, 0.0, 0.0],  # task 1, a tie: its smallest class
            [0.1, 0.9, 0.3, 0.0],  # no task: unmasked
        ]
    )
    predictions = probes.task_aware_predictions(scores, [0, 1, 1, -1], [(0, 2), (1, 3)])
    np.testing.assert_array_equal(predictions, [2, 3, 1, 1])
    assert predictions.dtype == np.int32
    with pytest.raises(ValueError, match="name task 2"):
        probes.task_aware_predictions(scores, [0, 1, 2, -1], [(0, 2), (1, 3)])
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        probes.task_aware_predictions(scores, [0, 1], [(0, 2), (1, 3)])


def test_task_aware_accuracy_is_never_below_the_task_agnostic_one():
    rng = np.random.default_rng(8)
    scores = rng.standard_normal((200, 6))
    labels = rng.integers(0, 6, 200)
    tasks = [(0, 1, 2), (3, 4, 5)]
    task_ids = (labels >= 3).astype(np.int32)
    indices = [np.flatnonzero(task_ids == t) for t in range(2)]
    agnostic = probes.per_task_accuracy(scores.argmax(-1), labels, indices)
    aware = probes.per_task_accuracy(
        probes.task_aware_predictions(scores, task_ids, tasks), labels, indices
    )
    assert np.all(aware >= agnostic) and np.all(aware > 25.0)  # chance: 1/6 and 1/3


def test_class_balanced_subset_keeps_every_class_in_proportion_and_follows_the_seed():
    labels = np.repeat([3, 0, 7], [100, 40, 3])
    kept = probes.class_balanced_subset(labels, 0.1, seed=0)
    assert np.all(np.diff(kept) > 0)
    counts = {c: int(np.sum(labels[kept] == c)) for c in (0, 3, 7)}
    assert counts == {3: 10, 0: 4, 7: 1}  # round(0.3) = 0 -> at least one
    np.testing.assert_array_equal(kept, probes.class_balanced_subset(labels, 0.1, seed=0))
    assert not np.array_equal(kept, probes.class_balanced_subset(labels, 0.1, seed=1))
    np.testing.assert_array_equal(probes.class_balanced_subset(labels, 1.0, 0), np.arange(143))
    with pytest.raises(ValueError, match="fraction"):
        probes.class_balanced_subset(labels, 0.0, 0)
