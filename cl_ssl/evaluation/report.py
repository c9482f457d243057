"""Result files of a continual run: JSON, markdown tables, heat maps, TensorBoard scalars, and where the
run ran.

Accuracy matrices are ``[T + 1, T]`` in percent, row 0 = random-init baseline, row ``i`` = after task ``i``
(see :mod:`cl_ssl.evaluation.metrics`). Other row counts ``[S + 1, T]`` are accepted too: their rows are
labelled ``after training`` for ``S = 1`` (an offline run) and ``after stage i`` otherwise. Rows not yet
evaluated hold NaN; NaN renders as an empty table or heat-map cell and is written as ``null`` in JSON.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import math
import os
import re
import subprocess
from collections.abc import Mapping
from typing import Any

import jax
import matplotlib.image
import numpy as np
import tensorboardX
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cl_ssl import storage
from cl_ssl.evaluation.metrics import validate_accuracy_matrix

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")


def _check(R: Any) -> np.ndarray:
    return validate_accuracy_matrix(R, one_row_per_task=False)


def _row_labels(num_rows: int, num_tasks: int) -> list[str]:
    if num_rows == num_tasks + 1:
        return ["random init"] + [f"after task {i}" for i in range(1, num_rows)]
    if num_rows == 2:
        return ["random init", "after training"]
    return ["random init"] + [f"after stage {i}" for i in range(1, num_rows)]


def _format_number(value: float, digits: int) -> str:
    return "" if math.isnan(value) else f"{value:.{digits}f}"


def format_matrix(R: Any, title: str | None = None, *, digits: int = 2) -> str:
    """Markdown table of an accuracy matrix.

    Rows ``random init``, ``after task 1..T`` (see the module docstring for other row counts);
    columns ``task 1..T`` and ``mean of all tasks`` (the row's task mean, trained or not; empty
    unless the row is complete). Values in percent with ``digits`` decimals; NaN cells are empty.
    A non-empty ``title`` is put above the table as a level-3 heading.
    """
    R = _check(R)
    num_rows, num_tasks = R.shape
    lines = [f"### {title}", ""] if title else []
    lines.append(
        "| evaluated after | "
        + " | ".join(f"task {j}" for j in range(1, num_tasks + 1))
        + " | mean of all tasks |"
    )
    lines.append("|---|" + "---:|" * (num_tasks + 1))
    for label, row in zip(_row_labels(num_rows, num_tasks), R, strict=True):
        cells = [_format_number(value, digits) for value in row] + [
            _format_number(float(np.mean(row)), digits)
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _format_value(value: Any, digits: int) -> str:
    if isinstance(value, Mapping) and set(value) == {"mean", "std"}:
        if isinstance(value["mean"], (list, tuple, np.ndarray)):
            pairs = zip(
                np.asarray(value["mean"]).tolist(), np.asarray(value["std"]).tolist(), strict=True
            )
            return ", ".join(
                _format_value({"mean": mean, "std": std}, digits) for mean, std in pairs
            )
        mean, std = _format_value(value["mean"], digits), _format_value(value["std"], digits)
        return mean if std == "n/a" else f"{mean} ± {std}"
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(_format_value(item, digits) for item in np.asarray(value).tolist())
    if isinstance(value, (float, np.floating)):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return "n/a" if value is None else str(value)


def format_summary(summary: Mapping[str, Any], title: str | None = None, *, digits: int = 2) -> str:
    """Markdown table ``metric | value`` of a :func:`~cl_ssl.evaluation.metrics.summarize` or
    :func:`~cl_ssl.evaluation.metrics.aggregate_seeds` result. Floats get ``digits`` decimals, undefined
    (NaN or ``None``) metrics read ``n/a``, aggregated metrics read ``mean ± std``."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| metric | value |", "|---|---:|"]
    lines += [f"| {key} | {_format_value(value, digits)} |" for key, value in summary.items()]
    return "\n".join(lines) + "\n"


_PACKAGES = ("cl_ssl", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


def _git(*args: str) -> str | None:
    """The output of ``git args`` in cl_ssl's source folder; None outside a checkout."""
    folder = os.path.dirname(os.path.abspath(__file__))
    try:
        return subprocess.run(
            ["git", "-C", folder, *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """Where this process runs: the versions of cl_ssl and its numerical packages (None: not
    installed), the git commit of cl_ssl's source and whether it has uncommitted changes (None
    outside a checkout), the devices' kind and count, and the number of processes."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    commit = _git("rev-parse", "HEAD")
    return {
        "versions": versions,
        "git_commit": commit,
        "git_uncommitted_changes": None if commit is None else bool(_git("status", "--porcelain")),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
    }


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_accuracy_matrix(R: Any, path: str | os.PathLike, *, title: str | None = None) -> None:
    """Saves a PNG heat map of an accuracy matrix with the values written in the cells.

    Rows are ``random init`` and ``after task 1..T`` (time runs downwards), columns the evaluated tasks and
    the row's mean over them. The colour scale is fixed to 0-100 % so that plots are comparable; NaN cells
    are left blank.
    """
    R = _check(R)
    num_rows, num_tasks = R.shape
    # The row's mean over the tasks as a last column (empty until the row is complete).
    shown = np.concatenate([R, R.mean(axis=1, keepdims=True)], axis=1)
    figure = _new_figure(max(4.5, 0.65 * num_tasks + 3.2), max(3.0, 0.45 * num_rows + 1.5))
    axes = figure.add_subplot()
    colormap = colormaps["viridis"].with_extremes(bad="white")
    image = axes.imshow(
        np.ma.masked_invalid(shown), cmap=colormap, vmin=0.0, vmax=100.0, aspect="auto"
    )
    for i, j in zip(*np.nonzero(np.isfinite(shown)), strict=True):
        value = shown[i, j]
        axes.text(
            j,
            i,
            f"{value:.1f}",
            ha="center",
            va="center",
            fontsize=8,
            color="white" if value < 60.0 else "black",
        )
    axes.axhline(0.5, color="black", linewidth=1.5)
    axes.axvline(num_tasks - 0.5, color="black", linewidth=1.5)
    axes.set_xticks(range(num_tasks + 1), [str(j) for j in range(1, num_tasks + 1)] + ["mean"])
    axes.set_yticks(range(num_rows), _row_labels(num_rows, num_tasks))
    axes.set_xlabel("evaluated on task")
    axes.set_title(title or "accuracy (%)", fontsize=9)
    figure.colorbar(image, ax=axes, label="accuracy (%)")
    _save_png(figure, path)


def plot_task_accuracy(R: Any, path: str | os.PathLike, *, title: str | None = None) -> None:
    """Saves a PNG line plot of each task's accuracy over time (x = the rows: random init, after task 1..T).

    With one row per task, the point where task ``j`` itself is trained has a larger marker. A dashed black
    line is the mean over the tasks seen so far (all tasks for other row counts). NaN points are skipped.
    """
    R = _check(R)
    num_rows, num_tasks = R.shape
    one_row_per_task = num_rows == num_tasks + 1
    figure = _new_figure(6.5 if num_tasks <= 10 else 8.5, 4.0)
    axes = figure.add_subplot()
    colormap = colormaps["tab10" if num_tasks <= 10 else "tab20" if num_tasks <= 20 else "viridis"]
    steps = np.arange(num_rows)
    for j in range(num_tasks):
        color = colormap(j if num_tasks <= 20 else j / (num_tasks - 1))
        column = R[:, j]
        finite = np.isfinite(column)
        axes.plot(
            steps[finite],
            column[finite],
            marker="o",
            markersize=3,
            color=color,
            label=f"task {j + 1}",
        )
        if one_row_per_task and finite[j + 1]:
            axes.plot(j + 1, column[j + 1], marker="o", markersize=8, color=color)
    # The random network (row 0) has seen no task: its mean is over all of them.
    seen = [R[i, :i] if one_row_per_task and i else R[i] for i in range(num_rows)]
    mean = np.array([np.mean(row) for row in seen])
    finite = np.isfinite(mean)
    axes.plot(
        steps[finite],
        mean[finite],
        color="black",
        linestyle="--",
        label="mean, tasks seen" if one_row_per_task else "mean",
    )
    if one_row_per_task:  # a legend entry for the large markers
        axes.plot(
            [], [], marker="o", markersize=8, linestyle="", color="grey", label="just trained"
        )
    labels = _row_labels(num_rows, num_tasks)
    axes.set_xticks(
        steps,
        ["init"] + [label.removeprefix("after ").removeprefix("task ") for label in labels[1:]],
    )
    axes.set_xlabel("after training task" if one_row_per_task else "evaluated after")
    axes.set_ylabel("accuracy (%)")
    axes.grid(alpha=0.3)
    axes.set_title(title or "task accuracy over time", fontsize=9)
    axes.legend(
        loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, ncol=1 if num_tasks <= 20 else 2
    )
    _save_png(figure, path)


def _to_json(value: Any, where: str = "") -> Any:
    if isinstance(value, Mapping):
        return {str(key): _to_json(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, np.ndarray):
        return _to_json(value.tolist(), where)
    if isinstance(value, np.generic):
        return _to_json(value.item(), where)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    raise TypeError(
        f"results value at {where or 'top level'} is not JSON-serialisable: {type(value).__name__}"
    )


def _save_png(figure: Figure, path: str | os.PathLike) -> None:
    """Writes ``figure`` as a PNG to ``path``, a local path or a bucket URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    storage.path(path).write_bytes(buffer.getvalue())


def write_results(
    workdir: str,
    *,
    matrices: Mapping[str, Any],
    summaries: Mapping[str, Mapping[str, Any]],
    meta: Mapping[str, Any],
    plots: bool = True,
    run_name: str = "",
) -> None:
    """Writes the results of a run into ``workdir``, replacing earlier versions (call it after every task).

    Files:

    - ``results.json``: ``{"accuracy_unit": "percent", "matrices": {evaluator: R as nested lists},
      "summaries": ..., "meta": ...}``; NaN and infinities become ``null``;
    - ``results.md``: per evaluator the :func:`format_matrix` table and the :func:`format_summary` table,
      then ``meta`` as a JSON block;
    - with ``plots``, ``plots/accuracy_matrix_<evaluator>.png`` (:func:`plot_accuracy_matrix`) and
      ``plots/task_accuracy_<evaluator>.png`` (:func:`plot_task_accuracy`).

    Args:
      workdir: output directory, created if missing.
      matrices: evaluator name (letters, digits, ``_.-``; e.g. ``"linear"``, ``"knn"``) -> accuracy matrix
        ``[T + 1, T]`` (or ``[S + 1, T]``, see the module docstring) in percent, rows not yet evaluated filled
        with NaN.
      summaries: evaluator name -> metrics dict (e.g. from ``metrics.summarize``); evaluators without a summary
        yet may be left out.
      meta: run description (config, seeds, protocol, split file and checksum, git hash, ...). Must consist of
        dicts, lists, strings, numbers, booleans, None and NumPy values.
      run_name: what the run is (data set, scenario, objective, strategy, seed), above the tables and in the
        plot titles.
      plots: whether to draw the PNG plots (about 0.3 s each with matplotlib).

    Raises:
      ValueError: on an invalid evaluator name or accuracy matrix.
      TypeError: on a value that cannot be written as JSON.
    """
    for name in list(matrices) + list(summaries):
        if not _NAME_PATTERN.match(name):
            raise ValueError(
                f"evaluator name {name!r} must consist of letters, digits, '_', '.' or '-'"
            )
    checked = {name: _check(R) for name, R in matrices.items()}
    document = _to_json(
        {"accuracy_unit": "percent", "matrices": checked, "summaries": summaries, "meta": meta}
    )
    folder = storage.path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    storage.write_atomic(
        folder / "results.json",
        json.dumps(document, indent=2, allow_nan=False) + "\n",
    )

    heading = f"# Results: {run_name}" if run_name else "# Results"
    sections = [heading, "", "Accuracies in percent; metrics in percent or percent points.", ""]
    for name in list(checked) + [name for name in summaries if name not in checked]:
        sections += [f"## {name}", ""]
        if name in checked:
            sections.append(format_matrix(checked[name]))
        if name in summaries:
            sections.append(format_summary(summaries[name]))
    sections += ["## Run", "", "```json", json.dumps(document["meta"], indent=2), "```", ""]
    storage.write_atomic(folder / "results.md", "\n".join(sections))

    if not plots:
        return
    plots_folder = folder / "plots"
    plots_folder.mkdir(exist_ok=True)
    above = f"{run_name}\n" if run_name else ""
    for name, R in checked.items():
        plot_accuracy_matrix(
            R,
            plots_folder / f"accuracy_matrix_{name}.png",
            title=f"{above}{name}: accuracy (%)",
        )
        plot_task_accuracy(
            R,
            plots_folder / f"task_accuracy_{name}.png",
            title=f"{above}{name}: task accuracy",
        )


def save_image(image: np.ndarray, path: str) -> None:
    """Writes a uint8 [H, W, C] image (C in {1, 3}) as a PNG, creating its folder."""
    target = storage.path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    pixels = image[..., 0] if image.shape[-1] == 1 else image
    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, pixels, cmap="gray", vmin=0, vmax=255, format="png")
    target.write_bytes(buffer.getvalue())


class _ObjectRecordWriter:
    """A TensorBoard event file in a bucket for tensorboardX: the bytes written so far, uploaded
    whole at each flush (an object cannot be appended to), as tensorboardX's own ``gs://`` writer
    does; that one needs the google-cloud-storage client, this one the ``epath`` the rest of the
    run's files go through. Event files of scalars stay small (about 50 bytes a value)."""

    def __init__(self, path: str) -> None:
        self._path = storage.path(path)
        self._buffer = io.BytesIO()
        self._uploaded = -1

    def write(self, data: bytes) -> None:
        self._buffer.write(data)

    def flush(self) -> None:
        if self._buffer.tell() != self._uploaded:
            self._path.write_bytes(self._buffer.getvalue())
            self._uploaded = self._buffer.tell()

    def close(self) -> None:
        self.flush()


class _ObjectRecordWriterFactory:
    def open(self, path: str) -> _ObjectRecordWriter:
        return _ObjectRecordWriter(path)

    def directory_check(self, path: str) -> None:
        del path  # a bucket has no folders to create


tensorboardX.record_writer.register_writer_factory("gs", _ObjectRecordWriterFactory())


class ScalarWriter:
    """TensorBoard logger (``tensorboardX.SummaryWriter`` writing event files into ``logdir``, a
    local folder or a ``gs://`` URI, uploaded at each flush) and, given ``wandb_init``, Weights &
    Biases too: ``wandb.init(**wandb_init)``, with every value plotted against the ``global_step``
    it is logged at."""

    def __init__(self, logdir: str, *, wandb_init: Mapping[str, Any] | None = None) -> None:
        self._writer = tensorboardX.SummaryWriter(logdir)
        self._wandb = None
        if wandb_init is not None:
            try:
                import wandb  # noqa: PLC0415 -- an optional extra, imported only when asked for
            except ImportError as error:
                raise ValueError(
                    "wandb.project is set but Weights & Biases is not installed: "
                    "pip install -e '.[wandb]', or leave --config.wandb.project empty"
                ) from error
            self._wandb_module = wandb
            self._wandb = wandb.init(**wandb_init)
            self._wandb.define_metric("global_step")
            self._wandb.define_metric("*", step_metric="global_step")

    def scalar(self, name: str, value: float, step: int) -> None:
        """Logs ``value`` under the tag ``name`` at global step ``step``."""
        self._writer.add_scalar(name, float(value), global_step=int(step))
        if self._wandb:
            self._wandb.log({name: float(value), "global_step": int(step)})

    def image(self, name: str, image: np.ndarray, step: int) -> None:
        """Logs a uint8 [H, W, C] image (C in {1, 3}) under the tag ``name`` at ``step``."""
        rgb = np.broadcast_to(image, (*image.shape[:2], 3))
        self._writer.add_image(name, rgb, global_step=int(step), dataformats="HWC")
        if self._wandb:
            image = self._wandb_module.Image(np.ascontiguousarray(rgb))
            self._wandb.log({name: image, "global_step": int(step)})

    def hparams(
        self, hparams: Mapping[str, bool | int | float | str], metrics: Mapping[str, float]
    ) -> None:
        """Logs a run's settings and its summary metrics to TensorBoard's HParams view (in the
        ``hparams`` subfolder of ``logdir``)."""
        self._writer.add_hparams(dict(hparams), dict(metrics), name="hparams")
        if self._wandb:  # the config went to wandb.init
            self._wandb.summary.update(dict(metrics))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
        if self._wandb:
            self._wandb.finish()

    def __enter__(self) -> ScalarWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
