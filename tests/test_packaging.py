"""What a user installs: the loss library alone, every package folder, the demo from anywhere."""

import configparser
import importlib.metadata
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def test_plain_install_is_jax_and_numpy():
    from packaging.requirements import Requirement  # noqa: PLC0415 -- a dependency of the tests

    plain = {
        Requirement(line).name
        for line in importlib.metadata.requires("cl_ssl")
        if Requirement(line).marker is None
    }
    assert plain == {"jax", "numpy"}


def test_losses_import_nothing_but_jax_and_numpy():
    """Beyond what ``import jax, numpy`` loads, cl_ssl.losses loads only itself and the stdlib."""
    code = (
        "import sys, jax, numpy; before = set(sys.modules); import cl_ssl.losses; "
        "print('\\n'.join(sorted(set(sys.modules) - before)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    top_level = {name.partition(".")[0] for name in loaded}
    assert "cl_ssl" in top_level  # the check sees the import at all
    assert top_level - {"cl_ssl"} <= set(sys.stdlib_module_names)


def test_setup_lists_every_package():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    listed = set(setup["options"]["packages"].split())
    on_disk = {
        ".".join(path.parent.relative_to(ROOT).parts) for path in ROOT.glob("cl_ssl/**/__init__.py")
    }
    assert listed == on_disk | {"cl_ssl.configs"}
    assert setup["options"]["package_dir"].split() == ["cl_ssl.configs", "=", "configs"]


@pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST), reason="apt-get install dataset-fashion-mnist"
)
def test_installed_demo_runs_from_another_directory(tmp_path):
    """The README's first command with its default config, started outside the repository (a
    tiny model and one step, so that it ends in seconds)."""
    command = [
        sys.executable,
        "-m",
        "cl_ssl.main",
        f"--workdir={tmp_path / 'run'}",
        "--config.model.backbone=resnet_tiny",
        "--config.eval.train_examples=256",
        "--config.eval.linear.epochs=1",
        "--config.eval.evaluators=('knn',)",
        "--config.stop_after_steps=1",
        "--config.progress_bar=false",
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "config.json").exists()
    assert "fashion_mnist_idx" in (tmp_path / "run" / "config.json").read_text()
