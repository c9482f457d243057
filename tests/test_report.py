"""Result files of cl_ssl.evaluation.report: JSON, markdown, PNG plots and TensorBoard scalars."""

import glob
import json
import os
import struct
import sys
import types

import jax
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from cl_ssl.evaluation import metrics, report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

FULL = np.array(
    [
        [10.0, 12.0, 14.0],
        [60.0, 85.0, 20.0],
        [65.0, 70.0, 40.0],
        [55.0, 80.0, 75.0],
    ]
)
PARTIAL = FULL.copy()
PARTIAL[2:] = np.nan  # a run in progress: only random init and task 1 evaluated


def _write(workdir, matrices=None):
    matrices = matrices or {"linear": FULL, "knn": PARTIAL}
    summaries = {"linear": metrics.summarize(FULL, task_sizes=[100, 300, 600])}
    meta = {
        "protocol": {"linear": "offline linear probe, 100 epochs"},
        "seed": np.int64(3),
        "task_sizes": np.array([100, 300, 600]),
        "split": "cifar100_icarl_10x10.json",
        "learning_rate": np.float32(0.5),
        "missing": float("nan"),
    }
    report.write_results(
        str(workdir), matrices=matrices, summaries=summaries, meta=meta, run_name="a run, seed 3"
    )
    return summaries


def _assert_nested_close(actual, expected):
    """Dicts and lists compared entry by entry, numbers to float tolerance, the rest exactly.

    ``pytest.approx`` compares flat containers only (pytest 9 rejects nested dictionaries).
    """
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys()
        for key in expected:
            _assert_nested_close(actual[key], expected[key])
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, list) and len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            _assert_nested_close(a, e)
    elif isinstance(expected, (float, np.floating)):
        assert actual == pytest.approx(float(expected), nan_ok=True)
    else:
        assert actual == expected


def _from_json(value):
    return np.array([[np.nan if v is None else v for v in row] for row in value])


def test_results_json_round_trips(tmp_path):
    summaries = _write(tmp_path)
    with open(tmp_path / "results.json") as handle:
        document = json.load(handle)
    assert document["accuracy_unit"] == "percent"
    np.testing.assert_array_equal(_from_json(document["matrices"]["linear"]), FULL)
    np.testing.assert_array_equal(_from_json(document["matrices"]["knn"]), PARTIAL)
    _assert_nested_close(document["summaries"]["linear"], summaries["linear"])
    assert document["summaries"]["linear"]["forgetting_variant"] == "max_prev"
    assert document["meta"] == {
        "protocol": {"linear": "offline linear probe, 100 epochs"},
        "seed": 3,
        "task_sizes": [100, 300, 600],
        "split": "cifar100_icarl_10x10.json",
        "learning_rate": 0.5,
        "missing": None,
    }


def test_results_markdown_contains_tables_and_metrics(tmp_path):
    _write(tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert text.startswith("# Results: a run, seed 3\n")
    assert "## linear" in text and "## knn" in text
    assert "| evaluated after | task 1 | task 2 | task 3 | mean of all tasks |" in text
    assert "| random init | 10.00 | 12.00 | 14.00 | 12.00 |" in text
    assert "| after task 3 | 55.00 | 80.00 | 75.00 | 70.00 |" in text
    assert "| after task 2 |  |  |  |  |" in text  # NaN row of the knn matrix renders empty
    assert "| final_accuracy | 74.50 |" in text
    assert "| forgetting_variant | max_prev |" in text
    assert "cifar100_icarl_10x10.json" in text


def test_plots_are_png_files(tmp_path):
    _write(tmp_path)
    for evaluator in ("linear", "knn"):
        for kind in ("accuracy_matrix", "task_accuracy"):
            path = tmp_path / "plots" / f"{kind}_{evaluator}.png"
            data = path.read_bytes()
            assert data.startswith(PNG_MAGIC) and len(data) > 1000, path


def test_results_are_rewritten_after_each_task(tmp_path):
    _write(tmp_path)
    _write(tmp_path, {"linear": FULL, "knn": FULL})
    with open(tmp_path / "results.json") as handle:
        document = json.load(handle)
    np.testing.assert_array_equal(_from_json(document["matrices"]["knn"]), FULL)
    assert not glob.glob(str(tmp_path / "*.tmp"))


def test_write_results_errors(tmp_path):
    with pytest.raises(ValueError, match="evaluator name"):
        report.write_results(str(tmp_path), matrices={"a/b": FULL}, summaries={}, meta={})
    with pytest.raises(ValueError, match="2-D"):
        report.write_results(str(tmp_path), matrices={"linear": FULL[0]}, summaries={}, meta={})
    with pytest.raises(ValueError, match="percentages"):
        report.write_results(
            str(tmp_path), matrices={"linear": FULL / 100.0 - 0.5}, summaries={}, meta={}
        )
    with pytest.raises(TypeError, match="meta.config"):
        report.write_results(
            str(tmp_path), matrices={"linear": FULL}, summaries={}, meta={"config": object()}
        )


def test_offline_matrix_with_one_trained_row(tmp_path):
    offline = FULL[[0, 3]]  # random init and one row after training on all tasks at once
    summaries = {"linear": {"final_average_accuracy": metrics.final_average_accuracy(FULL)}}
    report.write_results(str(tmp_path), matrices={"linear": offline}, summaries=summaries, meta={})
    text = (tmp_path / "results.md").read_text()
    assert "| after training | 55.00 | 80.00 | 75.00 | 70.00 |" in text
    assert "| final_average_accuracy | 70.00 |" in text
    for kind in ("accuracy_matrix", "task_accuracy"):
        assert (tmp_path / "plots" / f"{kind}_linear.png").read_bytes().startswith(PNG_MAGIC)
    assert "| after stage 2 |" in report.format_matrix(
        FULL[:3]
    )  # [3, 3]: two stages that are not tasks


def test_format_matrix_exact():
    R = np.array([[10.0, 20.0], [50.0, 30.5], [np.nan, np.nan]])
    expected = (
        "### linear\n"
        "\n"
        "| evaluated after | task 1 | task 2 | mean of all tasks |\n"
        "|---|---:|---:|---:|\n"
        "| random init | 10.00 | 20.00 | 15.00 |\n"
        "| after task 1 | 50.00 | 30.50 | 40.25 |\n"
        "| after task 2 |  |  |  |\n"
    )
    assert report.format_matrix(R, title="linear") == expected


def test_format_summary_undefined_and_aggregated_values():
    single = metrics.summarize(np.array([[10.0], [50.0]]), task_sizes=[10])
    text = report.format_summary(single)
    assert "| forgetting | n/a |" in text and "| final_accuracy | 50.00 |" in text
    aggregated = metrics.aggregate_seeds(
        [single, metrics.summarize(np.array([[10.0], [52.0]]), task_sizes=[10])]
    )
    text = report.format_summary(aggregated)
    assert "| final_accuracy | 51.00 ± 1.41 |" in text
    assert "| accuracy_after_each_task | 51.00 ± 1.41 |" in text
    assert "| num_seeds | 2 |" in text


def _read_events(path):
    """Decodes a TFRecord event file: [length u64][crc u32][payload][crc u32] per record."""
    events = []
    with open(path, "rb") as handle:
        data = handle.read()
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        events.append(event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length]))
        offset += 12 + length + 4
    return events


def test_scalar_writer_writes_event_file(tmp_path):
    with report.ScalarWriter(str(tmp_path)) as writer:
        writer.scalar("train/loss", np.float32(1.5), 10)
        writer.scalar("train/loss", 0.75, 20)
        writer.flush()
    (event_file,) = glob.glob(os.path.join(tmp_path, "events.out.tfevents.*"))
    scalars = [
        (event.step, value.tag, value.simple_value)
        for event in _read_events(event_file)
        for value in event.summary.value
    ]
    assert scalars == [(10, "train/loss", 1.5), (20, "train/loss", 0.75)]


def test_scalar_writer_logs_hparams_with_the_metrics(tmp_path):
    with report.ScalarWriter(str(tmp_path)) as writer:
        writer.hparams(
            {"optimizer.lr": 0.1, "strategy": "cassle"}, {"summary/linear/forgetting": 3.0}
        )
    (event_file,) = glob.glob(os.path.join(tmp_path, "hparams", "events.out.tfevents.*"))
    tags = {value.tag for event in _read_events(event_file) for value in event.summary.value}
    assert "summary/linear/forgetting" in tags and "_hparams_/session_start_info" in tags


def test_environment_names_the_packages_the_devices_and_the_commit():
    env = report.environment()
    assert env["versions"]["jax"] == jax.__version__
    assert set(env["versions"]) >= {"cl_ssl", "flax", "optax", "orbax-checkpoint"}
    assert (env["device_kind"], env["device_count"]) == (
        jax.devices()[0].device_kind,
        jax.device_count(),
    )
    commit = env["git_commit"]
    assert commit is None or len(commit) == 40 and isinstance(env["git_uncommitted_changes"], bool)


class _FakeWandbRun:
    """Records what a ScalarWriter sends to a W&B run."""

    def __init__(self, **init):
        self.init, self.logged, self.metrics, self.summary, self.finished = init, [], [], {}, False

    def define_metric(self, name, step_metric=None):
        self.metrics.append((name, step_metric))

    def log(self, values):
        self.logged.append(values)

    def finish(self):
        self.finished = True


def test_scalar_writer_also_logs_to_weights_and_biases(tmp_path, monkeypatch):
    runs = []
    fake = types.SimpleNamespace(
        init=lambda **kwargs: runs.append(_FakeWandbRun(**kwargs)) or runs[-1],
        Image=lambda array: ("image", array.shape),
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with report.ScalarWriter(str(tmp_path), wandb_init={"project": "p", "id": "x"}) as writer:
        writer.scalar("train/loss", np.float32(1.5), 10)
        writer.image("samples", np.zeros((4, 4, 1), np.uint8), 11)
        writer.hparams({"optimizer.lr": 0.1}, {"summary/linear/final_accuracy": 50.0})
    (run,) = runs
    assert run.init == {"project": "p", "id": "x"}
    assert run.metrics == [("global_step", None), ("*", "global_step")]
    assert run.logged == [
        {"train/loss": 1.5, "global_step": 10},
        {"samples": ("image", (4, 4, 3)), "global_step": 11},
    ]
    assert run.summary == {"summary/linear/final_accuracy": 50.0} and run.finished


def test_weights_and_biases_not_installed_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(ValueError, match=r"pip install -e '.\[wandb\]'"):
        report.ScalarWriter(str(tmp_path), wandb_init={"project": "p"})
