"""Continual-learning metrics computed from an accuracy matrix.

Accuracy, backward and forward transfer follow GEM (Lopez-Paz and Ranzato, NeurIPS 2017),
forgetting follows Chaudhry et al. (ECCV 2018), average incremental accuracy iCaRL (Rebuffi et
al., CVPR 2017); each function names the variants it offers.

All accuracies are in **percent** (0-100), never fractions, on input and on output.

The accuracy matrix ``R`` of one evaluator is a float array of shape ``[T + 1, T]``:

- row 0 holds the random-initialisation baseline ``b_j`` (GEM's b, computed as CaSSLe
  does, DonkeyShot21/cassle#11);
- row ``i`` (``i = 1..T``) holds the accuracy on the test data of each task ``j`` after training task ``i``.

In the docstrings tasks are numbered ``1..T`` as in GEM, so ``R[i, j]`` with 1-based ``j`` is the
array element ``R[i, j - 1]``; rows need no shift because row 0 is the baseline.

NaN entries are allowed (a matrix that is being filled during a run) and propagate to every metric that reads
them. Metrics that compare tasks with earlier tasks (forgetting, backward and forward transfer, AIA without
the first step) are undefined for ``T = 1`` and are returned as NaN, not 0, so that a single-task run is never
reported as "no forgetting".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

FORGETTING_VARIANTS = ("max_prev", "max_all", "first", "max_prev_from_row1", "max_all_from_row1")
TRANSFER_NORMS = ("T-1", "T")
AVERAGES = ("task", "sample", "class")


def validate_accuracy_matrix(R: Any, *, one_row_per_task: bool = True) -> np.ndarray:
    """Checks an accuracy matrix and returns it as a float64 array.

    With ``one_row_per_task=True`` (what every metric requires) the shape must be ``[T + 1, T]``. With
    ``False`` any ``[S + 1, T]`` is accepted: row 0 and ``S >= 0`` rows after training stages that need not
    be tasks (an offline run trained once on all tasks has ``S = 1``).

    Raises:
      ValueError: on a shape other than the above (``T >= 1``), an infinite value, or a finite value outside
        ``[0, 100]`` (accuracies are percentages). NaN entries are accepted.
    """
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2:
        raise ValueError(
            f"accuracy matrix must be 2-D [T+1, T], got {R.ndim}-D with shape {R.shape}"
        )
    num_rows, num_tasks = R.shape
    if num_tasks < 1 or num_rows < 1 or (one_row_per_task and num_rows != num_tasks + 1):
        expected = "[T+1, T]" if one_row_per_task else "[S+1, T]"
        raise ValueError(
            f"accuracy matrix must have shape {expected} with T >= 1 (row 0 = random-init baseline), got {R.shape}"
        )
    if np.isinf(R).any():
        raise ValueError("accuracy matrix holds an infinite value")
    finite = R[np.isfinite(R)]
    if finite.size and (finite.min() < 0.0 or finite.max() > 100.0):
        raise ValueError(
            f"accuracies must be percentages in [0, 100], got values in [{finite.min()}, {finite.max()}]"
        )
    return R


def _validate_sizes(sizes: Any, num_tasks: int, name: str) -> np.ndarray:
    sizes = np.asarray(sizes, dtype=np.float64)
    if sizes.shape != (num_tasks,):
        raise ValueError(f"{name} must have shape [T] = [{num_tasks}], got {sizes.shape}")
    if not np.all(np.isfinite(sizes)) or np.any(sizes <= 0):
        raise ValueError(f"{name} must be finite and positive, got {sizes.tolist()}")
    return sizes


def task_weights(avg: str, task_sizes: Any, class_counts: Any = None) -> np.ndarray:
    """float64 [T]: each task's weight in the ``avg`` averages (``AVERAGES``): 1 (``"task"``),
    its test-sample count n_j (``"sample"``, ``task_sizes``) or its class count C_j (``"class"``,
    ``class_counts``)."""
    _check_choice(avg, AVERAGES, "avg")
    sizes = np.asarray(task_sizes, np.float64)
    if avg == "class" and class_counts is None:
        raise ValueError('avg="class" needs class_counts')
    if avg == "class":
        return np.asarray(class_counts, np.float64)
    return sizes if avg == "sample" else np.ones_like(sizes)


def _check_choice(value: str, allowed: Sequence[str], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def final_average_accuracy(R: Any) -> float:
    """Task mean of the last row: ``ACC = (1/T) sum_j R[T, j]`` (percent; GEM "ACC")."""
    R = validate_accuracy_matrix(R)
    return float(np.mean(R[-1]))


def final_overall_accuracy(R: Any, task_sizes: Any) -> float:
    """Weighted mean of the last row: ``A = sum_j n_j R[T, j] / sum_j n_j`` (percent; CaSSLe "A").

    Args:
      R: accuracy matrix ``[T + 1, T]`` in percent.
      task_sizes: ``[T]`` positive weights. Test-sample counts ``n_j`` give the sample-weighted (whole test set)
        accuracy; class counts ``C_j`` give the class-weighted accuracy (FACIL ``wavg_accs``).
    """
    R = validate_accuracy_matrix(R)
    sizes = _validate_sizes(task_sizes, R.shape[1], "task_sizes")
    return float(np.sum(sizes * R[-1]) / np.sum(sizes))


def accuracy_after_each_task(R: Any, task_sizes: Any = None) -> np.ndarray:
    """Accuracy on the tasks seen so far, after each task: float64 ``[T]`` in percent.

    Entry ``k - 1`` is ``A-bar_k = sum_{j<=k} w_j R[k, j] / sum_{j<=k} w_j``. With ``task_sizes=None`` the
    weights are equal (Chaudhry et al. ``A_k``, task mean); with test-sample counts it is the sample-weighted
    accuracy on all classes seen up to ``k`` (iCaRL); with class counts it is class-weighted.
    """
    R = validate_accuracy_matrix(R)
    num_tasks = R.shape[1]
    sizes = (
        np.ones(num_tasks)
        if task_sizes is None
        else _validate_sizes(task_sizes, num_tasks, "task_sizes")
    )
    return np.array(
        [np.sum(sizes[:k] * R[k, :k]) / np.sum(sizes[:k]) for k in range(1, num_tasks + 1)],
        dtype=np.float64,
    )


def average_incremental_accuracy(
    R: Any, task_sizes: Any = None, *, include_first: bool = True
) -> float:
    """Average incremental accuracy ``AIA = (1/T) sum_{k=1}^{T} A-bar_k`` in percent (iCaRL).

    ``A-bar_k`` is :func:`accuracy_after_each_task` (weighted by ``task_sizes``, task mean if ``None``).
    ``include_first=False`` averages over ``k = 2..T`` only (Genifer ``avg_inc_accuracy``); NaN for ``T = 1``.
    """
    per_step = accuracy_after_each_task(R, task_sizes)
    if not include_first:
        per_step = per_step[1:]
    return float(np.mean(per_step)) if per_step.size else float("nan")


def lower_triangle_accuracy(R: Any) -> float:
    """Mean of ``R[i, j]`` over ``1 <= j <= i <= T`` (Diaz-Rodriguez et al. 2018; percent)."""
    R = validate_accuracy_matrix(R)
    return float(np.mean(R[1:][np.tril_indices(R.shape[1])]))


def forgetting(R: Any, variant: str = "max_prev") -> float:
    """Final forgetting ``F_T = (1/(T-1)) sum_{j=1}^{T-1} f_j^T`` in percent points.

    Chaudhry et al., ECCV 2018.

    Variants of the per-task forgetting ``f_j^T``:

    - ``"max_prev"``: ``max_{l in j..T-1} R[l, j] - R[T, j]`` (FACIL; may be negative);
    - ``"max_all"``: ``max_{l in j..T} R[l, j] - R[T, j]`` (Mammoth; never negative);
    - ``"first"``: ``R[j, j] - R[T, j]`` (Avalanche; equals minus the per-task backward transfer);
    - ``"max_prev_from_row1"``, ``"max_all_from_row1"``: the max over rows from 1 on, before task
      j was trained too: l in 1..T-1 (Chaudhry et al.'s range as written) and l in 1..T, the two
      readings of CaSSLe's F (Fini et al., CVPR 2022). Where rows before task j score 0
      on it (supervised class-incremental learning) they equal ``max_prev`` and ``max_all``; an
      all-class probe scores every task from the first row, so in every scenario they can differ.

    Returns NaN for ``T = 1``.
    """
    _check_choice(variant, FORGETTING_VARIANTS, "forgetting variant")
    R = validate_accuracy_matrix(R)
    num_tasks = R.shape[1]
    if num_tasks == 1:
        return float("nan")
    last = num_tasks if variant.startswith("max_all") else num_tasks - 1
    per_task = []
    for j in range(1, num_tasks):
        column = R[:, j - 1]
        start = 1 if variant.endswith("from_row1") else j
        reference = column[j] if variant == "first" else np.max(column[start : last + 1])
        per_task.append(reference - column[num_tasks])
    return float(np.mean(per_task))


def _transfer_denominator(num_tasks: int, norm: str) -> int:
    _check_choice(norm, TRANSFER_NORMS, "norm")
    return num_tasks - 1 if norm == "T-1" else num_tasks


def backward_transfer(R: Any, norm: str = "T-1") -> float:
    """GEM backward transfer ``sum_{i=1}^{T-1} (R[T, i] - R[i, i]) / D`` in percent points.

    Lopez-Paz and Ranzato, NeurIPS 2017; reference code ``facebookresearch/GradientEpisodicMemory``
    ``metrics/metrics.py``.

    ``norm="T-1"``: ``D = T - 1`` (paper, Mammoth). ``norm="T"``: ``D = T`` (GEM reference code, which keeps
    the zero entry of the last task in the mean), i.e. ``(T-1)/T`` times the paper value. NaN for ``T = 1``.
    """
    R = validate_accuracy_matrix(R)
    num_tasks = R.shape[1]
    denominator = _transfer_denominator(num_tasks, norm)
    if num_tasks == 1:
        return float("nan")
    diagonal = np.diagonal(R[1:])
    return float(np.sum(R[-1, :-1] - diagonal[:-1]) / denominator)


def forward_transfer(R: Any, norm: str = "T-1") -> float:
    """GEM forward transfer ``sum_{i=2}^{T} (R[i-1, i] - b_i) / D`` in percent points.

    Lopez-Paz and Ranzato, NeurIPS 2017; reference code ``facebookresearch/GradientEpisodicMemory``
    ``metrics/metrics.py``.

    ``b_i = R[0, i]`` is the random-initialisation baseline. ``norm`` as in :func:`backward_transfer`.
    NaN for ``T = 1``.
    """
    R = validate_accuracy_matrix(R)
    num_tasks = R.shape[1]
    denominator = _transfer_denominator(num_tasks, norm)
    if num_tasks == 1:
        return float("nan")
    before_training = np.array([R[i - 1, i - 1] for i in range(2, num_tasks + 1)])
    return float(np.sum(before_training - R[0, 1:]) / denominator)


def summarize(
    R: Any,
    *,
    task_sizes: Any,
    class_counts: Any = None,
    avg: str = "sample",
    forgetting_variant: str = "max_prev",
    bwt_norm: str = "T-1",
) -> dict[str, Any]:
    """All metrics of one accuracy matrix, with the variant names, as a JSON-serialisable dict.

    Args:
      R: accuracy matrix ``[T + 1, T]`` in percent (row 0 = random-init baseline).
      task_sizes: ``[T]`` test-sample counts ``n_j``.
      class_counts: optional ``[T]`` class counts ``C_j``; required for ``avg="class"`` and for the
        ``final_accuracy_class_weighted`` entry.
      avg: weighting of the headline accuracies ``final_accuracy``, ``average_incremental_accuracy``,
        ``accuracy_after_each_task`` and ``random_init_accuracy``: ``"task"`` (equal), ``"sample"`` (``n_j``) or
        ``"class"`` (``C_j``).
      forgetting_variant: variant of the headline ``forgetting`` (see :func:`forgetting`).
      bwt_norm: denominator of ``backward_transfer`` and ``forward_transfer``, ``"T-1"`` or ``"T"``.

    Returns:
      A dict of Python floats (percent or percent points), a list for ``accuracy_after_each_task``, the int
      ``num_tasks`` and the strings ``accuracy_unit``, ``avg``, ``forgetting_variant`` and ``bwt_norm``. Every
      forgetting variant is also given under ``forgetting_<variant>``.
    """
    _check_choice(forgetting_variant, FORGETTING_VARIANTS, "forgetting_variant")
    _check_choice(bwt_norm, TRANSFER_NORMS, "bwt_norm")
    R = validate_accuracy_matrix(R)
    num_tasks = R.shape[1]
    sizes = _validate_sizes(task_sizes, num_tasks, "task_sizes")
    classes = (
        None if class_counts is None else _validate_sizes(class_counts, num_tasks, "class_counts")
    )
    weights = task_weights(avg, sizes, classes)

    summary: dict[str, Any] = {
        "num_tasks": num_tasks,
        "accuracy_unit": "percent",
        "avg": avg,
        "forgetting_variant": forgetting_variant,
        "bwt_norm": bwt_norm,
        "final_accuracy": final_overall_accuracy(R, weights),
        "average_incremental_accuracy": average_incremental_accuracy(R, weights),
        "average_incremental_accuracy_without_first": average_incremental_accuracy(
            R, weights, include_first=False
        ),
        "accuracy_after_each_task": accuracy_after_each_task(R, weights).tolist(),
        "final_accuracy_task_mean": final_average_accuracy(R),
        "final_accuracy_sample_weighted": final_overall_accuracy(R, sizes),
    }
    if classes is not None:
        summary["final_accuracy_class_weighted"] = final_overall_accuracy(R, classes)
    summary["lower_triangle_accuracy"] = lower_triangle_accuracy(R)
    summary["forgetting"] = forgetting(R, forgetting_variant)
    for variant in FORGETTING_VARIANTS:
        summary[f"forgetting_{variant}"] = forgetting(R, variant)
    summary["backward_transfer"] = backward_transfer(R, bwt_norm)
    summary["forward_transfer"] = forward_transfer(R, bwt_norm)
    summary["random_init_accuracy"] = float(np.sum(weights * R[0]) / np.sum(weights))
    return summary


def _is_float_valued(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (float, np.floating)):
        return True
    if isinstance(value, (list, tuple, np.ndarray)):
        array = np.asarray(value)
        return (
            array.size > 0
            and np.issubdtype(array.dtype, np.number)
            and not np.issubdtype(array.dtype, np.bool_)
        )
    return False


def _same(a: Any, b: Any) -> bool:
    return (
        bool(np.array_equal(np.asarray(a), np.asarray(b)))
        if isinstance(a, (list, tuple))
        else a == b
    )


def aggregate_seeds(summaries: Sequence[Mapping[str, Any]], *, ddof: int = 1) -> dict[str, Any]:
    """Mean and standard deviation over seeds of the float metrics of several :func:`summarize` results.

    Every summary must have the same keys. Float values (and lists of numbers, aggregated element-wise) become
    ``{"mean": ..., "std": ...}``; every other value (variant names, ``num_tasks``, units) must be equal in all
    summaries and is copied. ``std`` uses ``ddof`` (default 1, the sample standard deviation) and is NaN when
    there are not more than ``ddof`` seeds. NaN values propagate. ``num_seeds`` is added.

    Raises:
      ValueError: on an empty list, differing keys, differing non-float values or differing list lengths.
    """
    if not summaries:
        raise ValueError("aggregate_seeds needs at least one summary")
    keys = list(summaries[0].keys())
    for index, summary in enumerate(summaries[1:], start=1):
        if set(summary.keys()) != set(keys):
            raise ValueError(f"summary {index} has keys {sorted(summary)}, expected {sorted(keys)}")
    num_seeds = len(summaries)
    aggregated: dict[str, Any] = {"num_seeds": num_seeds}
    for key in keys:
        values = [summary[key] for summary in summaries]
        if all(_is_float_valued(value) for value in values):
            shapes = {np.shape(value) for value in values}
            if len(shapes) != 1:
                raise ValueError(f"{key!r} has differing shapes over seeds: {sorted(shapes)}")
            stacked = np.asarray(values, dtype=np.float64)
            mean = np.mean(stacked, axis=0)
            if num_seeds > ddof:
                std = np.std(stacked, axis=0, ddof=ddof)
            else:
                std = np.full_like(mean, np.nan)
            aggregated[key] = {"mean": mean.tolist(), "std": std.tolist()}
        else:
            if not all(_same(values[0], value) for value in values[1:]):
                raise ValueError(f"{key!r} differs over seeds and is not a float metric: {values}")
            aggregated[key] = values[0]
    return aggregated
