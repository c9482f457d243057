"""What a run reports: each evaluated row on the console, with the run's name and the mean of the
tasks seen; the Weights & Biases settings of a run."""

import types

import numpy as np
import pytest
from helpers import tiny_config

from cl_ssl import results, summarize


def _plan_of_three_tasks(**overrides):
    """What _Results and the logging read of a Plan: 3 class-incremental SimCLR + CaSSLe tasks of
    10 test images each on mock CIFAR-10, of 1, 2 and 3 classes."""
    return types.SimpleNamespace(
        config=tiny_config(**{"eval.plots": False, **overrides}),
        test=types.SimpleNamespace(labels=np.array([0] * 10 + [1, 2] * 5 + [3, 4, 5, 3, 4] * 2)),
        stages=(None, None, None),
        scenario=types.SimpleNamespace(
            kind="class_incremental", num_tasks=3, test_indices=tuple(np.arange(30).reshape(3, 10))
        ),
        objective=types.SimpleNamespace(name="simclr"),
        strategy=types.SimpleNamespace(name="cassle", classify=None),
        mesh=types.SimpleNamespace(size=1),
    )


def test_each_evaluated_row_is_printed_with_the_run_and_the_mean_of_the_tasks_seen(
    tmp_path, capsys
):
    run = results.RunResults(_plan_of_three_tasks(), str(tmp_path), None)
    rows = {"linear": np.array([80.0, 60.0, 10.0]), "knn": np.array([70.0, 50.0, 30.0])}
    run.record(2, rows, step=7)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        "after stage 2/3 (cifar10, class-incremental (3 tasks), simclr, cassle, seed 0), "
        "accuracy (%) per task:"
    )
    assert out[1].split() == "linear: 80.0 60.0 10.0 | mean of tasks 1-2 70.00".split()
    assert out[2].split() == "knn: 70.0 50.0 30.0 | mean of tasks 1-2 60.00".split()
    run.record(0, rows, step=0)
    assert "mean of all tasks 50.00" in capsys.readouterr().out


def test_weights_and_biases_is_off_by_default_and_resumes_into_the_same_run(tmp_path):
    assert results.wandb_init(_plan_of_three_tasks(), str(tmp_path)) is None
    plan = _plan_of_three_tasks(**{"wandb.project": "cl", "wandb.mode": "offline"})
    init = results.wandb_init(plan, str(tmp_path / "run"))
    assert init == results.wandb_init(plan, str(tmp_path / "run"))  # the same id on resume
    assert init["id"] != results.wandb_init(plan, str(tmp_path / "other"))["id"]
    assert (init["project"], init["mode"], init["entity"], init["resume"], init["reinit"]) == (
        "cl",
        "offline",
        None,
        "allow",
        "create_new",  # a run beside those open: one per replica of --config.seeds
    )
    assert init["name"] == "cifar10, class-incremental (3 tasks), simclr, cassle, seed 0"
    assert init["config"]["batch_size"] == plan.config.batch_size


def test_heads_trained_with_the_backbone_report_nothing_that_reads_row_zero(tmp_path):
    """Row 0 of the online probe's and a strategy's classifier's matrices (and of their task-aware
    and top-5 scores) is the untrained head: no forward transfer or random-init accuracy from it;
    the offline probes' matrices keep both, and summarize reports no gain without them."""
    plan = _plan_of_three_tasks(**{"eval.online": True, "eval.task_aware": True, "eval.top5": True})
    plan.strategy.classify = lambda *args: None
    run = results.RunResults(plan, str(tmp_path), None)
    R = np.arange(12, dtype=float).reshape(4, 3)
    run.matrices = dict.fromkeys(run.matrices, R)
    summaries = run.summaries()
    heads = {"online", "classifier", "online_task_aware", "classifier_task_aware"}
    heads |= {"online_top5", "classifier_top5"}
    assert heads < set(summaries) and {"knn", "knn_task_aware", "knn_top5"} < set(summaries)
    for name, summary in summaries.items():
        reads_row_zero = {"forward_transfer", "random_init_accuracy"} & set(summary)
        assert len(reads_row_zero) == (0 if name in heads else 2), name
        assert np.isnan(summarize.figures(summary)["gain"]) == (name in heads), name


def test_probes_of_the_seen_or_current_tasks_report_no_forward_transfer(tmp_path):
    """With ``eval.probe_data`` other than 'all', row 0's probe trained on the first task's pool,
    row i-1's on another: forward transfer, which subtracts one from the other, is not reported."""
    for data, reported in (("all", True), ("seen", False), ("current", False)):
        run = results.RunResults(
            _plan_of_three_tasks(**{"eval.probe_data": data}), str(tmp_path), None
        )
        run.matrices = dict.fromkeys(run.matrices, np.arange(12, dtype=float).reshape(4, 3))
        for summary in run.summaries().values():
            assert ("forward_transfer" in summary) == reported, data
            assert "random_init_accuracy" in summary


def test_an_offline_run_reports_its_final_accuracy_under_the_continual_runs_key(tmp_path):
    """The offline run's one trained row: its sample-weighted accuracy is 'final_accuracy', as a
    continual run's, so that TensorBoard's summary and ``summarize`` read one key."""
    plan = _plan_of_three_tasks()
    plan.stages = (None,)  # one stage trains every task
    plan.scenario.test_indices = (np.arange(10), np.arange(30) % 30, np.arange(60) % 30)
    written = {}
    writer = types.SimpleNamespace(
        scalar=lambda tag, value, step: written.update({tag: value}),
        hparams=lambda config, values: None,
    )
    run = results.RunResults(plan, str(tmp_path), writer)
    run.matrices = dict.fromkeys(run.matrices, np.array([[10.0, 20.0, 30.0], [60.0, 70.0, 80.0]]))
    summary = run.summaries()["linear"]
    # (600 + 2100 + 4800) / 100
    assert summary["final_accuracy"] == summary["final_overall_accuracy"] == 75.0
    assert summary["final_average_accuracy"] == 70.0
    run._write_summaries(run.summaries(), step=5)
    assert written["summary/linear/final_accuracy"] == 75.0
    assert summarize.figures(summary)["final"] == 75.0


@pytest.mark.parametrize(
    "avg, final, aia",
    [
        # final row (40, 50, 60), rows 1-3 as below; tasks of 10 images each, of 1, 2, 3 classes
        ("sample", 50.0, (10.0 + 30.0 + 50.0) / 3),  # equal task sizes: the task mean
        ("task", 50.0, (10.0 + 30.0 + 50.0) / 3),
        # class-weighted: row 1: 10; row 2: (20 + 2 * 40) / 3; row 3: (40 + 2 * 50 + 3 * 60) / 6
        ("class", 320.0 / 6, (10.0 + 100.0 / 3 + 320.0 / 6) / 3),
    ],
)
def test_eval_avg_weights_the_headline_accuracies(tmp_path, avg, final, aia):
    run = results.RunResults(_plan_of_three_tasks(**{"eval.avg": avg}), str(tmp_path), None)
    R = np.array([[5.0, 5.0, 5.0], [10.0, 0.0, 0.0], [20.0, 40.0, 0.0], [40.0, 50.0, 60.0]])
    run.matrices = {"knn": R}
    summary = run.summaries()["knn"]
    assert summary["avg"] == avg
    assert summary["final_accuracy"] == pytest.approx(final)
    assert summary["average_incremental_accuracy"] == pytest.approx(aia)
    assert summary["final_accuracy_class_weighted"] == pytest.approx(320.0 / 6)
    assert summary["final_accuracy_task_mean"] == pytest.approx(50.0)
