"""The benchmark scripts still run against the library (tiny settings, no timing claims)."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest
from helpers import shipped_config, write_finished_run


def test_throughput_script_runs_the_train_step():
    """With data on the device, the script's default (test_train checks that data in host memory
    trains the same)."""
    out = subprocess.run(
        [
            sys.executable,
            "experiments/throughput.py",
            "--backbone=resnet_tiny",
            "--batch_size=8",
            "--steps=1",
            "--warmup=1",
            "--peer=false",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert "jax x1" in out.stdout and "images/s" in out.stdout


def test_step_program_script_fingerprints_each_strategys_step():
    """Two strategies give two hashes, and one strategy the same hash twice."""
    out = subprocess.run(
        [
            sys.executable,
            "experiments/step_program.py",
            "--strategies=finetune,replay,finetune",
            "--backbone=resnet_tiny",
            "--batch_size=8",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    hashes = dict(line.split() for line in out.stdout.splitlines()[-3:])
    assert set(hashes) == {"finetune", "replay"} and len(set(hashes.values())) == 2
    assert out.stdout.splitlines()[-3] == out.stdout.splitlines()[-1]


def test_input_throughput_script_times_streamed_reads_and_crops_and_the_steps_need():
    out = subprocess.run(
        [
            sys.executable,
            "experiments/input_throughput.py",
            "--threads=1,2",
            "--images=8",
            "--records=4",
            "--batch_size=4",
            "--image_size=32",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    rows = [line.split() for line in out.stdout.splitlines() if line.split()[:1] in (["1"], ["2"])]
    assert len(rows) == 2 and all(len(r) == 5 and float(r[1]) > 0 < float(r[3]) for r in rows)
    assert "GFLOP per image at 32 px" in out.stdout and "cores decode and crop" in out.stdout


def _quality(tmp_path, *extra):
    return subprocess.run(
        [
            sys.executable,
            "experiments/quality.py",
            "--config=configs/fashion_mnist.py:strategies",
            # No data set here: reading the finished run must not need one.
            f"--config.dataset.data_dir={tmp_path / 'no_data'}",
            "--objectives=simclr",
            "--strategies=cassle",
            "--seeds=0",
            f"--workdir={tmp_path / 'runs'}",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _quality_config(**overrides):
    config = shipped_config("fashion_mnist", "strategies")
    config.update(
        dict(objective="simclr", strategy="cassle", seed=0, progress_bar=False, **overrides)
    )
    return config


def test_quality_script_reads_a_finished_run_instead_of_training(tmp_path):
    write_finished_run(
        tmp_path / "runs" / "simclr_cassle_seed0", _quality_config(), [72.0, 74.0, 76.0, 78.0, 80.0]
    )
    out = _quality(tmp_path, f"--output={tmp_path / 'table.md'}")
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("| simclr | cassle"))
    # final 75.00 = (72 * 4000 + (74 + 76 + 78 + 80) * 1500) / 10000, over the test images;
    # random init 60.00, gain 15.00; AIA (4 * 70 + 75) / 5 = 71.00, without the first task 71.25
    assert row.startswith(
        "| simclr | cassle | linear | 0 | 75.00 ± n/a | 15.00 ± n/a | 71.00 ± n/a | 71.25 ± n/a |"
    )
    assert row in (tmp_path / "table.md").read_text()


def test_quality_script_reruns_a_workdir_of_another_config(tmp_path):
    write_finished_run(
        tmp_path / "runs" / "simclr_cassle_seed0",
        _quality_config(epochs_per_task=7),
        [72.0, 74.0, 76.0, 78.0, 80.0],
    )
    out = _quality(tmp_path)
    # It trains instead, which needs the (absent) data set.
    assert out.returncode != 0
    assert "Fashion-MNIST IDX files not found" in out.stderr


def _wall_time_module():
    spec = importlib.util.spec_from_file_location(
        "wall_time", pathlib.Path(__file__).resolve().parents[1] / "experiments" / "wall_time.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wall_time_module_extrapolates_by_hand():
    """Step 0's checkpoint, each stage's last and every 4th step inside a stage; the steady stages'
    training (from the third) scales with the epochs, the rest does not."""
    wall_time = _wall_time_module()
    assert wall_time.checkpoint_saves([10, 10], every=4) == 7  # 0, 4, 8, 10, 12, 16, 20
    assert wall_time.checkpoint_saves([3], every=4) == 2
    at_rows = {
        str(row): {
            "training": training,
            "training_waiting_for_device": waiting,
            "evaluation": 1.5 * row,
            "checkpointing": 0.75 * row,
        }
        for row, (training, waiting) in enumerate(
            zip([0.0, 10.0, 17.0, 21.0, 25.0], [0.0, 1.0, 2.0, 5.0, 8.0], strict=True)
        )
    }
    times = wall_time.extrapolate(at_rows, epochs=2, target_epochs=10, saves=6, target_saves=20)
    assert times["measured"] == pytest.approx(
        {
            "training": 25.0,
            "rest": 25.0 - 4 * 2 * 2.0,
            "evaluation": 6.0,
            "checkpointing": 3.0,
            "total": 34.0,
            "seconds_per_epoch": 2.0,
            "host_share": 1.0 - 6.0 / 8.0,  # stages 3 and 4 waited 3 s of their 4 s each
        }
    )
    assert times["extrapolated"] == pytest.approx(
        {
            "training": 9.0 + 4 * 10 * 2.0,
            "rest": 9.0,
            "evaluation": 6.0,
            "checkpointing": 10.0,
            "total": 105.0,
        }
    )
    with pytest.raises(ValueError, match="3 or more tasks"):
        wall_time.extrapolate(
            {r: at_rows[r] for r in "012"}, epochs=2, target_epochs=10, saves=3, target_saves=3
        )
