"""The published rows that cl_ssl's presets reproduce: each paper's number, where it is published,
and the run of the library that stands for it (``python -m cl_ssl.reproduce``).

Data only. ``PAPERS`` maps a paper's key to its tables; a table holds its setting, its runs (one
``python -m cl_ssl.main`` command each, at the paper's scale and at CPU scale) and its rows (a
published number, read from a run's accuracy matrix and metric). Rows that share a run (one
method and objective, several metrics) read the same workdirs. A paper added later (POCON's
tables, once its preset is in) is one more entry of ``PAPERS``; what the presets cannot
reproduce, and why, is in ``NOT_LISTED``.

Units: accuracies in percent (Kaizen publishes fractions; its rows hold them x100), tolerances in
percentage points, GPU-hours on one H100 from the train-step throughput measured in
BENCHMARKS.md (training steps only: the evaluation after each task and CaSSLe's online probe's
extra batch per step are not counted).
"""

from __future__ import annotations

import dataclasses

SCALES = ("paper", "cpu")
"""``paper``: the runs of the paper's setting; ``cpu``: the same methods on Split Fashion-MNIST at
CPU scale, to check the paper's orderings rather than its numbers."""


@dataclasses.dataclass(frozen=True)
class Throughput:
    """Training images per second of one H100 for a step of this kind, and where it comes from."""

    images_per_s: float
    source: str


# BENCHMARKS.md, "On one H100 GPU: fine-tuning, CaSSLe and PFR against the PyTorch peer":
# SimCLR, ResNet-18 with the CIFAR stem on 32-pixel images, batch 256 (CaSSLe's step: task 2 on).
R18_32PX_FP32_FINETUNE = Throughput(13_140, "measured: ResNet-18, 32 px, float32, fine-tuning")
R18_32PX_FP32_DISTILL = Throughput(10_392, "measured: ResNet-18, 32 px, float32, CaSSLe's step")
R18_32PX_BF16_DISTILL = Throughput(18_263, "measured: ResNet-18, 32 px, bfloat16, CaSSLe's step")
# BENCHMARKS.md, "Streaming input: images/s per host at 224 pixels": the 224-pixel step does 20.2
# GFLOP per image; at the 19.6% MFU of the 32-pixel float32 step (494.7 TFLOP/s TF32 peak) that is
# about 4,800 images/s (an estimate: the 224-pixel step was not timed on a GPU), and x0.79 for
# CaSSLe's teacher pass (its float32 ratio at 32 pixels).
R18_224PX_FP32_FINETUNE = Throughput(4_800, "estimated: ResNet-18, 224 px, float32, fine-tuning")
R18_224PX_FP32_DISTILL = Throughput(3_790, "estimated: ResNet-18, 224 px, float32, CaSSLe's step")


@dataclasses.dataclass(frozen=True)
class Run:
    """One configuration of ``python -m cl_ssl.main``, run once per seed.

    ``config`` and ``overrides`` make the paper-scale command (``--config=CONFIG OVERRIDES``);
    ``cpu_overrides`` follow the table's ``cpu_config`` at CPU scale (None: no CPU variant).
    ``throughput`` prices the paper-scale run (None: not measured for this kind of step).
    """

    name: str  # the run's folder under its table, e.g. 'byol_cassle'
    method: str
    objective: str
    config: str
    overrides: tuple[str, ...] = ()
    cpu_overrides: tuple[str, ...] | None = None
    throughput: Throughput | None = None


@dataclasses.dataclass(frozen=True)
class Row:
    """One published number and the run and metric that reproduce it.

    ``metric`` is a ``cl_ssl.summarize.METRICS`` key (``final``, ``aia``, ``forgetting``, ...)
    of the accuracy matrix ``evaluator`` (``online``, ``linear``, ``linear_best``, ``classifier``).
    A row is ``within`` its tolerance when |ours - paper| <= max(``tolerance``, 2 x our seeds'
    sample std). ``status``: ``verified`` (read from the primary ``source``) or ``unverified``.
    """

    run: str  # Run.name
    metric: str
    evaluator: str
    paper_value: float  # percent
    source: str
    protocol: str
    tolerance: float = 1.0  # percentage points
    status: str = "verified"
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Ordering:
    """At CPU scale, run ``better`` should beat run ``worse`` on ``metric`` (higher is better,
    unless ``lower_is_better``), read from the table's ``cpu_evaluator`` matrix."""

    better: str
    worse: str
    metric: str
    lower_is_better: bool = False


@dataclasses.dataclass(frozen=True)
class Table:
    """A published table (or figure) of one paper, its setting and its rows.

    ``images_per_run``: training images a paper-scale run presents (tasks x images x epochs, replay
    rows included), for the GPU-hour estimate. At CPU scale every run is ``cpu_config`` plus its
    ``cpu_overrides``, scored on ``cpu_evaluator``; the orderings checked are those of the paper's
    values (within each objective and metric) and ``extra_orderings``.
    """

    name: str
    title: str
    setting: str
    runs: tuple[Run, ...]
    rows: tuple[Row, ...]
    images_per_run: int | None = None
    cpu_config: str | None = None
    cpu_evaluator: str = "linear"
    extra_orderings: tuple[Ordering, ...] = ()

    @property
    def run_names(self) -> list[str]:
        return [run.name for run in self.runs]

    def run(self, name: str) -> Run:
        return next(run for run in self.runs if run.name == name)


@dataclasses.dataclass(frozen=True)
class Paper:
    key: str
    citation: str
    tables: tuple[Table, ...]


# CaSSLe (Fini et al., "Self-Supervised Models are Continual Learners", CVPR 2022): the official
# repository's results figure, DonkeyShot21/cassle @ b5b0929, assets/results.png (shown in its
# README): top-1 after the 5th task, SSL fine-tuning and CaSSLe per objective.
_CASSLE_FIGURE = "CaSSLe README figure (DonkeyShot21/cassle assets/results.png)"
CASSLE_OBJECTIVES = {
    "byol": ("BYOL", (52.7, 62.2), (66.0, 66.4)),
    "barlow_twins": ("Barlow Twins", (54.3, 60.4), (63.1, 68.2)),
    "mocov2plus": ("MoCoV2+", (47.3, 59.5), (62.0, 68.8)),
    "simclr": ("SimCLR", (48.9, 58.3), (61.5, 68.0)),
    "swav": ("SwAV", (55.5, 57.8), (64.4, 66.0)),
    "vicreg": ("VICReg", (51.5, 53.6), (61.3, 64.8)),
}
"""objective -> (name, CIFAR-100 (fine-tuning, CaSSLe), ImageNet-100 (fine-tuning, CaSSLe))."""


def _cassle_table(name, title, setting, config, column, evaluator, protocol, skip=(), **table):
    speeds = (
        (R18_224PX_FP32_FINETUNE, R18_224PX_FP32_DISTILL)
        if config.startswith("configs/imagenet100")
        else (R18_32PX_FP32_FINETUNE, R18_32PX_FP32_DISTILL)
    )
    runs, rows = [], []
    for objective, (_, *values) in CASSLE_OBJECTIVES.items():
        if objective in skip:
            continue
        for strategy, value in zip(("finetune", "cassle"), values[column], strict=True):
            runs.append(
                Run(
                    name=f"{objective}_{strategy}",
                    method="fine-tuning" if strategy == "finetune" else "CaSSLe",
                    objective=objective,
                    config=f"{config}:{strategy}",
                    overrides=(f"--config.objective={objective}",),
                    cpu_overrides=(
                        f"--config.objective={objective}",
                        f"--config.strategy={strategy}",
                    ),
                    throughput=speeds[strategy == "cassle"],
                )
            )
            rows.append(
                Row(
                    run=f"{objective}_{strategy}",
                    metric="final",
                    evaluator=evaluator,
                    paper_value=value,
                    source=_CASSLE_FIGURE,
                    protocol=protocol,
                )
            )
    return Table(name, title, setting, tuple(runs), tuple(rows), **table)


CASSLE = Paper(
    key="cassle",
    citation="Fini et al., Self-Supervised Models are Continual Learners, CVPR 2022",
    tables=(
        _cassle_table(
            "cifar100_class",
            "Class-incremental CIFAR-100",
            "CIFAR-100, class-incremental, 5 tasks, ResNet-18, 500 epochs/task",
            "configs/cifar100.py",
            0,
            "online",
            "online linear probe on every class's labels, read after the last task",
            images_per_run=5 * 10_000 * 500,
            cpu_config="configs/fashion_mnist.py:strategies",
        ),
        _cassle_table(
            "imagenet100_class",
            "Class-incremental ImageNet-100",
            "ImageNet-100, class-incremental, 5 tasks, ResNet-18, 400 epochs/task",
            "configs/imagenet100.py",
            1,
            "linear",
            "offline linear probe (main_linear.py, 100 epochs) after the last task",
            skip=("mocov2plus",),
            images_per_run=126_689 * 400,
        ),
    ),
)

# Kaizen (Tang et al., "Kaizen: Practical Self-supervised Continual Learning with Continual
# Fine-tuning", WACV 2024): the official repository's README figures, dr-bell/kaizen @ e36ee54,
# imgs/results_final.png and imgs/results_continual.png: top-1 of the classifier trained through
# the stream, as fractions.
KAIZEN_VALUES = {
    # objective: {method: (final, average continual)}
    "byol": {"no_distill": (0.191, 0.381), "cassle": (0.226, 0.431), "kaizen": (0.313, 0.481)},
    "simclr": {"no_distill": (0.209, 0.391), "cassle": (0.213, 0.403), "kaizen": (0.362, 0.547)},
    "mocov2plus": {
        "no_distill": (0.206, 0.393),
        "cassle": (0.244, 0.432),
        "kaizen": (0.409, 0.570),
    },
    "vicreg": {"no_distill": (0.212, 0.400), "cassle": (0.217, 0.405), "kaizen": (0.292, 0.516)},
}
_KAIZEN_METHODS = {
    "no_distill": (
        "No Distill",
        ("--config.kaizen.classifier_distill_weight=0", "--config.kaizen.feature_distill_weight=0"),
    ),
    "cassle": ("CaSSLe", ("--config.kaizen.classifier_distill_weight=0",)),
    "kaizen": ("Kaizen", ()),
}
_KAIZEN_NOTE = (
    "how Kaizen built its No Distill and CaSSLe baselines is not in its code; the command is "
    "Kaizen without the distillation terms"
)
_KAIZEN_CPU = (
    "--config.strategy=kaizen",
    "--config.labels.fraction=1.0",
    "--config.eval.evaluators=knn",
)


def _kaizen_table():
    runs, rows = [], []
    for objective, values in KAIZEN_VALUES.items():
        for method, (label, overrides) in _KAIZEN_METHODS.items():
            name = f"{objective}_{method}"
            runs.append(
                Run(
                    name=name,
                    method=label,
                    objective=objective,
                    config="configs/cifar100.py:kaizen",
                    overrides=(f"--config.objective={objective}", *overrides),
                    cpu_overrides=(f"--config.objective={objective}", *_KAIZEN_CPU, *overrides),
                    throughput=R18_32PX_BF16_DISTILL,
                )
            )
            for metric, value, figure in zip(
                ("final", "aia"),
                values[method],
                ("imgs/results_final.png", "imgs/results_continual.png"),
                strict=True,
            ):
                rows.append(
                    Row(
                        run=name,
                        metric=metric,
                        evaluator="classifier",
                        paper_value=round(100 * value, 1),
                        source=f"Kaizen README figure (dr-bell/kaizen {figure}; {value:.3f})",
                        protocol="the stream-trained classifier as it is, on every class",
                        note="" if method == "kaizen" else _KAIZEN_NOTE,
                    )
                )
    forgetting = tuple(
        Ordering(f"{o}_kaizen", f"{o}_no_distill", "forgetting", lower_is_better=True)
        for o in KAIZEN_VALUES
    )
    return Table(
        "cifar100",
        "Split CIFAR-100, classifier trained through the stream",
        "CIFAR-100, class-incremental, 5 tasks, every label, ResNet-18, 500 epochs/task",
        tuple(runs),
        tuple(rows),
        # 32 replay rows join each batch of 256 from the second task on.
        images_per_run=5 * 10_000 * 500 + 4 * 10_000 * 500 * 32 // 256,
        cpu_config="configs/fashion_mnist.py:strategies",
        cpu_evaluator="classifier",
        extra_orderings=forgetting,
    )


KAIZEN = Paper(
    key="kaizen",
    citation="Tang et al., Kaizen: Practical Self-supervised Continual Learning with Continual "
    "Fine-tuning, WACV 2024",
    tables=(_kaizen_table(),),
)

# CCL (Lin, Wang and Lin, "Continual Contrastive Learning for Image Classification", ICME 2022):
# the official README's results table, VDIGPKU/ContinualContrastiveLearning @ acc9414, column
# "Accuracy (paper)", ImageNet-Sub in 10 steps, lincls_eval.py's best-epoch linear accuracy.
_CCL_SOURCE = (
    "CCL README 'Results' table, column 'Accuracy (paper)' (VDIGPKU/ContinualContrastiveLearning)"
)
_SIMPLE_REPLAY = (
    "--config.strategy=replay",
    "--config.replay.selection=random_with_replacement",
    "--config.replay.per_class=20",
    "--config.replay.mode=mix",
)
_CCL_CPU = ("--config.objective=mocov2plus", "--config.mocov2plus.symmetric=false")
CCL = Paper(
    key="ccl",
    citation="Lin, Wang and Lin, Continual Contrastive Learning for Image Classification, ICME 2022",
    tables=(
        Table(
            "imagenet_sub",
            "ImageNet-Sub, 10 incremental steps",
            "ImageNet-Sub (first 100 classes), class-incremental, 10 tasks, ResNet-50, "
            "200 epochs/task",
            runs=(
                Run(
                    "finetune",
                    "fine-tuning",
                    "mocov2plus",
                    "configs/imagenet100.py:ccl",
                    ("--config.strategy=finetune",),
                    (*_CCL_CPU, "--config.strategy=finetune"),
                ),
                Run(
                    "simple_replay",
                    "SimpleReplay",
                    "mocov2plus",
                    "configs/imagenet100.py:ccl",
                    _SIMPLE_REPLAY,
                    (*_CCL_CPU, *_SIMPLE_REPLAY),
                ),
                Run(
                    "ccl",
                    "CCL",
                    "mocov2plus",
                    "configs/imagenet100.py:ccl",
                    (),
                    (*_CCL_CPU, "--config.strategy=ccl", "--config.ccl.replay.mode=mix"),
                ),
            ),
            rows=tuple(
                Row(
                    run,
                    "final",
                    "linear_best",
                    value,
                    _CCL_SOURCE,
                    "linear probe on every class after the last step (lincls_eval.py: lr 30, "
                    "100 epochs), its best epoch",
                )
                for run, value in (("finetune", 52.62), ("simple_replay", 54.28), ("ccl", 55.48))
            ),
            cpu_config="configs/fashion_mnist.py:strategies",
        ),
    ),
)

PAPERS = {paper.key: paper for paper in (CASSLE, KAIZEN, CCL)}

NOT_LISTED = (
    (
        "CaSSLe: data-incremental, DomainNet, forgetting, forward transfer, 10 tasks, "
        "semi-supervised",
        "the presets run these settings (configs/cifar100.py:data_incremental, "
        "configs/domainnet.py), but their numbers are in the paper's tables only and were not read "
        "from it here",
    ),
    (
        "CaSSLe: MoCoV2+ on ImageNet-100 (62.0 fine-tuning, 68.8 CaSSLe)",
        "the official repository ships no ImageNet-100 MoCoV2+ script, so the preset has no recipe "
        "(learning rate, weight decay, views) for it",
    ),
    (
        "CCL: CIFAR-100 and ImageNet-Full",
        "the abstract gives gains over fine-tuning only (+1.60 and +1.29 points), no accuracy; "
        "the CIFAR-100 setting is not in the official code",
    ),
    (
        "Genifer: CIFAR-100 50 + 5x10, CUB-200",
        "the official repository publishes no result table and the paper's tables were not read "
        "here; CUB-200 also needs the generator for images larger than 32 pixels, missing from "
        "the official code",
    ),
    (
        "POCON: CIFAR-100 4 to 100 tasks, semi-supervised",
        "the official repository (alviur/pocon_wacv2024) publishes no result table and the "
        "paper's tables were not read here; configs/cifar100.py:pocon runs its CIFAR-100 setting",
    ),
    (
        "ISD: every table",
        "ISD's tables are offline training on ImageNet-1k (200 epochs, CompRess linear and kNN "
        "protocols): no preset trains on ImageNet-1k, and ISD publishes no continual setting",
    ),
)
"""(what, why): published tables of the seed papers that no row reproduces."""
