"""Two processes of two CPU devices each form one run of four devices, started as the README shows
(``--multihost --coordinator_address=127.0.0.1:PORT --num_processes=2 --process_id=I``, gloo
collectives), preempted mid-task (SIGTERM to one of them) and started again; the run ends where a
one-process run on four devices ends."""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest
from helpers import TINY_DEMO_OVERRIDES

from cl_ssl import checkpoint, parallel

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_CLASSES, TRAIN_PER_CLASS = 10, 8  # helpers.write_tiny_fashion_mnist's defaults

# The README's runlocal demo, shrunk, with the images in host memory: each process then sends its
# own rows of every batch.
OVERRIDES = TINY_DEMO_OVERRIDES


# Started through PYTHONPATH in each process: records every path the process opens for writing,
# renames, creates as a folder or deletes, one per line, in $CL_SSL_WRITES_LOG (writes from C
# libraries, such as tensorstore's of the checkpoints' arrays, are not seen).
_RECORD_WRITES = """
import os, sys

_log = open(os.environ["CL_SSL_WRITES_LOG"], "a", buffering=1)
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT


def _record(event, args):
    if event == "open" and (any(c in (args[1] or "") for c in "wax+") or (args[2] or 0) & _WRITE):
        path = args[0]
    elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
        path = args[0]
    elif event == "os.rename":  # os.replace raises it too
        path = args[1]
    else:
        return
    if isinstance(path, (str, bytes, os.PathLike)):
        _log.write(os.path.abspath(os.fsdecode(path)) + "\\n")


sys.addaudithook(_record)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_TWO_DEVICES = "--xla_force_host_platform_device_count=2"  # the README's setting


def _start_processes(
    workdir: pathlib.Path, data_dir: pathlib.Path, attempt: str
) -> list[subprocess.Popen]:
    """The README's two commands, each process with two CPU devices, recording the paths it
    writes in ``workdir``/../writes_of_process_<i>.log and its output in
    ``workdir``/../<attempt>_<i>.out and .err."""
    hook = workdir.parent / "record_writes"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(_RECORD_WRITES)
    overrides = {**OVERRIDES, "dataset.data_dir": str(data_dir)}
    command = [
        sys.executable,
        "-m",
        "cl_ssl.main",
        f"--config={ROOT / 'configs' / 'fashion_mnist.py'}:runlocal",
        f"--workdir={workdir}",
        "--multihost",
        f"--coordinator_address=127.0.0.1:{_free_port()}",
        "--num_processes=2",
        *(
            f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}"
            for k, v in overrides.items()
        ),
    ]
    path = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    processes = []
    for i in (0, 1):
        with (
            open(workdir.parent / f"{attempt}_{i}.out", "w") as out,
            open(workdir.parent / f"{attempt}_{i}.err", "w") as err,
        ):
            processes.append(
                subprocess.Popen(
                    [*command, f"--process_id={i}"],
                    stdout=out,
                    stderr=err,
                    env={
                        **os.environ,
                        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {_TWO_DEVICES}",
                        "PYTHONPATH": path,
                        "CL_SSL_WRITES_LOG": str(workdir.parent / f"writes_of_process_{i}.log"),
                    },
                )
            )
    return processes


def _fail_if_one_failed(processes, workdir: pathlib.Path, attempt: str) -> None:
    """When a process has ended with an error: kills the others and fails with its stderr."""
    for i, p in enumerate(processes):
        if p.poll() not in (None, 0):
            for other in processes:
                other.kill()
                other.wait()
            err = (workdir.parent / f"{attempt}_{i}.err").read_text()
            pytest.fail(
                f"process {i} of the {attempt} attempt exited with {p.returncode}:\n{err[-3000:]}"
            )


def _wait(processes, workdir: pathlib.Path, attempt: str, timeout: float) -> list[str]:
    """Each process's stdout, once all have ended successfully."""
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in processes):
        _fail_if_one_failed(processes, workdir, attempt)
        assert time.monotonic() < deadline, f"the processes still run after {timeout} s"
        time.sleep(0.1)
    _fail_if_one_failed(processes, workdir, attempt)
    return [(workdir.parent / f"{attempt}_{i}.out").read_text() for i in (0, 1)]


def _preempt_after_checkpoint(
    processes, workdir: pathlib.Path, attempt: str, step: int, timeout: float
) -> int:
    """SIGTERM to the first process alone once checkpoint ``step`` is complete, as a preemption
    notice reaches one worker; every process must then exit within 30 s (a TPU VM's grace
    period) with status 143 and a checkpoint at the step they agreed on, which is returned."""
    deadline = time.monotonic() + timeout
    while not (workdir / "checkpoints" / str(step)).is_dir():
        _fail_if_one_failed(processes, workdir, attempt)
        assert all(p.poll() is None for p in processes), f"the run ended before checkpoint {step}"
        assert time.monotonic() < deadline, f"no checkpoint {step} after {timeout} s"
        time.sleep(0.05)
    processes[0].send_signal(signal.SIGTERM)
    for p in processes:
        p.wait(timeout=30)
    out = (workdir.parent / f"{attempt}_0.out").read_text()
    assert [p.returncode for p in processes] == [143] * len(processes), out
    agreed = int(re.search(r"stopped by SIGTERM at step (\d+): the same command resumes", out)[1])
    assert agreed > step and (workdir / "checkpoints" / str(agreed)).is_dir()
    return agreed


def _written(workdir: pathlib.Path, process: int) -> set[str]:
    """The paths in ``workdir`` that ``process`` wrote, relative to it."""
    log = (workdir.parent / f"writes_of_process_{process}.log").read_text().split()
    return {os.path.relpath(p, workdir) for p in log if p.startswith(f"{workdir}{os.sep}")}


def test_two_processes_preempted_mid_task_resume_to_the_one_process_result(
    tmp_path, tiny_fashion_mnist, tiny_demo_run
):
    _, whole, whole_dir = tiny_demo_run  # the same config in one process, on four devices
    workdir = tmp_path / "two_processes"
    steps_per_task = NUM_CLASSES // 2 * TRAIN_PER_CLASS // OVERRIDES["batch_size"]

    # Preempted after the checkpoint of step 2, then the same two commands.
    first = _start_processes(workdir, tiny_fashion_mnist, "first")
    agreed = _preempt_after_checkpoint(first, workdir, "first", 2, timeout=240)
    assert json.loads((workdir / "results.json").read_text())["meta"]["rows_evaluated"] < 3
    outputs = _wait(_start_processes(workdir, tiny_fashion_mnist, "second"), workdir, "second", 240)
    assert f"at step {agreed} (" in outputs[0]  # resumed, not started over

    assert json.loads((workdir / "config.json").read_text()) == json.loads(
        (whole_dir / "config.json").read_text()
    )
    results = json.loads((workdir / "results.json").read_text())
    environment = results["meta"]["environment"]
    assert (environment["process_count"], environment["device_count"]) == (2, 4)
    # kNN accuracy of 20 test images per task: equal, or one image apart where float32
    # reductions in another order move a vote.
    np.testing.assert_allclose(results["matrices"]["knn"], whole["matrices"]["knn"], atol=5.01)

    # The final checkpoint holds the one-process parameters, up to the order of float32 sums: each
    # process sent the rows of every batch that its devices take.
    ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), keep=2)
    last = 2 * steps_per_task
    assert ckpt.latest_step() == last
    sharding = jax.sharding.NamedSharding(parallel.make_mesh(4), jax.sharding.PartitionSpec())
    state, _ = ckpt.restore_step(last, checkpoint.abstract_like(whole["state"], sharding))
    ckpt.close()
    chex.assert_trees_all_close(state.params, whole["state"].params, rtol=1e-4, atol=1e-5)

    # Process 0 alone reports: the console's matrices, results, plots and TensorBoard; process 1
    # prints none of the run's reports (only gloo's connection lines, "[Gloo] Rank r is connected
    # to ...", which its threads break and interleave anywhere, down to a lone digit) and writes
    # its part of the checkpoints.
    reports = ("evaluating", "accuracy", "resumed from", "stopped by", "after stage", "saving")
    assert "knn accuracy" in outputs[0] and "resumed from" in outputs[0]
    assert not [r for r in reports if r in outputs[1]], outputs[1]
    by_process_0 = _written(workdir, 0)
    assert {"results.json", "results.md", "config.json"} <= by_process_0
    assert any(p.startswith("plots/") for p in by_process_0)
    assert any(p.startswith("tb/events.out.tfevents") for p in by_process_0)
    by_process_1 = _written(workdir, 1)
    assert by_process_1 and all(p.startswith("checkpoints/") for p in by_process_1), by_process_1
