"""A run's workdir: the lock that lets one run own it, and its stored config, which a resumed run
must match."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket

import jax
import ml_collections

from cl_ssl import config as config_lib
from cl_ssl.evaluation import report


@contextlib.contextmanager
def workdir_lock(workdir: str):
    """Holds ``workdir``/LOCK for the duration of a run, so that one run owns a workdir.

    The lock is an exclusive ``fcntl.flock`` on the file, which records the holder's host and
    pid. The operating system releases it when the process ends, however it ends, so the lock of
    a run that died is stale and the next run takes it over. On a multi-host run only process 0
    takes it. (``flock`` is local to a machine: two machines sharing a network file system are not
    kept apart.)

    Raises:
      RuntimeError: when another process holds the lock; the message names it.
    """
    if jax.process_index() != 0:
        yield
        return
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
            raise RuntimeError(
                f"--workdir={workdir} is in use by another run ({holder}); wait until it ends, or "
                "choose another --workdir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"host {socket.gethostname()} pid {os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)  # released with the file; an empty LOCK names no one


def check_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Stores the config in the workdir; refuses a workdir whose checkpoints are of another config.

    A stored config without checkpoints (a first attempt that failed before saving anything) is
    replaced.
    """
    given = json.loads(config.to_json())
    path = os.path.join(workdir, "config.json")
    checkpoints = os.path.join(workdir, "checkpoints")
    has_run = os.path.isdir(checkpoints) and any(n.isdigit() for n in os.listdir(checkpoints))
    if has_run and os.path.exists(path):
        with open(path) as f:
            differ = config_lib.differing_fields(json.load(f), given)
        if differ:
            raise ValueError(
                f"--workdir={workdir} holds a run of a different config (fields that differ: "
                f"{', '.join(differ)}); use a new --workdir, or the stored config {path}"
            )
    elif jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        report.write_atomic(path, json.dumps(given, indent=2, sort_keys=True))
