"""In-process harness for vla_policy_node tests: the node and a test node in one fresh Context.

A MultiThreadedExecutor spins both in a thread (as ``main`` does); the test drives the camera,
instruction, /clock and enable switch and records what the node publishes.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.action import ActionClient
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool

from helpers import wait_for
from vla_ros.config import topics
from vla_ros.image_codec import fill_image_msg
from vla_ros.nodes.policy_node import VlaPolicyNode
from vla_ros.nodes.qos import command_qos, image_qos
from vla_ros_msgs.action import ExecuteInstruction
from vla_ros_msgs.msg import EpisodeStatus, PolicyStatus, VlaAction

DEADLINE = 30.0  # generous: CI machines are shared


class Harness:
    def __init__(self) -> None:
        self.ctx = rclpy.context.Context()
        rclpy.init(context=self.ctx)
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.ctx)
        self.t = rclpy.create_node("policy_node_test", context=self.ctx)
        self.executor.add_node(self.t)
        self.node: VlaPolicyNode | None = None
        self.actions: list[VlaAction] = []
        self.twists: list[TwistStamped] = []
        self.statuses: list[PolicyStatus] = []
        self.diagnostics: list[DiagnosticArray] = []
        self._lock = threading.Lock()
        tp = topics()
        self.t.create_subscription(VlaAction, tp["action"], self._rec(self.actions), command_qos(100))
        self.t.create_subscription(TwistStamped, tp["twist"], self._rec(self.twists), command_qos(100))
        self.t.create_subscription(PolicyStatus, tp["status"], self._rec(self.statuses), command_qos())
        self.t.create_subscription(DiagnosticArray, tp["diagnostics"], self._rec(self.diagnostics), command_qos())
        self.pub_image = self.t.create_publisher(Image, tp["camera_image"], image_qos("reliable"))
        # further model inputs, as the sim bridge publishes them (wrist camera, proprio sources)
        self.pub_wrist = self.t.create_publisher(Image, tp["wrist_image"], image_qos("reliable"))
        self.pub_joints = self.t.create_publisher(JointState, tp["joint_states"], command_qos())
        self.pub_pose = self.t.create_publisher(PoseStamped, tp["ee_pose"], command_qos())
        self.pub_instr = self.t.create_publisher(String, tp["instruction"], command_qos())
        self.pub_episode = self.t.create_publisher(EpisodeStatus, tp["episode_status"], command_qos())
        self.pub_clock = self.t.create_publisher(Clock, "/clock", command_qos())
        self.enable_client = self.t.create_client(SetBool, tp["enable_service"])
        self.action_client = ActionClient(self.t, ExecuteInstruction, tp["execute_action"])
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        # Our own loop instead of executor.spin(): close() stops it BEFORE executor.shutdown(), which in
        # rclpy 9 destroys its guard condition without waiting for callbacks still running in the pool;
        # a spin still going would then re-raise their InvalidHandle.
        while not self._stopping.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def _rec(self, store: list):
        def cb(msg):
            with self._lock:
                store.append(msg)
        return cb

    # ---- the node
    def start(self, sim_time: bool = True, **params: Any) -> VlaPolicyNode:
        overrides = [Parameter(k, value=v) for k, v in params.items()]
        if sim_time:  # timers and staleness follow our /clock: rate and timeouts without wall-time races
            overrides.append(Parameter("use_sim_time", value=True))
        self.node = VlaPolicyNode(context=self.ctx, parameter_overrides=overrides)
        self.executor.add_node(self.node)
        if self.node._control.active:
            self.wait_matched()
        return self.node

    def wait_matched(self) -> None:
        wait_for(lambda: self.pub_image.get_subscription_count() > 0 and self.pub_instr.get_subscription_count() > 0
                 and self.node._pub_action is not None and self.node._pub_action.get_subscription_count() > 0,
                 DEADLINE, what="node endpoints matched")

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10.0)
        self.executor.shutdown(timeout_sec=5.0)
        if self.node is not None:
            self.node.trigger_shutdown()
            self.node.destroy_node()
        self.action_client.destroy()
        self.t.destroy_node()
        rclpy.shutdown(context=self.ctx)

    # ---- inputs
    def clock(self, t_s: float) -> None:
        """Publish /clock and wait until the node's clock shows it."""
        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = int(t_s), round((t_s - int(t_s)) * 1e9)
        ns = msg.clock.sec * 10**9 + msg.clock.nanosec
        self.pub_clock.publish(msg)
        wait_for(lambda: self.node.get_clock().now().nanoseconds >= ns, DEADLINE, what=f"node clock at {t_s}")

    @staticmethod
    def make_image(value: int = 128, stamp: float = 0.0, size: int = 32, encoding: str = "rgb8") -> Image:
        msg = fill_image_msg(Image(), np.full((size, size, 3), value, np.uint8), encoding)
        msg.header.stamp.sec, msg.header.stamp.nanosec = int(stamp), round((stamp - int(stamp)) * 1e9)
        return msg

    def image(self, value: int = 128, stamp: float = 0.0, size: int = 32, encoding: str = "rgb8") -> Image:
        msg = self.make_image(value, stamp, size, encoding)
        self.pub_image.publish(msg)
        return msg

    def publish_until(self, pub, msg, done, what: str, resend_s: float = 2.0) -> None:
        """Publish until ``done()``: camera frames are BEST_EFFORT, and the first ones after discovery
        can be lost before the reader has matched the writer on its side."""
        deadline = time.monotonic() + DEADLINE
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {DEADLINE:.0f} s waiting for {what}")
            pub.publish(msg)
            end = time.monotonic() + resend_s
            while time.monotonic() < end and not done():
                time.sleep(0.01)

    def send_image(self, value: int = 128, stamp: float = 0.0, size: int = 32) -> Image:
        """Publish a frame until the node holds it as its newest."""
        msg = self.make_image(value, stamp, size)
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        self.publish_until(self.pub_image, msg, lambda: getattr(self.node._control.frames.peek(), "key", None) == key,
                           f"frame {key} at the node")
        return msg

    def instruct(self, text: str) -> None:
        self.pub_instr.publish(String(data=text))

    def enable(self, on: bool) -> SetBool.Response:
        assert self.enable_client.wait_for_service(timeout_sec=DEADLINE)
        fut = self.enable_client.call_async(SetBool.Request(data=on))
        wait_for(fut.done, DEADLINE, what="enable service")
        return fut.result()

    # ---- outputs
    def snapshot(self) -> list[VlaAction]:
        with self._lock:
            return list(self.actions)

    def wait_action(self, pred, what: str, start: int = 0) -> VlaAction:
        """The first action from index ``start`` on that satisfies ``pred``."""
        found: list[VlaAction] = []

        def check() -> bool:
            found[:] = [a for a in self.snapshot()[start:] if pred(a)][:1]
            return bool(found)
        wait_for(check, DEADLINE, what=what)
        return found[0]

    def status(self) -> PolicyStatus:
        return self.node.status()


class BlockingPolicy:
    """A policy whose act() blocks until released, counting how many calls run at once."""

    def __init__(self, inner) -> None:
        self.inner, self.metadata = inner, inner.metadata
        self.entered, self.release = threading.Event(), threading.Event()
        self._lock = threading.Lock()
        self.running = self.max_running = self.calls = 0

    def act(self, image, instruction):
        with self._lock:
            self.running += 1
            self.calls += 1
            self.max_running = max(self.max_running, self.running)
        self.entered.set()
        try:
            assert self.release.wait(DEADLINE)
            return self.inner.act(image, instruction)
        finally:
            with self._lock:
                self.running -= 1

    def reset(self) -> None:
        self.inner.reset()

    def close(self) -> None:
        self.inner.close()
