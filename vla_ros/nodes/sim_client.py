"""A client of sim_bridge_node: resets episodes, listens to everything it publishes, answers observations.

Used by the tests and ``bench/bench_bridge.py``; a minimal example of driving the bridge from Python
(the interfaces are documented in docs/sim_bridge.md). It spins the executor it is given.
"""

from __future__ import annotations

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from vla_ros.config import topics
from vla_ros.conventions import LIBERO_ACTION_SPACE
from vla_ros.nodes.qos import command_qos, status_qos
from vla_ros.nodes.spin import spin_until
from vla_ros_msgs.msg import EpisodeStatus, VlaAction
from vla_ros_msgs.srv import ResetEpisode

RELIABLE = command_qos()
STATUS = status_qos()
TIMEOUT = 60.0  # generous: two CPU cores shared with other processes




def libero_to_msg(a, stamp, *, space=LIBERO_ACTION_SPACE, **fields) -> VlaAction:
    """A VlaAction carrying LIBERO controller action ``a`` (7 values, gripper -1 open / +1 close)."""
    a = np.asarray(a, dtype=np.float64)
    msg = VlaAction(action_space=space.name, dt=float(space.dt))
    msg.header.stamp = Time(sec=stamp.sec, nanosec=stamp.nanosec)  # a copy: callers may edit it
    msg.raw_action = [float(v) for v in a]
    t = msg.twist
    t.linear.x, t.linear.y, t.linear.z = (float(v) * space.linear_unit_m for v in a[:3])
    t.angular.x, t.angular.y, t.angular.z = (float(v) * space.angular_unit_rad for v in a[3:6])
    msg.gripper = 1.0 if a[6] > 0 else 0.0
    for k, v in fields.items():
        setattr(msg, k, v)
    return msg


class BridgeClient:
    """Subscribes to everything the bridge publishes, publishes actions, calls the reset service."""

    def __init__(self, context, executor: SingleThreadedExecutor, name: str = "sim_bridge_client"):
        self.node = rclpy.create_node(name, context=context)
        self.ex = executor
        executor.add_node(self.node)
        names = topics()
        self.images: list[Image] = []
        self.wrist: list[Image] = []
        self.status: list[EpisodeStatus] = []
        self.instructions: list[str] = []
        self.poses: list[PoseStamped] = []
        self.joints: list[JointState] = []
        n = self.node
        n.create_subscription(Image, names["camera_image"], self.images.append, qos_profile_sensor_data)
        n.create_subscription(Image, names["wrist_image"], self.wrist.append, qos_profile_sensor_data)
        n.create_subscription(EpisodeStatus, names["episode_status"], self.status.append, STATUS)
        n.create_subscription(String, names["instruction"], lambda m: self.instructions.append(m.data), RELIABLE)
        n.create_subscription(PoseStamped, names["ee_pose"], self.poses.append, RELIABLE)
        n.create_subscription(JointState, names["joint_states"], self.joints.append, RELIABLE)
        self.pub = n.create_publisher(VlaAction, names["action"], RELIABLE)
        self.reset_client = n.create_client(ResetEpisode, names["reset_service"])

    def spin_until(self, pred, what: str, timeout: float = TIMEOUT) -> None:
        spin_until(self.ex, pred, timeout, what)

    def wait_connected(self) -> None:
        self.spin_until(lambda: self.pub.get_subscription_count() > 0 and self.reset_client.service_is_ready(),
                        "bridge endpoints")

    def reset(self, suite: str = "", task_id: int = -1, init_state_id: int = -1) -> ResetEpisode.Response:
        fut = self.reset_client.call_async(ResetEpisode.Request(suite=suite, task_id=task_id,
                                                                init_state_id=init_state_id))
        self.spin_until(fut.done, "reset response", timeout=180.0)
        resp = fut.result()
        if resp.success:
            self.spin_until(lambda: self.status and self.status[-1].episode_id == resp.episode_id
                            and not self.status[-1].done, "status of the new episode")
        return resp

    @property
    def last(self) -> EpisodeStatus:
        return self.status[-1]

    def send(self, msg: VlaAction) -> None:
        self.pub.publish(msg)

    def step(self, a, **fields) -> EpisodeStatus:
        """Answer the current observation with LIBERO action ``a``; wait for the next status."""
        before = self.last
        self.send(libero_to_msg(a, before.header.stamp, **fields))
        self.spin_until(lambda: self.last.header.stamp != before.header.stamp or self.last.done != before.done,
                        "status after the step")
        return self.last

    def latest_image(self, stamp) -> Image:
        self.spin_until(lambda: any(m.header.stamp == stamp for m in self.images), "image of the observation")
        return next(m for m in reversed(self.images) if m.header.stamp == stamp)

    def close(self) -> None:
        self.ex.remove_node(self.node)
        self.node.destroy_node()
