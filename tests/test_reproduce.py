"""python -m cl_ssl.reproduce: the rows' data and commands, a run that resumes and is then skipped,
and --compare against a hand-made results tree (mean, std, difference, verdicts, orderings)."""

import csv
import io
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from helpers import write_tiny_fashion_mnist

from cl_ssl import reproduce, reproduce_compare, reproduce_runs, reproduce_tables
from cl_ssl.evaluation import metrics, report
from cl_ssl.objectives import resolve_config

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _execute(**options) -> str:
    out = io.StringIO()
    reproduce.execute(reproduce.Options(**options), out)
    return out.getvalue()


def _job(paper, table, run, seed, root, scale="paper"):
    (job,) = [
        j
        for j in reproduce_runs.jobs(
            reproduce_tables.PAPERS[paper],
            [t for t in reproduce_tables.PAPERS[paper].tables if t.name == table],
            seeds=[seed],
            root=str(root),
            scale=scale,
        )
        if j.run == run
    ]
    return job


def _write_finished(job, evaluator, final, **overrides):
    """The result files of a finished run of ``job``'s config (plus ``overrides``): one matrix
    ``evaluator`` of 5 equal tasks (2,000 test images each), row 0 all 10, rows 1-4 all 40, the
    last row all ``final``, so its final accuracy is ``final``."""
    config = reproduce_runs.build_config(job.argv)
    config.update(overrides)
    rows = np.array([[10.0] * 5] + [[40.0] * 5] * 4 + [[final] * 5])
    report.write_results(
        job.workdir,
        matrices={evaluator: rows},
        summaries={evaluator: metrics.summarize(rows, task_sizes=[2000] * 5)},
        meta={"config": json.loads(resolve_config(config).to_json()), "rows_evaluated": 6},
        plots=False,
    )


def test_every_rows_command_builds_a_valid_config_at_both_scales():
    """Each printed command, parsed by cl_ssl.main's flag definition, validates and fills the
    matrix its rows read; its seed and workdir are the job's."""
    checked = 0
    for paper in reproduce_tables.PAPERS.values():
        for table in paper.tables:
            evaluators = {row.run: row.evaluator for row in table.rows}
            scales = ["paper"] + (["cpu"] if table.cpu_config else [])
            for scale in scales:
                for job in reproduce_runs.jobs(paper, [table], seeds=[3], root="r", scale=scale):
                    config = reproduce_runs.build_config(job.argv)
                    evaluator = table.cpu_evaluator if scale == "cpu" else evaluators[job.run]
                    reproduce_runs.check_config(config, evaluator)
                    assert config.seed == 3
                    assert job.workdir == f"r/{scale}/{paper.key}/{table.name}/{job.run}/seed3"
                    assert job.command.endswith(f"--workdir={job.workdir}")
                    checked += 1
    assert checked == 37 + 27  # paper scale: 12 + 10 + 12 + 3 runs; CPU: 12 + 12 + 3


def test_check_config_names_a_matrix_the_run_does_not_fill():
    job = _job("cassle", "cifar100_class", "byol_cassle", 0, "r")
    with pytest.raises(ValueError, match=r"fills the matrices .*'online'.*not 'classifier'"):
        reproduce_runs.check_config(reproduce_runs.build_config(job.argv), "classifier")


def test_every_row_has_a_cited_number_and_a_command():
    items = reproduce.listing()
    counts = {}
    for item in items:
        assert set(item) >= {
            "paper",
            "table",
            "setting",
            "method",
            "objective",
            "metric",
            "paper_value",
            "source",
            "command",
        }
        assert item["source"] and item["command"].startswith("python -m cl_ssl.main --config=")
        assert item["metric"] in reproduce_compare.summarize.METRICS
        assert item["status"] in ("verified", "unverified")
        counts[item["paper"], item["table"]] = counts.get((item["paper"], item["table"]), 0) + 1
    assert counts == {
        ("cassle", "cifar100_class"): 12,
        ("cassle", "imagenet100_class"): 10,
        ("kaizen", "cifar100"): 24,
        ("ccl", "imagenet_sub"): 3,
    }
    kaizen = next(i for i in items if i["method"] == "Kaizen" and i["objective"] == "mocov2plus")
    assert (kaizen["paper_value"], kaizen["metric"]) == (40.9, "final")  # the figure's 0.409
    # 25M training images at the measured 10,392 images/s of CaSSLe's float32 step on an H100.
    cassle = next(i for i in items if i["method"] == "CaSSLe" and i["table"] == "cifar100_class")
    assert cassle["gpu_hours"] == pytest.approx(25e6 / 10_392 / 3600)
    assert next(i for i in items if i["paper"] == "ccl")["gpu_hours"] is None


def test_list_prints_json_from_the_command_line():
    out = subprocess.run(
        [sys.executable, "-m", "cl_ssl.reproduce", "--list", "--format=json", "--scale=cpu"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    items = json.loads(out.stdout)
    assert len(items) == 49
    imagenet = [i for i in items if i["table"] == "imagenet100_class"]
    assert imagenet and all(i["command"] is None for i in imagenet)  # no CPU variant
    assert "--config=configs/fashion_mnist.py:strategies" in items[0]["command"]


def test_readme_shows_the_reproduction_table():
    assert reproduce.reproduction_table() in README.read_text()


def test_dry_run_lists_seeds_outermost_and_jobs_file_skips_finished_runs(tmp_path):
    out = _execute(paper="ccl", seeds=(0, 1), workdir=str(tmp_path), dry_run=True, data_dir="D")
    lines = out.splitlines()
    assert [line.split("/")[-2:] for line in lines] == [
        ["finetune", "seed0"],
        ["simple_replay", "seed0"],
        ["ccl", "seed0"],
        ["finetune", "seed1"],
        ["simple_replay", "seed1"],
        ["ccl", "seed1"],
    ]
    assert all("--config.dataset.data_dir=D" in line for line in lines)
    _write_finished(_job("ccl", "imagenet_sub", "ccl", 1, tmp_path), "linear_best", 55.0)
    jobs_file = tmp_path / "jobs.txt"
    out = _execute(paper="ccl", seeds=(0, 1), workdir=str(tmp_path), jobs=str(jobs_file))
    assert out == f"wrote 5 of 6 commands to {jobs_file}\n"
    written = jobs_file.read_text().splitlines()
    assert written == [line.replace(" --config.dataset.data_dir=D", "") for line in lines[:5]]


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(paper="solo"), r"unknown paper 'solo'; choose --paper among \['cassle', 'ccl', "),
        (
            dict(paper="cassle", table="cifar10"),
            r"no table 'cifar10'; choose --table among \['cifar100_class', 'imagenet100_class'\]",
        ),
        (
            dict(paper="cassle", table="imagenet100_class", scale="cpu"),
            r"no --scale=cpu variant; choose --table among \['cifar100_class'\]",
        ),
        (dict(), "pass --paper"),
        (dict(list=True, paper="ccl"), "pass one of --list, --compare or --paper"),
    ],
)
def test_bad_selection_names_the_choices(options, message):
    with pytest.raises(ValueError, match=message):
        _execute(**options)


def test_a_workdir_of_another_config_is_refused_before_anything_runs(tmp_path):
    job = _job("ccl", "imagenet_sub", "finetune", 0, tmp_path)
    _write_finished(job, "linear_best", 50.0, epochs_per_task=7)
    with pytest.raises(ValueError, match=r"seed0 holds a run of another config .*epochs_per_task"):
        _execute(paper="ccl", seeds=(0,), workdir=str(tmp_path))
    with pytest.raises(ValueError, match=r"holds a run of another config .*epochs_per_task"):
        _execute(compare=str(tmp_path))


def test_run_starts_resumes_and_skips(tmp_path, monkeypatch):
    """One tiny real run in a process of its own; a workdir with checkpoints of the same config
    resumes, another's is refused, and a finished one is skipped."""
    (tmp_path / "data").mkdir()
    data = write_tiny_fashion_mnist(tmp_path / "data", train_per_class=4, test_per_class=2)
    run = reproduce_tables.Run(
        "tiny",
        "fine-tuning",
        "simclr",
        "configs/fashion_mnist.py:runlocal",
        (
            "--config.num_tasks=2",
            "--config.batch_size=8",
            "--config.eval.train_examples=20",
            "--config.eval.evaluators=knn",
            "--config.eval.knn.k=3",
            "--config.eval.plots=false",
            "--config.progress_bar=false",
        ),
    )
    row = reproduce_tables.Row("tiny", "final", "knn", 50.0, "test", "kNN")
    table = reproduce_tables.Table("t", "Tiny", "tiny", (run,), (row,))
    monkeypatch.setitem(
        reproduce_tables.PAPERS, "tiny", reproduce_tables.Paper("tiny", "", (table,))
    )
    options = dict(paper="tiny", seeds=(0,), workdir=str(tmp_path / "runs"), data_dir=str(data))
    (job,) = reproduce_runs.jobs(
        reproduce_tables.PAPERS["tiny"],
        [table],
        seeds=[0],
        root=options["workdir"],
        scale="paper",
        data_dir=str(data),
    )
    config = reproduce_runs.build_config(job.argv)
    folder = pathlib.Path(job.workdir)
    (folder / "checkpoints" / "3").mkdir(parents=True)
    (folder / "config.json").write_text(resolve_config(config).to_json())
    assert reproduce_runs.workdir_state(config, job.workdir) == "resume"
    (folder / "checkpoints" / "3").rmdir()  # nothing to resume from: the run starts afresh

    out = _execute(**options)
    assert out.startswith(f"[1/1] tiny/t tiny seed 0: {job.command}")
    assert reproduce_runs.workdir_state(config, job.workdir) == "finished"
    assert _execute(**options) == f"[1/1] tiny/t tiny seed 0: finished, skipped ({job.workdir})\n"
    config.epochs_per_task = 2
    with pytest.raises(ValueError, match="fields that differ: epochs_per_task"):
        reproduce_runs.workdir_state(config, job.workdir)


def test_compare_gives_mean_std_difference_and_verdicts(tmp_path):
    """Hand-made finished runs of CaSSLe's CIFAR-100 rows (online probe, final accuracy)."""
    finals = {
        "byol_finetune": {0: 52.0, 1: 53.0, 2: 54.0},  # paper 52.7
        "simclr_finetune": {0: 46.0, 1: 46.5, 2: 47.0},  # paper 48.9
        "byol_cassle": {0: 60.0, 1: 61.0},  # paper 62.2; seed 2 unfinished
    }
    for run, seeds in finals.items():
        for seed, final in seeds.items():
            _write_finished(_job("cassle", "cifar100_class", run, seed, tmp_path), "online", final)
    (tmp_path / "paper/cassle/cifar100_class/byol_cassle/seed2").mkdir()
    out = _execute(compare=str(tmp_path))
    lines = out.splitlines()
    # byol fine-tuning: mean 53, sample std 1, 53 - 52.7 = 0.3 <= max(1, 2 x 1): within.
    assert (
        "| cassle | cifar100_class | fine-tuning | byol | online final | 52.70 | 53.00 ± 1.00 | 0,1,2 | 0.30 | 1 | within |"
        in lines
    )
    # simclr fine-tuning: mean 46.5, std 0.5, 46.5 - 48.9 = -2.4 beyond max(1, 2 x 0.5): outside.
    assert (
        "| cassle | cifar100_class | fine-tuning | simclr | online final | 48.90 | 46.50 ± 0.50 | 0,1,2 | -2.40 | 1 | outside |"
        in lines
    )
    # byol CaSSLe: mean 60.5, std 0.71 over seeds 0 and 1, seed 2 missing.
    assert (
        "| cassle | cifar100_class | CaSSLe | byol | online final | 62.20 | 60.50 ± 0.71 | 0,1 | -1.70 | 1 | missing seeds 2 |"
        in lines
    )
    assert (
        "| cassle | cifar100_class | CaSSLe | simclr | online final | 58.30 | - | - | - | 1 | missing seeds 0, 1, 2 |"
        in lines
    )
    byol_cassle = tmp_path / "paper/cassle/cifar100_class/byol_cassle"
    assert (
        f"warning: cassle/cifar100_class byol_cassle: missing seeds 2 (no complete results.json "
        f"in {byol_cassle / 'seed2'})"
    ) in lines
    prefix = tmp_path / "comparison_paper"
    assert (prefix.with_suffix(".md")).read_text() in out
    rows = list(csv.DictReader(io.StringIO(prefix.with_suffix(".csv").read_text())))
    assert len(rows) == 12 and rows[0]["verdict"] == "within" and rows[0]["difference"] == "0.30"
    assert prefix.with_suffix(".png").stat().st_size > 0
    # Only the seeds asked for: seed 2 of byol fine-tuning is then not read.
    (result, *_) = reproduce_compare.compare_paper(str(tmp_path), seeds=[0, 1])
    assert (result.ours.mean, result.ours.std) == (52.5, pytest.approx(math.sqrt(0.5)))


def test_compare_cpu_prints_each_ordering_with_its_margin_over_the_spread(tmp_path):
    finals = {
        "finetune": {0: 50.0, 1: 51.0},
        "simple_replay": {0: 53.0, 1: 53.0},
        "ccl": {0: 53.0, 1: 54.0},
    }
    for run, seeds in finals.items():
        for seed, final in seeds.items():
            _write_finished(
                _job("ccl", "imagenet_sub", run, seed, tmp_path, "cpu"), "linear", final
            )
    out = _execute(compare=str(tmp_path), scale="cpu")
    lines = out.splitlines()
    # SimpleReplay - fine-tuning: 53 - 50.5 = 2.5 over the spread hypot(0, 0.71) = 0.71: holds.
    assert (
        "| ccl | imagenet_sub | SimpleReplay > fine-tuning (mocov2plus), final | 2.50 | 0.71 | 0,1 | holds |"
        in lines
    )
    # CCL - SimpleReplay: 53.5 - 53 = 0.5, under the spread 0.71.
    assert (
        "| ccl | imagenet_sub | CCL > SimpleReplay (mocov2plus), final | 0.50 | 0.71 | 0,1 | holds within spread |"
        in lines
    )
    assert (tmp_path / "comparison_cpu.png").exists()


def test_orderings_follow_the_papers_values_and_the_extra_ones():
    cassle, kaizen = (reproduce_tables.PAPERS[p].tables[0] for p in ("cassle", "kaizen"))
    assert reproduce_compare.orderings(cassle)[0] == reproduce_tables.Ordering(
        "byol_cassle", "byol_finetune", "final"
    )
    checks = reproduce_compare.orderings(kaizen)
    # Per objective and metric, No Distill < CaSSLe < Kaizen, and Kaizen forgets less.
    assert len(checks) == 4 * 2 * 2 + 4
    assert reproduce_tables.Ordering("simclr_kaizen", "simclr_cassle", "aia") in checks
    assert checks[-1] == reproduce_tables.Ordering(
        "vicreg_kaizen", "vicreg_no_distill", "forgetting", lower_is_better=True
    )


def test_compare_without_runs_says_where_it_looked(tmp_path):
    with pytest.raises(ValueError, match=r"no runs under .*/paper/<paper>/<table>/<run>/seed<S>"):
        _execute(compare=str(tmp_path))
