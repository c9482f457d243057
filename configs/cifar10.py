"""SimCLR on Split CIFAR-10, 5 class-incremental tasks of 2 classes, CaSSLe's CIFAR settings.

    python -m cl_ssl.main --config=configs/cifar10.py --workdir=runs/c10

Prepare CIFAR-10 once as configs/cifar100.py explains (``--dataset=cifar10``).
"""

from cl_ssl import config as config_lib


def get_config(arg: str | None = None):
    del arg
    config = config_lib.base_config()
    config.dataset.name = "cifar10"
    return config
