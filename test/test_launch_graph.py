"""The libero_sim/arm graphs: one YAML for `ros2 launch` and the pip runner; the runner end to end."""

from __future__ import annotations

import os
import stat
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from helpers import REPO, ManagedProcess, wait_for
from vla_ros.config import config_dir, topics
from vla_ros.graph import load_graph, parse_launch_args, resolve_graph
from vla_ros.launcher import run_graph


def test_graph_resolves_arguments_onto_parameters():
    graph = load_graph("libero_sim")
    nodes = {n.name: n for n in resolve_graph(graph, {"task_id": "3", "step_mode": "realtime", "model": "/m"})}
    bridge, policy = nodes["sim_bridge"], nodes["vla_policy_node"]
    assert bridge.parameters["task_id"] == 3  # YAML-typed like ros2 launch
    assert bridge.parameters["stepping_mode"] == "realtime"
    assert policy.parameters["lockstep"] is False  # mapped from step_mode
    assert policy.parameters["checkpoint"] == "/m"
    assert policy.parameters["adapter"] == ""  # empty stays a string
    assert bridge.params_files == [config_dir() / "sim_bridge.yaml"]
    args = policy.ros_args()
    assert args[:3] == ["--ros-args", "-r", "__node:=vla_policy_node"]
    assert "lockstep:=false" in args and "adapter:=''" in args


def test_graph_parameters_exist_in_the_params_files():
    """Every parameter a graph sets is a parameter the node's own YAML declares (no typos)."""
    for name in ("libero_sim", "arm"):
        for node in resolve_graph(load_graph(name), {}):
            declared = {}
            for f in node.params_files:
                declared.update(yaml.safe_load(f.read_text())[node.name]["ros__parameters"])
            missing = set(node.parameters) - set(declared)
            assert not missing, f"{name}/{node.name} sets undeclared {missing}"


def test_graph_rejects_bad_arguments():
    graph = load_graph("libero_sim")
    with pytest.raises(ValueError, match="unknown argument"):
        resolve_graph(graph, {"sweet": "1"})
    with pytest.raises(ValueError, match="not one of"):
        resolve_graph(graph, {"step_mode": "fast"})
    with pytest.raises(ValueError, match="name:=value"):
        parse_launch_args(["suite=libero_object"])
    with pytest.raises(ValueError, match="unknown graph"):
        load_graph("nope")


def test_arm_graph_remaps_topics_from_topics_yaml():
    graph = load_graph("arm")
    (node,) = resolve_graph(graph, {"camera_topic": "/realsense/color/image_raw"})
    assert (topics()["camera_image"], "/realsense/color/image_raw") in node.remappings
    assert node.parameters["dry_run"] is True  # a real arm starts in dry-run
    (node,) = resolve_graph(graph, {})
    assert node.remappings == []


def test_launch_files_use_the_same_graphs():
    # launch_ros first: the repo's own launch/ folder would import as an (empty) namespace package `launch`
    pytest.importorskip("launch_ros", reason="ROS 2 launch/launch_ros are not installed (not on PyPI)")
    launch = pytest.importorskip("launch")
    import importlib.util

    for name in ("libero_sim", "arm"):
        spec = importlib.util.spec_from_file_location(name, REPO / "launch" / f"{name}.launch.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        desc = mod.generate_launch_description()
        assert isinstance(desc, launch.LaunchDescription)
        declared = {a.name for a in desc.get_launch_arguments()}
        assert declared == set(load_graph(name).arguments)


def _script(path: Path, body: str) -> None:
    path.write_text(f"#!{sys.executable}\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_runner_propagates_a_failure_and_stops_the_rest(tmp_path, monkeypatch):
    from vla_ros.graph import ResolvedNode

    marker = tmp_path / "alive"
    _script(tmp_path / "long_node", f"import time, pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n"
                                    "time.sleep(120)")
    _script(tmp_path / "failing_node", "import sys, time\ntime.sleep(1.0)\nsys.exit(3)")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    nodes = [ResolvedNode("vla_ros", "long_node", "a", []), ResolvedNode("vla_ros", "failing_node", "b", [])]
    assert run_graph(nodes, grace_s=5) == 3
    assert marker.exists()  # the long node did start, and was stopped (run_graph returned)


def _processes_with_marker(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "environ").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


@pytest.mark.ros
@pytest.mark.sim
@pytest.mark.slow
def test_pip_runner_runs_the_graph_end_to_end(tmp_path):
    """`vla-ros launch libero_sim` as separate processes: actions flow, the sim steps, status ends, clean exit."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy

    from vla_ros_msgs.msg import EpisodeStatus, VlaAction

    marker = f"VLA_ROS_TEST_MARKER={uuid.uuid4().hex}"
    key, value = marker.split("=")
    runner = ManagedProcess(
        [sys.executable, "-m", "vla_ros.cli", "launch", "libero_sim", "backend:=debug", "image_size:=64",
         "max_steps:=12", f"record:={tmp_path / 'rec'}"],
        tmp_path / "runner.log", env={key: value})
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("graph_e2e_probe", context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    actions, status = [], []
    node.create_subscription(VlaAction, topics()["action"], actions.append,
                             QoSProfile(depth=50, reliability=QoSReliabilityPolicy.BEST_EFFORT))
    node.create_subscription(EpisodeStatus, topics()["episode_status"], status.append,
                             QoSProfile(depth=50, reliability=QoSReliabilityPolicy.RELIABLE,
                                        durability=QoSDurabilityPolicy.TRANSIENT_LOCAL))
    try:
        wait_for(lambda: any(s.done for s in status), 240, spin=lambda: ex.spin_once(timeout_sec=0.05),
                 what=f"the episode to end; runner log:\n{runner.log_path}")
        final = next(s for s in status if s.done)
        assert final.reason == "step_limit" and final.step == 12
        steps = [s.step for s in status]
        assert steps == sorted(steps) and max(steps) == 12  # the sim stepped, monotonically
        moving = [a for a in actions if not a.hold]
        assert len(moving) >= 12  # one answering action per step
        assert all(a.action_space == "libero_osc_pose_20hz" for a in moving)
        assert _processes_with_marker(marker), "the nodes should be running before we stop them"
    finally:
        ex.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
        code = runner.stop(timeout=30)
    assert code == 0, runner.output()[-3000:]
    wait_for(lambda: not _processes_with_marker(marker), 15, what="every node process to exit")
    assert list((tmp_path / "rec").glob("*_failure.mp4")), "the episode was recorded"


def test_runner_cli_lists_arguments(capsys):
    from vla_ros.launcher import main

    assert main(["libero_sim", "--show-args"]) == 0
    out = capsys.readouterr().out
    for name in load_graph("libero_sim").arguments:
        assert f"  {name}:" in out
    assert main(["libero_sim", "step_mode:=warp"]) == 2


