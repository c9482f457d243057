"""Command-line entry point: ``python -m cl_ssl.main --config=configs/cifar100.py --workdir=DIR``.

Without ``--config`` the run is the built-in demo, ``configs/fashion_mnist.py`` as installed with
the package (``cl_ssl.configs``), so the command works from any directory. Any config value can be
overridden on the command line, e.g. ``--config.strategy=offline``.
On a multi-host system (Cloud TPU pods, GPU clusters) pass ``--multihost`` so that every process
joins the same run through ``jax.distributed.initialize()``.
"""

from __future__ import annotations

import importlib.resources

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from cl_ssl import train
from cl_ssl.evaluation import report

_DEMO_CONFIG = importlib.resources.files("cl_ssl.configs") / "fashion_mnist.py"
_CONFIG = config_flags.DEFINE_config_file(
    "config",
    str(_DEMO_CONFIG),
    "Path of the run's config file, optionally with ':ARG' for its get_config(ARG); the default "
    "is the installed demo config (configs/fashion_mnist.py).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir", "runs/default", "Folder of checkpoints and results; a run resumes from it."
)
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() before touching devices."
)


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        # orbax reports every checkpoint operation at INFO; keep the console to the progress bar
        # and the results unless --verbosity asks for more.
        logging.set_verbosity(logging.WARNING)
    if _MULTIHOST.value:
        jax.distributed.initialize()
    result = train.run(_CONFIG.value, _WORKDIR.value)
    if jax.process_index() == 0 and not result["stopped"]:
        for name, matrix in result["matrices"].items():
            print(report.format_matrix(np.asarray(matrix), title=f"{name} accuracy (%)"))
            for metric, value in result["summaries"].get(name, {}).items():
                if isinstance(value, float):
                    print(f"  {metric}: {value:.2f}")
        print(f"results: {_WORKDIR.value}/results.md")


if __name__ == "__main__":
    app.run(main)
