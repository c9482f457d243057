"""python -m cl_ssl.rescore: a saved run's task-boundary checkpoints scored again, equal to the
run's own matrices with its settings, with another protocol, and refused beyond the evaluation."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import tiny_config

from cl_ssl import parallel, rescore


@pytest.fixture
def saved_run(finished_run, tmp_path):
    """A copy of the shared two-task finetune run (so that re-evaluating it takes its lock and
    writes next to it without touching the shared one): (its result, the copy's workdir)."""
    result, workdir = finished_run(tiny_config())
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    return result, copy


def test_reevaluation_reproduces_the_runs_own_matrices_then_scores_another_protocol(saved_run):
    result, workdir = saved_run
    config = rescore.stored_config(str(workdir))
    same = rescore.reevaluate(config, str(workdir), "same", mesh=parallel.make_mesh(1))
    assert set(same) == set(result["matrices"])
    for name, R in result["matrices"].items():
        np.testing.assert_array_equal(same[name], R)
    saved = json.loads((workdir / "eval_same" / "results.json").read_text())
    np.testing.assert_array_equal(saved["matrices"]["knn"], result["matrices"]["knn"])

    config.eval.update(probe_data="current", task_aware=True, evaluators=("knn",))
    other = rescore.reevaluate(config, str(workdir), "current", mesh=parallel.make_mesh(1))
    assert set(other) == {"knn", "knn_task_aware"}
    assert not np.array_equal(other["knn"], result["matrices"]["knn"])  # other probe data
    assert (
        json.loads((workdir / "eval_current" / "results.json").read_text())["meta"]["config"][
            "eval"
        ]["probe_data"]
        == "current"
    )


def test_reevaluation_refuses_changes_beyond_the_evaluation(saved_run):
    _, workdir = saved_run
    config = rescore.stored_config(str(workdir))
    config.epochs_per_task = 3
    with pytest.raises(ValueError, match=r"epochs_per_task differ .* --config.eval.\* fields only"):
        rescore.reevaluate(config, str(workdir), "x")
    assert not (workdir / "eval_x").exists()


def test_reevaluation_command_line(saved_run):
    _, workdir = saved_run
    out = subprocess.run(
        [sys.executable, "-m", "cl_ssl.rescore", f"--workdir={workdir}", "--config.num_tasks=5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "num_tasks differ" in out.stderr
    with pytest.raises(ValueError, match="config.json not found"):
        rescore.stored_config(str(workdir / "nothing"))
    assert rescore.default_name(["--config.eval.probe_data=seen", "--config.eval.knn.k=5"]) == (
        "probe_data-seen_knn.k-5"
    )
