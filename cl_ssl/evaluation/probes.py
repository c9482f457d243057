"""Probes on precomputed features: linear classifier, weighted kNN, per-task accuracy (task-agnostic
and task-aware), and the class-balanced label subsets of semi-supervised probes; and the linear
probe of ``lincls_eval.py`` (MoCo's and CCL's), trained on augmented images through a frozen
backbone (:class:`AugmentedLinearProbe`).

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
import tqdm

from cl_ssl import parallel
from cl_ssl.data import augment
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


# fold_in datum of the classifier's initial weights, apart from the epochs' shuffling keys.
_INIT_STREAM = 0x696E6974  # "init"


def linear_optimizer(
    learning_rate: Any, momentum: Any, weight_decay: Any, boundaries: jax.Array
) -> optax.GradientTransformation:
    """The probe's SGD: weight decay added to the gradient of every parameter, (heavy-ball,
    PyTorch-style) momentum, the learning rate x0.1 at each of the step ``boundaries``
    (:func:`step_boundaries`): ``torch.optim.SGD(momentum, weight_decay)`` with
    ``adjust_learning_rate`` (``lincls_eval.py`` l.233-235, l.515-521). The hyperparameters may be
    traced arrays, so one compiled program serves every value."""

    def schedule(count: jax.Array) -> jax.Array:
        return learning_rate * 0.1 ** jnp.sum(count >= boundaries)

    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.sgd(learning_rate=schedule, momentum=momentum),
    )


def step_boundaries(epochs: Sequence[int], steps_per_epoch: int) -> jax.Array:
    """int32 [M]: the optimizer steps at which the epochs ``epochs`` begin, the
    ``boundaries`` of :func:`linear_optimizer`."""
    return jnp.asarray([epoch * steps_per_epoch for epoch in epochs], dtype=jnp.int32)


def init_linear(key: jax.Array, dim: int, num_classes: int, init_std: float) -> dict:
    """The probe's initial ``{"kernel": [D, C], "bias": [C]}``: zero bias, a zero kernel for
    ``init_std`` 0 (this library's default; CaSSLe's ``nn.Linear`` keeps PyTorch's uniform
    initialisation), else one drawn from N(0, init_std^2) with ``key`` folded with a
    stream of its own (MoCo's and CCL's ``lincls_eval.py`` l.161-163: N(0, 0.01^2))."""
    kernel = jnp.zeros((dim, num_classes), jnp.float32)
    if init_std > 0:
        kernel = init_std * jax.random.normal(
            jax.random.fold_in(key, _INIT_STREAM), (dim, num_classes), jnp.float32
        )
    return {"kernel": kernel, "bias": jnp.zeros((num_classes,), jnp.float32)}


def linear_loss(params: dict, features: jax.Array, labels: jax.Array, weights: jax.Array):
    """The probe's cross-entropy, averaged over the rows of nonzero ``weights``."""
    logits = jnp.dot(features, params["kernel"], precision=_HIGHEST) + params["bias"]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(losses * weights) / jnp.sum(weights)


def linear_logits(params: dict, features: jax.Array) -> jax.Array:
    """The logits [N, C] of the probe ``params`` on ``features`` [N, D]."""
    return jnp.dot(features, params["kernel"], precision=_HIGHEST) + params["bias"]


def accuracy_of(params: dict, features: jax.Array, labels: jax.Array) -> jax.Array:
    """Top-1 accuracy in percent of the probe ``params`` on ``features`` [N, D]."""
    return 100.0 * jnp.mean(jnp.argmax(linear_logits(params, features), axis=-1) == labels)


def keep_best(best: tuple, params: dict, accuracy: jax.Array, epoch: jax.Array) -> tuple:
    """``(params, accuracy, epoch)`` when ``accuracy`` beats the best so far strictly, else
    ``best``: the earliest of equally good epochs stays (``lincls_eval.py`` l.331-332)."""
    better = accuracy > best[1]
    return jax.tree.map(
        lambda new, old: jnp.where(better, new, old), (params, accuracy, epoch), best
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "num_classes",
        "epochs",
        "batch_size",
        "milestone_epochs",
        "standardize",
        "init_std",
    ),
)
def _fit_linear(
    features: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    learning_rate: jax.Array,
    momentum: jax.Array,
    weight_decay: jax.Array,
    test_features: jax.Array | None = None,
    test_labels: jax.Array | None = None,
    *,
    num_classes: int,
    epochs: int,
    batch_size: int,
    milestone_epochs: tuple[int, ...],
    standardize: bool,
    init_std: float = 0.0,
):
    num_train, dim = features.shape
    track_best = test_features is not None
    if standardize:
        mean = jnp.mean(features, axis=0)
        scale = jax.lax.rsqrt(jnp.var(features, axis=0) + _STANDARDIZE_EPS)
        features = (features - mean) * scale
        if track_best:
            test_features = (test_features - mean) * scale

    steps_per_epoch = -(-num_train // batch_size)
    padded = steps_per_epoch * batch_size
    boundaries = step_boundaries(milestone_epochs, steps_per_epoch)
    optimizer = linear_optimizer(learning_rate, momentum, weight_decay, boundaries)
    params = init_linear(key, dim, num_classes, init_std)
    opt_state = optimizer.init(params)
    valid = (
        (jnp.arange(padded) < num_train).reshape(steps_per_epoch, batch_size).astype(jnp.float32)
    )

    def epoch_body(epoch, carry):
        order = jax.random.permutation(jax.random.fold_in(key, epoch), num_train)
        order = jnp.pad(order, (0, padded - num_train)).reshape(steps_per_epoch, batch_size)

        def step_body(step, carry):
            params, opt_state = carry
            index = order[step]
            grads = jax.grad(linear_loss)(params, features[index], labels[index], valid[step])
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        if not track_best:
            return jax.lax.fori_loop(0, steps_per_epoch, step_body, carry)
        params, opt_state, best = carry
        params, opt_state = jax.lax.fori_loop(0, steps_per_epoch, step_body, (params, opt_state))
        accuracy = accuracy_of(params, test_features, test_labels)
        return params, opt_state, keep_best(best, params, accuracy, epoch)

    def unstandardized(params):
        kernel, bias = params["kernel"], params["bias"]
        if standardize:
            kernel = scale[:, None] * kernel
            bias = bias - jnp.dot(mean * scale, params["kernel"], precision=_HIGHEST)
        return kernel, bias

    if not track_best:
        params, _ = jax.lax.fori_loop(0, epochs, epoch_body, (params, opt_state))
        return unstandardized(params)
    nothing = (params, jnp.float32(-1.0), jnp.int32(-1))
    params, _, (best, best_accuracy, best_epoch) = jax.lax.fori_loop(
        0, epochs, epoch_body, (params, opt_state, nothing)
    )
    return unstandardized(params), unstandardized(best), best_epoch


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
    init_std: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Trains a softmax linear classifier on frozen features (the offline probe).

    The optimizer and schedule of CaSSLe's ``main_linear.py`` with its ``bash_files/linear/**``
    settings (whose probe trains on augmented crops and drops the last batch).

    Cross-entropy, SGD with (heavy-ball, PyTorch-style) momentum, weight decay added to the gradient of every
    parameter, the learning rate multiplied by 0.1 at each milestone (fractions of ``epochs``, rounded to whole
    epochs: 0.6 and 0.8 of 100 epochs are epochs 60 and 80). Each epoch visits a fresh random permutation of
    the training set drawn from ``seed``; the last, smaller batch is kept and its loss averaged over its real
    samples only. Weights and bias start at zero, or with ``init_std`` > 0 the weights from
    N(0, init_std^2) (:func:`init_linear`). The whole training is one jitted program; the result is
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
      seed: seed of the per-epoch shuffling (and of the initial weights).
      init_std: standard deviation of the initial weights; 0 starts them at zero.

    Returns:
      ``(kernel, bias)``: float32 ``[D, C]`` and ``[C]``; the logits of features ``x`` are ``x @ kernel + bias``.
    """
    shape = _check_train(train_features, train_labels, num_classes)
    _check_schedule(epochs, batch_size, learning_rate, momentum, weight_decay, milestones, init_std)
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
        milestone_epochs=milestone_epochs(milestones, epochs),
        standardize=standardize,
        init_std=float(init_std),
    )
    return np.asarray(kernel), np.asarray(bias)


def milestone_epochs(milestones: Sequence[float], epochs: int) -> tuple[int, ...]:
    """The epochs at which the learning rate drops: ``milestones`` (fractions of ``epochs``)
    rounded to whole epochs (0.6 and 0.8 of 100: epochs 60 and 80)."""
    return tuple(int(round(m * epochs)) for m in milestones)


def _check_schedule(
    epochs, batch_size, learning_rate, momentum, weight_decay, milestones, init_std
):
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
    if not init_std >= 0:
        raise ValueError(f"init_std must be >= 0, got {init_std}")


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


def linear_probe_best(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    test_labels: Any,
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
    init_std: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`linear_probe`'s training, scored on the test set after every epoch as MoCo's and
    CCL's ``lincls_eval.py`` (l.319-345) do: the test logits of the last epoch's classifier (those
    of :func:`linear_probe` with the same arguments) and of the best epoch's, the epoch whose
    classifier has the highest top-1 accuracy on ``test_labels``, the earliest of ties. The best
    epoch is chosen on the test set, as the reference reports ``best_acc1``.

    Returns:
      (final logits float32 [N_test, C], best epoch's logits float32 [N_test, C], best epoch,
      counted from 0).
    """
    shape = _check_train(train_features, train_labels, num_classes)
    _check_test(test_features, shape[1])
    test_labels = np.asarray(test_labels)
    if test_labels.shape != (np.shape(test_features)[0],):
        raise ValueError(
            f"test_labels must have shape [{np.shape(test_features)[0]}], got {test_labels.shape}"
        )
    _check_schedule(epochs, batch_size, learning_rate, momentum, weight_decay, milestones, init_std)
    test = jnp.asarray(test_features, jnp.float32)
    final, best, best_epoch = _fit_linear(
        jnp.asarray(train_features, jnp.float32),
        jnp.asarray(train_labels, jnp.int32),
        jax.random.key(seed),
        jnp.float32(learning_rate),
        jnp.float32(momentum),
        jnp.float32(weight_decay),
        test,
        jnp.asarray(test_labels, jnp.int32),
        num_classes=num_classes,
        epochs=epochs,
        batch_size=min(batch_size, shape[0]),
        milestone_epochs=milestone_epochs(milestones, epochs),
        standardize=standardize,
        init_std=float(init_std),
    )
    logits = [
        np.asarray(jnp.dot(test, kernel, precision=_HIGHEST) + bias)
        for kernel, bias in (final, best)
    ]
    return logits[0], logits[1], int(best_epoch)


def probe_view(crop_size: int, *, mean: Sequence[float], std: Sequence[float]):
    """The training view of ``lincls_eval.py``'s probe (l.269-274): torchvision's
    RandomResizedCrop(crop_size) (scale 0.08-1, ratios 3/4-4/3, bicubic here) and
    RandomHorizontalFlip, standardised with ``mean`` and ``std``; no other operation."""
    return augment.ViewConfig(
        crop_size=crop_size,
        min_scale=0.08,
        max_scale=1.0,
        brightness=0.0,
        contrast=0.0,
        saturation=0.0,
        hue=0.0,
        jitter_prob=0.0,
        gray_prob=0.0,
        blur_prob=0.0,
        solarize_prob=0.0,
        flip_prob=0.5,
        mean=tuple(mean),
        std=tuple(std),
    )


class AugmentedLinearProbe:
    """The linear probe of MoCo's and CCL's ``lincls_eval.py``: at every epoch a fresh random view
    (``view``, :func:`probe_view`) of every training image, embedded by the frozen backbone with
    BatchNorm in inference mode (``model.eval()`` in ``train``, l.366), trains the classifier;
    the test features are fixed and the classifier is scored on them after every epoch (l.319-328).

    SGD as :func:`linear_optimizer` (the learning rate x0.1 from each milestone epoch on), batches
    of a fresh permutation of the rows per epoch, the last, smaller one padded and its loss
    averaged over its real rows, as :func:`fit_linear_classifier` does. With ``host_crop`` (a
    streamed split, ``dataset.host_crop``) each crop is taken on the host from the decoded image at
    its own size (``parallel.gather_with_crops``), as torchvision crops the decoded image; else on
    the device from the stored image. Each epoch's order and crops come from the seed, the epoch
    and the step. One jitted step, kept by the instance, takes the optimizer's hyperparameters as
    arguments; the optimizer's state counts the steps, which sets the learning rate.
    """

    def __init__(
        self,
        model,
        mesh: jax.sharding.Mesh,
        view: augment.ViewConfig,
        *,
        host_crop: bool = False,
        progress: bool = False,
    ):
        self._model, self._mesh, self._view = model, mesh, view
        self._host_crop, self._progress = host_crop, progress
        self._step = self._make_step()

    def _make_step(self):
        """The jitted SGD step of :func:`linear_optimizer` on one batch's fresh views; its last
        argument is ``(learning_rate, momentum, weight_decay, boundaries)``."""
        model, view, cropped = self._model, self._view, self._host_crop

        def step(variables, params, opt_state, images, labels, weights, key, hyper):
            keys = jax.random.split(key, images.shape[0])
            x = jax.vmap(lambda k, im: augment.augment_image(k, im, view, cropped=cropped))(
                keys, images
            )
            features = jax.lax.stop_gradient(model.apply(variables, x, method=model.features))
            grads = jax.grad(linear_loss)(params, features, labels, weights)
            updates, opt_state = linear_optimizer(*hyper).update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        rep = parallel.replicated(self._mesh)
        rows = parallel.batch_sharded(self._mesh)
        return jax.jit(
            step,
            in_shardings=(rep, rep, rep, rows, rows, rows, rep, rep),
            out_shardings=(rep, rep),
        )

    def __call__(
        self,
        variables,
        images,
        labels: np.ndarray,
        rows: np.ndarray,
        test_features: Any,
        test_labels: Any,
        *,
        num_classes: int,
        epochs: int = 100,
        batch_size: int = 256,
        learning_rate: float = 30.0,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        milestones: Sequence[float] = (0.6, 0.8),
        standardize: bool = False,
        init_std: float = 0.0,
        seed: int = 0,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Trains the probe on ``images[rows]`` (uint8 [N, H, W, C], an array or streamed
        images) with ``labels[rows]``.

        Returns:
          (test logits float32 [N_test, C] of the last epoch's classifier, those of the best
          epoch's, the one of highest top-1 accuracy on ``test_labels``, the earliest of ties,
          and that epoch, from 0).
        """
        if standardize:
            raise ValueError("the augmented probe trains on new crops every epoch; no standardize")
        _check_schedule(
            epochs, batch_size, learning_rate, momentum, weight_decay, milestones, init_std
        )
        rows = np.asarray(rows)
        n, devices = len(rows), self._mesh.size
        b = -(-min(batch_size, n) // devices) * devices  # whole rows per device
        steps = -(-n // b)
        key = jax.random.key(seed)
        rep = parallel.replicated(self._mesh)
        hyper = jax.device_put(
            (
                jnp.float32(learning_rate),
                jnp.float32(momentum),
                jnp.float32(weight_decay),
                step_boundaries(milestone_epochs(milestones, epochs), steps),
            ),
            rep,
        )
        test = jax.device_put(jnp.asarray(test_features, jnp.float32), rep)
        test_labels = jax.device_put(jnp.asarray(test_labels, jnp.int32), rep)
        params = jax.device_put(init_linear(key, test.shape[1], num_classes, init_std), rep)
        opt_state = jax.device_put(linear_optimizer(*hyper).init(params), rep)
        best = (params, jnp.float32(-1.0), jnp.int32(-1))
        bar = tqdm.tqdm(
            range(epochs), "linear probe", unit="epoch", leave=False, disable=not self._progress
        )
        for epoch in bar:
            order = np.random.default_rng([seed, epoch]).permutation(n)
            for s in range(steps):
                chosen = order[s * b : (s + 1) * b]
                weights = np.zeros(b, np.float32)
                weights[: len(chosen)] = 1.0
                ids = rows[np.pad(chosen, (0, b - len(chosen)), mode="edge")]
                if self._host_crop:
                    uniforms = np.random.default_rng([seed, epoch, s]).random(
                        (b, 1, augment.CROP_UNIFORMS), dtype=np.float32
                    )
                    _, (batch,) = parallel.gather_with_crops(
                        self._mesh, images, ids, uniforms, (self._view,)
                    )
                else:
                    batch = parallel.gather_batch(self._mesh, images, ids)
                params, opt_state = self._step(
                    variables,
                    params,
                    opt_state,
                    batch,
                    parallel.global_batch(self._mesh, np.asarray(labels[ids], np.int32)),
                    parallel.global_batch(self._mesh, weights),
                    jax.random.fold_in(jax.random.fold_in(key, epoch), s),
                    hyper,
                )
            best = keep_best(best, params, accuracy_of(params, test, test_labels), epoch)
        final, best_params = (
            np.asarray(jax.device_get(linear_logits(p, test))) for p in (params, best[0])
        )
        return final, best_params, int(best[2])


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
    sum; CaSSLe's ``cassle/utils/knn.py`` is an older copy of that class, which CaSSLe builds with the
    euclidean branch, ``cassle/methods/base.py`` l.177, and reports no number of), with its defaults k = 20 and
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


def top_k_hits(scores: Any, labels: Any, k: int) -> np.ndarray:
    """int [N]: each example's label where it is among its ``k`` highest ``scores`` [N, C], else
    -1 (no class): ``per_task_accuracy`` of these is the top-k accuracy (CaSSLe's ``acc5``,
    ``cassle/utils/metrics.py::accuracy_at_k``). With ``k`` >= C every example is a hit."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    top = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
    return np.where((top == labels[:, None]).any(axis=-1), labels, -1)


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
