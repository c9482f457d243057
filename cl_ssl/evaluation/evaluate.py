"""One row of the accuracy matrix: frozen-backbone features, then every probe of the config."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from cl_ssl import parallel
from cl_ssl.data import augment
from cl_ssl.data.scenarios import Scenario
from cl_ssl.data.sources import ArraySplit
from cl_ssl.evaluation import probes

EVALUATORS = ("linear", "knn")
CLASSIFIER = "classifier"
"""The accuracy matrix of the classifier a strategy trains (``Strategy.classify``), scored as is."""


class Evaluator:
    """Scores a backbone by linear probe and weighted kNN on each task's test data (CaSSLe's
    offline protocol, ``main_linear.py``).

    Features are extracted once per evaluation with BatchNorm in inference mode, from the un-augmented
    images normalised as the first view normalises them. The probes train on the labelled training
    data of all tasks (``eval.train_examples`` of them, a fixed random subset, when set) and are
    tested on the whole test set; per-task accuracies come from that one all-class probe, without
    masking logits.

    With ``classify`` (a strategy's ``Strategy.classify``: (strategy state, features [N, F]) ->
    logits [N, C]), the classifier the strategy trains is also scored as it is, with no probe
    trained afterwards, on the same test features (Kaizen's ``classifier_eval``,
    ``kaizen/methods/full_model.py`` l.300-326): the ``classifier`` entry.
    """

    def __init__(
        self,
        model,
        train: ArraySplit,
        test: ArraySplit,
        scenario: Scenario,
        config: ml_collections.ConfigDict,
        mesh: jax.sharding.Mesh,
        *,
        key: jax.Array,
        classify=None,
    ):
        self._config = config
        self._scenario = scenario
        self._mesh = mesh
        self._num_classes = train.num_classes
        self._seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        n = config.eval.train_examples
        if 0 < n < len(train.labels):
            keep = np.sort(
                np.random.default_rng(self._seed).choice(len(train.labels), n, replace=False)
            )
            train = ArraySplit(
                images=train.images[keep], labels=train.labels[keep], num_classes=train.num_classes
            )
        self._train, self._test = train, test
        self._classify = None if classify is None else jax.jit(classify)
        self._batch_size = config.eval.batch_size
        view = ml_collections.ConfigDict(config.augment.view1)
        crop = view.crop_size

        def features(variables, images):
            x = augment.normalize(images, mean=view.mean, std=view.std)
            if x.shape[1:3] != (crop, crop):
                x = jax.image.resize(x, (x.shape[0], crop, crop, x.shape[3]), "bilinear")
            return model.apply(variables, x, method=model.features)

        self._features = features
        self._jitted = {}

    def map_images(self, fn, variables, *rows: np.ndarray) -> np.ndarray:
        """``fn(variables, *row chunks)`` over the rows of ``rows`` (host arrays of N rows each, such
        as uint8 images [N, H, W, C]) in fixed-size batches sharded over the devices, its [b, ...]
        outputs concatenated to [N, ...]. ``fn`` is jitted once (per function object)."""
        if fn not in self._jitted:
            self._jitted[fn] = jax.jit(
                fn,
                in_shardings=(parallel.replicated(self._mesh),)
                + (parallel.batch_sharded(self._mesh),) * len(rows),
                # Gathered on every device, so that every process can read every row.
                out_shardings=parallel.replicated(self._mesh),
            )
        b = self._batch_size
        out = []
        for start in range(0, len(rows[0]), b):
            chunks = [r[start : start + b] for r in rows]
            padded = [
                parallel.global_batch(
                    self._mesh,
                    np.concatenate([c, np.zeros((b - len(c),) + c.shape[1:], c.dtype)]),
                )
                for c in chunks
            ]
            y = self._jitted[fn](variables, *padded)
            out.append(np.asarray(jax.device_get(y))[: len(chunks[0])])
        return np.concatenate(out)

    def features(self, variables, images: np.ndarray) -> np.ndarray:
        """Backbone features float32 [N, F] of uint8 images [N, H, W, C], in fixed-size batches."""
        return self.map_images(self._features, variables, images)

    def __call__(self, params, batch_stats, strategy_state=None) -> dict[str, np.ndarray]:
        """Per-task top-1 accuracy in percent, float [T], for every evaluator in ``eval.evaluators``
        and, when the evaluator has ``classify``, for the classifier in ``strategy_state``."""
        variables = {"params": params, "batch_stats": batch_stats}
        train_f = self.features(variables, self._train.images)
        test_f = self.features(variables, self._test.images)
        e = self._config.eval
        results = {}
        for name in e.evaluators:
            if name == "linear":
                predictions = probes.linear_probe(
                    train_f,
                    self._train.labels,
                    test_f,
                    num_classes=self._num_classes,
                    seed=self._seed,
                    **e.linear.to_dict(),
                )
            else:
                predictions = probes.knn_predict(
                    train_f,
                    self._train.labels,
                    test_f,
                    num_classes=self._num_classes,
                    **e.knn.to_dict(),
                )
            results[name] = probes.per_task_accuracy(
                np.asarray(predictions), self._test.labels, self._scenario.test_indices
            )
        if self._classify is not None:
            logits = self._classify(strategy_state, test_f)
            results[CLASSIFIER] = probes.per_task_accuracy(
                np.asarray(jax.device_get(logits)).argmax(axis=-1),
                self._test.labels,
                self._scenario.test_indices,
            )
        return results
