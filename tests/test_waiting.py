"""``poll``: the one wait loop (answer, timeout, attempts, backoff) with a fake clock."""

from __future__ import annotations

import pytest

from aitune_triton.waiting import poll


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_poll_returns_the_first_truthy_answer():
    answers = iter([None, 0, "ready", "later"])
    clock = FakeClock()
    assert poll(lambda: next(answers), 10, 0.5, sleep=clock.sleep, clock=clock) == "ready"
    assert clock.sleeps == [0.5, 0.5]


def test_poll_gives_up_at_the_deadline_and_looks_once_more_there():
    clock = FakeClock()
    calls = []
    assert poll(lambda: calls.append(clock.now), 1.0, 0.4, sleep=clock.sleep, clock=clock) is None
    assert calls == [0.0, 0.4, 0.8, 1.0]  # the last pause is cut to the deadline


def test_poll_with_a_zero_timeout_looks_once():
    clock = FakeClock()
    assert poll(lambda: False, 0, 1.0, sleep=clock.sleep, clock=clock) is None and clock.sleeps == []


def test_poll_backs_off_and_stops_after_the_attempts():
    clock = FakeClock()
    assert poll(lambda: False, 100, 0.5, backoff=2.0, attempts=3, sleep=clock.sleep, clock=clock) is None
    assert clock.sleeps == [0.5, 1.0]


def test_an_exception_from_the_check_ends_the_wait():
    def dead():
        raise RuntimeError("the process exited")

    with pytest.raises(RuntimeError, match="the process exited"):
        poll(dead, 10)
