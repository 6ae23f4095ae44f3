"""`vla-ros launch` (issue #20): the nodes die with the launcher, even a SIGKILLed one; params files given as
launch arguments are found in the working directory first, then in the package's config/."""

from __future__ import annotations

import os
import signal
import stat
import sys
from pathlib import Path

import psutil
import pytest

from helpers import ManagedProcess, wait_for
from vla_ros.config import config_dir
from vla_ros.graph import load_graph, resolve_graph

NODE_EXIT_S = 20.0  # the node's own SIGTERM handling (hold, release the model) takes well under this


def _script(path: Path, body: str) -> None:
    path.write_text(f"#!{sys.executable}\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _kill_and_expect_orphans_gone(runner: ManagedProcess, nodes: list[psutil.Process]) -> None:
    os.kill(runner.proc.pid, signal.SIGKILL)  # no chance to stop anything itself
    runner.proc.wait(10)
    _, alive = psutil.wait_procs(nodes, timeout=NODE_EXIT_S)
    for p in alive:  # leave nothing behind, whatever the outcome
        p.kill()
    assert not alive, f"node processes outlived the SIGKILLed launcher: {alive}"


def test_nodes_die_with_a_sigkilled_launcher(tmp_path):
    """Two stand-in nodes (their own sessions, as the launcher starts them); the launcher gets SIGKILL."""
    for name in ("node_a", "node_b"):
        _script(tmp_path / name, "import time\ntime.sleep(120)")
    code = ("import sys; from vla_ros.graph import ResolvedNode; from vla_ros.launcher import run_graph; "
            "sys.exit(run_graph([ResolvedNode('vla_ros', 'node_a', 'a', []), "
            "ResolvedNode('vla_ros', 'node_b', 'b', [])]))")
    runner = ManagedProcess([sys.executable, "-c", code], tmp_path / "runner.log",
                            env={"PATH": f"{tmp_path}:{os.environ['PATH']}"})
    try:
        wait_for(lambda: len(_children(runner.proc.pid)) == 2, 30, what="both nodes to start")
        nodes = _children(runner.proc.pid)
        assert all(p.pid == os.getsid(p.pid) for p in nodes)  # each in its own session, out of the runner's group
        _kill_and_expect_orphans_gone(runner, nodes)
    finally:
        runner.stop(timeout=5)


@pytest.mark.ros
@pytest.mark.slow
def test_the_policy_node_dies_with_a_sigkilled_launch_arm(tmp_path):
    """`vla-ros launch arm backend:=debug`, SIGKILL on the launcher: vla_policy_node must not stay as an orphan."""
    runner = ManagedProcess([sys.executable, "-m", "vla_ros.cli", "launch", "arm", "backend:=debug"],
                            tmp_path / "runner.log")
    try:
        wait_for(lambda: any("vla_policy_node" in " ".join(p.cmdline()) for p in _children(runner.proc.pid)), 60,
                 what=f"vla_policy_node to start; log:\n{runner.output()}")
        nodes = _children(runner.proc.pid)
        _kill_and_expect_orphans_gone(runner, nodes)
    finally:
        runner.stop(timeout=5)


# ---------------------------------------------------------------- config:=my_arm.yaml


def _arm_params_files(config: str) -> list[Path]:
    (node,) = resolve_graph(load_graph("arm"), {"config": config})
    return node.params_files


def test_arm_config_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "my_arm.yaml").write_text("vla_policy_node:\n  ros__parameters:\n    control_rate_hz: 10.0\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "other.yaml").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    defaults = config_dir() / "policy_node.yaml"
    assert _arm_params_files("my_arm.yaml") == [defaults, tmp_path / "my_arm.yaml"]  # a bare name, in the cwd
    assert _arm_params_files("./my_arm.yaml") == [defaults, tmp_path / "my_arm.yaml"]
    assert _arm_params_files("sub/other.yaml") == [defaults, tmp_path / "sub" / "other.yaml"]
    assert _arm_params_files(str(tmp_path / "my_arm.yaml")) == [defaults, tmp_path / "my_arm.yaml"]
    assert all(p.is_absolute() for p in _arm_params_files("my_arm.yaml"))  # the node may start elsewhere


def test_arm_config_order_is_cwd_then_package_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _arm_params_files("arm.yaml")[-1] == config_dir() / "arm.yaml"  # not in the cwd: the package's
    (tmp_path / "arm.yaml").write_text("{}\n")
    assert _arm_params_files("arm.yaml")[-1] == tmp_path / "arm.yaml"  # the cwd's comes first
    (tmp_path / "policy_node.yaml").write_text("{}\n")  # a file named in graphs.yaml itself stays the package's
    assert _arm_params_files("arm.yaml")[0] == config_dir() / "policy_node.yaml"
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml.*" + str(tmp_path)):
        _arm_params_files("nope.yaml")
