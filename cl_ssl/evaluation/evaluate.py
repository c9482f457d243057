"""One row of the accuracy matrix: frozen-backbone features, then every probe of the config."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
import tqdm

from cl_ssl import parallel
from cl_ssl.data import augment, streaming
from cl_ssl.data.scenarios import Scenario
from cl_ssl.data.sources import ArraySplit
from cl_ssl.evaluation import online as online_lib
from cl_ssl.evaluation import probes

EVALUATORS = ("linear", "knn")
CLASSIFIER = "classifier"
"""The accuracy matrix of the classifier a strategy trains (``Strategy.classify``), scored as is."""
LINEAR_BEST = "linear_best"
"""The accuracy matrix of the linear probe's best epoch, chosen on the test set
(``eval.linear.report_best``, ``lincls_eval.py``'s ``best_acc1``)."""
LINEAR_SCHEDULE = (
    "epochs",
    "batch_size",
    "learning_rate",
    "momentum",
    "weight_decay",
    "milestones",
    "standardize",
    "init_std",
)
"""The ``eval.linear`` fields that are keywords of ``probes.linear_probe``."""
DOMAIN_AWARE = "_domain_aware"
"""Suffix of the domain-aware matrix of every evaluator (``eval.domain_aware``): column j scores, on
task j's test images, a probe trained on task j's training examples alone."""
TASK_AWARE = "_task_aware"
"""Suffix of the task-aware matrix of every evaluator (``eval.task_aware``)."""
TOP5 = "_top5"
"""Suffix of the top-5 matrix of every evaluator, the online probe and the classifier
(``eval.top5``)."""
PROBE_DATA = ("all", "seen", "current")
"""``eval.probe_data``: which training examples train the probes after a stage."""


def matrix_names(config: ml_collections.ConfigDict, *, has_classifier: bool) -> list[str]:
    """The accuracy matrices a run of ``config`` fills: its evaluators (with the linear probe's
    ``linear_best`` under ``eval.linear.report_best``), the online probe (``eval.online``), the
    strategy's classifier when it trains one, the evaluators again with the suffix
    ``_domain_aware`` under ``eval.domain_aware``, all of those with the suffix ``_task_aware``
    under ``eval.task_aware``, and under ``eval.top5`` the top-5 accuracies of the evaluators, the
    online probe and the classifier (suffix ``_top5``)."""
    names = []
    for name in config.eval.evaluators:
        names.append(name)
        if name == "linear" and config.eval.linear.get("report_best", False):
            names.append(LINEAR_BEST)
    names += [online_lib.ONLINE] if config.eval.online else []
    names += [CLASSIFIER] if has_classifier else []
    top5 = [name + TOP5 for name in names] if config.eval.get("top5", False) else []
    if config.eval.get("domain_aware", False):
        names += [name + DOMAIN_AWARE for name in config.eval.evaluators]
    return names + ([name + TASK_AWARE for name in names] if config.eval.task_aware else []) + top5


def scored_by(name: str) -> str:
    """The evaluator, probe or classifier whose scores matrix ``name`` reads: ``name`` without
    its ``_task_aware`` or ``_top5`` suffix."""
    return name.removesuffix(TASK_AWARE).removesuffix(TOP5)


class Evaluator:
    """Scores a backbone by linear probe and weighted kNN on each task's test data (CaSSLe's
    offline protocol, ``main_linear.py``).

    Features are extracted once per evaluation with BatchNorm in inference mode, from the un-augmented
    images normalised as the first view normalises them. The probes are tested on the whole test set;
    per-task accuracies come from that one all-class probe, without masking logits. What trains the
    probes after stage s (row s of the matrix; row 0, the random network, counts as stage 1):

    - ``eval.probe_data``: the labelled training data of all tasks (``'all'``, CaSSLe's offline
      probe), of the stages seen so far (``'seen'``) or of stage s only (``'current'``): Kaizen's
      ``--linear_classifier_training_data_source`` ``all_tasks``, ``seen_tasks``, ``current_task``;
    - ``eval.label_fraction``: a seeded class-balanced share of those labels (semi-supervised
      probes, ``probes.class_balanced_subset``);
    - ``eval.train_examples``: at most that many of them, a fixed random subset, when set.

    The linear probe trains by default with the optimizer and schedule of CaSSLe's
    ``main_linear.py``, but on those examples' fixed features from zero weights, where CaSSLe's
    trains ``nn.Linear`` (PyTorch's uniform initialisation) on a fresh RandomResizedCrop and flip
    of every image at every epoch (``cassle/utils/classification_dataloader.py`` l.53-66) and
    drops the last batch. MoCo's and CCL's ``lincls_eval.py`` protocol instead (``eval.linear``):
    ``augment``, a fresh RandomResizedCrop (scale 0.08-1, ratios 3/4-4/3) with a horizontal flip
    of every training image at every epoch (l.267-274), embedded by the frozen backbone with
    BatchNorm in inference mode (``model.eval()``, l.366), cropped on the host from the decoded
    image under ``dataset.host_crop``, else on the device from the stored image; ``center_crop``,
    the central square of that share of the shorter side as the fixed view (0.875: Resize(256) +
    CenterCrop(224), l.297-302); ``init_std``, the weights drawn from N(0, init_std^2) (l.161-163);
    ``report_best``, the ``linear_best`` matrix besides ``linear``: the accuracies of the epoch
    whose classifier scores best on the whole test set (l.327-345, its ``best_acc1``; the epoch is
    chosen on the test set, as the reference does).

    With ``eval.domain_aware`` (domain-incremental runs), CaSSLe's domain-aware evaluation as
    well: one linear probe per domain, trained on that domain's examples of the probe data alone
    and scored on its test images (``bash_files/linear/domainnet/domain/*.sh`` with ``--domain``,
    logged by ``cassle/methods/linear.py`` l.317-324 as ``val_acc1_{domain}``), and likewise one
    kNN bank per domain: the ``<evaluator>_domain_aware`` matrices, whose column j is domain j's
    probe on domain j. The all-domain probes are CaSSLe's domain-agnostic evaluation.

    With ``eval.task_aware`` every probe is also scored task-incrementally, each test image's
    prediction restricted to its task's classes (``probes.task_aware_predictions``): the
    ``<name>_task_aware`` matrices of class-incremental runs.

    With ``classify`` (a strategy's ``Strategy.classify``: (strategy state, features [N, F]) ->
    logits [N, C]), the classifier the strategy trains is also scored as it is, with no probe
    trained afterwards, on the same test features (Kaizen's ``classifier_eval``,
    ``kaizen/methods/full_model.py`` l.300-326): the ``classifier`` entry. With ``online``, so is
    the online probe the train step trains (``cl_ssl.evaluation.online``): the ``online`` entry.
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
        stage_indices: Sequence[np.ndarray] | None = None,
        classify=None,
        online: online_lib.OnlineProbe | None = None,
        progress: bool = False,
    ):
        """``stage_indices``: per training stage, its int [N_s] indices into ``train`` (default: the
        scenario's tasks); they define the seen and current data of ``eval.probe_data``.
        ``progress``: a progress bar over the batches of every feature extraction."""
        self._config = config
        self._scenario = scenario
        self._mesh = mesh
        self._num_classes = train.num_classes
        self._seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        self._train, self._test = train, test
        self._stage_indices = tuple(
            scenario.train_indices if stage_indices is None else stage_indices
        )
        self.names = matrix_names(config, has_classifier=classify is not None)
        self._classify = None if classify is None else jax.jit(classify)
        self._online_logits = None if online is None else jax.jit(online.logits)
        self._batch_size = config.eval.batch_size
        self._progress = progress
        view = ml_collections.ConfigDict(config.augment.view1)
        crop = view.crop_size

        def features(variables, images):
            x = augment.normalize(images, mean=view.mean, std=view.std)
            if x.shape[1:3] != (crop, crop):
                x = jax.image.resize(x, (x.shape[0], crop, crop, x.shape[3]), "bilinear")
            return model.apply(variables, x, method=model.features)

        self._features = features
        lin = config.eval.linear
        self._linear_crop = float(lin.get("center_crop", 1.0))
        self._linear_augment = bool(lin.get("augment", False))
        self._report_best = bool(lin.get("report_best", False))

        def center_features(variables, images):
            # The central square of center_crop of the shorter side, resized to the crop side.
            cfg = augment.ViewConfig(crop_size=crop, mean=tuple(view.mean), std=tuple(view.std))
            x = augment.center_crop_batch(images, cfg, fraction=self._linear_crop)
            return model.apply(variables, x, method=model.features)

        self._center_features = center_features
        self._augmented_probe = probes.AugmentedLinearProbe(
            model,
            mesh,
            probes.probe_view(crop, mean=view.mean, std=view.std),
            host_crop=bool(config.dataset.host_crop),
            progress=progress,
        )
        self._jitted = {}

    def probe_pool(self, stage: int, data: str | None = None) -> np.ndarray:
        """int [K] sorted indices into the training split: the labelled examples the protocol
        allows the probes of row ``stage`` (0: the random network, 1..S: after stage S), by
        ``data`` (one of ``PROBE_DATA``; None: ``eval.probe_data``) and ``eval.label_fraction``;
        the online probe trains on row s's pool by ``eval.online_data`` during stage s."""
        e = self._config.eval
        data = data or e.probe_data
        s = max(stage, 1) - 1
        if data == "all":
            # The tasks' examples: none held out (dataset.holdout_fraction), as FACIL's probe
            # trains on its train loader alone.
            rows = np.unique(np.concatenate(self._scenario.train_indices))
        elif data == "seen":
            rows = np.unique(np.concatenate(self._stage_indices[: s + 1]))
        else:
            rows = np.sort(self._stage_indices[s])
        if e.label_fraction < 1.0:
            rows = rows[
                probes.class_balanced_subset(self._train.labels[rows], e.label_fraction, self._seed)
            ]
        return rows

    def probe_examples(self, stage: int) -> np.ndarray:
        """``probe_pool(stage)``, at most ``eval.train_examples`` of it (a fixed random subset):
        the examples that train the offline probes of row ``stage``."""
        e, rows = self._config.eval, self.probe_pool(stage)
        if 0 < e.train_examples < len(rows):
            draw = np.random.default_rng(self._seed).choice(
                len(rows), e.train_examples, replace=False
            )
            rows = np.sort(rows[draw])
        return rows

    def map_images(self, fn, variables, *rows: np.ndarray) -> np.ndarray:
        """``fn(variables, *row chunks)`` over the rows of ``rows`` (host arrays of N rows each,
        such as uint8 images [N, H, W, C], or streamed images) in fixed-size batches sharded over
        the devices, its [b, ...] outputs concatenated to [N, ...]. ``fn`` is jitted once (per
        function object)."""
        if fn not in self._jitted:
            self._jitted[fn] = jax.jit(
                fn,
                in_shardings=(parallel.replicated(self._mesh),)
                + (parallel.batch_sharded(self._mesh),) * len(rows),
                # Gathered on every device, so that every process can read every row.
                out_shardings=parallel.replicated(self._mesh),
            )
        b, n = self._batch_size, len(rows[0])
        out = []
        for start in tqdm.tqdm(
            range(0, n, b), "features", unit="batch", leave=False, disable=not self._progress
        ):
            # The last batch is padded with copies of the last row, whose outputs are dropped;
            # each process reads only the rows its devices take (a streamed split decodes those).
            ids = np.minimum(np.arange(start, start + b), n - 1)
            y = self._jitted[fn](
                variables, *(parallel.gather_batch(self._mesh, r, ids) for r in rows)
            )
            out.append(np.asarray(jax.device_get(y))[: min(b, n - start)])
        return np.concatenate(out)

    def features(self, variables, images) -> np.ndarray:
        """Backbone features float32 [N, F] of uint8 images [N, H, W, C] (an array, or streamed
        images read a batch at a time), in fixed-size batches."""
        return self.map_images(self._features, variables, images)

    def _train_images(self, rows: np.ndarray):
        """The training images of ``rows``; no copy of a whole (large) training split, and a
        streamed one is read a batch at a time."""
        if len(rows) == len(self._train.labels):
            return self._train.images
        return streaming.subset(self._train.images, rows)

    def _linear(self, variables, rows, train_f, test_f) -> dict[str, np.ndarray]:
        """The test logits [N_test, C] of the linear probe trained on ``rows`` (sorted indices
        into the training split): ``linear``, and ``linear_best`` under
        ``eval.linear.report_best``. ``train_f``: the features of ``rows`` (None where the probe
        embeds its own views), ``test_f``: the test features in the probe's view
        (``_linear_test_features``)."""
        lin = self._config.eval.linear
        schedule = {k: lin[k] for k in LINEAR_SCHEDULE if k in lin}
        common = dict(num_classes=self._num_classes, seed=self._seed, **schedule)
        if self._linear_crop < 1.0 and not self._linear_augment:
            train_f = self.map_images(self._center_features, variables, self._train_images(rows))
        train_labels = self._train.labels[rows]
        if self._linear_augment:
            final, best, _ = self._augmented_probe(
                variables,
                self._train.images,
                self._train.labels,
                rows,
                test_f,
                self._test.labels,
                **common,
            )
        elif self._report_best:
            final, best, _ = probes.linear_probe_best(
                train_f, train_labels, test_f, self._test.labels, **common
            )
        else:
            return {"linear": probes.linear_probe(train_f, train_labels, test_f, **common)}
        return {"linear": final, **({LINEAR_BEST: best} if self._report_best else {})}

    def _linear_test_features(self, variables, test_f) -> np.ndarray:
        """The linear probe's test features: ``test_f``, the whole images', or under
        ``eval.linear.center_crop`` < 1 those of the central crops."""
        if self._linear_crop < 1.0:
            return self.map_images(self._center_features, variables, self._test.images)
        return test_f

    def _scores(self, name, variables, rows, train_f, test_f) -> dict[str, np.ndarray]:
        """The test scores [N_test, C] of evaluator ``name`` trained on ``rows`` (sorted indices
        into the training split, ``train_f`` their features), by matrix name."""
        if name == "linear":
            return self._linear(variables, rows, train_f, test_f)
        knn = self._config.eval.knn.to_dict()
        # As solo-learn's WeightedKNNClassifier: k at most the number of labelled examples (a
        # small label_fraction or current task may hold fewer).
        knn["k"] = min(knn["k"], len(rows))
        train_labels = self._train.labels[rows]
        return {
            name: probes.knn_scores(
                train_f, train_labels, test_f, num_classes=self._num_classes, **knn
            )
        }

    def _domain_aware(self, name, variables, rows, train_f, test_f) -> np.ndarray:
        """Float [T]: column j the accuracy, on task j's test images, of evaluator ``name``
        trained on the examples of ``rows`` (as in ``_scores``) that belong to task j."""
        scenario = self._scenario
        accuracy = np.empty(scenario.num_tasks)
        for j, train_j in enumerate(scenario.train_indices):
            keep = np.isin(rows, train_j)
            if not keep.any():
                e = self._config.eval
                raise ValueError(
                    f"eval.domain_aware: eval.train_examples={e.train_examples} and "
                    f"eval.label_fraction={e.label_fraction} leave no training example of task "
                    f"{j + 1} for its probe; raise them (train_examples -1: no limit)"
                )
            own_f = None if train_f is None else train_f[keep]
            scores = self._scores(name, variables, rows[keep], own_f, test_f)[name]
            accuracy[j] = probes.per_task_accuracy(
                scores.argmax(-1), self._test.labels, scenario.test_indices
            )[j]
        return accuracy

    def __call__(
        self, params, batch_stats, strategy_state=None, online_probe=None, *, stage: int
    ) -> dict[str, np.ndarray]:
        """Per-task top-1 accuracy in percent, float [T], of each matrix in ``self.names``, for row
        ``stage`` of the matrices (0: the random network; s: after stage s); ``online_probe``: the
        online probe's parameters."""
        variables = {"params": params, "batch_stats": batch_stats}
        rows = self.probe_examples(stage)
        e = self._config.eval
        # The augmented or centre-cropped linear probe embeds its own views of the images.
        own_views = self._linear_augment or self._linear_crop < 1.0
        if any(name != "linear" or not own_views for name in e.evaluators):
            train_f = self.features(variables, self._train_images(rows))
        else:
            train_f = None
        # The centre-cropped linear probe embeds its own test view; the full-image test features
        # serve the other evaluators, the linear probe without a centre crop, the online probe and
        # the strategy's classifier.
        if (
            any(name != "linear" or not self._linear_crop < 1.0 for name in e.evaluators)
            or self._online_logits is not None
            or self._classify is not None
        ):
            test_f = self.features(variables, self._test.images)
        else:
            test_f = None
        scores, results = {}, {}
        for name in e.evaluators:
            own_test_f = (
                self._linear_test_features(variables, test_f) if name == "linear" else test_f
            )
            scores.update(self._scores(name, variables, rows, train_f, own_test_f))
            if e.domain_aware:
                results[name + DOMAIN_AWARE] = self._domain_aware(
                    name, variables, rows, train_f, own_test_f
                )
        if self._online_logits is not None:
            scores[online_lib.ONLINE] = np.asarray(self._online_logits(online_probe, test_f))
        if self._classify is not None:
            scores[CLASSIFIER] = np.asarray(jax.device_get(self._classify(strategy_state, test_f)))
        scenario, labels = self._scenario, self._test.labels
        for name, s in scores.items():
            results[name] = probes.per_task_accuracy(
                s.argmax(axis=-1), labels, scenario.test_indices
            )
            if e.get("top5", False):
                results[name + TOP5] = probes.per_task_accuracy(
                    probes.top_k_hits(s, labels, k=5), labels, scenario.test_indices
                )
            if e.task_aware:
                results[name + TASK_AWARE] = probes.per_task_accuracy(
                    probes.task_aware_predictions(s, scenario.test_task_ids, scenario.task_classes),
                    labels,
                    scenario.test_indices,
                )
        return results
