"""Default run configuration, shared by the files under configs/, and its validation.

Every field can be overridden on the command line the ml_collections way, for example
``--config.strategy=offline --config.num_tasks=10 --config.optimizer.lr=0.3``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Sequence

import ml_collections
from ml_collections.config_dict import placeholder

from cl_ssl import objectives, optim, strategies
from cl_ssl.data import host_crop
from cl_ssl.data.augment import ViewConfig
from cl_ssl.objectives.base import make_views

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)

# Fields that change how a run is executed or logged but not its numbers: a resumed run may change
# them without being taken for a different run.
EXECUTION_FIELDS = frozenset(
    {
        "log_every_steps",
        "stop_after_steps",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "dataset.data_dir",
        "dataset.on_device",
        "dataset.streaming",
        "dataset.read_threads",
        "progress_bar",
        "eval.batch_size",
        "eval.plots",
        "wandb",
    }
)


def view_config(**values) -> ml_collections.ConfigDict:
    """One augmentation view: every field of ``cl_ssl.data.augment.ViewConfig``.

    Fields not given stay unset (None) and take the objective's recipe value when the run starts
    (``cl_ssl.objectives.resolve_config``); crop size and normalisation default to CIFAR's.
    """
    fields = {f.name: f for f in dataclasses.fields(ViewConfig)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(
            f"unknown view fields {sorted(unknown)}; valid fields are {sorted(fields)}"
        )
    view = {name: placeholder(type(f.default)) for name, f in fields.items()}
    view.update(crop_size=32, mean=CIFAR_MEAN, std=CIFAR_STD)
    view.update(values)
    return ml_collections.ConfigDict(view)


def base_config() -> ml_collections.ConfigDict:
    """CIFAR-100, 5 class-incremental tasks, CaSSLe's settings; SimCLR unless --config.objective."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # seeds: several seeds of this config trained in one program (a leading replica axis on the
    # state; e.g. --config.seeds=0,1,2), each in <workdir>/seed_<s>/ with the results of the run
    # with --config.seed=<s>; () trains the one run of ``seed``.
    c.seeds = ()
    # replica_program: how one program steps the replicas: "loop" (each replica's step in turn)
    # or "vmap" (one step mapped over the replica axis; step.jit_replicated_step).
    c.replica_program = "loop"

    # image_size: the side at which images are stored (required for data sets of varying image
    # size, e.g. imagenet100, imagenet_sub and domainnet); 0 keeps them as they are. domains:
    # domainnet's domains in task order; () is CaSSLe's order. on_device: the training set lives
    # on every device for the whole run (True), or in host memory, each step's batch sent to the
    # devices (False: for data sets larger than a device's memory; the same numbers either way).
    # streaming (with on_device=False, tfds data sets): the images stay in their records, each
    # batch read and decoded by read_threads threads when the step needs it, so host memory holds
    # no split (for data sets larger than the host's memory; without host_crop, the same numbers
    # as with the images in memory).
    # host_crop (with streaming): each view's random resized crop is taken on the host from the
    # decoded image at its own size, as CaSSLe's DALI pipeline does, instead of on the device from
    # the stored image_size square (which stays the image of the evaluation and the memories).
    c.dataset = ml_collections.ConfigDict(
        dict(
            name="cifar100",
            data_dir="",
            image_size=0,
            domains=(),
            on_device=True,
            streaming=False,
            read_threads=16,
            host_crop=False,
            # holdout_fraction: the share of each class's training images in every task that
            # nothing trains on (drawn with split_seed; the test split is unchanged), as the
            # validation split that FACIL-based code holds out (POCON's preset: 0.1).
            holdout_fraction=0.0,
        )
    )
    c.scenario = "class_incremental"
    c.num_tasks = 5
    c.class_order = "natural"
    c.split_seed = 0
    # Labels the learner may use: a fraction of each task's training examples, drawn per task from
    # (seed, task); 0 (pure self-supervision) by default, 1 for every label. The probes that
    # evaluate the representation always use the data set's labels.
    c.labels = ml_collections.ConfigDict(dict(fraction=0.0))

    c.strategy = "finetune"
    # One section per strategy with settings, e.g. --config.cassle.weight=1.0.
    for name, section in strategies.default_configs().items():
        c[name] = section
    c.objective = "simclr"
    # One section per objective (heads, temperatures, queues, EMA schedules), e.g.
    # --config.byol.pred_hidden_dim=2048; only the section of config.objective is read.
    for name, section in objectives.default_configs().items():
        c[name] = section

    c.model = ml_collections.ConfigDict(
        dict(
            backbone="resnet18",
            stem="cifar",
            width_multiplier=1.0,
            cifar_stem_padding=2,
            dtype="float32",
            # 0: BatchNorm over the whole global batch; G > 0: train-mode BatchNorm of the
            # objective's backbone and heads per group of G consecutive rows of the global batch,
            # running statistics from the first group (cl_ssl.models.resnet.GroupBatchNorm, a
            # DDP run's per-GPU BatchNorm; G = batch_size / devices makes a group one device's
            # rows). G must divide batch_size. Strategies' own heads keep whole-batch BatchNorm.
            batch_norm_group=0,
        )
    )
    # Which of the objective's recipes fills the unset optimizer and augmentation fields:
    # 'cifar' or 'imagenet' (CaSSLe's CIFAR-100 or ImageNet-100 scripts).
    c.recipe = "cifar"
    # Augmentation fields left unset take the objective's recipe (CaSSLe's scripts).
    c.augment = ml_collections.ConfigDict(dict(view1=view_config(), view2=view_config()))

    c.batch_size = 256
    c.epochs_per_task = 500
    # Epochs of the offline (joint) run; -1 matches the continual runs' budget of image
    # presentations: one pass over the union per epoch of a task.
    c.offline_epochs = -1

    c.optimizer = ml_collections.ConfigDict(
        dict(
            name="lars",
            # lr, weight_decay, min_lr and exclude_bias_and_norm: the objective's recipe unless set
            # (CaSSLe's bash_files/continual/cifar/*.sh).
            lr=placeholder(float),
            weight_decay=placeholder(float),
            scale_lr_by_batch=True,
            warmup_epochs=10,
            warmup_start_lr=0.003,
            min_lr=placeholder(float),
            schedule_per_epoch=True,
            # Each task starts with a fresh optimizer state (CaSSLe launches one training process
            # per task); False carries the momentum across tasks (CCL's train.py builds one
            # torch.optim.SGD for the whole stream).
            reset_each_task=True,
            kwargs=ml_collections.ConfigDict(
                dict(momentum=0.9, eta=0.02, clip_lr=True, exclude_bias_and_norm=placeholder(bool))
            ),
            # Epoch fractions at which the learning rate is multiplied by decay_factor (PyTorch's
            # MultiStepLR) instead of the warm-up and cosine; () keeps the cosine.
            milestones=(),
            decay_factor=0.1,
            # Another optimizer for every task after the first (Genifer: SGD on the first, then
            # RAdam at 1e-4); name '' keeps one optimizer for the whole run.
            later_tasks=ml_collections.ConfigDict(
                dict(name="", lr=placeholder(float), kwargs=ml_collections.ConfigDict())
            ),
        )
    )

    c.eval = ml_collections.ConfigDict(
        dict(
            evaluators=("linear", "knn"),
            batch_size=512,
            # What trains the probes after each task (cl_ssl.evaluation.evaluate.Evaluator): the
            # labelled data of 'all' tasks (CaSSLe), of the 'seen' ones or of the 'current' one
            # (Kaizen's restricted probes); a class-balanced share of those labels (semi-supervised
            # probes: 0.01, 0.1); at most train_examples of them (-1: no limit).
            probe_data="all",
            label_fraction=1.0,
            train_examples=-1,
            # Also score every probe task-incrementally (logits masked to the test image's task):
            # '<evaluator>_task_aware' matrices; class-incremental scenarios only.
            task_aware=False,
            # Domain-incremental runs: also CaSSLe's domain-aware evaluation, each evaluator again
            # with one probe per domain, trained on that domain's labelled data alone and scored
            # on its test images ('<evaluator>_domain_aware' matrices); the evaluators' own
            # matrices are the domain-agnostic ones.
            domain_aware=False,
            # CaSSLe's online linear probe (cl_ssl.evaluation.online): trained in the train step
            # on one extra batch per step of the labelled data of online_data's tasks ('all' for
            # CaSSLe's CIFAR protocol, 'seen' for Kaizen's, or 'current'), lr online_lr not scaled
            # by the batch size, no weight decay; its forward pass moves the backbone's BatchNorm
            # statistics unless online_updates_bn=False. Scored after every task as the 'online'
            # matrix. online_lr unset: the objective's recipe (0.1; CaSSLe's VICReg: 0.3).
            online=False,
            online_data="all",
            online_lr=placeholder(float),
            online_updates_bn=True,
            # The offline probe: CaSSLe's main_linear.py optimizer and schedule (100 epochs, lr
            # x0.1 at 60 and 80, lr 1.0 for SimCLR), the last epoch's classifier scored, trained
            # by default on the raw fixed features of the whole images from zero weights (CaSSLe's
            # trains nn.Linear, uniform init, on augmented crops).
            # MoCo's and CCL's lincls_eval.py (the ImageNet :ccl preset): augment, a random
            # resized crop and flip of every training image at every epoch through the frozen
            # backbone in inference mode; center_crop, the share of the shorter side of the fixed
            # views (0.875: Resize(256) + CenterCrop(224)); init_std, weights from N(0, std^2);
            # report_best, also the 'linear_best' matrix of the epoch best on the test set.
            linear=ml_collections.ConfigDict(
                dict(
                    epochs=100,
                    batch_size=256,
                    learning_rate=1.0,
                    momentum=0.9,
                    weight_decay=0.0,
                    milestones=(0.6, 0.8),
                    standardize=False,
                    init_std=0.0,
                    augment=False,
                    center_crop=1.0,
                    report_best=False,
                )
            ),
            knn=ml_collections.ConfigDict(dict(k=20, temperature=0.07)),
            # Which network the probes score: '' the strategy's (the student, or CCL's teacher),
            # or one the strategy names in Strategy.networks ('expert': POCON's expert, the
            # official "Omnihead Expert"); python -m cl_ssl.rescore
            # --config.eval.network=expert scores it from a finished run's checkpoints.
            network="",
            forgetting="max_prev",
            bwt_norm="T-1",
            # The tasks' weights in the headline averages (final_accuracy, the average
            # incremental accuracy, random_init_accuracy): 'sample' (test images, n_j), 'task'
            # (equal) or 'class' (classes in the task's test data, C_j). The results hold the
            # task-mean and sample-weighted final accuracies whatever it is.
            avg="sample",
            # Also the top-5 accuracy matrix of every evaluator, the online probe and the
            # classifier ('<name>_top5'; every example a hit in tasks of 5 classes or fewer).
            top5=False,
            plots=True,  # PNG plots of the accuracy matrices next to results.json
        )
    )

    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.log_every_steps = 50
    c.progress_bar = True
    # Optional Weights & Biases logging besides TensorBoard (pip install -e '.[wandb]'): off while
    # project is empty; mode 'offline' writes locally for a later `wandb sync`.
    c.wandb = ml_collections.ConfigDict(dict(project="", entity="", mode="online"))
    # Stop (as if killed) once this many global steps are done; -1 never. For testing resume.
    c.stop_after_steps = -1
    return c


def use_strategy(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """Sets ``config.strategy = name`` and adds the strategy's config section with its defaults
    when ``config`` lacks it; returns ``config``. ``name`` is a built-in strategy or the import path
    of a module that defines ``STRATEGY = cl_ssl.strategies.StrategySpec(...)``: a config file of a
    user's own strategy calls this, and then ``--config.<section>.<field>`` overrides its
    settings."""
    spec = strategies.load_spec(name)
    config.strategy = name
    if spec.section and spec.section not in config:
        config[spec.section] = spec.default_config()
    return config


def unread_sections(config: dict) -> set[str]:
    """The config sections a run of ``config`` (a dict) never reads: those of the other objectives
    and of the other strategies."""
    sections = set(objectives.OBJECTIVES) | set(strategies.default_configs())
    read = {config.get("objective")} | strategies.sections_read(config)
    return sections - read


@functools.cache
def _defaults() -> dict:
    return json.loads(base_config().to_json())


def _default(name: str):
    """The base config's value of the dotted field ``name``; ``_MISSING`` where it has none."""
    value = _defaults()
    for key in name.split("."):
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


_MISSING = object()


def differing_fields(stored: dict, given: dict, prefix: str = "") -> list[str]:
    """Dotted names of the run-defining fields whose values differ between two config dicts; the
    sections the given run does not read (``unread_sections``) are not compared, nor is a field
    that one config lacks while the other holds its default value (a field the library gained
    after the older run was made, at the value that keeps what that run did)."""
    skip = unread_sections(given) if not prefix else set()
    names = []
    for key in sorted(set(stored) | set(given)):
        name = f"{prefix}{key}"
        if name in EXECUTION_FIELDS or key in skip:
            continue
        a, b = stored.get(key, _MISSING), given.get(key, _MISSING)
        if _MISSING in (a, b) and (b if a is _MISSING else a) == _default(name):
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            names += differing_fields(a, b, prefix=f"{name}.")
        elif a != b:
            names.append(name)
    return names


STRATEGY_VARIANTS = (
    "finetune",
    "offline",
    "cassle",
    "pfr",
    "replay",
    "lump",
    "kaizen",
    "ccl",
    "genifer",
    "pocon",
)
CLASS_INCREMENTAL_VARIANTS = ("genifer", "pocon")
"""The strategy variants whose recipe is a class-incremental stream (class order, tasks)."""


def apply_variants(
    config: ml_collections.ConfigDict, preset: str, arg: str | None, scenarios: Sequence[str]
) -> list[str]:
    """Applies a CaSSLe preset file's ``':a,b'`` argument to ``config``; returns the variants.

    Each variant is one of ``scenarios``, one continual strategy of ``STRATEGY_VARIANTS``, or
    ``'runlocal'`` (the tiny smoke-test setting). At most one scenario and one strategy; ValueError
    names the variants that do not fit. ``data_incremental`` uses CaSSLe's sizes and rule
    (CaSSLe's ``split_dataset``: random fifths, the remainder to the first task, seed 42) drawn
    with NumPy, so not CaSSLe's images; no class order.
    """
    variants = [v for v in (arg or "").split(",") if v]
    unknown = set(variants) - set(scenarios) - set(STRATEGY_VARIANTS) - {"runlocal"}
    if unknown:
        raise ValueError(
            f"unknown {preset} config variants {sorted(unknown)}; combine any of "
            f"{list(scenarios) + list(STRATEGY_VARIANTS)} and 'runlocal' with commas"
        )
    for group, field in ((scenarios, "scenario"), (STRATEGY_VARIANTS, "strategy")):
        chosen = [v for v in variants if v in group]
        if len(chosen) > 1:
            raise ValueError(f"{preset} config variants {chosen} exclude each other; keep one")
        if chosen:
            config[field] = chosen[0]
    strategy = next((v for v in variants if v in STRATEGY_VARIANTS), None)
    if strategy in CLASS_INCREMENTAL_VARIANTS and config.scenario != "class_incremental":
        raise ValueError(
            f"{preset} config variant {strategy!r} sets its paper's class-incremental stream (its "
            f"class order and tasks), which scenario {config.scenario!r} does not have; drop one "
            f"of the two, or set --config.strategy={strategy} on a class-incremental preset"
        )
    if config.scenario == "data_incremental":
        config.class_order = "natural"
        config.split_seed = 42
    if config.strategy == "kaizen":
        use_kaizen_setting(config)
    if config.strategy == "ccl":
        use_ccl_setting(config)
    if config.strategy == "genifer":
        use_genifer_setting(config)
    if config.strategy == "pocon":
        use_pocon_setting(config)
    if "runlocal" in variants:
        use_runlocal_setting(config)
    return variants


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def use_imagenet_setting(
    config: ml_collections.ConfigDict, image_size: int = 224, *, on_device: bool = False
) -> None:
    """CaSSLe's ImageNet-100 and DomainNet setting (its ``bash_files/continual/imagenet-100``
    and ``domainnet`` scripts, and ``main_linear.py``).

    Images stored at ``image_size`` and streamed from their records (held whole, they would take
    20 GB for ImageNet-100 and 89 GB for DomainNet at 224 pixels), each view cropped on the host
    from the decoded image at its own size and resized to ``image_size`` (``dataset.host_crop``),
    or, ``on_device``, read once, kept on the devices and cropped there from the stored square
    (data sets that fit, such as CUB-200), the ResNet's
    ImageNet stem, ImageNet statistics, the objectives' ImageNet-100 recipes (optimizer, views
    and the offline probe's learning rate), SimCLR's 128-d projection, BYOL's 8192-wide predictor,
    SwAV's queue from epoch 100 and prototypes frozen for 5 epochs.
    """
    config.dataset.image_size = image_size
    config.dataset.update(on_device=on_device, streaming=not on_device, host_crop=not on_device)
    config.model.stem = "imagenet"
    if config.recipe == "cifar":  # a strategy's own recipe (CCL's) stays
        config.recipe = "imagenet"
    for view in (config.augment.view1, config.augment.view2):
        view.update(crop_size=image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    config.byol.pred_hidden_dim = 8192
    # The ImageNet-100 and DomainNet SimCLR scripts set no --output_dim: cassle/methods/simclr.py's
    # default, 128 (the CIFAR scripts pass 256).
    config.simclr.proj_output_dim = 128
    config.swav.update(queue_start_epoch=100, freeze_prototypes_epochs=5)
    # CaSSLe's linear scripts set the offline probe's learning rate per method.
    config.eval.linear.learning_rate = placeholder(float)


def use_kaizen_setting(config: ml_collections.ConfigDict) -> None:
    """Kaizen's CIFAR-100 scripts (Tang et al., WACV 2024; ``dr-bell/kaizen`` ``bash_files/*.sh``):
    every label, Kaizen's recipes on CIFAR (SimCLR at lr 1.0 with BYOL's views), SimCLR's
    4096-wide projector at temperature 0.1 and MoCoV2+'s 256-d projection; the online probe on
    the seen tasks' labelled data (``--online_evaluation_training_data_source seen_tasks``, lr
    0.1), whose pass moves the backbone's BatchNorm statistics (``main_pretrain.py`` l.179-195);
    16-bit mixed precision (``--precision 16``) as the library's bfloat16 computation; replay rows
    from a shuffled loader over the memory, cycled next to the task's (``replay.sampling``); the rest
    (batch 256, 500 epochs per task, LARS, 10 warm-up epochs) is CaSSLe's, as in the base config.
    Kaizen ships no ImageNet-100 script: there the ImageNet recipes and CaSSLe's heads stay, and
    ``first_per_class`` takes the first images of each class in the sorted order of tfds
    ``imagenet2012``'s ``file_name``, as an ImageFolder lists them. Data-incremental runs split
    the data with Kaizen's ``--split_seed`` default, 5 (``kaizen/args/dataset.py`` l.37; CaSSLe's
    is 42; the partition is NumPy's, so not Kaizen's images), and replay each past task's first 1% in its random split order, a uniform draw
    (``random_per_task``, ``kaizen/utils/pretrain_dataloader.py`` l.69-81)."""
    config.labels.fraction = 1.0
    if config.scenario == "data_incremental":
        config.split_seed = 5
        config.kaizen.replay.selection = "random_per_task"
    config.eval.update(online=True, online_data="seen", online_lr=0.1, online_updates_bn=True)
    config.model.dtype = "bfloat16"
    config.kaizen.replay.sampling = "loader"
    if config.recipe == "cifar":
        config.recipe = "kaizen"
        config.simclr.update(proj_hidden_dim=4096, temperature=0.1)
        config.mocov2plus.proj_output_dim = 256


def use_genifer_setting(config: ml_collections.ConfigDict) -> None:
    """Genifer's supervised CIFAR-100 setting (Thandiackal et al.; kevthan/feature-driven-image-
    replay ``genifer/config/examples/*.json`` and ``bin/train_incremental.py``).

    The supervised path (``objective=supervised``, every label) with a ResNet-18 whose CIFAR stem
    pads by 1, 50 base classes then 5 tasks of 10 in the iCaRL order, 100 epochs per task at
    batch 32; the first task with SGD (Nesterov momentum 0.9, lr 0.1, weight decay 5e-4), the later
    ones with RAdam at 1e-4 (same decay; no step while RAdam's rho_t < 5, the reference class's
    ``degenerated_to_sgd=False``: LiyuanLucasLiu/RAdam ``radam/radam.py`` l.7, built by
    ``genifer/learner.py`` l.83-86), a fresh optimizer per task, the learning rate x0.2 at epochs
    30, 60 and 80; the GAN's settings are ``config.genifer.gan``'s defaults. On CIFAR-100 the
    images are standardised with the reference's CIFAR-100 statistics (``genifer/dataloader/
    constants.py`` l.12-14), not the CIFAR-10 ones of the other presets. The classifier scores
    itself after every task (the ``classifier`` matrix) and no probe is trained.
    ``--config.strategy=finetune_supervised`` or ``replay_supervised`` (with
    ``--config.replay.per_class=20 --config.replay.selection=random``) are its baselines.
    """
    config.strategy = "genifer"
    config.objective = "supervised"
    config.labels.fraction = 1.0
    config.model.backbone = "resnet18"
    config.model.cifar_stem_padding = 1
    config.batch_size = 32
    config.epochs_per_task = 100
    config.optimizer.update(
        name="sgd",
        lr=0.1,
        weight_decay=5e-4,
        scale_lr_by_batch=False,
        warmup_epochs=0,
        milestones=(0.3, 0.6, 0.8),
        decay_factor=0.2,
        reset_each_task=True,
    )
    config.optimizer.kwargs = {"momentum": 0.9, "nesterov": True, "exclude_bias_and_norm": False}
    config.optimizer.later_tasks.update(name="radam", lr=1e-4)
    config.optimizer.later_tasks.kwargs = {"degenerated_to_sgd": False}
    config.eval.evaluators = ()
    if config.dataset.name == "cifar100":
        config.num_tasks = 6
        config.class_order = "cifar100_icarl1993_50+5x10"
        for view in (config.augment.view1, config.augment.view2):
            view.update(mean=(0.507, 0.487, 0.441), std=(0.267, 0.256, 0.276))


CCL_GPU_ROWS = 32
"""The rows of one GPU in CCL's reference run: batch 256 over 8 GPUs (``train.py`` l.151, 211)."""


def use_ccl_setting(config: ml_collections.ConfigDict) -> None:
    """CCL's setting (Lin et al., ICME 2022; ``VDIGPKU/ContinualContrastiveLearning`` README
    command and ``train.py``): MoCoV2+ trained in one direction as the reference's MoCo
    (``mocov2plus.symmetric=False``: InfoNCE(q1, k2) against one queue of view-2 keys,
    ``moco/builder.py`` l.186-213), the optimizer's momentum carried across tasks, and the
    exemplars mixed into each task's data set (``ccl.replay.mode='mix'``, ``train.py``
    l.318-336) with the distillation computed per group of ``ccl.group_size`` rows (32: one of
    the reference's 8 GPUs' share of its batch of 256), and the same GPUs' BatchNorm:
    ``model.batch_norm_group=32`` (BatchNorm statistics per group of 32 rows, DDP without
    SyncBatchNorm, ``train.py`` l.205-213) with ``mocov2plus.shuffle_keys=True`` (the key batch
    permuted across the groups before the key encoder and put back after, ``moco/builder.py``
    l.113-158, 194-200). The two group sizes are separate fields (one the backbone's, for any
    objective; the other the distillation's), both the reference's per-GPU batch here.

    On the ImageNet-100 preset, the reference's ImageNet-Sub run instead: the first 100 ImageNet
    classes in 10 tasks of 10 (class order: NumPy seed 1), ResNet-50, 200 epochs per task, batch 256, SGD lr 0.03
    (not scaled by the batch), momentum 0.9, weight decay 1e-4, a per-epoch cosine without
    warm-up restarting with every task, MoCo v2's augmentation, temperature 0.2, a constant key
    encoder momentum of 0.999, a queue of 65,536 keys, and ``lincls_eval.py``'s probe: SGD lr 30,
    momentum 0.9, no weight decay, batch 256, 100 epochs, x0.1 at 60 and 80 (l.47-64), weights
    from N(0, 0.01^2) and a zero bias (l.161-163), trained on a RandomResizedCrop(224) and flip of
    every image at every epoch through the frozen backbone in inference mode (l.267-274, l.366),
    tested on Resize(256) + CenterCrop(224) (l.297-302), and the best epoch's test accuracy
    reported as ``linear_best`` besides the last epoch's ``linear`` (l.327-345). The paper's
    CIFAR-100 setting is not in the reference code;
    on CIFAR the preset keeps CaSSLe's MoCoV2+ recipe (the base config) and adds CCL's own
    settings (``config.ccl``, the carried momentum); so does any other preset.
    """
    config.strategy = "ccl"
    config.objective = "mocov2plus"
    config.mocov2plus.symmetric = False
    config.optimizer.reset_each_task = False
    # The exemplars join each task's data set (train.py l.318-336), not every step's batch.
    config.ccl.replay.mode = "mix"
    config.ccl.group_size = CCL_GPU_ROWS
    config.model.batch_norm_group = CCL_GPU_ROWS
    config.mocov2plus.shuffle_keys = True
    if config.dataset.name != "imagenet100":
        return
    config.dataset.name = "imagenet_sub"
    if config.scenario == "class_incremental":
        config.class_order = "imagenet_sub_ccl_seed1"
    config.num_tasks = 10
    config.epochs_per_task = 200
    config.batch_size = 256
    config.model.backbone = "resnet50"
    config.recipe = "ccl"
    config.optimizer.update(
        name="sgd", scale_lr_by_batch=False, warmup_epochs=0, schedule_per_epoch=True
    )
    config.optimizer.kwargs = {"momentum": 0.9}
    config.mocov2plus.update(
        proj_hidden_dim=2048,
        proj_output_dim=128,
        temperature=0.2,
        queue_size=65536,
        base_momentum=0.999,
        final_momentum=0.999,
    )
    config.eval.linear.update(
        epochs=100,
        batch_size=256,
        momentum=0.9,
        weight_decay=0.0,
        milestones=(0.6, 0.8),
        init_std=0.01,
        augment=True,
        center_crop=224 / 256,
        report_best=True,
    )


def use_pocon_setting(config: ml_collections.ConfigDict) -> None:
    """POCON's CIFAR-100 run (Gomez-Villa et al., WACV 2024; ``alviur/pocon_wacv2024`` @ 2c38b9c,
    ``src/tests/wacv.py``, the CopyOP approach ``src/approach/copyOPscratch.py``).

    10 tasks; Barlow Twins as the expert's objective, its loss scaled by 0.025 with off-diagonal
    weight 0.0051 and its 2048-2048-2048 projector (``--projectorArc``; ``sslModels.py``
    l.92-100, l.142); batch 256; 500 expert epochs per task (``--nepochs``, ``--task1_nepochs``),
    then the adaptation-retrospection phase, 500 epochs on the first task and 250 on the others,
    lambda_r 25 (``config.pocon``'s defaults). Both phases train with PyTorch SGD at lr 0.01,
    momentum 0.9 and weight decay 5e-4 on every parameter, a fresh optimizer per phase and no
    schedule (``configure_optimizers``, ``sslModels.py`` l.249-277: the scheduler it builds is
    never returned, and ``--weight_decay`` is not read). The views are lightly's
    ``SimCLRCollateFunction(input_size=32, gaussian_blur=0., cj_strength=0.5)``
    (``copyOPscratch.py`` l.358-364): a random resized crop of scale 0.08-1, a flip, colour
    jitter of 0.8, 0.8, 0.8 and 0.2 times the strength with probability 0.8, grayscale 0.2, no
    blur and no solarisation, normalised with the code's CIFAR-100 mean and std. The class order
    is the run's (``--seed 667``, ``--datasets cifar100_noTrans``, which names no order):
    ``np.random.seed(667)`` then ``np.random.shuffle`` of 0..99 (``utils.py`` l.10-12,
    ``datasets/memory_dataset.py`` l.74-82), the stream of ``class_order='random'`` with
    ``split_seed=667``. The runs train on 90% of each task's images: ``get_loaders`` holds 10%
    of every class out as a validation split (``main_incremental.py`` l.184-186 with the default
    ``validation=.1``; ``dataset.holdout_fraction``; the code draws which with Python's
    ``random.sample``, this library with NumPy). No online probe: the code trains none; the
    offline probes score the main network."""
    config.strategy = "pocon"
    config.objective = "barlow_twins"
    config.num_tasks = 10
    config.batch_size = 256
    config.epochs_per_task = 500
    config.barlow_twins.update(
        scale=0.025, lambd=0.0051, proj_hidden_dim=2048, proj_output_dim=2048
    )
    config.optimizer.update(
        name="sgd",
        lr=0.01,
        weight_decay=5e-4,
        min_lr=0.01,
        scale_lr_by_batch=False,
        warmup_epochs=0,
        reset_each_task=True,
    )
    config.optimizer.kwargs = {"momentum": 0.9, "exclude_bias_and_norm": False}
    view = dict(
        min_scale=0.08,
        max_scale=1.0,
        brightness=0.4,
        contrast=0.4,
        saturation=0.4,
        hue=0.1,
        jitter_prob=0.8,
        gray_prob=0.2,
        blur_prob=0.0,
        solarize_prob=0.0,
        flip_prob=0.5,
    )
    if config.dataset.name == "cifar100":
        view.update(mean=(0.5071, 0.4866, 0.4409), std=(0.2009, 0.1984, 0.2023))
    for v in (config.augment.view1, config.augment.view2):
        v.update(view)
    config.class_order = "random"
    config.split_seed = 667
    config.dataset.holdout_fraction = 0.1
    config.eval.online = False


def use_runlocal_setting(config: ml_collections.ConfigDict) -> None:
    """A preset's ``runlocal`` variant: the tiny ResNet, 1 epoch per task, small probes."""
    config.model.backbone = "resnet_tiny"
    config.epochs_per_task = 1
    config.optimizer.warmup_epochs = 0
    config.batch_size = 64
    config.eval.train_examples = 2000
    config.eval.linear.epochs = 5


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Checks the plain values of a run config; ValueError names the field and what to change.

    Names (strategy, objective, data set, class order) are checked where they are looked up;
    this covers the numbers and choices that would otherwise fail only after compiling.
    """
    from cl_ssl.evaluation import evaluate, metrics  # noqa: PLC0415 -- avoids an import cycle

    for field in ("batch_size", "epochs_per_task", "checkpoint_every_steps", "log_every_steps"):
        _require(config[field] >= 1, f"{field}={config[field]}; set it to at least 1")
    _require(
        config.keep_checkpoints >= 2,
        f"keep_checkpoints={config.keep_checkpoints}; keep at least 2 so that an unreadable "
        "newest checkpoint can fall back to the one before",
    )
    d = config.dataset
    _require(
        not (d.streaming and d.on_device),
        "dataset.streaming=True reads each batch from the records on the host; set "
        "dataset.on_device=False, or dataset.streaming=False to keep the training set on the "
        "devices",
    )
    _require(d.read_threads >= 1, f"dataset.read_threads={d.read_threads}; set it to at least 1")
    _require(
        d.streaming or not d.host_crop,
        "dataset.host_crop=True crops the views from the records' images as a streamed batch is "
        "read; set dataset.streaming=True (with dataset.on_device=False), or dataset.host_crop=False",
    )
    if d.host_crop:
        host_crop.check_views(make_views(config))
    for field, value in (
        ("eval.batch_size", config.eval.batch_size),
        ("eval.linear.epochs", config.eval.linear.epochs),
        ("eval.linear.batch_size", config.eval.linear.batch_size),
        ("eval.knn.k", config.eval.knn.k),
    ):
        _require(value >= 1, f"{field}={value}; set it to at least 1")
    _require(
        config.eval.train_examples == -1 or config.eval.train_examples >= 1,
        f"eval.train_examples={config.eval.train_examples}; set -1 (the whole training set) or "
        "the number of labelled examples that train the probes",
    )
    # .get: the config.json of a run stored before these fields (rescore) lacks them.
    lin = config.eval.linear
    init_std, center_crop = lin.get("init_std", 0.0), lin.get("center_crop", 1.0)
    _require(
        init_std >= 0 and 0 < center_crop <= 1,
        f"eval.linear.init_std={init_std}, eval.linear.center_crop={center_crop}; set "
        "init_std >= 0 (0: zero initial weights) and center_crop in (0, 1] (1: the whole image)",
    )
    _require(
        not (lin.get("augment", False) and lin.standardize),
        "eval.linear.augment=True trains on new crops at every epoch, which no fixed "
        "standardisation fits; set eval.linear.standardize=False",
    )
    for field, value in (
        ("optimizer.lr", config.optimizer.lr),
        ("eval.linear.learning_rate", config.eval.linear.learning_rate),
        ("eval.knn.temperature", config.eval.knn.temperature),
    ):
        _require(
            value is None or (math.isfinite(value) and value > 0),
            f"{field}={value}; set a finite value > 0",
        )
    o = config.optimizer
    milestones = tuple(o.milestones)
    _require(
        all(0 < m <= 1 for m in milestones) and list(milestones) == sorted(set(milestones)),
        f"optimizer.milestones={milestones}; set increasing fractions of a task's epochs in "
        "(0, 1], or () for the warm-up and cosine",
    )
    _require(
        math.isfinite(o.decay_factor) and o.decay_factor > 0,
        f"optimizer.decay_factor={o.decay_factor}; set a finite factor > 0",
    )
    if o.later_tasks.name:
        _require(
            o.later_tasks.name in optim.OPTIMIZERS,
            f"optimizer.later_tasks.name={o.later_tasks.name!r}; choose among "
            f"{sorted(optim.OPTIMIZERS)}, or '' for one optimizer for the whole run",
        )
        lr = o.later_tasks.lr
        _require(
            lr is not None and math.isfinite(lr) and lr > 0,
            f"optimizer.later_tasks.lr={lr}; set the learning rate of the tasks after the first",
        )
    for field, value in (
        ("optimizer.weight_decay", config.optimizer.weight_decay),
        ("optimizer.min_lr", config.optimizer.min_lr),
        ("optimizer.warmup_start_lr", config.optimizer.warmup_start_lr),
    ):
        _require(
            value is None or (math.isfinite(value) and value >= 0),
            f"{field}={value}; set a finite value >= 0",
        )
    for field in ("offline_epochs", "stop_after_steps"):
        _require(
            config[field] == -1 or config[field] >= 1,
            f"{field}={config[field]}; set it to -1 (off) or to at least 1",
        )
    for field in ("batch_size", "eval.batch_size"):
        value = config.eval.batch_size if field == "eval.batch_size" else config.batch_size
        _require(
            value % num_devices == 0,
            f"{field}={value} is not divisible by the {num_devices} devices of the mesh; set "
            f"--config.{field} to a multiple of {num_devices}",
        )
    _require(
        0.0 <= config.labels.fraction <= 1.0,
        f"labels.fraction={config.labels.fraction}; set a fraction of each task's labels in [0, 1]",
    )
    holdout = config.dataset.get("holdout_fraction", 0.0)  # absent from older runs' config.json
    _require(
        0.0 <= holdout < 1.0,
        f"dataset.holdout_fraction={holdout}; set the held-out share of each class's training "
        "images in [0, 1)",
    )
    _require(
        config.dataset.image_size >= 0,
        f"dataset.image_size={config.dataset.image_size}; set 0 (keep) or a side in pixels",
    )
    group = config.model.get("batch_norm_group", 0)
    _require(
        group == 0 or (group >= 1 and config.batch_size % group == 0),
        f"model.batch_norm_group={group} with batch_size={config.batch_size}; set 0 (BatchNorm "
        "over the whole batch) or a group size that divides --config.batch_size",
    )
    _require(
        config.model.dtype in ("float32", "bfloat16"),
        f"model.dtype={config.model.dtype!r}; choose 'float32' or 'bfloat16'",
    )
    for name in config.eval.evaluators:
        _require(
            name in evaluate.EVALUATORS,
            f"unknown evaluator {name!r} in eval.evaluators; choose among {list(evaluate.EVALUATORS)}",
        )
    _require(
        config.wandb.mode in ("online", "offline", "disabled"),
        f"wandb.mode={config.wandb.mode!r}; choose 'online', 'offline' or 'disabled'",
    )
    _require(
        config.eval.probe_data in evaluate.PROBE_DATA,
        f"eval.probe_data={config.eval.probe_data!r}; choose among {list(evaluate.PROBE_DATA)}",
    )
    _require(
        config.eval.online_data in evaluate.PROBE_DATA,
        f"eval.online_data={config.eval.online_data!r}; choose among {list(evaluate.PROBE_DATA)}",
    )
    _require(
        config.eval.online_lr > 0,
        f"eval.online_lr={config.eval.online_lr}; set the online probe's learning rate > 0",
    )
    _require(
        0.0 < config.eval.label_fraction <= 1.0,
        f"eval.label_fraction={config.eval.label_fraction}; set the share of each class's labels "
        "that trains the probes in (0, 1], e.g. 0.01 or 0.1 for semi-supervised probes",
    )
    _require(
        not config.eval.task_aware or config.scenario == "class_incremental",
        f"eval.task_aware=True masks each prediction to its task's classes, which only "
        f"class-incremental scenarios define; set --config.eval.task_aware=False for "
        f"scenario {config.scenario!r}",
    )
    _require(
        not config.eval.domain_aware
        or (config.scenario == "domain_incremental" and config.eval.probe_data == "all"),
        f"eval.domain_aware=True trains probes on each domain's data: it needs "
        f"scenario='domain_incremental' (got {config.scenario!r}) and eval.probe_data='all' (got "
        f"{config.eval.probe_data!r}); set --config.eval.domain_aware=False otherwise",
    )
    _require(
        config.eval.forgetting in metrics.FORGETTING_VARIANTS,
        f"eval.forgetting={config.eval.forgetting!r}; choose among {list(metrics.FORGETTING_VARIANTS)}",
    )
    _require(
        config.eval.avg in metrics.AVERAGES,
        f"eval.avg={config.eval.avg!r}; choose among {list(metrics.AVERAGES)}",
    )
    _require(
        config.eval.bwt_norm in metrics.TRANSFER_NORMS,
        f"eval.bwt_norm={config.eval.bwt_norm!r}; choose among {list(metrics.TRANSFER_NORMS)}",
    )
