"""Preemption: a run asked to stop saves a checkpoint at a step all its processes agree on.

Cloud TPU spot and preemptible VMs, and most cluster schedulers, send SIGTERM about 30 seconds
before they reclaim a machine; a user presses Ctrl-C (SIGINT). On the first of either signal the
run finishes the step it is on, saves a checkpoint at the next step that every process reaches
(``Preemption.reached``), says where the same command resumes, and exits with status 128 + the
signal's number. A second signal stops the process at once (SIGINT as ``KeyboardInterrupt``,
SIGTERM by its default action), and the run then resumes from its last saved checkpoint.

On one process the signal is caught here. On several, JAX's preemption service catches SIGTERM
(``jax.distributed.initialize`` installs it), tells every process, and agrees on the step: the
largest step any process has reached, plus one
(``jax.experimental.multihost_utils.reached_preemption_sync_point``); SIGINT is forwarded to it as
a SIGTERM of this process. A signal that arrives during end-of-task work is honoured once that
work ends and the task's boundary checkpoint is saved (evaluation, exemplar selection), or, in a
strategy's own training loop there (Genifer's GAN), at the next iteration every process reaches:
the loop saves its progress and raises ``Stopped``, and the run saves the task's trained state.
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
    """Catches SIGTERM and SIGINT for the lifetime of a run (a context manager); ``reached(step)``
    says when the run should save at ``step`` and stop.

    Handlers can only be installed from the main thread: elsewhere (a run started from a worker
    thread) nothing is caught and ``reached`` is always False.
    """

    def __init__(self):
        self.signal: int | None = None  # the first signal seen by this process
        self._previous: dict[int, object] = {}
        self._several = jax.process_count() > 1

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

    def reached(self, step: int) -> bool:
        """Whether the run saves a checkpoint at global step ``step`` and stops.

        On several processes this must be called at every step, by every process, with the same
        steps (JAX's preemption sync point); it is True at the same step on all of them.
        """
        if self._several:
            reached = multihost_utils.reached_preemption_sync_point(step)
            if reached and self.signal is None:
                self.signal = signal.SIGTERM  # seen by another process
            return reached
        return self.signal is not None

    @property
    def exit_status(self) -> int:
        """The status a stopped run exits with: 128 + the signal's number, as a shell reports a
        process the signal ended."""
        return 128 + (self.signal or signal.SIGTERM)
