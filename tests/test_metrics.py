"""Metrics of cl_ssl.evaluation.metrics against matrices and results computed by hand."""

import math

import numpy as np
import pytest

from cl_ssl.evaluation import metrics

# Hand-written 3-task matrix, percent. Row 0 = random-init baseline b, row i = after training task i.
#   task:            1     2     3
R = np.array(
    [
        [10.0, 12.0, 14.0],  # random init
        [
            60.0,
            85.0,
            20.0,
        ],  # after task 1 (R[1, 2] = 85 is before task 2 is trained: must not enter forgetting)
        [65.0, 70.0, 40.0],  # after task 2 (task 1 peaks here, after its own training)
        [55.0, 80.0, 75.0],  # after task 3 (task 2 rises at the end)
    ]
)
TASK_SIZES = np.array([100, 300, 600])  # n_j, unequal
CLASS_COUNTS = np.array([2, 3, 5])  # C_j


def test_final_accuracies():
    # ACC = (55 + 80 + 75) / 3 = 210 / 3 = 70
    assert metrics.final_average_accuracy(R) == pytest.approx(70.0)
    # A = (100*55 + 300*80 + 600*75) / 1000 = (5500 + 24000 + 45000) / 1000 = 74.5
    assert metrics.final_overall_accuracy(R, TASK_SIZES) == pytest.approx(74.5)
    # class-weighted = (2*55 + 3*80 + 5*75) / 10 = (110 + 240 + 375) / 10 = 72.5
    assert metrics.final_overall_accuracy(R, CLASS_COUNTS) == pytest.approx(72.5)
    # equal task sizes give the task mean
    assert metrics.final_overall_accuracy(R, [7, 7, 7]) == pytest.approx(70.0)


def test_accuracy_after_each_task_and_aia():
    # sample-weighted A-bar_k:
    #   k=1: 60
    #   k=2: (100*65 + 300*70) / 400 = (6500 + 21000) / 400 = 68.75
    #   k=3: 74.5 (final overall accuracy)
    np.testing.assert_allclose(metrics.accuracy_after_each_task(R, TASK_SIZES), [60.0, 68.75, 74.5])
    # AIA = (60 + 68.75 + 74.5) / 3 = 203.25 / 3 = 67.75
    assert metrics.average_incremental_accuracy(R, TASK_SIZES) == pytest.approx(67.75)
    # without the first step: (68.75 + 74.5) / 2 = 71.625
    assert metrics.average_incremental_accuracy(
        R, TASK_SIZES, include_first=False
    ) == pytest.approx(71.625)
    # task mean A_k: 60, (65 + 70) / 2 = 67.5, 70  ->  AIA = 197.5 / 3 = 65.8333...
    np.testing.assert_allclose(metrics.accuracy_after_each_task(R), [60.0, 67.5, 70.0])
    assert metrics.average_incremental_accuracy(R) == pytest.approx(197.5 / 3)


def test_lower_triangle_accuracy():
    # (60 + 65 + 70 + 55 + 80 + 75) / 6 = 405 / 6 = 67.5
    assert metrics.lower_triangle_accuracy(R) == pytest.approx(67.5)


def test_forgetting_variants_differ():
    # task 1, column (b, 60, 65, 55):
    #   max_prev: max(R[1,1], R[2,1]) - R[3,1] = 65 - 55 = 10
    #   max_all:  max(60, 65, 55) - 55 = 10
    #   first:    R[1,1] - R[3,1] = 60 - 55 = 5
    # task 2, column (b, 85, 70, 80); R[1,2] = 85 comes before task 2 and is ignored:
    #   max_prev: R[2,2] - R[3,2] = 70 - 80 = -10
    #   max_all:  max(70, 80) - 80 = 0
    #   first:    70 - 80 = -10
    # F_3 = mean over tasks 1..2: max_prev (10 - 10)/2 = 0, max_all (10 + 0)/2 = 5, first (5 - 10)/2 = -2.5
    assert metrics.forgetting(R) == pytest.approx(0.0)
    assert metrics.forgetting(R, "max_prev") == pytest.approx(0.0)
    assert metrics.forgetting(R, "max_all") == pytest.approx(5.0)
    assert metrics.forgetting(R, "first") == pytest.approx(-2.5)
    # From row 1 on, task 2's column takes R[1,2] = 85 too:
    #   max_prev_from_row1: max(85, 70) - 80 = 5;  max_all_from_row1: max(85, 70, 80) - 80 = 5
    # task 1 as above (its column starts at row 1): F_3 = (10 + 5) / 2 = 7.5 for both
    assert metrics.forgetting(R, "max_prev_from_row1") == pytest.approx(7.5)
    assert metrics.forgetting(R, "max_all_from_row1") == pytest.approx(7.5)
    # They differ where every earlier row is below the final one: task 1 rising from 10 to 30
    rising = np.array([[0.0, 0.0], [10.0, 5.0], [30.0, 5.0]])
    assert metrics.forgetting(rising, "max_prev_from_row1") == pytest.approx(-20.0)
    assert metrics.forgetting(rising, "max_all_from_row1") == pytest.approx(0.0)


def test_backward_and_forward_transfer_with_both_norms():
    # BWT: (R[3,1] - R[1,1]) + (R[3,2] - R[2,2]) = (55 - 60) + (80 - 70) = 5;  /(T-1) = 2.5, /T = 5/3
    assert metrics.backward_transfer(R) == pytest.approx(2.5)
    assert metrics.backward_transfer(R, norm="T") == pytest.approx(5.0 / 3.0)
    # "first" forgetting is minus the paper BWT
    assert metrics.forgetting(R, "first") == pytest.approx(-metrics.backward_transfer(R))
    # FWT: (R[1,2] - b_2) + (R[2,3] - b_3) = (85 - 12) + (40 - 14) = 73 + 26 = 99;  /(T-1) = 49.5, /T = 33
    assert metrics.forward_transfer(R) == pytest.approx(49.5)
    assert metrics.forward_transfer(R, norm="T") == pytest.approx(33.0)
    # GEM code value = (T-1)/T * paper value
    assert metrics.backward_transfer(R, "T") == pytest.approx(
        2 / 3 * metrics.backward_transfer(R, "T-1")
    )


def test_row_zero_only_enters_forward_transfer_and_random_init_accuracy():
    shifted = R.copy()
    shifted[0] = [100.0, 100.0, 100.0]
    base = metrics.summarize(R, task_sizes=TASK_SIZES)
    other = metrics.summarize(shifted, task_sizes=TASK_SIZES)
    changed = {key for key in base if base[key] != other[key]}
    assert changed == {"forward_transfer", "random_init_accuracy"}


def test_summarize_headline_and_variant_names():
    summary = metrics.summarize(
        R,
        task_sizes=TASK_SIZES,
        class_counts=CLASS_COUNTS,
        forgetting_variant="max_all",
        bwt_norm="T",
    )
    assert summary["num_tasks"] == 3
    assert summary["accuracy_unit"] == "percent"
    assert (summary["avg"], summary["forgetting_variant"], summary["bwt_norm"]) == (
        "sample",
        "max_all",
        "T",
    )
    assert summary["final_accuracy"] == pytest.approx(74.5)
    assert summary["final_accuracy_task_mean"] == pytest.approx(70.0)
    assert summary["final_accuracy_sample_weighted"] == pytest.approx(74.5)
    assert summary["final_accuracy_class_weighted"] == pytest.approx(72.5)
    assert summary["average_incremental_accuracy"] == pytest.approx(67.75)
    assert summary["average_incremental_accuracy_without_first"] == pytest.approx(71.625)
    assert summary["accuracy_after_each_task"] == pytest.approx([60.0, 68.75, 74.5])
    assert summary["lower_triangle_accuracy"] == pytest.approx(67.5)
    assert summary["forgetting"] == pytest.approx(5.0)
    assert summary["forgetting_max_prev"] == pytest.approx(0.0)
    assert summary["forgetting_max_all"] == pytest.approx(5.0)
    assert summary["forgetting_first"] == pytest.approx(-2.5)
    assert summary["backward_transfer"] == pytest.approx(5.0 / 3.0)
    assert summary["forward_transfer"] == pytest.approx(33.0)
    # random init, sample-weighted: (100*10 + 300*12 + 600*14) / 1000 = (1000 + 3600 + 8400) / 1000 = 13
    assert summary["random_init_accuracy"] == pytest.approx(13.0)


def test_summarize_task_and_class_averages():
    task = metrics.summarize(R, task_sizes=TASK_SIZES, avg="task")
    assert task["final_accuracy"] == pytest.approx(70.0)
    assert task["average_incremental_accuracy"] == pytest.approx(197.5 / 3)
    assert task["random_init_accuracy"] == pytest.approx(12.0)  # (10 + 12 + 14) / 3
    assert "final_accuracy_class_weighted" not in task
    by_class = metrics.summarize(R, task_sizes=TASK_SIZES, class_counts=CLASS_COUNTS, avg="class")
    # A-bar by class: 60, (2*65 + 3*70)/5 = 340/5 = 68, 72.5  ->  AIA = 200.5 / 3
    assert by_class["final_accuracy"] == pytest.approx(72.5)
    assert by_class["accuracy_after_each_task"] == pytest.approx([60.0, 68.0, 72.5])
    assert by_class["average_incremental_accuracy"] == pytest.approx(200.5 / 3)


def test_single_task_gives_nan_for_comparative_metrics():
    single = np.array([[10.0], [50.0]])
    summary = metrics.summarize(single, task_sizes=[20])
    assert summary["final_accuracy"] == 50.0
    assert summary["average_incremental_accuracy"] == 50.0
    for key in (
        "forgetting",
        "forgetting_max_prev",
        "forgetting_max_all",
        "forgetting_first",
        "backward_transfer",
        "forward_transfer",
        "average_incremental_accuracy_without_first",
    ):
        assert math.isnan(summary[key]), key
    assert math.isnan(metrics.backward_transfer(single, norm="T"))


def test_nan_entries_propagate():
    partial = R.copy()
    partial[3] = np.nan
    assert math.isnan(metrics.final_average_accuracy(partial))
    assert math.isnan(metrics.forgetting(partial))
    assert metrics.forward_transfer(partial) == pytest.approx(49.5)  # uses rows 0..2 only


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros(3), "2-D"),
        (np.zeros((3, 3)), r"\[T\+1, T\]"),
        (np.zeros((1, 0)), r"T >= 1"),
        (np.full((2, 1), 101.0), "percentages"),
        (np.full((2, 1), -1.0), "percentages"),
        (np.full((2, 1), np.inf), "infinite"),
    ],
)
def test_invalid_matrix(bad, message):
    with pytest.raises(ValueError, match=message):
        metrics.final_average_accuracy(bad)


def test_stage_matrices_only_pass_the_relaxed_check():
    offline = R[[0, 3]]  # [2, 3]: random init and one row after offline training
    np.testing.assert_array_equal(
        metrics.validate_accuracy_matrix(offline, one_row_per_task=False), offline
    )
    with pytest.raises(ValueError, match=r"\[T\+1, T\]"):
        metrics.validate_accuracy_matrix(offline)
    with pytest.raises(ValueError, match=r"\[T\+1, T\]"):
        metrics.forgetting(offline)
    with pytest.raises(ValueError, match=r"\[S\+1, T\]"):
        metrics.validate_accuracy_matrix(np.zeros((0, 3)), one_row_per_task=False)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="task_sizes"):
        metrics.final_overall_accuracy(R, [1, 2])
    with pytest.raises(ValueError, match="positive"):
        metrics.final_overall_accuracy(R, [1, 0, 2])
    with pytest.raises(ValueError, match="forgetting variant"):
        metrics.forgetting(R, "max")
    with pytest.raises(ValueError, match="norm"):
        metrics.backward_transfer(R, norm="T+1")
    with pytest.raises(ValueError, match="norm"):
        metrics.forward_transfer(R, norm="t")
    with pytest.raises(ValueError, match="class_counts"):
        metrics.summarize(R, task_sizes=TASK_SIZES, avg="class")
    with pytest.raises(ValueError, match="avg"):
        metrics.summarize(R, task_sizes=TASK_SIZES, avg="mean")
    with pytest.raises(ValueError, match="bwt_norm"):
        metrics.summarize(R, task_sizes=TASK_SIZES, bwt_norm="T-2")


def test_aggregate_seeds():
    shifted = R.copy()
    shifted[3] += 2.0  # last row (57, 82, 77)
    first = metrics.summarize(R, task_sizes=TASK_SIZES)
    second = metrics.summarize(shifted, task_sizes=TASK_SIZES)
    aggregated = metrics.aggregate_seeds([first, second])
    assert aggregated["num_seeds"] == 2
    assert (aggregated["num_tasks"], aggregated["forgetting_variant"], aggregated["bwt_norm"]) == (
        3,
        "max_prev",
        "T-1",
    )
    # final accuracy 74.5 and 76.5: mean 75.5, sample std sqrt((1 + 1) / 1) = sqrt(2)
    assert aggregated["final_accuracy"]["mean"] == pytest.approx(75.5)
    assert aggregated["final_accuracy"]["std"] == pytest.approx(math.sqrt(2.0))
    # forgetting max_prev: 0 and ((65 - 57) + (70 - 82)) / 2 = -2  ->  mean -1, std sqrt(2)
    assert aggregated["forgetting"]["mean"] == pytest.approx(-1.0)
    assert aggregated["forgetting"]["std"] == pytest.approx(math.sqrt(2.0))
    # element-wise over the per-step list: only step 3 changes
    assert aggregated["accuracy_after_each_task"]["mean"] == pytest.approx([60.0, 68.75, 75.5])
    assert aggregated["accuracy_after_each_task"]["std"] == pytest.approx(
        [0.0, 0.0, math.sqrt(2.0)]
    )
    # population std on request: sqrt((1 + 1) / 2) = 1
    assert metrics.aggregate_seeds([first, second], ddof=0)["final_accuracy"][
        "std"
    ] == pytest.approx(1.0)


def test_aggregate_seeds_single_seed_and_errors():
    summary = metrics.summarize(R, task_sizes=TASK_SIZES)
    single = metrics.aggregate_seeds([summary])
    assert single["final_accuracy"]["mean"] == pytest.approx(74.5)
    assert math.isnan(single["final_accuracy"]["std"])
    with pytest.raises(ValueError, match="at least one"):
        metrics.aggregate_seeds([])
    with pytest.raises(ValueError, match="differs"):
        metrics.aggregate_seeds(
            [summary, metrics.summarize(R, task_sizes=TASK_SIZES, bwt_norm="T")]
        )
    with pytest.raises(ValueError, match="keys"):
        metrics.aggregate_seeds([summary, {**summary, "extra": 1.0}])
