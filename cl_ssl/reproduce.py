"""The papers' tables as commands: list, run and check every published row the presets reproduce.

    python -m cl_ssl.reproduce --list [--format=json]
    python -m cl_ssl.reproduce --paper=cassle --table=cifar100_class --seeds=0,1,2 \\
        --workdir=runs/repro --data_dir=DIR [--dry_run | --jobs=FILE]
    python -m cl_ssl.reproduce --compare=runs/repro [--output=PREFIX]
    python -m cl_ssl.reproduce --paper=cassle --table=cifar100_class --scale=cpu --workdir=runs/repro
    python -m cl_ssl.reproduce --compare=runs/repro --scale=cpu

``--list`` prints every row (``cl_ssl.reproduce_tables``): paper, table, setting, method,
objective, metric, the published value and its source, and a GPU-hour estimate. Running a paper's
tables (all of them, or ``--table``) runs each row's ``python -m cl_ssl.main`` command once per
seed, one after the other in processes of their own, each in its own workdir
(``WORKDIR/<scale>/<paper>/<table>/<run>/seed<S>``): a finished run of the same config is
skipped, an interrupted one resumes, a workdir of another config is refused before anything runs.
``--dry_run`` prints the commands; ``--jobs=FILE`` writes those not yet finished, one per line,
for a cluster. ``--compare`` reads the finished runs and prints, and writes as PREFIX.md,
PREFIX.csv and PREFIX.png (default ``DIR/comparison_<scale>``), ours next to the paper's with a
verdict per row, or at ``--scale=cpu`` (Split Fashion-MNIST, minutes per run on a CPU) each of the
paper's orderings with its margin over the seeds' spread (``cl_ssl.reproduce_compare``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import TextIO

from absl import app, flags

from cl_ssl import reproduce_compare, reproduce_runs, storage, summarize
from cl_ssl.reproduce_tables import NOT_LISTED, PAPERS, SCALES, Paper, Row, Table

DEFAULT_SEEDS = (0, 1, 2)


@dataclasses.dataclass(frozen=True)
class Options:
    """The command line's choices (the flags of ``main``)."""

    list: bool = False
    format: str = "text"
    paper: str = ""
    table: str = ""
    seeds: tuple[int, ...] = ()  # running: () is DEFAULT_SEEDS; --compare: every seed found
    workdir: str = "runs/repro"
    data_dir: str = ""
    dry_run: bool = False
    jobs: str = ""
    compare: str = ""
    output: str = ""
    scale: str = "paper"


def select(paper: str, table: str = "") -> tuple[Paper, list[Table]]:
    """The paper named ``paper`` and its table ``table`` (all its tables when empty); ValueError
    lists the known ones."""
    if paper not in PAPERS:
        raise ValueError(f"unknown paper {paper!r}; choose --paper among {sorted(PAPERS)}")
    tables = PAPERS[paper].tables
    if not table:
        return PAPERS[paper], list(tables)
    chosen = [t for t in tables if t.name == table]
    if not chosen:
        raise ValueError(
            f"paper {paper!r} has no table {table!r}; choose --table among "
            f"{[t.name for t in tables]}"
        )
    return PAPERS[paper], chosen


def gpu_hours(table: Table, row: Row) -> float | None:
    """Training hours of the row's run on one H100 (``Table.images_per_run`` over its step's
    measured or estimated images/s); None where either is unknown."""
    throughput = table.run(row.run).throughput
    if table.images_per_run is None or throughput is None:
        return None
    return table.images_per_run / throughput.images_per_s / 3600


def listing(scale: str = "paper", workdir: str = "runs/repro") -> list[dict]:
    """One dict per row: the JSON of ``--list --format=json``; ``command`` is seed 0's."""
    out = []
    for paper in PAPERS.values():
        for table in paper.tables:
            has_scale = scale == "paper" or table.cpu_config is not None
            jobs = (
                reproduce_runs.jobs(paper, [table], seeds=[0], root=workdir, scale=scale)
                if has_scale
                else []
            )
            commands = {job.run: job.command for job in jobs}
            for row in table.rows:
                run = table.run(row.run)
                throughput = run.throughput
                out.append(
                    {
                        "paper": paper.key,
                        "table": table.name,
                        "title": table.title,
                        "setting": table.setting,
                        "method": run.method,
                        "objective": run.objective,
                        "metric": row.metric,
                        "evaluator": row.evaluator,
                        "protocol": row.protocol,
                        "paper_value": row.paper_value,
                        "tolerance": row.tolerance,
                        "status": row.status,
                        "source": row.source,
                        "note": row.note,
                        "gpu_hours": gpu_hours(table, row),
                        "gpu_hours_basis": throughput.source if throughput else None,
                        "command": commands.get(row.run),
                    }
                )
    return out


def _hours(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def reproduction_table() -> str:
    """The markdown table of every row with the paper's value and an empty column for ours (the
    README's; ``--compare`` fills it)."""
    lines = [
        "| paper | table | method | objective | metric | paper | ours | GPU-h | source |",
        "|---|---|---|---|---|---:|---:|---:|---|",
    ]
    for item in listing():
        metric = f"{item['evaluator']} {summarize.METRICS[item['metric']]}"
        status = "" if item["status"] == "verified" else " (unverified)"
        lines.append(
            f"| {item['paper']} | {item['table']} | {item['method']} | {item['objective']} | "
            f"{metric} | {item['paper_value']:.2f}{status} | | {_hours(item['gpu_hours'])} | "
            f"{item['source']} |"
        )
    return "\n".join(lines) + "\n"


def _print_listing(options: Options, out: TextIO) -> None:
    items = listing(options.scale, options.workdir)
    if options.format == "json":
        json.dump(items, out, indent=1)
        out.write("\n")
        return
    for item in items:
        value = f"{item['paper_value']:.2f}" + ("" if item["status"] == "verified" else " (?)")
        out.write(
            f"{item['paper']}/{item['table']}: {item['method']} {item['objective']}, "
            f"{item['evaluator']} {item['metric']} = {value} [{item['source']}]; "
            f"{item['setting']}; {_hours(item['gpu_hours'])} GPU-h\n"
            f"    {item['command'] or f'(no --scale={options.scale} variant)'}\n"
        )
    out.write("\nNot listed:\n")
    for what, why in NOT_LISTED:
        out.write(f"  {what}: {why}\n")


def _jobs(options: Options) -> list[tuple[reproduce_runs.Job, str]]:
    """The selected jobs with their workdirs' states; ValueError before anything runs when a
    workdir holds another config or the table has no variant at the scale."""
    if not options.paper:
        raise ValueError("pass --paper (and optionally --table) to run, or --list or --compare")
    paper, tables = select(options.paper, options.table)
    if options.scale == "cpu":
        missing = [t.name for t in tables if t.cpu_config is None]
        if missing:
            raise ValueError(
                f"tables {missing} of {paper.key!r} have no --scale=cpu variant; choose --table "
                f"among {[t.name for t in paper.tables if t.cpu_config is not None]}"
            )
    jobs = reproduce_runs.jobs(
        paper,
        tables,
        seeds=options.seeds or DEFAULT_SEEDS,
        root=options.workdir,
        scale=options.scale,
        data_dir=options.data_dir,
    )
    return [
        (job, reproduce_runs.workdir_state(reproduce_runs.build_config(job.argv), job.workdir))
        for job in jobs
    ]


def _run(options: Options, out: TextIO) -> None:
    jobs = _jobs(options)
    if options.dry_run:
        for job, _ in jobs:
            out.write(job.command + "\n")
        return
    if options.jobs:
        pending = [job.command for job, state in jobs if state != "finished"]
        storage.path(options.jobs).write_text("".join(command + "\n" for command in pending))
        out.write(f"wrote {len(pending)} of {len(jobs)} commands to {options.jobs}\n")
        return
    for index, (job, state) in enumerate(jobs, start=1):
        head = f"[{index}/{len(jobs)}] {job.paper}/{job.table} {job.run} seed {job.seed}"
        if state == "finished":
            out.write(f"{head}: finished, skipped ({job.workdir})\n")
            continue
        out.write(f"{head}: {job.command}\n")
        out.flush()
        argv = reproduce_runs.runnable_argv(job.argv)
        code = subprocess.run([sys.executable, "-m", "cl_ssl.main", *argv], check=False).returncode
        if code != 0:
            raise RuntimeError(
                f"{head} failed (exit {code}); rerun the same command to resume it and the rows "
                "after it"
            )


def _compare(options: Options, out: TextIO) -> None:
    root, scale = options.compare, options.scale
    compare = {"paper": reproduce_compare.compare_paper, "cpu": reproduce_compare.compare_cpu}
    results = compare[scale](root, options.seeds or None)
    if not results:
        raise ValueError(
            f"no runs under {os.path.join(root, scale)}/<paper>/<table>/<run>/seed<S>; pass the "
            f"--workdir that python -m cl_ssl.reproduce ran (scales found there: "
            f"{reproduce_compare.scales_present(root) or 'none'})"
        )
    if scale == "paper":
        columns = reproduce_compare.PAPER_COLUMNS
        cells = [reproduce_compare.paper_cells(r) for r in results]
        plot = reproduce_compare.plot_paper
    else:
        columns = reproduce_compare.CPU_COLUMNS
        cells = [reproduce_compare.cpu_cells(r) for r in results]
        plot = reproduce_compare.plot_cpu
    for line in reproduce_compare.missing_lines(results, root, scale):
        out.write(f"warning: {line}\n")
    markdown = reproduce_compare.to_markdown(columns, cells)
    out.write(markdown)
    prefix = options.output or os.path.join(root, f"comparison_{scale}")
    storage.path(prefix).parent.mkdir(parents=True, exist_ok=True)
    storage.path(prefix + ".md").write_text(markdown)
    storage.path(prefix + ".csv").write_text(reproduce_compare.to_csv(columns, cells))
    written = [f"{prefix}.md", f"{prefix}.csv"]
    if reproduce_compare.any_finished(results):
        plot(results, prefix + ".png")
        written.append(f"{prefix}.png")
    out.write(f"wrote {', '.join(written)}\n")


def execute(options: Options, out: TextIO = sys.stdout) -> None:
    """Does what ``options`` ask; ValueError (bad input) or RuntimeError (a failed run) says what
    to change."""
    if options.scale not in SCALES:
        raise ValueError(f"unknown --scale={options.scale}; choose among {list(SCALES)}")
    if options.format not in ("text", "json"):
        raise ValueError(f"unknown --format={options.format}; choose 'text' or 'json'")
    modes = [name for name in ("list", "compare") if getattr(options, name)]
    if len(modes) > 1 or (modes and options.paper):
        raise ValueError("pass one of --list, --compare or --paper")
    if options.list:
        _print_listing(options, out)
    elif options.compare:
        _compare(options, out)
    else:
        _run(options, out)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; every option is a --flag")
    values = flags.FLAGS
    options = Options(
        **{
            field.name: values[field.name].value
            for field in dataclasses.fields(Options)
            if field.name != "seeds"
        },
        seeds=tuple(int(s) for s in values.seeds),
    )
    try:
        execute(options)
    except (ValueError, RuntimeError) as error:
        sys.exit(f"error: {error}")


def define_flags() -> None:
    """The command line's flags, defined when it runs (not at import: tests and programs that
    import this module keep their own flags)."""
    defaults = Options()
    flags.DEFINE_bool("list", False, "Print every reproducible row.")
    flags.DEFINE_enum("format", defaults.format, ["text", "json"], "Format of --list.")
    flags.DEFINE_string("paper", "", f"Paper whose rows to run: {', '.join(PAPERS)}.")
    flags.DEFINE_string("table", "", "One table of --paper (default: all of them).")
    flags.DEFINE_list(
        "seeds",
        [],
        f"Training seeds (default {','.join(map(str, DEFAULT_SEEDS))}); with --compare, the seeds "
        "every run should have (default: every seed found in its table)",
    )
    flags.DEFINE_string("workdir", defaults.workdir, "Parent folder of the runs.")
    flags.DEFINE_string("data_dir", "", "The runs' --config.dataset.data_dir.")
    flags.DEFINE_bool("dry_run", False, "Print the commands instead of running them.")
    flags.DEFINE_string("jobs", "", "Write the unfinished commands to this file, one per line.")
    flags.DEFINE_string("compare", "", "Compare the finished runs under this folder.")
    flags.DEFINE_string("output", "", "Prefix of --compare's .md, .csv and .png files.")
    flags.DEFINE_enum(
        "scale",
        defaults.scale,
        list(SCALES),
        "paper: the papers' settings; cpu: Split Fashion-MNIST at CPU scale, to check orderings.",
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
