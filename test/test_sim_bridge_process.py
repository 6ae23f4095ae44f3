"""sim_bridge_node as a process, the way the launch file and `vla-ros` start it: with config/sim_bridge.yaml as
its params file, both cameras and /clock on the graph, a reset through the service, and a clean exit on SIGINT
that leaves no process behind."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")
pytest.importorskip("robosuite", reason="LIBERO's simulation stack is not installed")

from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock

from helpers import REPO, ManagedProcess, spin_until
from vla_ros.config import config_path, topics
from vla_ros.nodes.sim_client import BridgeClient
from vla_ros_msgs.srv import ResetEpisode

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]


def _node_command() -> list[str]:
    exe = shutil.which("sim_bridge_node", path=str(Path(sys.executable).parent))
    assert exe, "console script sim_bridge_node is not installed (pip install -e .)"
    return [exe]


def test_node_process_publishes_resets_and_exits_cleanly_on_sigint(tmp_path):
    args = [*_node_command(), "--ros-args", "--params-file", str(config_path("sim_bridge.yaml")),
            "-p", "image_size:=64", "-p", f"record_dir:={tmp_path / 'videos'}"]
    proc = ManagedProcess(args, tmp_path / "bridge.log", cwd=REPO)
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    client = BridgeClient(ctx, ex, name="sim_bridge_process_test")
    clock = []
    # rclpy's own /clock subscription is best effort; the bridge must serve that too.
    client.node.create_subscription(Clock, "/clock", clock.append, QoSProfile(depth=1,
                                    reliability=ReliabilityPolicy.BEST_EFFORT))
    try:
        client.spin_until(lambda: client.status or proc.proc.poll() is not None, "first episode status", 120)
        assert proc.proc.poll() is None, proc.output()
        client.wait_connected()
        client.spin_until(lambda: client.images and client.wrist, "both camera images")  # re-published ≤ 2 s
        assert (client.images[-1].height, client.wrist[-1].height) == (64, 64)
        assert client.last.max_steps == 220 and client.last.image_flip == "rot180"
        st = client.step([0.5, 0, 0, 0, 0, 0, -1])
        assert st.step == 1
        client.spin_until(lambda: clock and clock[-1].clock == st.header.stamp, "/clock at the observation")
        resp = client.reset("libero_spatial", 0, 1)
        assert resp.success and resp.episode_id == 2
    finally:
        client.close()
        ex.shutdown()
        rclpy.shutdown(context=ctx)
        rc = proc.stop(timeout=30)
    assert rc == 0, proc.output()
    assert not proc.group_alive()
    # the episode cut short by the reset was recorded, outcome in the name, sidecar beside it
    sidecars = list((tmp_path / "videos").glob("*_ep00001_failure.json"))
    assert len(sidecars) == 1 and sidecars[0].with_suffix(".mp4").is_file()


def test_sigint_while_the_env_is_being_built_exits_cleanly(tmp_path):
    proc = ManagedProcess([*_node_command(), "--ros-args", "-p", "image_size:=64", "-p", "cameras:=[agentview]"],
                          tmp_path / "bridge.log", cwd=REPO)
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("sim_bridge_sigint_test", context=ctx)
    try:
        # The node joins the graph before it builds the env (seconds): interrupt it as soon as it is seen.
        client = node.create_client(ResetEpisode, topics()["reset_service"])
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        spin_until(ex, lambda: "sim_bridge" in node.get_node_names() or client.service_is_ready()
                   or proc.proc.poll() is not None, 120, "the bridge on the graph")
    finally:
        node.destroy_node()
        rclpy.shutdown(context=ctx)
        rc = proc.stop(timeout=60)
    assert rc == 0, proc.output()
    assert not proc.group_alive()
