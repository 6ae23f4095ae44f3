"""vla_ros.nodes.spin: the one wait-on-ROS loop (a stand-in executor; no DDS needed)."""

from __future__ import annotations

import math

import pytest

from vla_ros.nodes.spin import SpinTimeoutError, spin_for, spin_until


class CountingExecutor:
    def __init__(self) -> None:
        self.spins = 0

    def spin_once(self, timeout_sec: float) -> None:
        assert 0 <= timeout_sec <= 0.05
        self.spins += 1


def test_spins_until_the_condition_holds():
    ex = CountingExecutor()
    spin_until(ex, lambda: ex.spins >= 3, timeout_s=10.0)
    assert ex.spins == 3
    spin_until(ex, lambda: True, timeout_s=0.0)  # already true: no spin at all
    assert ex.spins == 3
    spin_until(ex, lambda: ex.spins >= 5, timeout_s=math.inf)
    assert ex.spins == 5


def test_timeout_names_what_was_awaited():
    ex = CountingExecutor()
    with pytest.raises(SpinTimeoutError, match="the reset service"):
        spin_until(ex, lambda: False, timeout_s=0.1, what="the reset service")
    assert ex.spins >= 1
    assert issubclass(SpinTimeoutError, TimeoutError)


def test_check_can_end_the_wait_early():
    ex = CountingExecutor()

    def check() -> None:
        if ex.spins == 2:
            raise RuntimeError("a node died")

    with pytest.raises(RuntimeError, match="a node died"):
        spin_until(ex, lambda: False, timeout_s=60.0, check=check)
    assert ex.spins == 2


def test_spin_for_keeps_spinning():
    ex = CountingExecutor()
    spin_for(ex, 0.12)
    assert ex.spins >= 2
