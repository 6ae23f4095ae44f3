"""The one way this project waits on ROS: spin an executor until a condition holds, with a deadline.

Clients, command-line tools, the evaluation client and the tests all wait for a subscription match, a service,
a future or a message this way; nothing sleeps while callbacks are due.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

SPIN_PERIOD_S = 0.05  # longest a wait sleeps in the executor before looking at the condition again


class SpinTimeoutError(TimeoutError):
    """The condition did not hold within the deadline; the message names what was waited for."""


def spin_until(executor, predicate: Callable[[], object], timeout_s: float, what: str = "condition", *,
               check: Callable[[], None] | None = None) -> None:
    """Spin ``executor`` until ``predicate()`` is true; :class:`SpinTimeoutError` after ``timeout_s`` seconds.

    ``check`` runs before each spin and may raise to end the wait early (e.g. a node of the graph died).
    ``timeout_s`` may be ``math.inf``.
    """
    deadline = time.monotonic() + timeout_s if math.isfinite(timeout_s) else math.inf
    while not predicate():
        if time.monotonic() > deadline:
            raise SpinTimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        if check is not None:
            check()
        executor.spin_once(timeout_sec=SPIN_PERIOD_S)


def spin_for(executor, seconds: float) -> None:
    """Keep spinning for ``seconds`` (e.g. so a reliable writer delivers before a tool exits)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=min(SPIN_PERIOD_S, max(0.0, deadline - time.monotonic())))
