"""sim_bridge_node in realtime mode on a real LIBERO scene: it steps on its own clock, holds the last action
(zero-order hold) and stands still once actions stop. The exact hold/timeout sequence is checked on a stand-in
env in test_sim_bridge_unit.py; this checks the same loop moves the real arm."""

from __future__ import annotations

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")
pytest.importorskip("robosuite", reason="LIBERO's simulation stack is not installed")

from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter

from vla_ros.nodes.sim_bridge_node import SimBridgeNode
from vla_ros.nodes.sim_client import BridgeClient, libero_to_msg

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]


def _pos(c: BridgeClient) -> np.ndarray:
    p = c.poses[-1].pose.position
    return np.array([p.x, p.y, p.z])


def test_realtime_moves_with_the_held_action_then_stands_still():
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    node = SimBridgeNode(context=ctx, parameter_overrides=[
        Parameter("stepping_mode", value="realtime"), Parameter("image_size", value=64),
        Parameter("cameras", value=["agentview"]), Parameter("action_timeout_s", value=0.5),
        Parameter("suite", value="libero_object"), Parameter("publish_instruction", value=False)])
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    c = BridgeClient(ctx, ex)
    try:
        node.start()
        c.wait_connected()
        # No action yet: it steps anyway, standing still.
        c.spin_until(lambda: c.status and c.last.step >= 5 and c.poses, "steps without actions")
        p0 = _pos(c)
        c.send(libero_to_msg([0, 0, 0.6, 0, 0, 0, -1], c.last.header.stamp))  # one +z action, then silence
        c.spin_until(lambda: _pos(c)[2] - p0[2] > 0.02, "the arm rising under the held action")
        # Once action_timeout_s has passed since the action arrived, the bridge stands still but keeps stepping.
        c.spin_until(lambda: time.monotonic() - node.bridge.held_at > 0.5, "the hold timeout")
        s = c.last.step
        # the OSC controller brakes the arm's momentum over a few steps (zero delta = hold the current pose)
        c.spin_until(lambda: c.last.step >= s + 15, "steps after the timeout")
        p1, s1 = _pos(c), c.last.step
        c.spin_until(lambda: c.last.step >= s1 + 5, "steps while standing still")
        assert np.linalg.norm(_pos(c) - p1) < 2e-3, (p1, _pos(c))
        assert p1[2] - p0[2] > 0.02 and not c.last.done
        assert node.stats.received == 1 and node.stats.stepped >= c.last.step  # it may be a step ahead of us
    finally:
        c.close()
        ex.shutdown()
        node.close()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
