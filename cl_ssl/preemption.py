"""Preemption: a run asked to stop saves a checkpoint at a step all its processes agree on.

Cloud TPU spot and preemptible VMs, and most cluster schedulers, send SIGTERM about 30 seconds
before they reclaim a machine; a user presses Ctrl-C (SIGINT). On the first of either signal the
run finishes the step it is on, saves a checkpoint at the next step that every process reaches
(``Preemption.reached``), says where the same command resumes, and exits with status 128 + the
signal's number. A second signal stops the process at once (SIGINT as ``KeyboardInterrupt``,
SIGTERM by its default action), and the run then resumes from its last saved checkpoint.

On one process the signal is caught here. On several, JAX's preemption service catches SIGTERM
(``jax.distributed.initialize`` installs it), tells every process, and agrees on the step: the
next sync point that every process reaches
(``jax.experimental.multihost_utils.reached_preemption_sync_point``); SIGINT is forwarded to it as
a SIGTERM of this process. A signal agreed at a task's last step stops the run before the task's
evaluation, which can take longer than the grace period; the same command evaluates it. A signal
that arrives during end-of-task work (evaluation, exemplar selection) is honoured once that work
ends and the task's boundary checkpoint is saved, on several processes at the next task's first
step, which they all reach; in a strategy's own training loop there (Genifer's GAN), at the next
iteration every process reaches: the loop saves its progress and raises ``Stopped``, and the run
saves the task's trained state.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import jax
from jax.experimental import multihost_utils


class Stopped(Exception):
    """Raised by a strategy's own loop at a task's end (``TaskEnd.progress``) once a signal stopped
    it, after saving its progress; the message says where it stopped."""


class Preemption:
    """Catches SIGTERM and SIGINT for the lifetime of a run (a context manager); ``reached()``
    says when the run should save at the step it is on and stop.

    Handlers can only be installed from the main thread: elsewhere (a run started from a worker
    thread) nothing is caught and ``reached`` is always False.
    """

    def __init__(self):
        self.signal: int | None = None  # the first signal seen by this process
        self._previous: dict[int, object] = {}
        self._several = jax.process_count() > 1
        # The sync points passed: every process counts the same calls, which only go up (a
        # strategy's loop at a task's end calls too, so the run's steps would not).
        self._sync_points = 0

    def __enter__(self) -> Preemption:
        if threading.current_thread() is not threading.main_thread():
            return self
        caught = (signal.SIGINT,) if self._several else (signal.SIGINT, signal.SIGTERM)
        for signum in caught:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signal is not None:  # the second signal: stop at once
            if signum == signal.SIGINT:
                signal.default_int_handler(signum, frame)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signal = signum
        print(
            f"\n{signal.Signals(signum).name} received: saving a checkpoint at the next step "
            "every process reaches, then stopping (send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )
        if self._several and signum == signal.SIGINT:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption service

    def reached(self) -> bool:
        """Whether the run saves a checkpoint at the step (or iteration) it is on and stops.

        On several processes this must be called at every step, by every process, in the same
        order (each call is one of JAX's preemption sync points); it is True at the same call on
        all of them.
        """
        if self._several:
            self._sync_points += 1
            reached = multihost_utils.reached_preemption_sync_point(self._sync_points)
            if reached and self.signal is None:
                self.signal = signal.SIGTERM  # seen by another process
            return reached
        return self.signal is not None

    def stops_between_tasks(self) -> bool:
        """Whether a signal seen during a task's end-of-task work stops the run before the next
        task: on one process, once a signal came; on several, never, as the processes see the
        signal at different times: ``reached()`` at the next task's first step stops them
        together."""
        return not self._several and self.signal is not None

    @property
    def exit_status(self) -> int:
        """The status a stopped run exits with: 128 + the signal's number, as a shell reports a
        process the signal ended."""
        return 128 + (self.signal or signal.SIGTERM)
