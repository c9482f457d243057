"""``cl_ssl.reproduce --compare``: finished runs against the published rows.

Reads ``ROOT/<scale>/<paper>/<table>/<run>/seed<S>`` (the layout ``cl_ssl.reproduce_runs``
writes) through ``cl_ssl.summarize.load_run``. At the paper's scale, every row gets our mean and
sample std over seeds of its metric (percent), the difference ours - paper (points) and a verdict:
``within`` (|difference| <= max(tolerance, 2 std)), ``outside``, or ``missing seeds ...`` when a
seed that another run of its table finished has no complete results. At CPU scale the numbers are
not the paper's: each of the paper's orderings (the order of its values within an objective and
metric, plus the table's extra orderings) gets our margin (better - worse, in points) and the
seeds' spread, sqrt(std_better^2 + std_worse^2): ``holds`` when the margin exceeds the spread,
``holds within spread`` when it is positive, ``reversed`` otherwise.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from collections.abc import Iterable, Sequence

import numpy as np

from cl_ssl import reproduce_runs, storage, summarize
from cl_ssl.reproduce_tables import PAPERS, SCALES, Ordering, Paper, Row, Table


@dataclasses.dataclass(frozen=True)
class Values:
    """One run's metric over its finished seeds, and the seeds it lacks."""

    seeds: tuple[int, ...]
    values: tuple[float, ...]
    missing: tuple[int, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation (n - 1); NaN below two seeds."""
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else math.nan


@dataclasses.dataclass(frozen=True)
class RowResult:
    paper: Paper
    table: Table
    row: Row
    ours: Values

    @property
    def difference(self) -> float:
        return self.ours.mean - self.row.paper_value

    @property
    def verdict(self) -> str:
        if self.ours.missing:
            return "missing seeds " + ", ".join(map(str, self.ours.missing))
        spread = 0.0 if math.isnan(self.ours.std) else 2 * self.ours.std
        return "within" if abs(self.difference) <= max(self.row.tolerance, spread) else "outside"


@dataclasses.dataclass(frozen=True)
class OrderingResult:
    paper: Paper
    table: Table
    ordering: Ordering
    better: Values
    worse: Values

    @property
    def margin(self) -> float:
        sign = -1.0 if self.ordering.lower_is_better else 1.0
        return sign * (self.better.mean - self.worse.mean)

    @property
    def spread(self) -> float:
        return math.hypot(self.better.std, self.worse.std)

    @property
    def verdict(self) -> str:
        missing = sorted(set(self.better.missing) | set(self.worse.missing))
        if missing:
            return "missing seeds " + ", ".join(map(str, missing))
        if not self.margin > 0:
            return "reversed"
        return "holds" if self.margin > self.spread else "holds within spread"

    @property
    def label(self) -> str:
        runs = self.table.run(self.ordering.better), self.table.run(self.ordering.worse)
        sign = "<" if self.ordering.lower_is_better else ">"
        return (
            f"{runs[0].method} {sign} {runs[1].method} ({runs[0].objective}), "
            f"{self.ordering.metric}"
        )


def orderings(table: Table) -> list[Ordering]:
    """The paper's orderings: within each objective and metric, each run's row above the next
    lower published value (ties give none), then the table's extra orderings."""
    out = []
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in table.rows:
        groups.setdefault((table.run(row.run).objective, row.metric), []).append(row)
    for (_, metric), rows in groups.items():
        ranked = sorted(rows, key=lambda r: r.paper_value)
        for worse, better in zip(ranked, ranked[1:], strict=False):
            if better.paper_value > worse.paper_value:
                out.append(Ordering(better.run, worse.run, metric))
    return out + list(table.extra_orderings)


def _seed_folders(folder: str) -> dict[int, str]:
    path = storage.path(folder)
    names = [p.name for p in path.iterdir()] if path.is_dir() else []
    return {
        int(n.removeprefix("seed")): os.path.join(folder, n)
        for n in names
        if n.startswith("seed") and n.removeprefix("seed").isdigit()
    }


class _Reader:
    """The finished runs of one scale of a compare folder, each checked against its command."""

    def __init__(self, root: str, scale: str, seeds: Sequence[int] | None):
        self.root, self.scale, self.seeds = root, scale, seeds

    def tables(self) -> Iterable[tuple[Paper, Table]]:
        """The tables with at least one seed folder at this scale."""
        for paper in PAPERS.values():
            for table in paper.tables:
                base = os.path.join(self.root, self.scale, paper.key, table.name)
                if any(_seed_folders(os.path.join(base, run.name)) for run in table.runs):
                    yield paper, table

    def values(self, paper: Paper, table: Table, evaluators: dict[str, str]) -> dict:
        """run name -> ``summarize.METRICS`` key -> ``Values`` of the matrix
        ``evaluators[run name]``, for the runs of ``table``."""
        base = os.path.join(self.root, self.scale, paper.key, table.name)
        folders = {run.name: _seed_folders(os.path.join(base, run.name)) for run in table.runs}
        expected = sorted(self.seeds or {s for f in folders.values() for s in f})
        out = {}
        for run in table.runs:
            finished = {}
            for seed in expected:
                loaded = summarize.load_run(folders[run.name].get(seed, ""))
                if loaded is not None:
                    self._check(paper, table, run.name, seed, loaded)
                    finished[seed] = loaded.figures[evaluators[run.name]]
            missing = tuple(s for s in expected if s not in finished)
            out[run.name] = {
                metric: Values(
                    tuple(finished), tuple(f[metric] for f in finished.values()), missing
                )
                for metric in summarize.METRICS
            }
        return out

    def _check(self, paper: Paper, table: Table, run: str, seed: int, loaded) -> None:
        """ValueError when a finished run is not of its row's config."""
        (job,) = [
            j
            for j in reproduce_runs.jobs(
                paper, [table], seeds=[seed], root=self.root, scale=self.scale
            )
            if j.run == run
        ]
        reproduce_runs.workdir_state(reproduce_runs.build_config(job.argv), loaded.workdir)


def compare_paper(root: str, seeds: Sequence[int] | None = None) -> list[RowResult]:
    """Every row of the tables with runs under ``ROOT/paper``, in table order."""
    reader = _Reader(root, "paper", seeds)
    results = []
    for paper, table in reader.tables():
        values = reader.values(paper, table, {row.run: row.evaluator for row in table.rows})
        for row in table.rows:
            results.append(RowResult(paper, table, row, values[row.run][row.metric]))
    return results


def compare_cpu(root: str, seeds: Sequence[int] | None = None) -> list[OrderingResult]:
    """Every ordering of the tables with runs under ``ROOT/cpu``."""
    reader = _Reader(root, "cpu", seeds)
    results = []
    for paper, table in reader.tables():
        values = reader.values(paper, table, dict.fromkeys(table.run_names, table.cpu_evaluator))
        for o in orderings(table):
            results.append(
                OrderingResult(
                    paper, table, o, values[o.better][o.metric], values[o.worse][o.metric]
                )
            )
    return results


def _number(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _ours(values: Values) -> str:
    if not values.values:
        return "-"
    std = "n/a" if math.isnan(values.std) else f"{values.std:.2f}"
    return f"{values.mean:.2f} ± {std}"


PAPER_COLUMNS = (
    "paper",
    "table",
    "method",
    "objective",
    "metric",
    "paper value",
    "ours",
    "seeds",
    "difference",
    "tolerance",
    "verdict",
)
CPU_COLUMNS = ("paper", "table", "ordering", "margin", "spread", "seeds", "verdict")


def paper_cells(result: RowResult) -> list[str]:
    run = result.table.run(result.row.run)
    return [
        result.paper.key,
        result.table.name,
        run.method,
        run.objective,
        f"{result.row.evaluator} {result.row.metric}",
        f"{result.row.paper_value:.2f}",
        _ours(result.ours),
        ",".join(map(str, result.ours.seeds)) or "-",
        _number(result.difference),
        f"{result.row.tolerance:g}",
        result.verdict,
    ]


def cpu_cells(result: OrderingResult) -> list[str]:
    seeds = sorted(set(result.better.seeds) & set(result.worse.seeds))
    return [
        result.paper.key,
        result.table.name,
        result.label,
        _number(result.margin),
        _number(result.spread),
        ",".join(map(str, seeds)) or "-",
        result.verdict,
    ]


def to_markdown(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def to_csv(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return out.getvalue()


def plot_paper(results: Sequence[RowResult], path: str) -> None:
    """Ours (mean, error bar one std) against the paper's value per row, the diagonal and its
    band of one point; one colour per table."""
    import matplotlib  # noqa: PLC0415 -- the figure only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6, 6))
    tables = sorted({(r.paper.key, r.table.name) for r in results})
    for paper, table in tables:
        shown = [r for r in results if (r.paper.key, r.table.name) == (paper, table)]
        ax.errorbar(
            [r.row.paper_value for r in shown],
            [r.ours.mean for r in shown],
            yerr=[0.0 if math.isnan(r.ours.std) else r.ours.std for r in shown],
            fmt="o",
            capsize=3,
            label=f"{paper} {table}",
        )
    values = [r.row.paper_value for r in results] + [r.ours.mean for r in results]
    low, high = np.nanmin(values) - 2, np.nanmax(values) + 2
    ax.plot([low, high], [low, high], "k-", linewidth=0.8)
    ax.fill_between([low, high], [low - 1, high - 1], [low + 1, high + 1], color="0.9")
    ax.set(xlim=(low, high), ylim=(low, high), xlabel="paper (%)", ylabel="cl_ssl (%)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    storage.path(path).write_bytes(buffer.getvalue())


def plot_cpu(results: Sequence[OrderingResult], path: str) -> None:
    """Each ordering's margin (points) with the seeds' spread as its error bar."""
    import matplotlib  # noqa: PLC0415 -- the figure only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 0.3 * len(results) + 1.5))
    y = np.arange(len(results))
    ax.barh(
        y,
        [r.margin for r in results],
        xerr=[0.0 if math.isnan(r.spread) else r.spread for r in results],
        color=["tab:green" if r.verdict == "holds" else "tab:orange" for r in results],
        capsize=2,
    )
    ax.axvline(0, color="k", linewidth=0.8)
    ax.set_yticks(y, [f"{r.paper.key}: {r.label}" for r in results], fontsize="x-small")
    ax.invert_yaxis()
    ax.set_xlabel("margin of the paper's ordering at CPU scale (points)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    storage.path(path).write_bytes(buffer.getvalue())


def missing_lines(
    results: Iterable[RowResult | OrderingResult], root: str, scale: str
) -> list[str]:
    """One line per run that lacks seeds, naming them and their folders."""
    lines = []
    for result in results:
        named = (
            [(result.row.run, result.ours)]
            if isinstance(result, RowResult)
            else [(result.ordering.better, result.better), (result.ordering.worse, result.worse)]
        )
        for run, values in named:
            if values.missing:
                base = os.path.join(root, scale, result.paper.key, result.table.name, run)
                line = (
                    f"{result.paper.key}/{result.table.name} {run}: missing seeds "
                    f"{', '.join(map(str, values.missing))} (no complete results.json in "
                    f"{', '.join(os.path.join(base, f'seed{s}') for s in values.missing)})"
                )
                if line not in lines:
                    lines.append(line)
    return lines


def any_finished(results: Iterable[RowResult | OrderingResult]) -> bool:
    """Whether any run of ``results`` has a finished seed (something to plot)."""
    return any(
        (r.ours.values if isinstance(r, RowResult) else r.better.values + r.worse.values)
        for r in results
    )


def scales_present(root: str) -> list[str]:
    return [s for s in SCALES if (storage.path(root) / s).is_dir()]
