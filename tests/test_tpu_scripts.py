"""The Cloud TPU scripts, run against a stand-in ``gcloud`` on PATH that records its arguments:
what they would run on every worker."""

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(script, *args, tmp_path):
    """The arguments of each ``gcloud`` call ``tpu_scripts/<script>`` makes, one list per call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "gcloud.log"
    fake = bin_dir / "gcloud"
    # Each argument ends with NUL, each call with the record separator: the commands span lines.
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'printf "%s\\0" "$@" >> "$GCLOUD_LOG"\n'
        'printf "\\036" >> "$GCLOUD_LOG"\n'
    )
    fake.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "GCLOUD_LOG": str(log),
    }
    subprocess.run(["bash", str(ROOT / "tpu_scripts" / script), *args], env=env, check=True)
    calls = log.read_text().split("\x1e")
    return [call.split("\0")[:-1] for call in calls if call]


def test_create_installs_the_training_stack_and_jax_for_tpus(tmp_path):
    create, install = _run("create.sh", "pod", "us-central2-b", "v4-32", tmp_path=tmp_path)
    assert create[:4] == ["compute", "tpus", "tpu-vm", "create"]
    assert "--accelerator-type=v4-32" in create and "--zone=us-central2-b" in create
    assert install[:4] == ["compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in install
    command = install[-1].removeprefix("--command=")
    assert "pip install -U 'jax[tpu]'" in command
    assert "pip install -e '.[train]'" in command  # the plain install trains nothing


@pytest.mark.parametrize("data_dir", ["gs://bucket/tensorflow_datasets", None])
def test_launch_starts_the_same_multihost_run_on_every_worker(tmp_path, data_dir):
    """With a data dir, the run reads it; without (the call before the data dir was added), the
    config's."""
    (call,) = _run(
        "launch.sh",
        "pod",
        "us-central2-b",
        "configs/imagenet100.py:cassle",
        "gs://bucket/runs/in100",
        *([data_dir] if data_dir else []),
        "--config.seed=1",
        tmp_path=tmp_path,
    )
    assert "--worker=all" in call
    command = call[-1]
    for part in (
        "python -m cl_ssl.main --multihost",
        "--config=configs/imagenet100.py:cassle",
        "--workdir=gs://bucket/runs/in100",
        "--config.seed=1",
    ):
        assert part in command
    if data_dir:
        assert f"--config.dataset.data_dir={data_dir}" in command
    else:
        assert "data_dir" not in command
