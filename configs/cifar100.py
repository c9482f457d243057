"""SimCLR on Split CIFAR-100, 5 class-incremental tasks of 20 classes, CaSSLe's settings.

    python -m cl_ssl.main --config=configs/cifar100.py --workdir=runs/c100

CIFAR-100 must be prepared once with tfds (needs TensorFlow, ``pip install '.[prepare]'``):
``python -m cl_ssl.data.prepare --dataset=cifar100 --data_dir=DIR``, then add
``--config.dataset.data_dir=DIR``. ``get_config('runlocal')`` gives a tiny variant for a smoke run.
"""

from cl_ssl import config as config_lib


def get_config(arg: str | None = None):
    config = config_lib.base_config()
    config.dataset.name = "cifar100"
    config.class_order = "cifar100_cassle_seed5"
    if arg == "runlocal":
        config.model.backbone = "resnet_tiny"
        config.epochs_per_task = 1
        config.optimizer.warmup_epochs = 0
        config.batch_size = 64
        config.eval.train_examples = 2000
        config.eval.linear.epochs = 5
    return config
