"""vla_ros_msgs built into the venv: two rclpy nodes exchange every message and call the service."""

from __future__ import annotations

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")

from geometry_msgs.msg import Twist
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy

from helpers import spin_until
from vla_ros_msgs.action import ExecuteInstruction
from vla_ros_msgs.msg import EpisodeStatus, PolicyStatus, VlaAction
from vla_ros_msgs.srv import ResetEpisode


@pytest.fixture
def ros():
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    a = rclpy.create_node("msgs_test_pub", context=ctx)
    b = rclpy.create_node("msgs_test_sub", context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(a)
    ex.add_node(b)
    yield a, b, ex
    ex.shutdown()
    a.destroy_node()
    b.destroy_node()
    rclpy.shutdown(context=ctx)


def _sample_messages():
    act = VlaAction()
    act.header.stamp.sec = 12
    act.header.frame_id = "base"
    act.episode_id = 3
    act.step = 41
    act.raw_action = [0.5, -0.25, 0.125, 0.0, 0.0625, -1.0, 1.0]  # exact in float32
    act.action_space = "libero_osc_pose_20hz"
    act.twist = Twist()
    act.twist.linear.x = 0.005
    act.dt = 0.5
    act.gripper = 1.0
    act.finished = True
    st = PolicyStatus(state=PolicyStatus.STATE_HOLDING, state_name="holding", hold_reason="stale_image",
                      model_id="tiny", mean_inference_ms=3.5, dropped_frames=7)
    ep = EpisodeStatus(episode_id=3, suite="libero_spatial", task_id=2, instruction="pick", step=41,
                       max_steps=220, success=True, done=True, reason="success", image_flip="rot180")
    fb = ExecuteInstruction.Feedback(step=4, inference_ms=2.0, hold=True, hold_reason="no_instruction")
    return [act, st, ep, fb]


@pytest.mark.ros
@pytest.mark.parametrize("index", range(4))
def test_each_message_round_trips(ros, index):
    pub_node, sub_node, ex = ros
    msg = _sample_messages()[index]
    qos = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE,
                     durability=QoSDurabilityPolicy.VOLATILE)
    got = []
    pub = pub_node.create_publisher(type(msg), "roundtrip", qos)
    sub_node.create_subscription(type(msg), "roundtrip", got.append, qos)
    spin_until(ex, lambda: pub.get_subscription_count() > 0, 20, "subscription match")
    pub.publish(msg)
    spin_until(ex, lambda: len(got) > 0, 20, "message")
    assert got[0] == msg
    assert got[0] is not msg


@pytest.mark.ros
def test_reset_service_and_action_types(ros):
    server_node, client_node, ex = ros

    def handle(req, resp):
        resp.success = req.suite == "libero_object"
        resp.instruction = f"task {req.task_id} init {req.init_state_id}"
        resp.episode_id = 9
        resp.max_steps = 280
        return resp

    server_node.create_service(ResetEpisode, "reset", handle)
    client = client_node.create_client(ResetEpisode, "reset")
    spin_until(ex, client.service_is_ready, 20, "service")
    req = ResetEpisode.Request(suite="libero_object", task_id=4, init_state_id=7)
    fut = client.call_async(req)
    spin_until(ex, fut.done, 20, "service response")
    resp = fut.result()
    assert resp.success and resp.instruction == "task 4 init 7" and resp.max_steps == 280
    # defaults in the .srv keep "not given" distinguishable from 0
    assert ResetEpisode.Request().task_id == -1
    goal = ExecuteInstruction.Goal(instruction="put the bowl on the plate", max_steps=100)
    assert goal.instruction.startswith("put")
    assert ExecuteInstruction.Result(success=True, reason="finished").reason == "finished"
