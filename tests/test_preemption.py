"""The signal handlers of a run: the first SIGTERM or SIGINT asks for a checkpoint and a stop, a
second stops at once, and the handlers before the run come back after it. (Whole runs preempted
on one and two processes: tests/test_multihost.py.)"""

import signal

import pytest

from cl_ssl import preemption


def test_a_first_signal_asks_to_stop_and_a_second_stops_at_once():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with preemption.Preemption() as p:
        assert not p.reached(1) and p.signal is None
        signal.raise_signal(signal.SIGINT)
        assert p.signal == signal.SIGINT and p.reached(2) and p.exit_status == 130
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_sigterm_is_caught_and_reported_as_status_143():
    with preemption.Preemption() as p:
        signal.raise_signal(signal.SIGTERM)
        assert p.signal == signal.SIGTERM and p.reached(7) and p.exit_status == 143
