"""The signal handlers of a run: the first SIGTERM or SIGINT asks for a checkpoint and a stop, a
second stops at once, and the handlers before the run come back after it. (Whole runs preempted
on one and two processes: tests/test_multihost.py.)"""

import signal

import pytest

from cl_ssl import preemption


def test_a_first_signal_asks_to_stop_and_a_second_stops_at_once():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with preemption.Preemption() as p:
        assert not p.reached() and p.signal is None
        signal.raise_signal(signal.SIGINT)
        assert p.signal == signal.SIGINT and p.reached() and p.exit_status == 130
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_sigterm_is_caught_and_reported_as_status_143():
    with preemption.Preemption() as p:
        signal.raise_signal(signal.SIGTERM)
        assert p.signal == signal.SIGTERM and p.reached() and p.exit_status == 143


def test_several_processes_agree_on_sync_points_that_only_go_up(monkeypatch):
    """On several processes each ``reached()`` is the next of JAX's preemption sync points, so
    that a strategy's loop at a task's end (Genifer's GAN) and the next task's steps never
    report a point lower than one before; a signal seen during end-of-task work waits for the
    next task's first step, where every process stops together."""
    points = []

    def sync_point(n):
        points.append(n)
        return n == 3

    monkeypatch.setattr(preemption.jax, "process_count", lambda: 2)
    monkeypatch.setattr(preemption.multihost_utils, "reached_preemption_sync_point", sync_point)
    with preemption.Preemption() as p:
        assert [p.reached() for _ in range(3)] == [False, False, True]
        assert points == [1, 2, 3] and p.signal == signal.SIGTERM  # seen by another process
        assert not p.stops_between_tasks()
    monkeypatch.undo()
    with preemption.Preemption() as one:
        assert not one.stops_between_tasks()
        signal.raise_signal(signal.SIGTERM)
        assert one.stops_between_tasks()
