"""The built-in demo: SSL on Split Fashion-MNIST, 5 class-incremental tasks of 2 classes.

Sized to finish on 2 CPU cores in under 10 minutes: a ResNet-18 at 1/4 width with the ImageNet
stem (7x7/2 convolution and max-pool: 7x7 maps after the stem on 28x28 crops, about 3x cheaper
than the CIFAR stem at 1/8 width), 3 epochs per task, probes trained on a fixed subset of 10,000
labelled images. AdamW (one learning rate for every objective) replaces CaSSLe's LARS here: in
runs this short (138 steps per task) it learns faster. SimCLR by default; any objective with
``--config.objective=NAME``. This is a CPU-scale demonstration of the pipeline, not a paper setting; see
configs/cifar100.py for CaSSLe's.

    apt-get install dataset-fashion-mnist        # the real IDX files, read offline
    python -m cl_ssl.main --config=configs/fashion_mnist.py --workdir=runs/demo

``get_config('runlocal')`` is a smoke run of the whole pipeline that ends in under two minutes on 2
CPU cores: the tiny ResNet, one epoch per task, probes trained on 2,000 labelled images.

``get_config('strategies')`` is a cheaper variant for comparing continual strategies over many
runs (experiments/quality.py): a ResNet-18 at 1/8 width, 2 epochs per task, probes trained on
5,000 labelled images for 20 epochs. ``:genifer`` is Genifer's supervised setting in its shape (4
base classes, then 3 tasks of 2; ``use_genifer_setting``).
"""

from cl_ssl import config as config_lib

# Fashion-MNIST statistics on [0, 1] pixels; the single channel is broadcast to three.
MEAN, STD = (0.2860,) * 3, (0.3530,) * 3


def get_config(arg: str | None = None):
    if arg not in (None, "strategies", "runlocal", "genifer"):
        raise ValueError(
            f"unknown fashion_mnist config variant {arg!r}; use none, 'strategies', 'genifer' or "
            "'runlocal'"
        )
    config = config_lib.base_config()
    config.dataset.name = "fashion_mnist_idx"
    config.num_tasks = 5
    config.model.backbone = "resnet18"
    config.model.stem = "imagenet"
    config.model.width_multiplier = 0.25
    # Heads sized to the 128-d features of the 1/4-width ResNet-18, and queues, banks and
    # epoch-counted schedules fitted to 3 epochs per task (12,000 images per task).
    config.simclr.update(proj_hidden_dim=256, proj_output_dim=64)
    config.mocov2plus.update(proj_hidden_dim=256, proj_output_dim=64, queue_size=4096)
    config.byol.update(proj_hidden_dim=256, proj_output_dim=64, pred_hidden_dim=256)
    config.barlow_twins.update(proj_hidden_dim=512, proj_output_dim=512)
    config.vicreg.update(proj_hidden_dim=512, proj_output_dim=512)
    config.swav.update(
        proj_hidden_dim=256,
        proj_output_dim=64,
        num_prototypes=100,
        queue_size=1024,
        queue_start_epoch=1,
        freeze_prototypes_epochs=0,
    )
    config.isd.update(proj_hidden_dim=256, proj_output_dim=64, pred_hidden_dim=256, bank_size=4096)
    config.simsiam.update(proj_hidden_dim=512, proj_output_dim=512, pred_hidden_dim=128)
    config.dino.update(
        proj_hidden_dim=256,
        proj_output_dim=64,
        num_prototypes=1024,
        warmup_teacher_epochs=1,
        freeze_prototypes_epochs=0,
    )
    # Grayscale images: brightness and contrast jitter of 0.4 only, whatever the objective;
    # objects are centred and small, so crops keep at least 20% of the image. The objective's
    # recipe sets the rest (solarisation, and ISD's weak teacher view).
    view = dict(
        crop_size=28,
        min_scale=0.2,
        brightness=0.4,
        contrast=0.4,
        saturation=0.0,
        hue=0.0,
        gray_prob=0.0,
        mean=MEAN,
        std=STD,
    )
    config.augment.view1 = config_lib.view_config(**view)
    config.augment.view2 = config_lib.view_config(**view)
    config.batch_size = 256
    config.epochs_per_task = 3
    config.optimizer.update(
        name="adamw",
        lr=2e-3,
        weight_decay=1e-4,
        min_lr=0.0,
        scale_lr_by_batch=False,
        warmup_epochs=1,
        warmup_start_lr=1e-4,
        schedule_per_epoch=False,
    )
    config.optimizer.kwargs = {}
    # Kaizen's classifier and the online probe (eval.online) at AdamW's scale (their reference
    # 0.1 is an SGD-with-LARS rate).
    config.kaizen.classifier_lr = 2e-3
    config.eval.online_lr = 2e-3
    config.eval.train_examples = 10_000
    config.eval.linear.epochs = 30
    config.eval.linear.learning_rate = 0.1
    config.eval.linear.standardize = True
    config.checkpoint_every_steps = 100
    config.log_every_steps = 5
    if arg == "strategies":
        config.model.width_multiplier = 0.125
        config.epochs_per_task = 2
        config.eval.train_examples = 5_000
        config.eval.linear.epochs = 20
    if arg == "runlocal":
        config_lib.use_runlocal_setting(config)
        config.batch_size = 256
    if arg == "genifer":
        use_genifer_setting(config)
    # POCON's adaptation-retrospection phases at this scale, in the official run's proportions to
    # the expert's epochs (500 on the first task, 250 after, against 500): the warm-up restarts
    # with each phase, so each keeps more epochs than it.
    config.pocon.update(
        first_adaptation_epochs=config.epochs_per_task,
        adaptation_epochs=max(config.epochs_per_task // 2, config.optimizer.warmup_epochs + 1),
    )
    return config


def use_genifer_setting(config) -> None:
    """Genifer's supervised setting at CPU scale: 4 base classes then 3 tasks of 2, a 1/8-width
    ResNet-18 with the CIFAR stem (its layer3 map is 32 x 7 x 7), 2 epochs per task (the step
    decay then cuts the learning rate x0.04 for the second), and a GAN with fewer channels (a
    7 x 7 constant upsampled twice to 28 pixels) trained for 2 epochs of the finished task's
    images at every boundary: 750 iterations after the first task, 374 after the others, with
    an EMA horizon of 2,000 images. A run takes about 17 minutes on 2 CPU cores.

    RAdam runs the later tasks at 2e-3 instead of the paper's 1e-4: Adam moves a weight by about
    the learning rate per step, and 1e-4 over the ~400 full-rate steps of a 2-epoch task (the
    paper has ~15,000) leaves the new classes' readout near its random draw; at the loss's 0.02
    weight on the real rows, Genifer then never predicts a new class."""
    config_lib.use_genifer_setting(config)
    config.num_tasks = 4
    config.class_order = "fashion_mnist_idx_natural_4+3x2"
    config.model.update(stem="cifar", width_multiplier=0.125)
    config.epochs_per_task = 2
    config.optimizer.later_tasks.lr = 2e-3
    config.checkpoint_every_steps = 500
    config.genifer.gan.update(
        latent_dim=64,
        generator_channels=(64, 32, 32, 16, 16),
        constant_channels=64,
        base_resolution=7,
        discriminator_channels=(32, 64),
        discriminator_epilogue=64,
        epochs_first=2,
        epochs=2,
        # The EMA generator's horizon at the reference's share of the images a boundary trains
        # on (500k of 16M after CIFAR-100's first task, of 5M after the others): at 500k, far
        # beyond these 48k and 24k images, the EMA copy that replays stays at its first draw.
        ema_kimg=2,
        checkpoint_every=200,
    )
