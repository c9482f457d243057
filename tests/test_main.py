"""The command line: a bad flag, config file, field or setting ends in one line that names it,
with exit status 1 and no traceback."""

import subprocess
import sys

import pytest
from helpers import CONFIGS_DIR


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--config.optimzer.lr=0.1", 'Did you mean "optimizer" instead of "optimzer"?'),
        ("--config=configs/no_such_config.py", "No such file or directory"),
        (
            f"--config={CONFIGS_DIR / 'cifar100.py'}:runlocal --config.dataset.data_dir=/nonexistent",
            "python -m cl_ssl.data.prepare --dataset=cifar100 --data_dir=/nonexistent",
        ),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, flag, message):
    result = subprocess.run(
        [sys.executable, "-m", "cl_ssl.main", *flag.split(), f"--workdir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


_FAILING_SAVE = """
import shutil, sys
import jax.numpy as jnp
from absl import app
from cl_ssl import checkpoint, main, train

def run(config, workdir):
    ckpt = checkpoint.Checkpointer(workdir, keep=3)
    ckpt.save(1, {"w": jnp.ones(3)}, {})
    ckpt.wait()
    shutil.rmtree(workdir)  # the folder disappears under the run: a file takes its place
    open(workdir, "w").close()
    ckpt.save(2, {"w": jnp.ones(3)}, {})
    ckpt.wait()  # as the next save, or the end of the run, does

train.run = run
app.run(main.main, argv=["main", "--workdir=" + sys.argv[1]])
"""


def test_a_failed_save_ends_the_process_at_once(tmp_path):
    """orbax's threads keep a process alive after a save that failed (60 s and more); the
    command line exits within seconds, naming the checkpoint it could not write."""
    result = subprocess.run(
        [sys.executable, "-c", _FAILING_SAVE, str(tmp_path / "checkpoints")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "error: a checkpoint cannot be written to" in result.stderr
    assert "resumes from checkpoint 1" in result.stderr
