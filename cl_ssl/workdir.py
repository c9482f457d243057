"""A run's workdir: the lock that lets one run own it, and its stored config, which a resumed run
must match. A workdir is a local folder or a bucket URI (``gs://bucket/runs/name``)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator

import jax
import ml_collections
import tensorstore as ts
from absl import logging

from cl_ssl import config as config_lib
from cl_ssl import storage

LOCK_STALE_SECONDS = 300.0
"""A bucket workdir's lock not renewed for this long is taken over: its run died without
releasing it (killed, or its machine lost)."""

LOCK_RENEW_SECONDS = 30.0
"""How often a run renews its bucket workdir's lock."""


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[None]:
    """Holds ``workdir``/LOCK for the duration of a run, so that one run owns a workdir.

    In a local folder the lock is an exclusive ``fcntl.flock`` on the file, which records the
    holder's host and pid. The operating system releases it when the process ends, however it
    ends, so the lock of a run that died is stale and the next run takes it over. (``flock`` is
    local to a machine: two machines sharing a network file system are not kept apart.) In a
    bucket it is an ``ObjectLock``. On a multi-host run only process 0 takes it.

    Raises:
      RuntimeError: when another process holds the lock; the message names it.
    """
    if jax.process_index() != 0:
        yield
    elif storage.is_remote(workdir):
        with ObjectLock(bucket_kvstore(workdir), where=workdir):
            yield
    else:
        with _file_lock(workdir):
            yield


@contextlib.contextmanager
def _file_lock(workdir: str) -> Iterator[None]:
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir={workdir} is a file; choose a folder")
    path = os.path.join(workdir, "LOCK")
    try:
        os.makedirs(workdir, exist_ok=True)
        f = open(path, "a+")  # noqa: SIM115 -- closed by the with block below
    except OSError as error:
        raise ValueError(
            f"cannot write to --workdir={workdir} ({error.strerror}); choose a writable folder"
        ) from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "a process that has not written its name yet"
            raise RuntimeError(_in_use(workdir, holder)) from None
        f.seek(0)
        f.truncate()
        f.write(f"host {socket.gethostname()} pid {os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)  # released with the file; an empty LOCK names no one


def _in_use(workdir: str, holder: str) -> str:
    return (
        f"--workdir={workdir} is in use by another run ({holder}); wait until it ends, or choose "
        "another --workdir"
    )


def bucket_kvstore(workdir: str) -> ts.KvStore:
    """The tensorstore key-value store of the bucket folder ``workdir`` (``gs://bucket/path``),
    through which the lock makes its conditional writes (GCS preconditions on the object's
    generation, which ``epath`` does not expose)."""
    scheme, _, rest = workdir.partition("://")
    bucket, _, folder = rest.partition("/")
    if scheme != "gs" or not bucket:
        raise ValueError(
            f"--workdir={workdir}: a workdir is a local folder or a Google Cloud Storage folder "
            "(gs://BUCKET/PATH)"
        )
    folder = folder.strip("/")
    spec = {"driver": "gcs", "bucket": bucket, "path": f"{folder}/" if folder else ""}
    return ts.KvStore.open(spec).result()


class ObjectLock:
    """A lock on object storage: the object ``LOCK`` of a key-value store, which names its holder.

    Taken by an atomic create-if-absent (a write conditional on the object not existing) of a
    JSON record ``{"host", "pid", "started", "renewed"}``, read back to confirm it; renewed every
    ``renew_every`` seconds by a background thread (a write conditional on the holder's own
    generation); deleted on release if still the holder's. While the record was renewed less than
    ``stale_after`` seconds ago, another run is refused; after that, or at once when the holder
    is a process of this host that no longer exists, it is taken over with a warning (by a write
    conditional on the stale record's generation, so that of two runs taking it over one wins).
    A renewal that finds the lock taken over logs an error: two runs then share the workdir.
    """

    def __init__(
        self,
        store: ts.KvStore,
        *,
        where: str,
        stale_after: float = LOCK_STALE_SECONDS,
        renew_every: float = LOCK_RENEW_SECONDS,
    ):
        if not 0 < renew_every < stale_after:
            raise ValueError(f"renew_every={renew_every} must be in (0, stale_after={stale_after})")
        self._store, self._where = store, where
        self._stale_after, self._renew_every = stale_after, renew_every
        self._record = {"host": socket.gethostname(), "pid": os.getpid()}
        self._generation = b""
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> ObjectLock:
        current = self._store.read("LOCK").result()
        if current.state == "value":
            self._check_stale(current.value)
        now = time.time()
        self._record.update(started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now)))
        record = self._encode(now)
        written = self._store.write("LOCK", record, if_equal=current.stamp.generation).result()
        confirmed = self._store.read("LOCK").result()
        if not written.generation or confirmed.value != record:
            raise RuntimeError(_in_use(self._where, _describe(confirmed.value)))
        self._generation = written.generation
        self._renewer = threading.Thread(target=self._renew, name="workdir-lock", daemon=True)
        self._renewer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._renewer.join()
        self._store.write("LOCK", None, if_equal=self._generation).result()

    def _check_stale(self, value: bytes) -> None:
        """Raises unless the lock recorded as ``value`` may be taken over; warns when it is."""
        holder = _decode(value)
        age = time.time() - float(holder.get("renewed", 0.0))
        dead = holder.get("host") == socket.gethostname() and not _alive(holder.get("pid"))
        if age < self._stale_after and not dead:
            raise RuntimeError(
                f"{_in_use(self._where, _describe(value))} (a lock not renewed for "
                f"{self._stale_after:.0f} s is taken over)"
            )
        why = "its process has ended" if dead else f"not renewed for {age:.0f} s"
        logging.warning(
            "taking over the lock of %s from %s: %s", self._where, _describe(value), why
        )

    def _encode(self, now: float) -> bytes:
        return json.dumps({**self._record, "renewed": now}).encode()

    def _renew(self) -> None:
        while not self._stop.wait(self._renew_every):
            renewed = self._store.write(
                "LOCK", self._encode(time.time()), if_equal=self._generation
            ).result()
            if not renewed.generation:
                logging.error(
                    "the lock of %s was taken over by %s while this run held it: two runs now "
                    "write this workdir; stop one of them",
                    self._where,
                    _describe(self._store.read("LOCK").result().value),
                )
                return
            self._generation = renewed.generation


def _decode(value: bytes) -> dict:
    try:
        holder = json.loads(value)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(value: bytes) -> str:
    holder = _decode(value)
    if not holder:
        return "a holder whose LOCK cannot be read"
    age = time.time() - float(holder.get("renewed", 0.0))
    return (
        f"host {holder.get('host')} pid {holder.get('pid')}, started {holder.get('started')}, "
        f"renewed {age:.0f} s ago"
    )


def _alive(pid: object) -> bool:
    """Whether a process ``pid`` exists on this host (True for one of another user)."""
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Stores the config in the workdir; refuses a workdir whose checkpoints are of another config.

    A stored config without checkpoints (a first attempt that failed before saving anything) is
    replaced.
    """
    given = json.loads(config.to_json())
    folder = storage.path(workdir)
    stored = folder / "config.json"
    checkpoints = folder / "checkpoints"
    has_run = checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())
    if has_run and stored.exists():
        differ = config_lib.differing_fields(json.loads(stored.read_text()), given)
        if differ:
            raise ValueError(
                f"--workdir={workdir} holds a run of a different config (fields that differ: "
                f"{', '.join(differ)}); use a new --workdir, or the stored config {stored}"
            )
    elif jax.process_index() == 0:
        folder.mkdir(parents=True, exist_ok=True)
        storage.write_atomic(stored, json.dumps(given, indent=2, sort_keys=True))
