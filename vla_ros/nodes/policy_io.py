"""vla_policy_node's ROS side besides the node class: messages in and out, the policy from the parameters, ``main``.

Input messages become the arrays the core takes (:func:`input_value`: camera images checked like the main camera,
the gripper's finger positions from ``JointState``, the end-effector pose from ``PoseStamped``); answers become
``VlaAction`` (:func:`action_msg`) and its ``TwistStamped`` mirror. No decision is made here: those are in the
ROS-free core (:mod:`vla_ros.policy_control`, :mod:`vla_ros.decision`, :mod:`vla_ros.controller`).
"""

from __future__ import annotations

import gc
import signal
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import rclpy
import rclpy.exceptions
import yaml
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image, JointState

from vla_ros.backends import load_policy
from vla_ros.controller import ControllerConfig, check_image_size
from vla_ros.image_codec import image_msg_to_rgb
from vla_ros.inputs import EE_POSE, JOINT_STATES, finger_positions, pose_arrays
from vla_ros.nodes.qos import image_qos, state_qos
from vla_ros.policy import Policy
from vla_ros.policy_control import Answer
from vla_ros_msgs.msg import VlaAction


# ------------------------------------------------------------------ inputs
def camera_rgb(msg: Image, cfg: ControllerConfig) -> np.ndarray:
    """An image message as HxWx3 uint8 RGB within the accepted sides (ValueError saying why not)."""
    rgb = image_msg_to_rgb(msg)  # ImageDecodeError is a ValueError
    check_image_size(rgb, cfg)
    return rgb


def input_value(key: str, msg: Any, cfg: ControllerConfig, gripper_joints: tuple[str, ...]) -> Any:
    """A further input's message (topic key ``key``) as the core keeps it; ValueError for a bad one."""
    if key == JOINT_STATES:
        return finger_positions(msg.name, msg.position, gripper_joints)
    if key == EE_POSE:
        p, q = msg.pose.position, msg.pose.orientation
        return pose_arrays((p.x, p.y, p.z), (q.x, q.y, q.z, q.w))
    return camera_rgb(msg, cfg)


def subscribe_input(node: Any, key: str, topic: str, reliability: str, callback: Callable[[str, Any], None],
                    group: Any) -> Any:
    """The subscription of one further input: JointState / PoseStamped on state QoS, else a camera's Image."""
    msg_type, qos = {JOINT_STATES: (JointState, state_qos), EE_POSE: (PoseStamped, state_qos)}.get(
        key, (Image, image_qos))
    return node.create_subscription(msg_type, topic, lambda msg: callback(key, msg), qos(reliability),
                                    callback_group=group)


# ------------------------------------------------------------------ outputs
def action_msg(answer: Answer, now: Time, frame_id: str) -> VlaAction:
    """The answer as published: the command, or a hold (zero twist, gripper unchanged), stamped with its
    observation's image stamp (``now`` before any image)."""
    msg = VlaAction()
    msg.header.frame_id = frame_id
    msg.header.stamp = Time(sec=answer.key[0], nanosec=answer.key[1]) if answer.key is not None else now
    msg.episode_id, msg.step = answer.episode
    if answer.raw is not None:
        msg.raw_action = [float(v) for v in answer.raw]
    if answer.space is not None:
        msg.action_space, msg.dt = answer.space.name, float(answer.space.dt)
    msg.hold, msg.hold_reason, msg.finished = bool(answer.reason), answer.reason, answer.finished
    cmd = answer.command
    if cmd is not None:
        msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(v) for v in cmd.linear)
        msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = (float(v) for v in cmd.angular)
    msg.gripper = float(answer.gripper)
    return msg


def twist_mirror(msg: VlaAction, stamp: Time, twist_scale: float) -> TwistStamped:
    """The answer for servo controllers: per-step delta / dt * ``twist_scale`` (m/s, rad/s), stamped ``stamp``."""
    tw = TwistStamped()
    tw.header.stamp, tw.header.frame_id = stamp, msg.header.frame_id
    k = twist_scale / msg.dt if msg.dt > 0 else 0.0
    for part in ("linear", "angular"):
        src, dst = getattr(msg.twist, part), getattr(tw.twist, part)
        dst.x, dst.y, dst.z = src.x * k, src.y * k, src.z * k
    return tw


# ------------------------------------------------------------------ the policy
def load_policy_from_params(p: dict[str, Any]) -> Policy:
    """``vla_ros.backends.load_policy`` with the node's parameters as backend options."""
    options = yaml.safe_load(p["backend_options"]) or {}
    if not isinstance(options, dict):
        raise ValueError(f"backend_options must be a YAML mapping, got {p['backend_options']!r}")
    for key in ("quantization", "adapter", "device", "unnorm_key"):
        if p[key]:
            options[key] = p[key]
    if p["center_crop"] != "checkpoint":  # preprocessing is the backend's (same resize as in training)
        options["center_crop"] = p["center_crop"] == "on"
    return load_policy(p["backend"], p["checkpoint"] or None, **options)


def close_policy(policy: Policy | None, warn: Callable[[str], None]) -> None:
    """Close a policy; a failing close is logged, not raised. The caller drops its reference, then
    :func:`release_memory`."""
    if policy is not None:
        try:
            policy.close()
        except Exception as exc:
            warn(f"policy.close() failed: {exc!r}")


def release_memory() -> None:
    """After the last reference to a policy went: collect it, and return CUDA's cached blocks if torch is loaded."""
    gc.collect()
    torch = sys.modules.get("torch")  # only if a backend imported it: never import torch here
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------ the process
def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_node(make_node: Callable[[], Any], argv: list[str] | None, prog: str) -> int:
    """Spin the lifecycle node ``make_node()`` until SIGINT/SIGTERM, then shut it down (a final hold if active).

    Exit codes: 0 after a clean stop, 1 when it reports ``start_failed`` (auto_start could not configure/activate),
    2 on invalid parameters.
    """
    args = sys.argv if argv is None else [sys.argv[0], *argv]
    # Our own signal handling: on Ctrl-C the context must still be up to publish a final hold.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    # also when started with SIGINT ignored (background job of a non-interactive shell): stop on Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)
    node = None
    try:
        try:
            node = make_node()
        except (ValueError, TypeError, RuntimeError, rclpy.exceptions.ParameterException) as exc:
            print(f"{prog}: invalid parameters: {exc}", file=sys.stderr)
            return 2
        if node.start_failed:  # a simple launch wants to see the failure, not an idle node
            return 1
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        try:
            executor.spin()
        finally:
            executor.shutdown(timeout_sec=1.0)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.trigger_shutdown()  # publishes a hold if active, releases the policy
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
