"""DER on Split Fashion-MNIST at the demo's smoke scale (``configs/fashion_mnist.py:runlocal``):

    python -m cl_ssl.main --config=examples/der/config.py --workdir=runs/der

from the repository root, where Python finds the strategy's module ``examples.der.der``.
``--config=examples/der/config.py:demo`` is the demo's scale (3 epochs per task), and
``--config.der.alpha=0.3`` or any other ``--config.der.<field>`` sets DER's settings.
"""

from cl_ssl.configs import fashion_mnist

from cl_ssl import config as config_lib


def get_config(arg: str | None = None):
    if arg not in (None, "demo"):
        raise ValueError(f"unknown DER config variant {arg!r}; use none or 'demo'")
    config = fashion_mnist.get_config(None if arg == "demo" else "runlocal")
    return config_lib.use_strategy(config, "examples.der.der")
