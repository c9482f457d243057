"""The benchmark scripts still run against the library (tiny settings, no timing claims)."""

import subprocess
import sys


def test_throughput_script_runs_the_train_step():
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
    assert "jax" in out.stdout and "images/s" in out.stdout
