"""Runs whose workdir and data live in a bucket (``gs://``), against a local GCS emulator, and the
workdir lock that holds on object storage.

The emulator (``gcs_emulator.py``: the ``gcp-storage-emulator`` package with the generation
headers and write preconditions of GCS, on the loopback address) is reached by every client the
library uses through its standard variable: gcsfs (``etils.epath``, hence results, plots,
TensorBoard, configs and IDX data) through ``STORAGE_EMULATOR_HOST``, tensorstore (orbax's
checkpoints, the lock) through ``TENSORSTORE_GCS_HTTP_URL``, ArrayRecord's GCS reader (tfds data)
through ``CLOUD_STORAGE_EMULATOR_ENDPOINT``. The lock's protocol (races, staleness, renewal) is
tested on tensorstore's file store, which has the same conditional writes, without a server.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import chex
import gcs_emulator
import numpy as np
import pytest
import tensorstore as ts
from etils import epath
from helpers import (
    TINY_DEMO_OVERRIDES,
    ClSslTestImages,
    run,
)

from cl_ssl import workdir as workdir_lib
from cl_ssl.data import sources

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bucket():
    """``gs://bkt`` on an in-memory GCS emulator that this module starts and stops."""
    with gcs_emulator.serve() as uri:
        yield uri


def _upload(folder: pathlib.Path, target: str) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            (epath.Path(target) / str(f.relative_to(folder))).write_bytes(f.read_bytes())


@pytest.fixture
def data(bucket, tiny_fashion_mnist):
    """The tiny Fashion-MNIST IDX files in a local folder and in the bucket: (local, URI)."""
    _upload(tiny_fashion_mnist, f"{bucket}/data")
    return str(tiny_fashion_mnist), f"{bucket}/data"


def test_a_run_in_a_bucket_killed_resumes_to_the_run_in_a_folder(
    data, tiny_demo_run, tmp_path, capsys
):
    """The workdir and the data in the bucket. kill -9 once checkpoint 2 is committed; before
    that, a second run on the workdir is refused. The lock of the killed run names a process of
    this host that has ended: the next run takes it over at once, resumes, and ends as the run on
    local folders, with the same files."""
    config, whole, local = tiny_demo_run
    workdir = "gs://bkt/runs/killed"
    command = [
        *(sys.executable, "-m", "cl_ssl.main", f"--workdir={workdir}"),
        f"--config={ROOT / 'configs' / 'fashion_mnist.py'}:runlocal",
        f"--config.dataset.data_dir={data[1]}",
        *(
            f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}"
            for k, v in TINY_DEMO_OVERRIDES.items()
        ),
    ]
    # Four devices, as the local run's, so that the two programs are the same.
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    with open(tmp_path / "out", "w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "XLA_FLAGS": flags}
        )
    try:
        committed = epath.Path(workdir) / "checkpoints" / "2" / "commit_success.txt"
        deadline = time.monotonic() + 240
        while not committed.exists():
            assert process.poll() is None, (tmp_path / "out").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint 2 after 240 s"
            time.sleep(0.05)
        with pytest.raises(
            RuntimeError, match=rf"in use by another run \(host .* pid {process.pid}, started"
        ):
            run(config(data[1]), workdir, num_devices=4)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert f'"pid": {process.pid}' in (epath.Path(workdir) / "LOCK").read_text()
    capsys.readouterr()
    resumed = run(config(data[1]), workdir, num_devices=4)
    assert f"resumed from {workdir}/checkpoints at step" in capsys.readouterr().out
    chex.assert_trees_all_equal(resumed["state"].params, whole["state"].params)
    for name in whole["matrices"]:
        np.testing.assert_array_equal(resumed["matrices"][name], whole["matrices"][name])

    folder = epath.Path(workdir)
    saved = json.loads((folder / "results.json").read_text())
    assert saved["matrices"] == json.loads((local / "results.json").read_text())["matrices"]
    assert (folder / "results.md").read_text().startswith("# Results: fashion_mnist_idx")
    stored = json.loads((folder / "config.json").read_text())
    assert stored["dataset"].pop("data_dir") == data[1]
    expected = json.loads((local / "config.json").read_text())
    expected["dataset"].pop("data_dir")
    assert stored == expected
    assert {p.name for p in (folder / "plots").iterdir()} == {
        p.name for p in (local / "plots").iterdir()
    }
    # Both attempts' TensorBoard events: the killed one's uploaded with its checkpoints.
    events = [p for p in (folder / "tb").iterdir() if p.name.startswith("events.out")]
    assert len(events) == 2 and all(e.stat().length > 0 for e in events)
    assert (folder / "tb" / "hparams").is_dir()
    assert (folder / "checkpoints" / "10" / "commit_success.txt").exists()
    assert not (folder / "LOCK").exists()


def test_tfds_data_in_a_bucket_reads_as_in_a_folder(bucket, tmp_path):
    ClSslTestImages(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    _upload(tmp_path, f"{bucket}/tensorflow_datasets")
    local = sources.load_split("cl_ssl_test_images", "train", data_dir=str(tmp_path))
    remote = sources.load_split(
        "cl_ssl_test_images", "train", data_dir=f"{bucket}/tensorflow_datasets"
    )
    np.testing.assert_array_equal(remote.images, local.images)
    np.testing.assert_array_equal(remote.labels, local.labels)


def test_a_workdir_on_another_object_store_is_refused():
    with pytest.raises(ValueError, match=r"s3://b/run: a workdir is a local folder or .*gs://"):
        workdir_lib.bucket_kvstore("s3://b/run")


# The lock's protocol, on a store that enforces write preconditions.


@pytest.fixture
def store(tmp_path):
    return ts.KvStore.open({"driver": "file", "path": f"{tmp_path}/"}).result()


def _holder(host: str, pid: int, renewed_ago: float) -> bytes:
    record = {"host": host, "pid": pid, "started": "then", "renewed": time.time() - renewed_ago}
    return json.dumps(record).encode()


def test_the_lock_is_refused_while_held_and_deleted_on_release(store):
    with workdir_lib.ObjectLock(store, where="gs://b/run"):
        holder = json.loads(store["LOCK"])
        assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid()
        with pytest.raises(
            RuntimeError, match=rf"in use by another run \(host .* pid {os.getpid()}"
        ):
            with workdir_lib.ObjectLock(store, where="gs://b/run"):
                pass
    assert store.read("LOCK").result().state == "missing"


@pytest.mark.parametrize(
    ("host", "pid", "renewed_ago", "taken"),
    [
        ("another-host", 1, 10.0, False),  # fresh: refused
        ("another-host", 1, 301.0, True),  # not renewed for LOCK_STALE_SECONDS
        (socket.gethostname(), 2**22 + 1, 10.0, True),  # a process of this host that has ended
    ],
)
def test_a_stale_lock_is_taken_over(store, caplog, host, pid, renewed_ago, taken):
    store["LOCK"] = _holder(host, pid, renewed_ago)
    if not taken:
        with pytest.raises(RuntimeError, match=rf"host {host} pid {pid}, .* renewed 10 s ago"):
            with workdir_lib.ObjectLock(store, where="gs://b/run"):
                pass
        return
    with workdir_lib.ObjectLock(store, where="gs://b/run"):
        assert json.loads(store["LOCK"])["pid"] == os.getpid()
    assert f"taking over the lock of gs://b/run from host {host} pid {pid}" in caplog.text


def test_of_two_runs_creating_the_lock_at_once_one_wins(store):
    """The other run's lock appears between this run's read and its write: the conditional
    write fails, and the run is refused with the winner's name."""

    class Racing:
        def __init__(self):
            self.raced = False

        def read(self, key):
            result = store.read(key)
            if not self.raced:
                self.raced = True
                store[key] = _holder("winner", 7, 0.0)
            return result

        def write(self, *args, **kwargs):
            return store.write(*args, **kwargs)

    with pytest.raises(RuntimeError, match=r"host winner pid 7"):
        with workdir_lib.ObjectLock(Racing(), where="gs://b/run"):
            pass
    assert json.loads(store["LOCK"])["host"] == "winner"


def test_the_holder_renews_the_lock_and_says_when_it_was_taken_over(store, caplog):
    with workdir_lib.ObjectLock(store, where="gs://b/run", stale_after=1.0, renew_every=0.05):
        first = json.loads(store["LOCK"])["renewed"]
        time.sleep(0.3)
        assert json.loads(store["LOCK"])["renewed"] > first
        store["LOCK"] = _holder("intruder", 9, 0.0)
        time.sleep(0.3)
    assert "was taken over by host intruder pid 9" in caplog.text
    assert json.loads(store["LOCK"])["host"] == "intruder"  # the release leaves it alone
