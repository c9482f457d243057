"""python -m cl_ssl.summarize: runs grouped by config minus the seed, mean and std over seeds
against hand-computed values, incomplete runs skipped, markdown and CSV from the command line."""

import csv
import io
import subprocess
import sys

import pytest
from helpers import tiny_config, write_finished_run

from cl_ssl import summarize


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """finetune seeds 0 and 1 (final rows averaging 75 and 79 over the test images), cassle seed 0
    (81), and a cassle seed 1 whose last row is not evaluated yet."""
    root = tmp_path_factory.mktemp("runs")
    finetune = [72.0, 74.0, 76.0, 78.0, 80.0]  # final 75.00 (the first task has 4,000 images)
    write_finished_run(root / "finetune_0", tiny_config(seed=0), finetune)
    write_finished_run(root / "finetune_1", tiny_config(seed=1), [v + 4 for v in finetune])
    write_finished_run(
        root / "cassle_0", tiny_config(strategy="cassle", seed=0), [v + 6 for v in finetune]
    )
    write_finished_run(
        root / "cassle_1", tiny_config(strategy="cassle", seed=1), finetune, rows_evaluated=5
    )
    return root


def test_groups_seeds_and_aggregates_by_hand(runs):
    markdown, csv_text, skipped = summarize.summarize_runs(
        [str(runs / name) for name in ("finetune_0", "cassle_0", "finetune_1", "cassle_1")]
    )
    assert skipped == [str(runs / "cassle_1")]
    rows = {row["strategy"]: row for row in csv.DictReader(io.StringIO(csv_text))}
    assert set(rows) == {"finetune", "cassle"}
    finetune, cassle = rows["finetune"], rows["cassle"]
    assert (finetune["seeds"], finetune["evaluator"], finetune["objective"]) == (
        "0,1",
        "linear",
        "simclr",
    )
    # final 75 and 79: mean 77, sample std sqrt(8); gain over the random network's 60.
    assert float(finetune["final_mean"]) == pytest.approx(77.0)
    assert float(finetune["final_std"]) == pytest.approx(8**0.5, abs=1e-4)
    assert float(finetune["gain_mean"]) == pytest.approx(17.0)
    # forgetting (max_prev): mean over the first 4 tasks of 70 - final; -5 and -9.
    assert float(finetune["forgetting_mean"]) == pytest.approx(-7.0)
    assert float(cassle["final_mean"]) == pytest.approx(81.0) and cassle["final_std"] == ""
    assert "| simclr | finetune | linear | 0,1 | 77.00 ± 2.83 | 17.00 ± 2.83 |" in markdown
    assert "| simclr | cassle | linear | 0 | 81.00 ± n/a |" in markdown


def test_a_config_difference_besides_the_seed_names_the_rows(runs, tmp_path):
    write_finished_run(tmp_path / "long", tiny_config(seed=0, epochs_per_task=3), [80.0] * 5)
    fields, rows = summarize.table(
        summarize.group_by_config(
            [
                summarize.load_run(str(runs / "finetune_0")),
                summarize.load_run(str(tmp_path / "long")),
            ]
        )
    )
    assert fields == ["objective", "strategy", "epochs_per_task"]
    assert [row["epochs_per_task"] for row in rows] == [2, 3]


def test_command_line_reads_globs_and_writes_markdown_and_csv(runs, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cl_ssl.summarize",
            str(runs / "*"),
            f"--output={tmp_path / 'summary'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert f"skipped {runs / 'cassle_1'}" in out.stdout
    assert (tmp_path / "summary.md").read_text() in out.stdout
    assert "final_mean" in (tmp_path / "summary.csv").read_text()
    with pytest.raises(ValueError, match="holds a finished run"):
        summarize.summarize_runs([str(tmp_path / "nothing_here")])
