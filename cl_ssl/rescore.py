"""Re-scores a finished (or interrupted) run with other evaluation settings, without training.

    python -m cl_ssl.rescore --workdir=runs/demo --config.eval.probe_data=seen
    python -m cl_ssl.rescore --workdir=runs/demo --config.eval.label_fraction=0.01 --name=1pc

evaluates the checkpoint of every task boundary of the run in --workdir (its config.json is the
base config; only ``--config.eval.*`` fields may change) and writes results.json, results.md and
plots/ to ``<workdir>/eval_<name>``. ``--name`` defaults to the overridden fields and values.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from cl_ssl import train

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of the run to re-evaluate.")
_NAME = flags.DEFINE_string(
    "name", "", "Name of the evaluation: results go to <workdir>/eval_<name>."
)


def stored_config(workdir: str) -> ml_collections.ConfigDict:
    """The config of the run in ``workdir`` (its config.json), JSON lists back as tuples."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ValueError(f"{path} not found: --workdir must be the workdir of a cl_ssl run")

    def tuples(value):
        if isinstance(value, dict):
            return {k: tuples(v) for k, v in value.items()}
        return tuple(tuples(v) for v in value) if isinstance(value, list) else value

    with open(path) as f:
        return ml_collections.ConfigDict(tuples(json.load(f)))


def default_name(argv: Sequence[str]) -> str:
    """The evaluation's name from its ``--config.eval.FIELD=VALUE`` arguments, e.g.
    'probe_data-seen_label_fraction-0.1'; 'default' without any."""
    parts = []
    for arg in argv:
        match = re.fullmatch(r"--config\.eval\.([^=]+)=(.*)", arg)
        if match:
            parts.append(f"{match[1]}-{match[2]}")
    return re.sub(r"[^A-Za-z0-9_.-]", "", "_".join(parts)) or "default"


def main(argv: Sequence[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax reports every restore at INFO
    name = _NAME.value or default_name(sys.argv[1:])
    try:
        train.reevaluate(flags.FLAGS.config, _WORKDIR.value, name)
    except (ValueError, RuntimeError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    print(f"results: {os.path.join(_WORKDIR.value, f'eval_{name}', 'results.md')}")


if __name__ == "__main__":
    # The run's own config is the base of the --config overrides: read --workdir first.
    flags.FLAGS(sys.argv, known_only=True)
    if not _WORKDIR.value:
        sys.exit("error: pass --workdir=DIR, the workdir of the run to re-evaluate")
    try:
        config_flags.DEFINE_config_dict("config", stored_config(_WORKDIR.value))
    except (ValueError, KeyError, AttributeError, TypeError) as error:
        # A missing config.json, or a --config override of a field that does not exist.
        sys.exit(f"error: {error}")
    app.run(main)
