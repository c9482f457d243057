"""Re-scores a finished (or interrupted) run with other evaluation settings, without training.

    python -m cl_ssl.rescore --workdir=runs/demo --config.eval.probe_data=seen
    python -m cl_ssl.rescore --workdir=runs/demo --config.eval.label_fraction=0.01 --name=1pc

evaluates the checkpoint of every task boundary of the run in --workdir (its config.json is the
base config; only ``--config.eval.*`` fields may change) and writes results.json, results.md and
plots/ to ``<workdir>/eval_<name>``. ``--name`` defaults to the overridden fields and values.
``reevaluate`` does the same from Python.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from cl_ssl import checkpoint, parallel, storage, train
from cl_ssl import config as config_lib
from cl_ssl import workdir as workdir_lib
from cl_ssl.objectives import resolve_config
from cl_ssl.planning import BOUNDARY_STEPS, boundary_steps, plan

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of the run to re-evaluate.")
_NAME = flags.DEFINE_string(
    "name", "", "Name of the evaluation: results go to <workdir>/eval_<name>."
)


def reevaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    name: str,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, np.ndarray]:
    """Scores the task-boundary checkpoints of the run in ``workdir`` again, with ``config``'s
    evaluation settings (``eval.*``; every other field must be the run's), without training.

    Writes results.json, results.md and plots/ to ``workdir/eval_<name>``, and returns its
    accuracy matrices (rows whose boundary checkpoint is missing, as in an unfinished run, stay
    NaN, and say so). The boundary checkpoint is the state after the strategy's end of task, the
    one the next task starts from: it scores as the run scored its row, except a CCL teacher
    (``ccl.evaluate_teacher``), which restarts from the student at every boundary, hence
    refused."""
    stored = json.loads((storage.path(workdir) / "config.json").read_text())
    if stored.get("seeds"):
        raise ValueError(
            f"{workdir} holds the replicas of seeds {tuple(stored['seeds'])} trained in one "
            "program (--config.seeds), whose checkpoints re-evaluation cannot read; re-evaluate "
            "runs trained one seed at a time"
        )
    given = json.loads(resolve_config(config).to_json())  # config.json holds the resolved one
    changed = [f for f in config_lib.differing_fields(stored, given) if not f.startswith("eval.")]
    if changed:
        raise ValueError(
            f"re-evaluation changes the evaluation only, but {', '.join(changed)} differ from the "
            f"run in {workdir}; override --config.eval.* fields only"
        )
    if not name or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"--name={name!r}; use letters, digits, '_', '.' or '-'")
    with contextlib.ExitStack() as stack:
        stack.enter_context(workdir_lib.workdir_lock(workdir))
        p = plan(config, mesh or parallel.make_mesh())
        if p.strategy.evaluated is not None:
            raise ValueError(
                f"strategy {p.strategy.name!r} scores a network its checkpoints do not keep "
                "(ccl.evaluate_teacher: the teacher restarts at every task boundary); "
                "re-evaluation cannot reproduce it"
            )
        ckpt = stack.enter_context(contextlib.closing(train.checkpointer(p, workdir)))
        scorer = train.Run(p, str(storage.path(workdir) / f"eval_{name}"), ckpt, writer=None)
        abstract = checkpoint.abstract_like(
            jax.eval_shape(scorer.initial_state), parallel.replicated(p.mesh)
        )
        on_disk = set(ckpt.all_steps())
        steps = boundary_steps(p)
        if p.strategy.stage_examples is not None:  # boundaries that follow from the memory
            newest = ckpt.restore(abstract)
            steps = newest[2].get(BOUNDARY_STEPS, steps) if newest is not None else steps
        for row, step in enumerate(steps):
            if step not in on_disk:
                logging.warning(
                    "row %d: no checkpoint of step %d in %s (not yet trained, or from a version "
                    "that did not keep task boundaries); the row stays empty",
                    row,
                    step,
                    ckpt.directory,
                )
                continue
            state, _ = ckpt.restore_step(step, abstract)
            scorer.results.record(row, scorer.evaluate(state, row), step=step)
        return scorer.results.matrices


def stored_config(workdir: str) -> ml_collections.ConfigDict:
    """The config of the run in ``workdir`` (its config.json), JSON lists back as tuples."""
    path = storage.path(workdir) / "config.json"
    if not path.exists():
        raise ValueError(f"{path} not found: --workdir must be the workdir of a cl_ssl run")

    def tuples(value):
        if isinstance(value, dict):
            return {k: tuples(v) for k, v in value.items()}
        return tuple(tuples(v) for v in value) if isinstance(value, list) else value

    return ml_collections.ConfigDict(tuples(json.loads(path.read_text())))


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
        reevaluate(flags.FLAGS.config, _WORKDIR.value, name)
    except (ValueError, RuntimeError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    print(f"results: {storage.path(_WORKDIR.value) / f'eval_{name}' / 'results.md'}")


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
