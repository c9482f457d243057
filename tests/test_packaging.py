"""What a user installs: the loss library alone, every package folder, the demo from anywhere."""

import configparser
import importlib.metadata
import os
import pathlib
import shutil
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


# The top-level modules of the `train` extra's packages (and TensorFlow): absent from a plain
# install.
_TRAINING_STACK = (
    "absl",
    "chex",
    "dm_pix",
    "flax",
    "grain",
    "matplotlib",
    "ml_collections",
    "optax",
    "orbax",
    "sklearn",
    "tensorboardX",
    "tensorflow",
    "tensorflow_datasets",
    "tqdm",
)
_WITHOUT_TRAINING_STACK = f"""
import importlib.abc, sys

class PlainInstall(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {_TRAINING_STACK!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

sys.meta_path.insert(0, PlainInstall())
"""


@pytest.fixture(scope="module")
def plain_install(tmp_path_factory):
    """The package as ``pip install .`` lays it out (setuptools' build_py of a copy of the
    sources: the listed packages and their package data), in a folder to put on PYTHONPATH."""
    root = tmp_path_factory.mktemp("plain_install")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, root / name)
    for name in ("cl_ssl", "configs"):
        shutil.copytree(ROOT / name, root / name, ignore=ignore)
    subprocess.run(
        [sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build_py"]
        + ["--build-lib", str(root / "lib")],
        cwd=root,
        check=True,
        capture_output=True,
    )
    return root / "lib"


def test_plain_install_ships_py_typed_and_data(plain_install):
    """Type checkers read the installed package's signatures (PEP 561's py.typed)."""
    assert (plain_install / "cl_ssl" / "py.typed").is_file()
    assert (plain_install / "cl_ssl" / "losses" / "objectives.py").is_file()
    assert list((plain_install / "cl_ssl" / "data" / "splits").glob("*.json"))


def test_plain_install_main_says_to_install_the_train_extra(plain_install, tmp_path):
    """Without the `train` extra the losses import, and ``python -m cl_ssl.main`` says which
    extra to install and exits non-zero, in place of a traceback ending in ModuleNotFoundError."""
    code = _WITHOUT_TRAINING_STACK + (
        "import runpy, cl_ssl.losses\n"
        "print(cl_ssl.losses.__file__)\n"
        "sys.argv = ['cl_ssl.main']\n"
        "runpy.run_module('cl_ssl.main', run_name='__main__', alter_sys=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(plain_install), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert done.stdout.strip() == str(plain_install / "cl_ssl" / "losses" / "__init__.py")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "No module named 'absl'" in done.stderr
    assert "pip install 'cl_ssl[train]'" in done.stderr
