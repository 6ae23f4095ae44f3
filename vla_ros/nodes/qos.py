"""QoS profiles of the vla_ros graph, one definition for the policy node, the bridge and tests."""

from __future__ import annotations

from rclpy.qos import (
    QoSDurabilityPolicy,
    QoSHistoryPolicy,
    QoSProfile,
    QoSReliabilityPolicy,
)

RELIABILITY = {"best_effort": QoSReliabilityPolicy.BEST_EFFORT, "reliable": QoSReliabilityPolicy.RELIABLE}


def image_qos(reliability: str = "best_effort") -> QoSProfile:
    """Sensor-data QoS with depth 1: only the newest frame matters, older ones are never queued.

    BEST_EFFORT (the default, as ``qos_profile_sensor_data``) matches BEST_EFFORT and RELIABLE
    publishers alike; RELIABLE (matches RELIABLE publishers only) makes DDS retransmit lost frames.
    """
    try:
        rel = RELIABILITY[reliability]
    except KeyError:
        raise ValueError(f"image reliability {reliability!r} not in {sorted(RELIABILITY)}") from None
    return QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=1, reliability=rel,
                      durability=QoSDurabilityPolicy.VOLATILE)


def state_qos(reliability: str = "best_effort", depth: int = 10) -> QoSProfile:
    """Robot state (joint states, end-effector pose): like :func:`image_qos` but a few deep, since a decision
    pairs the state of its image's stamp, which need not be the newest message."""
    profile = image_qos(reliability)
    profile.depth = depth
    return profile


def status_qos(depth: int = 10) -> QoSProfile:
    """RELIABLE + TRANSIENT_LOCAL: a late joiner (an evaluator started after a reset) still gets the last
    episode status."""
    return QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=depth, reliability=QoSReliabilityPolicy.RELIABLE,
                      durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)


def listener_qos(depth: int = 10) -> QoSProfile:
    """BEST_EFFORT + VOLATILE: a passive listener that matches publishers of either reliability."""
    return QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=QoSReliabilityPolicy.BEST_EFFORT, durability=QoSDurabilityPolicy.VOLATILE)


def command_qos(depth: int = 10) -> QoSProfile:
    """RELIABLE + VOLATILE: instructions (so `ros2 topic pub --once` matches), actions, status."""
    return QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=depth, reliability=QoSReliabilityPolicy.RELIABLE,
                      durability=QoSDurabilityPolicy.VOLATILE)
