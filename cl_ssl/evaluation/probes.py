"""Probes on precomputed features: linear classifier, weighted kNN, per-task accuracy (task-agnostic
and task-aware), and the class-balanced label subsets of semi-supervised probes.

Features are float ``[N, D]`` arrays, labels int ``[N]`` arrays with values in ``[0, num_classes)``. The
probes return class scores ``[N, C]`` (logits, or kNN vote weights) whose argmax is the prediction. The
functions take host (NumPy) or device (JAX) arrays and return NumPy arrays. Accuracies are in percent.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cl_ssl.losses import l2_normalize

_HIGHEST = jax.lax.Precision.HIGHEST
_STANDARDIZE_EPS = 1e-6


def _check_train(train_features: Any, train_labels: Any, num_classes: int) -> tuple[int, ...]:
    shape = np.shape(train_features)
    if len(shape) != 2 or shape[0] == 0:
        raise ValueError(f"train_features must be a non-empty 2-D [N, D] array, got shape {shape}")
    labels = np.asarray(train_labels)
    if labels.shape != (shape[0],):
        raise ValueError(f"train_labels must have shape [{shape[0]}], got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"train_labels must be integers, got dtype {labels.dtype}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"train_labels must lie in [0, {num_classes}), got values in [{labels.min()}, {labels.max()}]"
        )
    return shape


def _check_test(test_features: Any, dim: int) -> tuple[int, ...]:
    shape = np.shape(test_features)
    if len(shape) != 2 or shape[0] == 0:
        raise ValueError(f"test_features must be a non-empty 2-D [N, D] array, got shape {shape}")
    if shape[1] != dim:
        raise ValueError(f"train and test feature dimensions differ: {dim} vs {shape[1]}")
    return shape


@functools.partial(
    jax.jit,
    static_argnames=("num_classes", "epochs", "batch_size", "milestone_epochs", "standardize"),
)
def _fit_linear(
    features: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    learning_rate: jax.Array,
    momentum: jax.Array,
    weight_decay: jax.Array,
    *,
    num_classes: int,
    epochs: int,
    batch_size: int,
    milestone_epochs: tuple[int, ...],
    standardize: bool,
) -> tuple[jax.Array, jax.Array]:
    num_train, dim = features.shape
    if standardize:
        mean = jnp.mean(features, axis=0)
        scale = jax.lax.rsqrt(jnp.var(features, axis=0) + _STANDARDIZE_EPS)
        features = (features - mean) * scale

    steps_per_epoch = -(-num_train // batch_size)
    padded = steps_per_epoch * batch_size
    boundaries = jnp.asarray(
        [epoch * steps_per_epoch for epoch in milestone_epochs], dtype=jnp.int32
    )

    def schedule(count: jax.Array) -> jax.Array:
        return learning_rate * 0.1 ** jnp.sum(count >= boundaries)

    optimizer = optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.sgd(learning_rate=schedule, momentum=momentum),
    )
    params = {
        "kernel": jnp.zeros((dim, num_classes), jnp.float32),
        "bias": jnp.zeros((num_classes,), jnp.float32),
    }
    opt_state = optimizer.init(params)
    valid = (
        (jnp.arange(padded) < num_train).reshape(steps_per_epoch, batch_size).astype(jnp.float32)
    )

    def loss_fn(params, batch_features, batch_labels, weights):
        logits = jnp.dot(batch_features, params["kernel"], precision=_HIGHEST) + params["bias"]
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch_labels)
        return jnp.sum(losses * weights) / jnp.sum(weights)

    def epoch_body(epoch, carry):
        order = jax.random.permutation(jax.random.fold_in(key, epoch), num_train)
        order = jnp.pad(order, (0, padded - num_train)).reshape(steps_per_epoch, batch_size)

        def step_body(step, carry):
            params, opt_state = carry
            index = order[step]
            grads = jax.grad(loss_fn)(params, features[index], labels[index], valid[step])
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        return jax.lax.fori_loop(0, steps_per_epoch, step_body, carry)

    params, _ = jax.lax.fori_loop(0, epochs, epoch_body, (params, opt_state))
    kernel, bias = params["kernel"], params["bias"]
    if standardize:
        kernel = scale[:, None] * kernel
        bias = bias - jnp.dot(mean * scale, params["kernel"], precision=_HIGHEST)
    return kernel, bias


def fit_linear_classifier(
    train_features: Any,
    train_labels: Any,
    *,
    num_classes: int,
    epochs: int = 100,
    batch_size: int = 256,
    learning_rate: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    milestones: Sequence[float] = (0.6, 0.8),
    standardize: bool = False,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Trains a softmax linear classifier on frozen features (CaSSLe's offline probe).

    CaSSLe ``main_linear.py`` with its ``bash_files/linear/**`` settings.

    Cross-entropy, SGD with (heavy-ball, PyTorch-style) momentum, weight decay added to the gradient of every
    parameter, the learning rate multiplied by 0.1 at each milestone (fractions of ``epochs``, rounded to whole
    epochs: 0.6 and 0.8 of 100 epochs are epochs 60 and 80). Each epoch visits a fresh random permutation of
    the training set drawn from ``seed``; the last, smaller batch is kept and its loss averaged over its real
    samples only. Weights and bias start at zero. The whole training is one jitted program; the result is
    deterministic for a given ``seed``.

    The protocol does not standardise features, hence ``standardize=False`` by default. With
    ``standardize=True`` training sees each feature dimension shifted and scaled by the training-set mean and
    standard deviation, which lets one fixed learning rate work across backbones; the returned classifier has
    the standardisation folded in, so it always applies to the raw features.

    Args:
      train_features: float ``[N_train, D]``.
      train_labels: int ``[N_train]`` in ``[0, num_classes)``.
      num_classes: number of output classes ``C``.
      epochs, batch_size, learning_rate, momentum, weight_decay, milestones: SGD schedule (see above).
      standardize: standardise features with training statistics during training.
      seed: seed of the per-epoch shuffling.

    Returns:
      ``(kernel, bias)``: float32 ``[D, C]`` and ``[C]``; the logits of features ``x`` are ``x @ kernel + bias``.
    """
    shape = _check_train(train_features, train_labels, num_classes)
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if learning_rate <= 0 or not 0 <= momentum < 1 or weight_decay < 0:
        raise ValueError(
            f"need learning_rate > 0, 0 <= momentum < 1, weight_decay >= 0; got {learning_rate}, {momentum}, "
            f"{weight_decay}"
        )
    if any(not 0 < m <= 1 for m in milestones) or list(milestones) != sorted(milestones):
        raise ValueError(
            f"milestones must be increasing fractions in (0, 1], got {list(milestones)}"
        )
    kernel, bias = _fit_linear(
        jnp.asarray(train_features, jnp.float32),
        jnp.asarray(train_labels, jnp.int32),
        jax.random.key(seed),
        jnp.float32(learning_rate),
        jnp.float32(momentum),
        jnp.float32(weight_decay),
        num_classes=num_classes,
        epochs=epochs,
        batch_size=min(batch_size, shape[0]),
        milestone_epochs=tuple(int(round(m * epochs)) for m in milestones),
        standardize=standardize,
    )
    return np.asarray(kernel), np.asarray(bias)


def linear_probe(
    train_features: Any, train_labels: Any, test_features: Any, *, num_classes: int, **schedule: Any
) -> np.ndarray:
    """Test logits of a linear probe: :func:`fit_linear_classifier` on the training features, then
    ``test_features @ kernel + bias``.

    Args:
      train_features: float ``[N_train, D]``.
      train_labels: int ``[N_train]`` in ``[0, num_classes)``.
      test_features: float ``[N_test, D]``.
      num_classes: number of output classes ``C``.
      **schedule: the SGD keywords of :func:`fit_linear_classifier` (epochs, batch_size,
        learning_rate, momentum, weight_decay, milestones, standardize, seed), with its defaults.

    Returns:
      float32 ``[N_test, C]`` logits; their argmax is the predicted class.
    """
    train_shape = _check_train(train_features, train_labels, num_classes)
    _check_test(test_features, train_shape[1])
    kernel, bias = fit_linear_classifier(
        train_features, train_labels, num_classes=num_classes, **schedule
    )
    logits = jnp.dot(jnp.asarray(test_features, jnp.float32), kernel, precision=_HIGHEST) + bias
    return np.asarray(logits)


@functools.partial(jax.jit, static_argnames=("num_classes", "k", "batch_size"))
def _knn_scores(
    train_features: jax.Array,
    train_labels: jax.Array,
    test_features: jax.Array,
    temperature: jax.Array,
    *,
    num_classes: int,
    k: int,
    batch_size: int,
) -> jax.Array:
    train_features = l2_normalize(train_features)
    test_features = l2_normalize(test_features)
    num_test = test_features.shape[0]
    num_batches = -(-num_test // batch_size)
    queries = jnp.pad(test_features, ((0, num_batches * batch_size - num_test), (0, 0)))
    queries = queries.reshape(num_batches, batch_size, -1)

    def score_batch(query: jax.Array) -> jax.Array:
        similarity = jnp.dot(query, train_features.T, precision=_HIGHEST)
        top_similarity, top_index = jax.lax.top_k(similarity, k)
        weights = jnp.exp((top_similarity - top_similarity[:, :1]) / temperature)
        votes = jax.nn.one_hot(train_labels[top_index], num_classes, dtype=weights.dtype)
        return jnp.einsum("bk,bkc->bc", weights, votes)

    return jax.lax.map(score_batch, queries).reshape(num_batches * batch_size, -1)[:num_test]


def knn_scores(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = 1024,
) -> np.ndarray:
    """Class scores of weighted kNN classification (InstDisc form: Wu et al., CVPR 2018).

    Features are L2-normalised; for each test sample the ``k`` training samples of highest cosine similarity
    ``s`` vote for their class with weight ``exp(s / temperature)``; a class's score is the sum of its
    neighbours' weights, and the predicted class has the largest score (``argmax``: ties go to the smallest
    class index). This is the cosine branch of solo-learn's ``WeightedKNNClassifier``
    (``solo/utils/knn.py``, ``compute``: ``F.normalize``, ``mm``, ``topk``, ``div_(T).exp_()``, a one-hot
    sum; CaSSLe's ``cassle/utils/knn.py`` is an older copy of that class), with its defaults k = 20 and
    T = 0.07; InstDisc itself used k = 200. The weights are computed as ``exp((s - s_max) / temperature)``:
    a positive factor per test sample, which leaves its prediction unchanged and avoids overflow at small
    temperatures. Test samples are processed ``batch_size`` at a time, so memory is
    ``O(batch_size * N_train)``.

    Args:
      train_features: float ``[N_train, D]``.
      train_labels: int ``[N_train]`` in ``[0, num_classes)``.
      test_features: float ``[N_test, D]``.
      num_classes: number of classes ``C``.
      k: number of neighbours, ``1 <= k <= N_train``.
      temperature: ``T > 0`` of the weights.
      batch_size: test samples per batch.

    Returns:
      float32 ``[N_test, C]`` scores, each row scaled by ``exp(-s_max / temperature)``.
    """
    train_shape = _check_train(train_features, train_labels, num_classes)
    test_shape = _check_test(test_features, train_shape[1])
    if not 1 <= k <= train_shape[0]:
        raise ValueError(f"k must lie in [1, N_train = {train_shape[0]}], got {k}")
    if temperature <= 0 or batch_size < 1:
        raise ValueError(
            f"need temperature > 0 and batch_size >= 1, got {temperature} and {batch_size}"
        )
    scores = _knn_scores(
        jnp.asarray(train_features, jnp.float32),
        jnp.asarray(train_labels, jnp.int32),
        jnp.asarray(test_features, jnp.float32),
        jnp.float32(temperature),
        num_classes=num_classes,
        k=k,
        batch_size=min(batch_size, test_shape[0]),
    )
    return np.asarray(scores)


def per_task_accuracy(
    predictions: Any, labels: Any, test_indices_per_task: Sequence[Any]
) -> np.ndarray:
    """Top-1 accuracy of one probe on each task's test samples, without logit masking.

    As CaSSLe's per-task ``val_acc1_task{i}`` (DonkeyShot21/cassle#14).

    Args:
      predictions: int ``[N_test]`` predicted classes (e.g. ``np.argmax(logits, -1)``).
      labels: int ``[N_test]`` true classes.
      test_indices_per_task: ``T`` int arrays of indices into the test set, one per task.

    Returns:
      float64 ``[T]`` accuracies in percent; one row of the accuracy matrix.
    """
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if predictions.ndim != 1 or predictions.shape != labels.shape:
        raise ValueError(
            f"predictions and labels must be 1-D of equal shape, got {predictions.shape} and {labels.shape}"
        )
    if len(test_indices_per_task) == 0:
        raise ValueError("test_indices_per_task must hold at least one task")
    correct = predictions == labels
    accuracies = []
    for task, indices in enumerate(test_indices_per_task):
        indices = np.asarray(indices)
        if indices.ndim != 1 or indices.size == 0 or not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(
                f"test indices of task {task} must be a non-empty 1-D int array, got {indices!r}"
            )
        if indices.min() < 0 or indices.max() >= labels.size:
            raise ValueError(f"test indices of task {task} must lie in [0, {labels.size})")
        accuracies.append(100.0 * np.mean(correct[indices]))
    return np.asarray(accuracies, dtype=np.float64)


def task_aware_predictions(
    scores: Any, test_task_ids: Any, task_classes: Sequence[Sequence[int]]
) -> np.ndarray:
    """Predictions of a task-incremental evaluation: each test sample's argmax over the classes of
    its own task only (Mammoth ``utils/evaluate.py::mask_classes``, which sets the other tasks'
    logits to -inf).

    Args:
      scores: float ``[N_test, C]`` class scores of a probe (logits or kNN votes).
      test_task_ids: int ``[N_test]``, the task of each test sample; -1 for a sample of no task,
        which keeps its unmasked argmax.
      task_classes: ``T`` sequences of the class ids (in ``[0, C)``) each task holds.

    Returns:
      int32 ``[N_test]`` predicted classes; ties go to the smallest class index of the task.
    """
    scores = np.asarray(scores)
    task_ids = np.asarray(test_task_ids)
    if scores.ndim != 2 or task_ids.shape != scores.shape[:1]:
        raise ValueError(
            f"scores must be [N, C] and test_task_ids [N]; got {scores.shape} and {task_ids.shape}"
        )
    if task_ids.max(initial=-1) >= len(task_classes):
        raise ValueError(
            f"test_task_ids name task {task_ids.max()} but task_classes holds {len(task_classes)}"
        )
    allowed = np.zeros((len(task_classes) + 1, scores.shape[1]), bool)
    for task, classes in enumerate(task_classes):
        allowed[task, list(classes)] = True
    allowed[-1] = True  # row -1: a sample of no task
    masked = np.where(allowed[task_ids], scores, -np.inf)
    return masked.argmax(axis=-1).astype(np.int32)


def class_balanced_subset(labels: Any, fraction: float, seed: int) -> np.ndarray:
    """The labelled rows of a semi-supervised probe: max(1, round(fraction * n_c)) rows of every
    class c drawn without replacement, a function of ``seed`` (as the 1% and 10% ImageNet subsets
    of SimCLR, Chen et al. ICML 2020 section 7, keep every class).

    Args:
      labels: int ``[N]``, the class of each row.
      fraction: in (0, 1], the share of each class to keep.
      seed: seed of the draw.

    Returns:
      int ``[K]`` kept row indices, sorted.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    kept = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        kept.append(rng.choice(rows, max(1, round(fraction * len(rows))), replace=False))
    return np.sort(np.concatenate(kept))
