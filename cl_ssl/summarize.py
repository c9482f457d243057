"""Aggregates finished runs: mean +- std over seeds of every config's metrics, as markdown and CSV.

    python -m cl_ssl.summarize runs/strategies/* --output=runs/strategies/summary

reads each workdir's results.json, groups the runs whose configs differ only in their seed (fields
that change how a run executes, and the sections of strategies and objectives a run does not read,
are ignored, as when a workdir is resumed), and prints one row per config and accuracy matrix
(evaluator): the number of seeds and, mean +- std over them (sample std, n - 1), the final
accuracy, its gain over the random network (row 0 of the matrix), the average incremental accuracy
with and without the first task, forgetting, backward and forward transfer, in percent. The row
names the objective, the strategy, and every other field that differs between the configs.
Workdirs without complete results (no results.json, rows not yet evaluated) are listed and
skipped. ``--output=PREFIX`` also writes PREFIX.md and PREFIX.csv (a mean and a std column per
metric).
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import json
import math
from collections.abc import Sequence

import numpy as np
from absl import app, flags

from cl_ssl import config as config_lib
from cl_ssl import storage
from cl_ssl.evaluation import metrics

METRICS = {
    "final": "final accuracy",
    "gain": "gain over random init",
    "aia": "average incremental accuracy",
    "aia_without_first": "AIA without the first task",
    "forgetting": "forgetting",
    "bwt": "backward transfer",
    "fwt": "forward transfer",
}
"""Column name -> what it holds (percent, or percent points)."""

# The summary key of each metric (cl_ssl.evaluation.metrics.summarize); an offline run's single
# trained row has only a final accuracy, under another name.
_SUMMARY_KEYS = {
    "aia": "average_incremental_accuracy",
    "aia_without_first": "average_incremental_accuracy_without_first",
    "forgetting": "forgetting",
    "bwt": "backward_transfer",
    "fwt": "forward_transfer",
}


@dataclasses.dataclass(frozen=True)
class Run:
    """One finished run: its workdir, resolved config (dict) and per-evaluator figures."""

    workdir: str
    config: dict
    figures: dict[str, dict[str, float]]  # evaluator -> METRICS key -> value (NaN: none)


def figures(summary: dict) -> dict[str, float]:
    """The ``METRICS`` (percent) of one accuracy matrix from its summary (the run's results.json
    entry); NaN for what a run does not define (the offline run's transfer,
    the gain of a head trained with the backbone, whose row 0 is the untrained head)."""
    # Offline results written before their summary held final_accuracy: its overall accuracy.
    final = summary.get("final_accuracy", summary.get("final_overall_accuracy"))
    random_init = summary.get("random_init_accuracy", math.nan)
    out = {"final": float(final), "gain": float(final) - float(random_init)}
    for name, key in _SUMMARY_KEYS.items():
        value = summary.get(key)
        out[name] = math.nan if value is None else float(value)
    return out


def load_run(workdir: str) -> Run | None:
    """The run in ``workdir`` when its results.json is complete (every matrix filled), else None."""
    path = storage.path(workdir) / "results.json"
    if not path.exists():
        return None
    document = json.loads(path.read_text())
    matrices = {
        name: np.array(rows, dtype=float) for name, rows in document["matrices"].items()
    }  # JSON null (not yet evaluated) becomes NaN
    if not matrices or any(np.isnan(R).any() for R in matrices.values()):
        return None
    return Run(
        workdir=workdir,
        config=document["meta"]["config"],
        figures={name: figures(document["summaries"][name]) for name in matrices},
    )


def group_by_config(runs: Sequence[Run]) -> list[list[Run]]:
    """``runs`` in groups whose configs differ in nothing but the seed, in order of appearance."""
    groups: list[list[Run]] = []
    for run in runs:
        for group in groups:
            if set(config_lib.differing_fields(group[0].config, run.config)) <= {"seed"}:
                group.append(run)
                break
        else:
            groups.append([run])
    return groups


def _field(config: dict, name: str):
    """The value of dotted field ``name`` in ``config``; None when absent or in a section the run
    does not read (another strategy's)."""
    if name.split(".")[0] in config_lib.unread_sections(config):
        return None
    for key in name.split("."):
        config = config.get(key) if isinstance(config, dict) else None
    return config


def table(groups: Sequence[Sequence[Run]]) -> tuple[list[str], list[dict]]:
    """(the config fields that name a row, the rows): one row per group and evaluator, with the
    fields' values, 'evaluator', 'seeds' (the seeds, comma-separated) and per ``METRICS`` key a
    ``metrics.aggregate_seeds`` {'mean', 'std'} over the group's seeds."""
    varying = {
        name
        for a in groups
        for b in groups
        for name in config_lib.differing_fields(a[0].config, b[0].config)
    }
    fields = ["objective", "strategy"] + sorted(varying - {"objective", "strategy", "seed"})
    rows = []
    for group in groups:
        for evaluator in group[0].figures:
            aggregated = metrics.aggregate_seeds([run.figures[evaluator] for run in group])
            rows.append(
                {
                    **{name: _field(group[0].config, name) for name in fields},
                    "evaluator": evaluator,
                    "seeds": ",".join(str(run.config["seed"]) for run in group),
                    **{key: aggregated[key] for key in METRICS},
                }
            )
    return fields, rows


def _text(value) -> str:
    """A config value in a table cell: '-' for unset, a whole section (of a strategy that one
    config uses and another not) as 'set'."""
    if value is None:
        return "-"
    return "set" if isinstance(value, dict) else str(value)


def _cell(value: dict) -> str:
    if math.isnan(value["mean"]):
        return "-"
    std = "n/a" if math.isnan(value["std"]) else f"{value['std']:.2f}"
    return f"{value['mean']:.2f} ± {std}"


def to_markdown(fields: Sequence[str], rows: Sequence[dict]) -> str:
    """The rows as a markdown table: mean ± std, '-' where a run defines no value."""
    header = [*fields, "evaluator", "seeds", *METRICS.values()]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * (len(fields) + 2) + "---:|" * len(METRICS),
    ]
    for row in rows:
        cells = [_text(row[name]) for name in (*fields, "evaluator", "seeds")]
        cells += [_cell(row[key]) for key in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(fields: Sequence[str], rows: Sequence[dict]) -> str:
    """The rows as CSV: a ``<metric>_mean`` and ``<metric>_std`` column per metric (empty: NaN)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [*fields, "evaluator", "seeds"] + [f"{k}_{s}" for k in METRICS for s in ("mean", "std")]
    )
    for row in rows:
        values = [row[k][s] for k in METRICS for s in ("mean", "std")]
        writer.writerow(
            [_text(row[name]) for name in (*fields, "evaluator", "seeds")]
            + ["" if math.isnan(v) else f"{v:.4f}" for v in values]
        )
    return out.getvalue()


def summarize_runs(workdirs: Sequence[str]) -> tuple[str, str, list[str]]:
    """(markdown table, CSV, the workdirs skipped for lack of complete results) of ``workdirs``;
    ValueError when none has complete results."""
    runs, skipped = [], []
    for workdir in workdirs:
        run = load_run(workdir)
        if run is None:
            skipped.append(workdir)
        else:
            runs.append(run)
    if not runs:
        raise ValueError(
            f"none of the {len(workdirs)} workdirs holds a finished run (a results.json with "
            "every row evaluated); pass the workdirs of finished runs"
        )
    fields, rows = table(group_by_config(runs))
    return to_markdown(fields, rows), to_csv(fields, rows), skipped


def _expand(pattern: str) -> list[str]:
    """The paths that ``pattern`` matches, sorted: a glob of local paths, or of a bucket URI's last
    part (``gs://bucket/runs/c100_*``)."""
    if not storage.is_remote(pattern):
        return sorted(glob.glob(pattern))
    folder, _, name = pattern.rpartition("/")
    parent = storage.path(folder)
    return sorted(str(p) for p in parent.glob(name)) if parent.is_dir() else []


def main(argv: Sequence[str]) -> None:
    patterns = argv[1:]
    if not patterns:
        raise app.UsageError(
            "pass the workdirs of the runs (or globs): python -m cl_ssl.summarize runs/*"
        )
    workdirs = [w for p in patterns for w in _expand(p) or [p]]
    markdown, csv_text, skipped = summarize_runs(workdirs)
    for workdir in skipped:
        print(f"skipped {workdir}: no complete results.json")
    print(markdown, end="")
    output = flags.FLAGS.output
    if output:
        target = storage.path(output)
        target.parent.mkdir(parents=True, exist_ok=True)
        for suffix, text in ((".md", markdown), (".csv", csv_text)):
            target.with_name(target.name + suffix).write_text(text)


if __name__ == "__main__":
    # Defined here, not at import: programs that import this module (experiments/quality.py)
    # define flags of their own.
    flags.DEFINE_string("output", "", "Optional prefix: writes PREFIX.md and PREFIX.csv.")
    app.run(main)
