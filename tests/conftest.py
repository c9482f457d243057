"""Test session set-up: four forced CPU devices, so multi-device paths run on any machine, and
compiling made cheap, as it dominates the tests' tiny runs on the CPU:
- XLA's CPU backend at optimisation level 0 compiles about twice as fast (a tiny ResNet's step in
  5 s instead of 10 s) and runs about three times slower, which a run of a few steps never repays;
- its older elemental emitters (``--xla_cpu_use_fusion_emitters=false``) compile a fused program
  about 40% faster than the fusion emitters (the tiny CaSSLe step in 1.3 s instead of 2.3 s, an op
  run eagerly in 20 ms instead of 35 ms) and run it as fast at these sizes (each flag only where
  the installed jaxlib's XLA knows it);
- every end-to-end run builds its step, probe and kNN functions afresh, so JAX's persistent cache,
  in a folder made for this session and shared by the pytest-xdist workers and the scripts the
  tests start, compiles each distinct program once.
"""

import fcntl
import hashlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _xla_knows(flag: str) -> bool:
    """Whether this jaxlib's XLA takes ``flag``: an unknown flag in XLA_FLAGS aborts the process
    that starts a backend, so a jaxlib that drops one must not see it (a second's probe)."""
    probe = [sys.executable, "-c", "import jax; jax.devices()"]
    env = {**os.environ, "XLA_FLAGS": flag}
    return subprocess.run(probe, env=env, capture_output=True, check=False).returncode == 0


# Set once, by the first process (the xdist controller); the workers inherit them.
for _flag in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
    if _flag.partition("=")[0] not in os.environ.get("XLA_FLAGS", "") and _xla_knows(_flag):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import pytest  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from helpers import (  # noqa: E402
    TINY_DEMO_OVERRIDES,
    run,
    shipped_config,
    write_tiny_fashion_mnist,
)
from tensorflow_datasets.testing import mocking  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)

# The persistent cache keeps every program, however small or quick to compile.
_CACHE_SETTINGS = {
    "jax_persistent_cache_min_compile_time_secs": 0,
    "jax_persistent_cache_min_entry_size_bytes": -1,
}


def pytest_configure(config):
    """The controller (or a run without xdist) makes the cache folder before the workers start;
    they, and the scripts the tests start, inherit it and the settings through the environment,
    which JAX reads at import. This process imported JAX already, so it is also configured
    directly."""
    if not hasattr(config, "workerinput"):
        os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="cl_ssl_jax_cache_")
        os.environ.update({name.upper(): str(v) for name, v in _CACHE_SETTINGS.items()})
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    for name, value in _CACHE_SETTINGS.items():
        jax.config.update(name, value)


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):
        shutil.rmtree(os.environ.pop("JAX_COMPILATION_CACHE_DIR"), ignore_errors=True)


@pytest.fixture
def mock_tfds(monkeypatch):
    """``tfds.testing.mock_data`` from the builder code alone (no metadata files needed).

    tensorflow-datasets 4.9.10 attaches the mocked ``__getitems__`` as an unbound
    ``functools.partial(_getitems, generator=...)``, so a batch read passes the keys as ``self``
    and fails; the replacement below takes the keys first.
    """

    def getitems(record_keys, generator, serialized=False):
        assert not serialized
        return [generator[key] for key in record_keys]

    monkeypatch.setattr(mocking, "_getitems", getitems)

    def encode_png(self, image):
        """Encodes like tfds's Image feature, with PIL instead of TensorFlow: mock data read with
        ``SkipDecoding`` (data sets of varying image size) are encoded first."""
        buffer = io.BytesIO()
        PIL.Image.fromarray(
            np.asarray(image).squeeze(-1) if np.shape(image)[-1] == 1 else np.asarray(image)
        ).save(buffer, format="PNG", compress_level=0)  # 2x faster than the default 6
        return buffer.getvalue()

    monkeypatch.setattr(tfds.features.Image, "encode_example", encode_png)
    # The mock draws bounding boxes with min > max (caltech_birds2011's), which BBoxFeature refuses
    # to encode; the runs never read them, so every box is the whole image.
    monkeypatch.setattr(
        tfds.features.BBoxFeature,
        "encode_example",
        lambda self, bbox: np.array([0.0, 0.0, 1.0, 1.0], np.float32),
    )

    def mock(num_examples):
        return tfds.testing.mock_data(
            num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE
        )

    return mock


@pytest.fixture
def mock_cifar10(mock_tfds):
    """Mock CIFAR-10 with 48 examples per split."""
    with mock_tfds(num_examples=48):
        yield


@pytest.fixture(scope="session")
def _finished_runs_dir(tmp_path_factory):
    """A folder shared by the session's xdist workers (each worker's base temporary folder is a
    subfolder of the session's)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder = root / "finished_runs"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture
def finished_run(_finished_runs_dir, mock_cifar10):
    """``finished_run(config, num_devices=1)`` -> (``helpers.run``'s result with host arrays, its
    workdir): a whole run on mock CIFAR-10, run once per session and shared by every test that
    asks for the same config, on whichever worker. The first worker to ask runs it under a file
    lock and pickles the result; the others wait for the lock and read it. Read the result and
    the workdir; resume into another workdir."""

    def get(config, num_devices=1):
        key = hashlib.sha256(f"{config.to_json()} {num_devices}".encode()).hexdigest()[:16]
        folder = _finished_runs_dir / key
        saved = folder / "result.pickle"
        with open(_finished_runs_dir / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not saved.exists():
                result = jax.device_get(run(config, folder / "run", num_devices))
                saved.write_bytes(pickle.dumps(result))
        return pickle.loads(saved.read_bytes()), folder / "run"

    return get


@pytest.fixture
def tiny_demo_run(finished_run, tiny_fashion_mnist):
    """``finished_run`` of the README's runlocal demo shrunk (``helpers.TINY_DEMO_OVERRIDES``) on
    the tiny IDX files, on four devices: (``config`` for another data dir -> the config, the run,
    its workdir). tests/test_multihost.py and tests/test_bucket.py end where it ends."""

    def config(data_dir=tiny_fashion_mnist):
        c = shipped_config("fashion_mnist", "runlocal")
        c.update_from_flattened_dict({**TINY_DEMO_OVERRIDES, "dataset.data_dir": str(data_dir)})
        return c

    return config, *finished_run(config(), num_devices=4)


@pytest.fixture
def tiny_fashion_mnist(_finished_runs_dir):
    """``helpers.write_tiny_fashion_mnist``'s files in a folder that the session's workers share,
    so that runs on them share ``finished_run``'s results."""
    folder = _finished_runs_dir / "fashion_mnist_idx"
    with open(_finished_runs_dir / "fashion_mnist_idx.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not folder.is_dir():
            part = _finished_runs_dir / "fashion_mnist_idx.part"
            part.mkdir(exist_ok=True)
            write_tiny_fashion_mnist(part).rename(folder)
    return folder


# test_multihost's and test_bucket's tests start more runs in processes of their own.
_WHOLE_RUN_FIXTURES = {"mock_cifar10", "mock_tfds", "finished_run", "tiny_demo_run"}


def pytest_collection_modifyitems(items):
    """Tests that train whole runs first (a stable sort), so that no xdist worker is left with a
    long one while the other has finished."""
    items.sort(key=lambda item: not (_WHOLE_RUN_FIXTURES & set(item.fixturenames)))
