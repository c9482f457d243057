"""The commands of ``cl_ssl.reproduce``'s rows, the configs they build, and their workdirs' state.

A run of table T of paper P at a scale, for seed S, lives in ``ROOT/<scale>/P/T/<run>/seed<S>``
(``workdir``) and is the command ``python -m cl_ssl.main --config=... OVERRIDES --config.seed=S
--workdir=...`` (``command``). ``build_config`` parses a command's config flags with the same
``config_flags`` definition as ``cl_ssl.main``, so a test can check every printed command without
training; ``workdir_state`` tells a finished run of the same config (skipped), a run to resume or
start, and a workdir of another config (refused, naming the fields that differ).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
import shlex
from collections.abc import Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from cl_ssl import config as config_lib
from cl_ssl import storage, summarize
from cl_ssl.evaluation import evaluate
from cl_ssl.objectives import get_objective, resolve_config
from cl_ssl.reproduce_tables import SCALES, Paper, Run, Table
from cl_ssl.strategies import get_strategy


@dataclasses.dataclass(frozen=True)
class Job:
    """One seed of one run: ``argv`` follows ``python -m cl_ssl.main``."""

    paper: str
    table: str
    run: str
    seed: int
    workdir: str
    argv: tuple[str, ...]

    @property
    def command(self) -> str:
        return shlex.join(("python", "-m", "cl_ssl.main", *self.argv))


def config_args(table: Table, run: Run, scale: str) -> tuple[str, ...]:
    """The ``--config`` flag and its overrides of ``run`` at ``scale``; ValueError when the table
    has no CPU variant."""
    if scale == "paper":
        return (f"--config={run.config}", *run.overrides)
    if table.cpu_config is None or run.cpu_overrides is None:
        raise ValueError(f"table {table.name!r} has no --scale=cpu variant")
    return (f"--config={table.cpu_config}", *run.cpu_overrides)


def workdir(root: str, scale: str, paper: str, table: str, run: str, seed: int) -> str:
    return os.path.join(root, scale, paper, table, run, f"seed{seed}")


def jobs(
    paper: Paper,
    tables: Sequence[Table],
    *,
    seeds: Sequence[int],
    root: str,
    scale: str,
    data_dir: str = "",
) -> list[Job]:
    """Every run of ``tables`` for every seed, seeds outermost (a sweep stopped early has whole
    seeds); ``data_dir`` adds ``--config.dataset.data_dir``."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose among {list(SCALES)}")
    out = []
    for seed in seeds:
        for table in tables:
            for run in table.runs:
                folder = workdir(root, scale, paper.key, table.name, run.name, seed)
                argv = (
                    *config_args(table, run, scale),
                    f"--config.seed={seed}",
                    *((f"--config.dataset.data_dir={data_dir}",) if data_dir else ()),
                    f"--workdir={folder}",
                )
                out.append(Job(paper.key, table.name, run.name, seed, folder, argv))
    return out


def _config_file(value: str) -> str:
    """``configs/NAME.py[:ARG]`` from the working directory when it is a checkout, else the
    installed presets (``cl_ssl.configs``), as ``cl_ssl.main``'s default config is found."""
    path, _, arg = value.partition(":")
    if not os.path.exists(path) and path.startswith("configs/"):
        path = str(importlib.resources.files("cl_ssl.configs") / path.removeprefix("configs/"))
    return path + (f":{arg}" if arg else "")


def runnable_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with its ``--config`` file found from any working directory (``_config_file``)."""
    return [
        f"--config={_config_file(a.removeprefix('--config='))}" if a.startswith("--config=") else a
        for a in argv
    ]


def build_config(argv: Sequence[str]) -> ml_collections.ConfigDict:
    """The config that ``python -m cl_ssl.main ARGV`` runs, parsed by ``cl_ssl.main``'s flag
    definition (a config file and its ``--config.*`` overrides); other flags are ignored."""
    config_argv = ["cl_ssl.main", *(a for a in runnable_argv(argv) if a.startswith("--config"))]
    values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file(
        "config", None, "", values, lock_config=True, sys_argv=config_argv
    )
    values(config_argv)
    return holder.value


def check_config(config: ml_collections.ConfigDict, evaluator: str) -> ml_collections.ConfigDict:
    """``config`` resolved and validated as a run validates it before loading data, with the
    accuracy matrix ``evaluator`` among those it fills; ValueError says what to change."""
    resolved = resolve_config(config)
    config_lib.validate(resolved, num_devices=1)
    strategy = get_strategy(resolved, get_objective(resolved))
    names = evaluate.matrix_names(resolved, has_classifier=strategy.classify is not None)
    if evaluator not in names:
        raise ValueError(f"the run fills the matrices {names}, not {evaluator!r}")
    return resolved


def _checkpointed_config(folder: str) -> dict | None:
    """The stored config of a run in ``folder`` that saved checkpoints; None otherwise (a stored
    config without checkpoints is replaced by the next run, ``cl_ssl.workdir.check_config``)."""
    checkpoints = storage.path(folder) / "checkpoints"
    path = storage.path(folder) / "config.json"
    if not checkpoints.is_dir() or not any(p.name.isdigit() for p in checkpoints.iterdir()):
        return None
    if not path.exists():
        return None
    return json.loads(path.read_text())


def workdir_state(config: ml_collections.ConfigDict, folder: str) -> str:
    """'finished' (complete results of ``config``), 'resume' (checkpoints of it) or 'new';
    ValueError when ``folder`` holds a run of another config, naming the fields that differ."""
    given = json.loads(resolve_config(config).to_json())
    run = summarize.load_run(folder)
    stored = run.config if run is not None else _checkpointed_config(folder)
    if stored is None:
        return "new"
    differ = config_lib.differing_fields(stored, given)
    if differ:
        raise ValueError(
            f"{folder} holds a run of another config than its row's command (fields that "
            f"differ: {', '.join(differ)}); move that run out of the folder, or pass another "
            "--workdir"
        )
    return "finished" if run is not None else "resume"
