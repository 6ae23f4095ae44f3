"""Shared test helpers: deadline-based waiting and process groups that are always cleaned up."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from vla_ros.nodes.spin import spin_until  # noqa: F401 - the one spin loop, re-exported for the tests

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def wait_for(predicate: Callable[[], bool], timeout: float, spin: Callable[[], None] | None = None,
             what: str = "condition") -> None:
    """Poll ``predicate`` (spinning ``spin`` in between) until it holds; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if spin is not None:
            spin()
        else:
            time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class ManagedProcess:
    """A child in its own process group, stopped with SIGINT then SIGKILL; output kept in a file."""

    def __init__(self, args: list[str], log_path: Path, env: dict | None = None, cwd: Path = REPO):
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd,
            # faulthandler: a child that ignores SIGINT is sent SIGABRT first, which dumps every thread's stack
            env={**os.environ, "PYTHONFAULTHANDLER": "1", **(env or {})}, start_new_session=True,
        )

    @property
    def pgid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        if not self._log.closed:  # still valid after stop(), e.g. in a failing assertion's message
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # SIGABRT makes Python's faulthandler write where each thread hangs into the log, then SIGKILL
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pgid, signal.SIGABRT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(3)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pgid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def group_alive(self) -> bool:
        """True if any process of the group is still there (children included)."""
        try:
            os.killpg(self.pgid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
