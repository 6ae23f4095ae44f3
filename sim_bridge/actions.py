"""Checking a policy's action message and turning it into LIBERO's controller action (ROS-free).

Works on any object with the fields of ``vla_ros_msgs/VlaAction`` (duck-typed like
``vla_ros.image_codec``), so the checks are testable without rclpy. The conversion itself is
``vla_ros.action_conversion.command_to_libero``, the one place of it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from vla_ros.action_conversion import command_to_libero
from vla_ros.conventions import ACTION_DIM, LIBERO_ACTION_SPACE, ActionSpace

# Why an action was refused; the keys of the bridge's rejection counter.
REJECT_ACTION_SPACE = "action_space"
REJECT_LENGTH = "length"
REJECT_NON_FINITE = "non_finite"
REJECT_DT = "dt"
REJECT_REASONS = (REJECT_ACTION_SPACE, REJECT_LENGTH, REJECT_NON_FINITE, REJECT_DT)

# A twist computed for another control period would be mis-scaled by the ratio of the periods.
_DT_TOLERANCE = 1e-3


class ActionRejectedError(ValueError):
    """The action message cannot be executed; ``reason`` is one of ``REJECT_REASONS``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class CheckedAction:
    """A valid action: LIBERO's controller action and whether values had to be clipped."""

    libero: np.ndarray  # (7,) in [-1, 1], binary gripper
    clipped: bool


def _twist_values(msg) -> list[float]:
    t = msg.twist
    return [t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z]


def check_action(msg, space: ActionSpace = LIBERO_ACTION_SPACE) -> CheckedAction:
    """Validate a VlaAction-like message and convert it; raise :class:`ActionRejectedError` if unusable.

    Refused: another ``action_space`` (this also catches a policy un-normalised with the wrong
    statistics), a ``raw_action`` of the wrong length, NaN/inf anywhere, a ``dt`` other than the
    space's (0 means "not given" and is accepted). Out-of-range values are clipped, not refused.
    """
    if msg.action_space != space.name:
        raise ActionRejectedError(REJECT_ACTION_SPACE,
                             f"action_space {msg.action_space!r} is not the simulator's {space.name!r}")
    raw = list(msg.raw_action)
    if raw and len(raw) != ACTION_DIM:
        raise ActionRejectedError(REJECT_LENGTH, f"raw_action has {len(raw)} values, expected {ACTION_DIM}")
    twist = _twist_values(msg)
    values = [*twist, float(msg.gripper), float(msg.dt), *raw]
    if not all(math.isfinite(v) for v in values):
        raise ActionRejectedError(REJECT_NON_FINITE, "NaN/inf in twist, gripper, dt or raw_action")
    if msg.dt != 0.0 and abs(float(msg.dt) - space.dt) > _DT_TOLERANCE:
        raise ActionRejectedError(REJECT_DT, f"dt {msg.dt:g} s is not the simulator's control period {space.dt:g} s")
    libero = command_to_libero(twist[:3], twist[3:], float(msg.gripper), space)
    units = np.asarray(twist[:3]) / space.linear_unit_m, np.asarray(twist[3:]) / space.angular_unit_rad
    clipped = bool(np.any(np.abs(np.concatenate(units)) > space.high + 1e-9)
                   or not 0.0 <= float(msg.gripper) <= 1.0)
    return CheckedAction(libero=libero, clipped=clipped)


@dataclass
class ActionStats:
    """What the bridge did with the actions it received (published on /diagnostics)."""

    received: int = 0
    stepped: int = 0
    holds: int = 0
    clipped: int = 0
    stale: int = 0  # answered an observation that is no longer the current one
    after_end: int = 0  # arrived while no episode was running
    rejected: Counter | None = None

    def __post_init__(self):
        if self.rejected is None:
            self.rejected = Counter()

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def as_dict(self) -> dict[str, int]:
        out = {k: getattr(self, k) for k in ("received", "stepped", "holds", "clipped", "stale", "after_end")}
        out["rejected"] = self.rejected_total
        out.update({f"rejected_{r}": self.rejected.get(r, 0) for r in REJECT_REASONS})
        return out
