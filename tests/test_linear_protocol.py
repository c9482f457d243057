"""The linear probe's lincls_eval.py protocol (MoCo's and CCL's), the ``eval.linear`` fields
beyond CaSSLe's probe: initial weights from N(0, init_std^2), the best epoch's test accuracy
(``linear_best``), centre-cropped fixed views, and training on a random resized, flipped crop
of every image at every epoch through the frozen backbone."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_split, tiny_config
from PIL import Image

from cl_ssl import config as config_lib
from cl_ssl import objectives, parallel
from cl_ssl.data import augment, host_crop, scenarios, sources, streaming
from cl_ssl.evaluation import evaluate, probes

TRAIN, TEST = random_split(40), random_split(12, seed=5)
SCENARIO = scenarios.make_scenario(
    "class_incremental", TRAIN.labels, TEST.labels, num_classes=4, num_tasks=2
)


def _data(seed, n=60, dim=6, classes=3):
    rng = np.random.default_rng(seed)
    means = 2.0 * rng.standard_normal((classes, dim))
    labels = rng.integers(0, classes, n)
    features = means[labels] + rng.standard_normal((n, dim))
    return features.astype(np.float32), labels.astype(np.int32)


def test_init_std_draws_the_weights_and_zero_keeps_cassles_zero_start():
    zero = probes.init_linear(jax.random.key(0), 512, 100, 0.0)
    assert not np.any(zero["kernel"]) and not np.any(zero["bias"])
    drawn = probes.init_linear(jax.random.key(0), 512, 100, 0.01)
    assert not np.any(drawn["bias"])
    np.testing.assert_allclose(np.std(drawn["kernel"]), 0.01, rtol=0.02)
    assert abs(float(np.mean(drawn["kernel"]))) < 1e-3
    x, y = _data(0)
    kwargs = dict(num_classes=3, epochs=2, batch_size=16, learning_rate=0.5, seed=3)
    default = probes.fit_linear_classifier(x, y, **kwargs)
    explicit = probes.fit_linear_classifier(x, y, init_std=0.0, **kwargs)
    np.testing.assert_array_equal(default[0], explicit[0])
    assert not np.allclose(
        default[0], probes.fit_linear_classifier(x, y, init_std=0.5, **kwargs)[0]
    )


def test_best_epoch_is_the_epoch_of_highest_test_accuracy_and_the_last_epoch_is_unchanged():
    """Without a learning-rate drop inside the run, the classifier after e epochs is that of a run
    of e epochs (the shuffling keys are per epoch): the best epoch is the first argmax of those
    runs' test accuracies, and its logits are that run's."""
    x, y = _data(1, n=80)
    tx_, ty = x[40:], y[40:]
    kwargs = dict(num_classes=3, batch_size=8, learning_rate=2.0, milestones=(1.0,), seed=4)
    kwargs.update(init_std=0.3)
    epochs = 6
    final, best, best_epoch = probes.linear_probe_best(
        x[:40], y[:40], tx_, ty, epochs=epochs, **kwargs
    )
    np.testing.assert_array_equal(
        final, probes.linear_probe(x[:40], y[:40], tx_, epochs=epochs, **kwargs)
    )
    runs = [probes.linear_probe(x[:40], y[:40], tx_, epochs=e, **kwargs) for e in range(1, 7)]
    accuracies = [np.mean(r.argmax(-1) == ty) for r in runs]
    assert best_epoch == int(np.argmax(accuracies))
    np.testing.assert_allclose(best, runs[best_epoch], rtol=1e-5, atol=1e-5)
    assert np.mean(best.argmax(-1) == ty) >= np.mean(final.argmax(-1) == ty)


def _evaluator(**linear):
    config = objectives.resolve_config(
        tiny_config(
            **{"eval.evaluators": ("linear",)},
            **{f"eval.linear.{k}": v for k, v in linear.items()},
        )
    )
    config_lib.validate(config, num_devices=1)
    objective = objectives.get_objective(config)
    evaluator = evaluate.Evaluator(
        objective.model,
        TRAIN,
        TEST,
        SCENARIO,
        config,
        parallel.make_mesh(1),
        key=jax.random.PRNGKey(0),
    )
    variables = objective.model.init(jax.random.PRNGKey(1), jnp.zeros((2, 32, 32, 3)), train=False)
    variables = jax.tree.map(lambda v: v + 0.05 * jnp.ones_like(v), variables)
    return evaluator, objective, config, variables


def test_default_probe_fills_linear_only():
    evaluator, _, _, variables = _evaluator()
    assert evaluator.names == ["linear"]
    assert set(evaluator(variables["params"], variables["batch_stats"], stage=1)) == {"linear"}


def test_centre_cropped_probe_embeds_only_its_own_views(monkeypatch):
    """With the linear evaluator alone and center_crop < 1, the probe trains and is tested on the
    centre crops; no full-image features are computed."""
    evaluator, objective, config, variables = _evaluator(center_crop=0.875, epochs=2)

    def no_full_features(*args):
        raise AssertionError("full-image features computed but unused")

    monkeypatch.setattr(evaluator, "features", no_full_features)
    accuracy = evaluator(variables["params"], variables["batch_stats"], stage=1)
    model, view = objective.model, config.augment.view1
    cfg = augment.ViewConfig(mean=view.mean, std=view.std)

    def crops_features(images):
        crops = augment.center_crop_batch(jnp.asarray(images), cfg, fraction=0.875)
        return np.asarray(model.apply(variables, crops, method=model.features))

    rows = evaluator.probe_examples(1)
    lin = config.eval.linear
    schedule = {k: lin[k] for k in evaluate.LINEAR_SCHEDULE if k in lin}
    logits = probes.linear_probe(
        crops_features(TRAIN.images[rows]),
        TRAIN.labels[rows],
        crops_features(TEST.images),
        num_classes=4,
        seed=evaluator._seed,
        **schedule,
    )
    predictions = logits.argmax(-1)
    expected = [100.0 * np.mean(predictions[i] == TEST.labels[i]) for i in SCENARIO.test_indices]
    np.testing.assert_allclose(accuracy["linear"], expected)


FIELDS = dict(
    augment=True,
    report_best=True,
    init_std=0.01,
    center_crop=0.875,
    epochs=1,
    batch_size=64,
    learning_rate=30.0,
    weight_decay=0.0,
)


def _probe_view(view):
    return augment.ViewConfig(
        crop_size=32,
        min_scale=0.08,
        brightness=0.0,
        contrast=0.0,
        saturation=0.0,
        hue=0.0,
        jitter_prob=0.0,
        gray_prob=0.0,
        mean=tuple(view.mean),
        std=tuple(view.std),
    )


def _one_step_logits(evaluator, objective, config, variables, images, labels, *, cropped=False):
    """The test logits of the classifier after one full-batch SGD step (lr 30, momentum's first
    step) from N(0, 0.01^2) weights on the crops and flips of ``images`` (uint8, in the epoch's
    order), computed in float64 from the backbone's features; the test images centre-cropped."""
    model, view = objective.model, config.augment.view1
    key = jax.random.key(evaluator._seed)
    keys = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, 0), 0), len(images))
    # Compiled: op by op, the augmentations and the backbone take seconds.
    x = jax.jit(
        jax.vmap(lambda k, im: augment.augment_image(k, im, _probe_view(view), cropped=cropped))
    )(keys, jnp.asarray(images))
    features = jax.jit(functools.partial(model.apply, method=model.features))(variables, x)
    features = np.asarray(features, np.float64)
    kernel = 0.01 * np.asarray(
        jax.random.normal(jax.random.fold_in(key, 0x696E6974), (features.shape[1], 4)), np.float64
    )
    logits = features @ kernel
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1.0
    kernel = kernel - 30.0 * features.T @ p / len(labels)
    bias = -30.0 * p.mean(0)
    test_crops = augment.center_crop_batch(
        jnp.asarray(TEST.images), augment.ViewConfig(mean=view.mean, std=view.std), fraction=0.875
    )
    test_f = np.asarray(model.apply(variables, test_crops, method=model.features), np.float64)
    return test_f @ kernel + bias


def test_augmented_probe_trains_on_fresh_crops_of_the_frozen_backbone():
    """One epoch of one batch: the classifier after one SGD step on the features of the random
    resized, flipped crops of the 40 images (frozen BatchNorm statistics), scored on the
    centre-cropped test images; linear_best is that epoch's."""
    evaluator, objective, config, variables = _evaluator(**FIELDS)
    assert evaluator.names == ["linear", "linear_best"]
    accuracy = evaluator(variables["params"], variables["batch_stats"], stage=1)
    order = np.random.default_rng([evaluator._seed, 0]).permutation(40)
    expected = _one_step_logits(
        evaluator, objective, config, variables, TRAIN.images[order], TRAIN.labels[order]
    )
    test_f = evaluator._linear_test_features(variables, None)
    scores = evaluator._linear(variables, np.arange(40), None, test_f)
    np.testing.assert_allclose(scores["linear"], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores["linear_best"], expected, rtol=1e-4, atol=1e-4)
    predictions = expected.argmax(-1)
    rows = [100.0 * np.mean(predictions[i] == TEST.labels[i]) for i in SCENARIO.test_indices]
    np.testing.assert_allclose(accuracy["linear"], rows)
    np.testing.assert_allclose(accuracy["linear_best"], rows)


def test_augmented_probe_crops_streamed_images_on_the_host_from_the_full_image():
    """Under dataset.host_crop the crops are taken from the decoded images at their own sizes
    (host_crop.resized_crop), not from the stored squares."""
    n = 16
    originals = [
        np.random.default_rng(r).integers(0, 256, (40 + r, 48 + 2 * r, 3), np.uint8)
        for r in range(n)
    ]
    images = streaming.StreamedImages(
        [([{"image": r} for r in range(n)], np.arange(n))],
        (32, 32, 3),
        lambda image: np.asarray(image)[:32, :32],
        num_threads=2,
        open_image=lambda r: Image.fromarray(originals[r]),
    )
    train = sources.ArraySplit(images=images, labels=TRAIN.labels[:n], num_classes=4)
    config = objectives.resolve_config(
        tiny_config(
            **{"eval.evaluators": ("linear",), "dataset.host_crop": True},
            **{f"eval.linear.{k}": v for k, v in FIELDS.items()},
        )
    )
    objective = objectives.get_objective(config)
    evaluator = evaluate.Evaluator(
        objective.model,
        train,
        TEST,
        SCENARIO,
        config,
        parallel.make_mesh(1),
        key=jax.random.PRNGKey(0),
    )
    _, _, _, variables = _evaluator()
    seed = evaluator._seed
    order = np.random.default_rng([seed, 0]).permutation(n)
    u = np.random.default_rng([seed, 0, 0]).random((n, 1, augment.CROP_UNIFORMS), np.float32)
    view = _probe_view(config.augment.view1)
    crops = np.stack(
        [
            host_crop.resized_crop(Image.fromarray(originals[r]), u[row, 0], view)
            for row, r in enumerate(order)
        ]
    )
    expected = _one_step_logits(
        evaluator, objective, config, variables, crops, train.labels[order], cropped=True
    )
    test_f = evaluator._linear_test_features(variables, None)
    scores = evaluator._linear(variables, np.arange(n), None, test_f)
    np.testing.assert_allclose(scores["linear"], expected, rtol=1e-4, atol=1e-4)


def test_settings_the_probe_cannot_take_are_rejected():
    for fields, message in (
        ({"augment": True, "standardize": True}, "set eval.linear.standardize=False"),
        ({"center_crop": 0.0}, "center_crop in"),
        ({"init_std": -0.1}, "init_std >= 0"),
    ):
        with pytest.raises(ValueError, match=message):
            _evaluator(**fields)


class _LinearBackbone:
    """A frozen "backbone" whose features are the flattened standardised view times a fixed
    matrix ``variables["w"]``."""

    def features(self, x):
        raise NotImplementedError  # named by apply's method; apply computes the features

    def apply(self, variables, x, method=None):
        del method
        flat = x.reshape(x.shape[0], -1)
        return jnp.dot(flat, variables["w"], precision=jax.lax.Precision.HIGHEST)


def _pytorch_sgd_probe(
    features,
    labels,
    test_f,
    test_labels,
    *,
    params,
    seed,
    epochs,
    batch,
    lr,
    momentum,
    wd,
    drop_epochs,
):
    """``lincls_eval.py``'s training of its linear layer, written out in float64: cross-entropy
    averaged over each batch's rows, ``torch.optim.SGD(momentum, weight_decay)`` (d = g + wd * w;
    b = momentum * b + d, b = d at the first step; w -= lr * b), the learning rate x0.1 from each
    of ``drop_epochs`` on (``adjust_learning_rate``), the classifier scored after every epoch and
    the first of the best kept; batches of the epoch's permutation, the last one smaller."""
    w = {k: np.asarray(v, np.float64) for k, v in params.items()}
    buf = None
    n = len(labels)
    best = (None, -1.0, -1)
    for epoch in range(epochs):
        rate = lr * 0.1 ** sum(epoch >= m for m in drop_epochs)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            f, y = features[idx], labels[idx]
            logits = f @ w["kernel"] + w["bias"]
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(y)), y] -= 1.0
            grad = {"kernel": f.T @ p / len(y), "bias": p.mean(0)}
            d = {k: grad[k] + wd * w[k] for k in w}
            buf = d if buf is None else {k: momentum * buf[k] + d[k] for k in w}
            w = {k: w[k] - rate * buf[k] for k in w}
        accuracy = 100.0 * np.mean((test_f @ w["kernel"] + w["bias"]).argmax(1) == test_labels)
        if accuracy > best[1]:
            best = (w, accuracy, epoch)
    logits = [test_f @ p["kernel"] + p["bias"] for p in (w, best[0])]
    return logits[0], logits[1], best[2]


def test_augmented_probe_runs_pytorch_sgd_with_momentum_decay_drops_and_a_partial_batch():
    """Three epochs of ten 4x4 images in batches of four (the last one of two real rows), the
    learning rate x0.1 after the first epoch and again after the second, momentum and weight
    decay, against a float64 transcription of lincls_eval.py's loop. The crops cover the whole
    image (scale 1 of a square image: every fitting candidate box is the image, as is the
    fallback) and every view is flipped, so the reference computes the same features. The test
    accuracy rises after epoch 1 and stays: the best epoch is 1, not the last."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 4, 4, 3), np.uint8)
    labels = rng.integers(0, 3, 10).astype(np.int32)
    test_f = rng.standard_normal((9, 5)).astype(np.float32)
    test_labels = rng.integers(0, 3, 9).astype(np.int32)
    w = rng.standard_normal((48, 5)).astype(np.float32) / 4.0
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    view = dataclasses.replace(
        probes.probe_view(4, mean=mean, std=std), min_scale=1.0, flip_prob=1.0
    )
    probe = probes.AugmentedLinearProbe(_LinearBackbone(), parallel.make_mesh(1), view)
    schedule = dict(
        epochs=3,
        batch_size=4,
        learning_rate=0.5,
        momentum=0.9,
        weight_decay=0.05,
        milestones=(1 / 3, 2 / 3),
        init_std=0.1,
        seed=11,
    )
    rows = np.arange(10)
    final, best, best_epoch = probe(
        {"w": w}, images, labels, rows, test_f, test_labels, num_classes=3, **schedule
    )
    x = (images[:, :, ::-1].astype(np.float64) / 255.0 - mean) / std
    features = x.reshape(10, -1) @ w.astype(np.float64)
    start = probes.init_linear(jax.random.key(11), 5, 3, 0.1)
    expected = _pytorch_sgd_probe(
        features,
        labels,
        test_f.astype(np.float64),
        test_labels,
        params=jax.device_get(start),
        seed=11,
        epochs=3,
        batch=4,
        lr=0.5,
        momentum=0.9,
        wd=0.05,
        drop_epochs=(1, 2),
    )
    np.testing.assert_allclose(final, expected[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(best, expected[1], rtol=1e-5, atol=1e-5)
    assert best_epoch == expected[2] == 1  # epoch 2 ties it; the earliest stays
