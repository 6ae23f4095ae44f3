"""`vla-ros launch <graph> [name:=value ...]`: the pip environment's stand-in for `ros2 launch`.

PyPI has no `launch`/`launch_ros`/`ros2cli`, so this starts the same executables with the same params
files and argument names, all resolved by :mod:`vla_ros.graph` from config/graphs.yaml, exactly as
launch/<graph>.launch.py does. Each node runs in its own process group; Ctrl-C (or SIGTERM) stops all
with SIGINT, then SIGKILL after a grace period; a node that fails stops the rest and its exit code
becomes the runner's. A runner that dies without stopping them (SIGKILL, a crash) still takes them along:
each node gets SIGTERM from the kernel when the runner goes (Linux's parent-death signal), and stops as
on any SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from vla_ros.graph import ResolvedNode, graph_names, load_graph, parse_launch_args, resolve_graph


def find_executable(name: str) -> str:
    """A console script of this environment first (the venv's bin), then PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"executable {name!r} not found next to {sys.executable} or on PATH")
    return found


_PR_SET_PDEATHSIG = 1  # prctl(2) option, <linux/prctl.h>
# dlopen(NULL): the process's own symbols, libc's among them (no library search at import)
_prctl = getattr(ctypes.CDLL(None), "prctl", None) if sys.platform.startswith("linux") else None


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks the kernel for SIGTERM when the launching thread ends (Linux only).

    The signal follows the thread that forked, not the process: start nodes from a thread that lives as
    long as the graph (the main thread in every caller here). A parent that died before the prctl
    call has already been replaced by a reaper: the child then ends at once instead of staying orphaned.
    """
    if _prctl is None:  # other systems: stop() still stops the nodes; only a killed runner leaves them
        return None

    def preexec() -> None:  # runs in the child between fork and exec: keep to system calls
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


class GraphProcesses:
    """The running nodes of one graph (they receive SIGTERM should the starting thread die)."""

    def __init__(self, nodes: list[ResolvedNode], env: dict | None = None, stdout=None):
        self.nodes = nodes
        self.procs: list[tuple[ResolvedNode, subprocess.Popen]] = []
        self.env = {**os.environ, **(env or {})}
        self.stdout = stdout

    def start(self) -> None:
        for node in self.nodes:
            cmd = [find_executable(node.executable), *node.ros_args()]
            proc = subprocess.Popen(cmd, env=self.env, start_new_session=True, stdout=self.stdout,
                                    stderr=subprocess.STDOUT if self.stdout else None,
                                    preexec_fn=_die_with_parent(os.getpid()))
            self.procs.append((node, proc))

    def poll_failure(self) -> tuple[ResolvedNode, int] | None:
        """The first node that exited, with its code, or None while all run."""
        for node, proc in self.procs:
            code = proc.poll()
            if code is not None:
                return node, code
        return None

    def stop(self, grace_s: float = 10.0) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGINT)
        deadline = time.monotonic() + grace_s
        for _, proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(5)
        # children a node may have started itself
        for _, proc in self.procs:
            _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def run_graph(nodes: list[ResolvedNode], until=None, poll_s: float = 0.2, grace_s: float = 10.0) -> int:
    """Run the nodes until Ctrl-C/SIGTERM, a node exits, or ``until()`` returns a code (int)."""
    graph = GraphProcesses(nodes)
    stop_requested = {"sig": None}

    def on_signal(signum, _frame):
        stop_requested["sig"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        graph.start()
        while True:
            if stop_requested["sig"] is not None:
                return 0 if stop_requested["sig"] == signal.SIGINT else 128 + int(stop_requested["sig"])
            exited = graph.poll_failure()
            if exited is not None:
                node, code = exited
                if code != 0:
                    print(f"[vla-ros launch] {node.name} exited with code {code}; stopping the graph",
                          file=sys.stderr)
                    return code
                print(f"[vla-ros launch] {node.name} exited; stopping the graph", file=sys.stderr)
                return 0
            if until is not None:
                result = until()
                if result is not None:
                    return int(result)
            time.sleep(poll_s)
    finally:
        graph.stop(grace_s)
        for s, handler in old.items():
            signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vla-ros launch",
        description="Start a vla_ros node graph (same as `ros2 launch vla_ros <graph>.launch.py`).")
    parser.add_argument("graph", help=f"one of {graph_names()}")
    parser.add_argument("arguments", nargs="*", help="launch arguments, name:=value")
    parser.add_argument("--show-args", action="store_true", help="list the graph's arguments and exit")
    parser.add_argument("--print", action="store_true", help="print the node command lines and exit")
    opts = parser.parse_args(argv)
    try:
        graph = load_graph(opts.graph.removesuffix(".launch.py"))
        if opts.show_args:
            print(f"{graph.name}: {graph.description}\n\nArguments (name:=value):")
            for a in graph.arguments.values():
                extra = f" (one of {', '.join(a.choices)})" if a.choices else ""
                print(f"  {a.name}:\n      {a.description}{extra}\n      (default: {a.default!r})")
            return 0
        nodes = resolve_graph(graph, parse_launch_args(opts.arguments))
        if opts.print:
            for n in nodes:
                print(" ".join([n.executable, *n.ros_args()]))
            return 0
    except (ValueError, FileNotFoundError) as exc:
        print(f"vla-ros launch: {exc}", file=sys.stderr)
        return 2
    return run_graph(nodes)


if __name__ == "__main__":
    sys.exit(main())
