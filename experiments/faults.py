"""Fault injection on small Fashion-MNIST runs: does a run lose nothing and say what went wrong?

Each fault is injected into ``python -m cl_ssl.main`` processes on the demo's tiny setting (the
``runlocal`` preset with 2 tasks and a checkpoint every 10 steps), and the outcome is compared
with an uninterrupted run of the same config (its results.json accuracy matrices, exactly):

- ``kill``: SIGKILL once checkpoint N exists (N in ``KILL_AFTER``), then the same command
  resumes;
- ``corrupt``: the newest checkpoint's largest file overwritten in its middle (1000 bytes, same
  size), truncated to half, one digit of its saved accuracy matrices changed (bytes that still
  decode, which only the checkpoint's digest reveals), or the checkpoint deleted, after a kill;
  then the run resumes;
- ``preempt``: SIGTERM (a preemption notice) once checkpoint N exists (N in ``PREEMPT_AFTER``):
  the process must exit within 30 s with status 143 and a checkpoint at the step it names, and
  the same command must then resume from that step to the same results; then a second SIGTERM
  while the first waits for the evaluation at the task boundary, which must end the process at
  once;
- ``unwritable``: the checkpoints folder replaced by a file during the run (what a read-only
  folder does to a run by root, whom permissions do not stop): the process must exit within
  seconds with an error naming the checkpoint folder; the folder restored, the run resumes;
- ``two``: a second process started on the workdir of a running one must stop at once, and the
  first must end as the uninterrupted run;
- ``bucket``: the workdir in a bucket (``gs://``, on the tests' local GCS emulator): killed after
  checkpoint 60 and resumed; a second process started once a run holds the lock object; SIGTERM
  after checkpoint 60, then resumed;
- ``settings``: bad settings, each of which must end the command within seconds, before any
  checkpoint exists, with one ``error:`` line naming the field and no traceback.

A full disk cannot be made here without mounting a file system; it is not tried.

    python experiments/faults.py --faults=settings
    python experiments/faults.py --faults=kill,corrupt,unwritable,two,bucket --workdir=/tmp/faults

Prints one line per trial and a summary table (tried, survived with nothing lost or reported as
required).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from absl import app, flags

from cl_ssl import storage

# The tests' GCS emulator (gcp-storage-emulator with GCS's generation headers and preconditions).
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests"))
import gcs_emulator  # noqa: E402

_FAULTS = flags.DEFINE_list(
    "faults",
    ["settings", "kill", "corrupt", "preempt", "unwritable", "two", "bucket"],
    "Which faults to inject.",
)
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/cl_ssl_faults", "Parent folder of the runs.")

BASE = [
    "--config=configs/fashion_mnist.py:runlocal",
    "--config.num_tasks=2",
    "--config.checkpoint_every_steps=10",
    "--config.progress_bar=false",
]

# (flags, the field the message must name)
BAD_SETTINGS = [
    (["--config.batch_size=0"], "batch_size"),
    (["--config.batch_size=100000"], "batch_size"),
    (["--config.epochs_per_task=0"], "epochs_per_task"),
    (["--config.num_tasks=3"], "num_tasks"),
    (["--config.strategy=nope"], "strategy"),
    (["--config.objective=nope"], "objective"),
    (["--config.dataset.name=nope"], "nope"),
    (["--config.scenario=nope"], "scenario"),
    (["--config.class_order=nope"], "class_order"),
    (["--config.optimizer.name=nope"], "optimizer"),
    (["--config.optimizer.lr=-0.1"], "optimizer.lr"),
    (["--config.optimizer.lr=0"], "optimizer.lr"),
    (["--config.optimizer.lr=nan"], "optimizer.lr"),
    (["--config.optimizer.lr=abc"], "optimizer.lr"),
    (["--config.optimizer.weight_decay=-1"], "optimizer.weight_decay"),
    (["--config.optimizer.min_lr=-1"], "optimizer.min_lr"),
    (["--config.optimizer.warmup_epochs=1"], "warmup_epochs"),
    (["--config.optimzer.lr=0.1"], "optimizer"),
    (["--config.eval.train_examples=0"], "eval.train_examples"),
    (["--config.eval.linear.epochs=0"], "eval.linear.epochs"),
    (["--config.eval.linear.batch_size=0"], "eval.linear.batch_size"),
    (["--config.eval.linear.learning_rate=-1"], "eval.linear.learning_rate"),
    (["--config.eval.knn.k=0"], "eval.knn.k"),
    (["--config.eval.knn.temperature=0"], "eval.knn.temperature"),
    (["--config.eval.batch_size=0"], "eval.batch_size"),
    (["--config.eval.forgetting=max"], "eval.forgetting"),
    (["--config.eval.bwt_norm=x"], "eval.bwt_norm"),
    (["--config.keep_checkpoints=1"], "keep_checkpoints"),
    (["--config.checkpoint_every_steps=0"], "checkpoint_every_steps"),
    (["--config.log_every_steps=0"], "log_every_steps"),
    (["--config.stop_after_steps=0"], "stop_after_steps"),
    (["--config.offline_epochs=0"], "offline_epochs"),
    (["--config.labels.fraction=1.5"], "labels.fraction"),
    (["--config.model.dtype=float16"], "model.dtype"),
    (["--config.model.backbone=nope"], "backbone"),
    (["--config.recipe=nope"], "recipe"),
    (["--config.dataset.image_size=-1"], "dataset.image_size"),
    (["--config.strategy=replay", "--config.replay.selection=fifo"], "replay.selection"),
    (["--config.strategy=lump", "--config.lump.alpha=0"], "lump.alpha"),
    (["--config.strategy=kaizen"], "labels.fraction"),
    (
        ["--config.strategy=kaizen", "--config.labels.fraction=1", "--config.kaizen.num_classes=5"],
        "kaizen.num_classes",
    ),
    (["--config.objective=mocov2plus", "--config.mocov2plus.queue_size=1000"], "queue_size"),
    (["--config=configs/no_such_file.py"], "no_such_file"),
    (["--workdir=/dev/null"], "workdir"),
]


def _command(workdir: str, *extra: str) -> list[str]:
    """The run's command; a ``--config=`` in ``extra`` replaces the preset (it must come first:
    overrides apply to the config file before them)."""
    base = BASE
    if any(e.startswith("--config=") for e in extra):
        base = [b for b in BASE if not b.startswith("--config=")]
        extra = sorted(extra, key=lambda e: not e.startswith("--config="))
        return [sys.executable, "-m", "cl_ssl.main", *extra, *base, f"--workdir={workdir}"]
    return [sys.executable, "-m", "cl_ssl.main", *base, f"--workdir={workdir}", *extra]


def _matrices(workdir: str):
    return json.loads((storage.path(workdir) / "results.json").read_text())["matrices"]


def _checkpoints(workdir: str) -> list[int]:
    """The steps of the checkpoints in ``workdir`` (a folder or a bucket URI)."""
    folder = storage.path(workdir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def _start(workdir: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        _command(workdir, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _reached(workdir: str, step: int) -> bool:
    """Whether a checkpoint of ``step`` or later exists (older periodic ones are deleted as the
    run goes on, and a listing in a bucket can miss one that lived a fraction of a second)."""
    return any(s >= step for s in _checkpoints(workdir))


def _kill_when(workdir: str, has_checkpoint: int) -> bool:
    """Starts the run and SIGKILLs it once checkpoint ``has_checkpoint`` (or a later one) exists;
    whether it was still running then."""
    process = _start(workdir)
    while not _reached(workdir, has_checkpoint) and process.poll() is None:
        time.sleep(0.2)
    running = process.poll() is None
    process.kill()
    process.wait()
    return running


def _resume(workdir: str) -> subprocess.CompletedProcess:
    return subprocess.run(_command(workdir), capture_output=True, text=True, timeout=1800)


def _reference(root: str):
    workdir = os.path.join(root, "reference")
    if not os.path.exists(os.path.join(workdir, "results.json")):
        shutil.rmtree(workdir, ignore_errors=True)
        subprocess.run(_command(workdir), check=True, capture_output=True, timeout=1800)
    return _matrices(workdir), _checkpoints(workdir)


def _same(workdir: str, reference) -> bool:
    done = (storage.path(workdir) / "results.json").exists()
    return done and _matrices(workdir) == reference


# Checkpoints to kill at (every 10 steps and at the boundary, step 117 of 234): early, mid-task,
# at and just after the task boundary, late in the second task.
KILL_AFTER = (10, 60, 117, 120, 180, 230)


def trial_kill(root, reference, steps):
    """Killed once checkpoint ``step`` exists, then resumed: the same results."""
    del steps
    out = []
    for step in KILL_AFTER:
        workdir = os.path.join(root, f"kill_{step}")
        shutil.rmtree(workdir, ignore_errors=True)
        killed = _kill_when(workdir, step)
        resumed = _resume(workdir)
        out.append(
            (
                f"kill -9 after checkpoint {step}",
                killed and resumed.returncode == 0 and _same(workdir, reference),
            )
        )
    return out


def _largest_file(folder: str) -> str:
    files = [os.path.join(d, n) for d, _, names in os.walk(folder) for n in names]
    return max(files, key=os.path.getsize)


def trial_corrupt(root, reference, steps):
    out = []
    del steps
    kill_at = 60
    for damage in ("overwrite", "truncate", "digit", "delete"):
        workdir = os.path.join(root, f"corrupt_{damage}")
        shutil.rmtree(workdir, ignore_errors=True)
        killed = _kill_when(workdir, kill_at)
        newest = os.path.join(workdir, "checkpoints", str(max(_checkpoints(workdir))))
        if damage == "delete":
            shutil.rmtree(newest)
        elif damage == "digit":
            path = os.path.join(newest, "meta", "metadata")
            with open(path) as f:
                text = f.read()
            at = re.search(r"\d\.\d", text).start()  # a digit of the first accuracy saved
            with open(path, "w") as f:
                f.write(text[:at] + str(9 - int(text[at])) + text[at + 1 :])
        else:
            path = _largest_file(newest)
            size = os.path.getsize(path)
            with open(path, "r+b") as f:
                if damage == "overwrite":
                    f.seek(size // 2)
                    f.write(os.urandom(min(1000, size - size // 2)))
                else:
                    f.truncate(size // 2)
        resumed = _resume(workdir)
        ok = killed and resumed.returncode == 0 and _same(workdir, reference)
        done = {
            "overwrite": "overwritten",
            "truncate": "truncated",
            "digit": "changed in one digit of its accuracy matrices",
            "delete": "deleted",
        }[damage]
        out.append((f"newest checkpoint {done} after a kill", ok))
    return out


# Checkpoints to preempt at: mid-task in the first task, and in the second.
PREEMPT_AFTER = (30, 150)


def trial_preempt(root, reference, steps):
    """SIGTERM once checkpoint ``step`` exists: saved at the named step within the grace period,
    then resumed from it to the same results; a second SIGTERM ends the process at once."""
    del steps
    out = []
    for step in PREEMPT_AFTER:
        workdir = os.path.join(root, f"preempt_{step}")
        shutil.rmtree(workdir, ignore_errors=True)
        process = _start(workdir)
        while not _reached(workdir, step) and process.poll() is None:
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        started = time.perf_counter()
        try:
            stdout, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            out.append((f"SIGTERM after checkpoint {step}: exits within 30 s", False))
            continue
        waited = time.perf_counter() - started
        named = re.search(r"stopped by SIGTERM at step (\d+)", stdout)
        saved = named is not None and int(named[1]) in _checkpoints(workdir)
        resumed = _resume(workdir)
        out.append(
            (
                f"SIGTERM after checkpoint {step}: status {process.returncode} after {waited:.1f} s, "
                f"checkpoint {named[1] if named else '?'} saved, resumed from it",
                process.returncode == 143
                and saved
                and f"at step {named[1]} (" in resumed.stdout
                and resumed.returncode == 0
                and _same(workdir, reference),
            )
        )
    # The second signal must come while the first is being honoured: during the evaluation at
    # the task boundary, which the first signal waits for, once the run has said it received it.
    workdir = os.path.join(root, "preempt_twice")
    shutil.rmtree(workdir, ignore_errors=True)
    process = subprocess.Popen(
        _command(workdir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for line in process.stdout:
        if "evaluating stage 1" in line:
            process.send_signal(signal.SIGTERM)
        if "SIGTERM received" in line:
            process.send_signal(signal.SIGTERM)
            break
    started = time.perf_counter()
    process.communicate(timeout=60)
    waited = time.perf_counter() - started
    out.append(
        (
            f"a second SIGTERM during the first's end-of-task wait: ended by it after "
            f"{waited:.1f} s",
            process.returncode == -signal.SIGTERM and waited < 5,
        )
    )
    return out


def trial_unwritable(root, reference, steps):
    del steps
    workdir = os.path.join(root, "unwritable")
    shutil.rmtree(workdir, ignore_errors=True)
    process = _start(workdir)
    folder = os.path.join(workdir, "checkpoints")
    while len(_checkpoints(workdir)) < 2 and process.poll() is None:
        time.sleep(0.2)
    kept = folder + ".kept"
    os.rename(folder, kept)
    with open(folder, "w"):
        pass
    started = time.perf_counter()
    try:
        _, err = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        process.kill()
        return [("checkpoints folder replaced by a file: exits", False)]
    waited = time.perf_counter() - started
    exited = process.returncode != 0 and "cannot be written" in err
    os.remove(folder)
    os.rename(kept, folder)
    resumed = _resume(workdir)
    return [
        (f"checkpoints folder replaced by a file: exits non-zero after {waited:.0f} s", exited),
        (
            "... then restored: the run resumes",
            resumed.returncode == 0 and _same(workdir, reference),
        ),
    ]


def trial_two(root, reference, steps):
    del steps
    workdir = os.path.join(root, "two")
    shutil.rmtree(workdir, ignore_errors=True)
    first = _start(workdir)
    while not _checkpoints(workdir) and first.poll() is None:
        time.sleep(0.2)
    started = time.perf_counter()
    second = subprocess.run(_command(workdir), capture_output=True, text=True, timeout=600)
    refused = second.returncode != 0 and "in use by another run" in second.stderr
    waited = time.perf_counter() - started
    first.communicate(timeout=1800)
    return [
        (f"second process on the workdir refused after {waited:.0f} s", refused),
        (
            "... and the first run ends as the uninterrupted one",
            first.returncode == 0 and _same(workdir, reference),
        ),
    ]


def trial_bucket(root, reference, steps):
    """The workdir in a bucket (an emulated one): killed and resumed, preempted and resumed, and a
    second process refused by the lock object while a run holds it."""
    del root, steps
    out = []
    with gcs_emulator.serve() as bucket:
        workdir = f"{bucket}/faults/kill"
        killed = _kill_when(workdir, 60)
        resumed = _resume(workdir)
        ok = killed and resumed.returncode == 0 and _same(workdir, reference)
        out.append(("bucket workdir: kill -9 after checkpoint 60, then the same command", ok))

        workdir = f"{bucket}/faults/two"
        first = _start(workdir)
        while not (storage.path(workdir) / "LOCK").exists() and first.poll() is None:
            time.sleep(0.2)
        started = time.perf_counter()
        second = subprocess.run(_command(workdir), capture_output=True, text=True, timeout=600)
        waited = time.perf_counter() - started
        refused = second.returncode != 0 and "in use by another run" in second.stderr
        first.communicate(timeout=1800)
        out.append(
            (
                f"bucket workdir: a second process refused after {waited:.0f} s; the first ends "
                "as the uninterrupted run",
                refused and first.returncode == 0 and _same(workdir, reference),
            )
        )

        workdir = f"{bucket}/faults/preempt"
        process = _start(workdir)
        while not _reached(workdir, 60) and process.poll() is None:
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        started = time.perf_counter()
        stdout, _ = process.communicate(timeout=60)
        waited = time.perf_counter() - started
        named = re.search(r"stopped by SIGTERM at step (\d+)", stdout)
        resumed = _resume(workdir)
        out.append(
            (
                f"bucket workdir: SIGTERM, status {process.returncode} after {waited:.1f} s, "
                f"checkpoint {named[1] if named else '?'}, then resumed from it",
                process.returncode == 143
                and named is not None
                and f"at step {named[1]} (" in resumed.stdout
                and resumed.returncode == 0
                and _same(workdir, reference),
            )
        )
    return out


def trial_settings(root):
    out = []
    for extra, field in BAD_SETTINGS:
        workdir = os.path.join(root, "settings")
        shutil.rmtree(workdir, ignore_errors=True)
        started = time.perf_counter()
        try:
            result = subprocess.run(
                _command(workdir, *extra), capture_output=True, text=True, timeout=120
            )
        except subprocess.TimeoutExpired:
            out.append((" ".join(extra) + ": accepted (still running after 120 s)", False))
            continue
        seconds = time.perf_counter() - started
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        ok = (
            result.returncode != 0
            and len(errors) == 1
            and field in result.stderr
            and "Traceback" not in result.stderr
            and not _checkpoints(workdir)
        )
        message = errors[0][:110] if errors else result.stderr.strip().splitlines()[-1:]
        out.append((f"{' '.join(extra)} ({seconds:.0f} s): {message}", ok))
    return out


def main(argv):
    del argv
    root = _WORKDIR.value
    os.makedirs(root, exist_ok=True)
    results = {}
    reference, steps = None, None
    for fault in _FAULTS.value:
        if fault == "settings":
            results[fault] = trial_settings(root)
            continue
        if reference is None:
            reference, steps = _reference(root)
        results[fault] = globals()[f"trial_{fault}"](root, reference, steps)
    for fault, trials in results.items():
        for what, ok in trials:
            print(f"[{'ok' if ok else 'FAIL'}] {fault}: {what}", flush=True)
    print("\n| fault | tried | survived / reported as required |\n|---|---:|---:|")
    for fault, trials in results.items():
        print(f"| {fault} | {len(trials)} | {sum(ok for _, ok in trials)} |")


if __name__ == "__main__":
    app.run(main)
