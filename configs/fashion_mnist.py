"""The built-in demo: SimCLR on Split Fashion-MNIST, 5 class-incremental tasks of 2 classes.

Sized to finish on 2 CPU cores in under 10 minutes: a ResNet-18 at 1/8 width, 28x28 crops,
a few epochs per task, probes trained on a fixed subset of 10,000 labelled images.

    apt-get install dataset-fashion-mnist        # the real IDX files, read offline
    python -m cl_ssl.main --config=configs/fashion_mnist.py --workdir=runs/demo
"""

from cl_ssl import config as config_lib

# Fashion-MNIST statistics on [0, 1] pixels; the single channel is broadcast to three.
MEAN, STD = (0.2860,) * 3, (0.3530,) * 3


def get_config(arg: str | None = None):
    del arg
    config = config_lib.base_config()
    config.dataset.name = "fashion_mnist_idx"
    config.num_tasks = 5
    config.model.backbone = "resnet18"
    config.model.width_multiplier = 0.125
    config.simclr.proj_hidden_dim = 256
    config.simclr.proj_output_dim = 64
    # Grayscale images: brightness and contrast jitter only; objects are centred and small, so
    # crops keep at least 20% of the image.
    view = dict(crop_size=28, min_scale=0.2, saturation=0.0, hue=0.0, gray_prob=0.0, mean=MEAN,
                std=STD)
    config.augment.view1 = config_lib.view_config(**view)
    config.augment.view2 = config_lib.view_config(**view)
    config.batch_size = 256
    config.epochs_per_task = 3
    config.optimizer.warmup_epochs = 1
    config.optimizer.schedule_per_epoch = False
    config.eval.train_examples = 10_000
    config.eval.linear.epochs = 30
    config.eval.linear.learning_rate = 0.1
    config.eval.linear.standardize = True
    config.checkpoint_every_steps = 100
    config.log_every_steps = 5
    return config
