"""Policy action <-> arm command <-> LIBERO controller action (see docs/conventions.md).

The policy node turns a policy's raw output into the message form (a per-step end-effector delta
in metres/radians + a gripper closure in [0, 1]); only the sim bridge turns the message form back
into LIBERO's controller action. Both directions live here so they stay exact inverses.
:func:`libero_action` is the action a command becomes once it went through ``VlaAction`` (gripper as float32): the
in-process rollout executes it and the graph's evaluation client rebuilds it, so both routes compare one to one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vla_ros.conventions import (
    ActionSpace,
    closure_to_libero_binary,
    gripper_to_closure,
)


@dataclass
class ArmCommand:
    """One control step for the arm: deltas in the base frame and the gripper closure."""

    linear: np.ndarray  # (3,) metres for this step
    angular: np.ndarray  # (3,) radians, axis-angle, for this step
    gripper: float  # closure 0 = open .. 1 = closed
    dt: float  # seconds this step lasts


def policy_to_command(raw: np.ndarray, space: ActionSpace, gripper_convention: str) -> ArmCommand:
    """Convert an un-normalised policy action (controller units) to an :class:`ArmCommand`.

    Raises ValueError on a wrong length or non-finite values: the caller holds instead.
    """
    raw = np.asarray(raw, dtype=np.float64).reshape(-1)
    if raw.shape != (7,):
        raise ValueError(f"policy action must have 7 values, got {raw.shape[0]}")
    if not np.all(np.isfinite(raw)):
        raise ValueError("policy action has NaN/inf values")
    return ArmCommand(
        linear=raw[:3] * space.linear_unit_m,
        angular=raw[3:6] * space.angular_unit_rad,
        gripper=float(gripper_to_closure(raw[6], gripper_convention)),
        dt=space.dt,
    )


def command_to_libero(linear, angular, gripper_closure: float, space: ActionSpace) -> np.ndarray:
    """Message form -> LIBERO's 7-D controller action (clipped to [-1, 1], binary gripper)."""
    out = np.empty(7, dtype=np.float64)
    out[:3] = np.asarray(linear, dtype=np.float64) / space.linear_unit_m
    out[3:6] = np.asarray(angular, dtype=np.float64) / space.angular_unit_rad
    np.clip(out[:6], space.low, space.high, out=out[:6])
    out[6] = closure_to_libero_binary(gripper_closure)
    return out


def libero_action(linear, angular, gripper_closure: float, space: ActionSpace) -> np.ndarray:
    """The LIBERO action the bridge executes for a command sent as ``VlaAction``: the gripper closure as that
    message carries it (float32; the twist is float64 there), then :func:`command_to_libero`."""
    return command_to_libero(linear, angular, float(np.float32(gripper_closure)), space)
