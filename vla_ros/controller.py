"""The policy node's decision logic, ROS-free: when to hold, how to shape an action, what to reject.

vla_policy_node stays a thin shell around this module (parameters, topics, threads), so every safety
rule can be tested without rclpy. No model logic here: a policy's raw output comes in, converted by
:func:`vla_ros.action_conversion.policy_to_command` (the one conversion), and is then bounded.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

import numpy as np

from vla_ros.action_conversion import ArmCommand, policy_to_command
from vla_ros.conventions import GRIPPER_CONVENTIONS, ActionSpace

# Why the node holds (PolicyStatus.hold_reason / VlaAction.hold_reason). "" means it acts.
HOLD_REASONS = (
    "stale_image",
    "no_instruction",
    "disabled",
    "inference_error",
    "invalid_output",
    "finished",
    "inactive",
    "dry_run",
    "missing_inputs",  # the model's further inputs (wrist image, proprio) of the image's instant did not come
)
GRIPPER_MODES = ("continuous", "binary")
MOTION_DIMS = 6  # dx, dy, dz, dax, day, daz


@dataclass(frozen=True)
class ControllerConfig:
    """The run-time adapters between a policy and an arm (all node parameters, all changeable live)."""

    # "" = the checkpoint's recorded convention; else one of GRIPPER_CONVENTIONS. OpenVLA's LIBERO
    # checkpoints need "openvla_open01" (their evaluation inverts the gripper after 2g-1 and sign).
    gripper_convention: str = ""
    # continuous: pass the closure through; binary: closure > threshold closes (1) else opens (0),
    # which for LIBERO equals OpenVLA's "2g-1 then sign" at threshold 0.5.
    gripper_mode: str = "continuous"
    gripper_threshold: float = 0.5
    # Per-dimension clamps of the six motion values, in the action space's controller units.
    clamp_low: tuple[float, ...] = (-1.0,) * MOTION_DIMS
    clamp_high: tuple[float, ...] = (1.0,) * MOTION_DIMS
    # Bounds on the norm of one step's translation (m) and rotation vector (rad); the direction is
    # kept and the magnitude scaled down. Defaults let any in-range LIBERO action through
    # (sqrt(3) * 0.05 m = 0.0866 m, sqrt(3) * 0.5 rad = 0.866 rad).
    max_linear_step_m: float = 0.09
    max_angular_step_rad: float = 0.9
    image_timeout_s: float = 0.5
    max_instruction_chars: int = 512
    min_image_side: int = 16
    max_image_side: int = 4096

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent setting."""
        if self.gripper_convention and self.gripper_convention not in GRIPPER_CONVENTIONS:
            raise ValueError(f"gripper_convention {self.gripper_convention!r} not in {('', *GRIPPER_CONVENTIONS)}")
        if self.gripper_mode not in GRIPPER_MODES:
            raise ValueError(f"gripper_mode {self.gripper_mode!r} not in {GRIPPER_MODES}")
        if not 0.0 < self.gripper_threshold < 1.0:
            raise ValueError(f"gripper_threshold must lie in (0, 1), got {self.gripper_threshold}")
        lo, hi = np.asarray(self.clamp_low, dtype=float), np.asarray(self.clamp_high, dtype=float)
        if lo.shape != (MOTION_DIMS,) or hi.shape != (MOTION_DIMS,):
            raise ValueError(f"clamp_low/clamp_high need {MOTION_DIMS} values, got {lo.size} and {hi.size}")
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(lo <= hi)):
            raise ValueError(f"need finite clamp_low <= clamp_high per dimension, got {lo} / {hi}")
        for name in ("max_linear_step_m", "max_angular_step_rad", "image_timeout_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be > 0, got {v}")
        if self.max_instruction_chars < 1:
            raise ValueError("max_instruction_chars must be >= 1")
        if not 1 <= self.min_image_side <= self.max_image_side:
            raise ValueError("need 1 <= min_image_side <= max_image_side")

    def with_updates(self, **changes) -> ControllerConfig:
        """A validated copy with ``changes`` applied (sequences become tuples)."""
        changes = {k: tuple(float(x) for x in v) if k.startswith("clamp_") else v for k, v in changes.items()}
        cfg = replace(self, **changes)
        cfg.validate()
        return cfg


# ---------------------------------------------------------------- decisions


def hold_reason(*, active: bool, enabled: bool, finished: bool, instruction: str | None,
                frame_age_s: float | None, image_timeout_s: float) -> str:
    """Why the node must hold now, before running the policy ("" = it may act).

    Order matters only for the reported reason: the operator's switches first, then the task, then
    the sensor. ``frame_age_s`` None means no frame has arrived yet, which counts as stale.
    """
    if not active:
        return "inactive"
    if not enabled:
        return "disabled"
    if finished:
        return "finished"
    if not instruction:
        return "no_instruction"
    if frame_age_s is None or frame_age_s > image_timeout_s:
        return "stale_image"
    return ""


def limit_norm(vec: np.ndarray, max_norm: float) -> np.ndarray:
    """Scale ``vec`` down to ``max_norm`` keeping its direction (a copy)."""
    vec = np.asarray(vec, dtype=np.float64)
    n = float(np.linalg.norm(vec))
    return vec * (max_norm / n) if n > max_norm else vec.copy()


def map_gripper(closure: float, cfg: ControllerConfig) -> float:
    if cfg.gripper_mode == "binary":
        return 1.0 if closure > cfg.gripper_threshold else 0.0
    return float(closure)


def shape_action(raw: np.ndarray, space: ActionSpace, checkpoint_convention: str,
                 cfg: ControllerConfig) -> ArmCommand:
    """Policy output -> bounded arm command: per-dimension clamps, step limits, gripper mapping.

    Raises ValueError on a wrong length or NaN/inf (the caller holds with ``invalid_output``).
    """
    raw = np.asarray(raw, dtype=np.float64).reshape(-1)
    # Refuse before clamping: a clamp would silently turn inf into a full-scale command.
    policy_to_command(raw, space, checkpoint_convention)
    raw = raw.copy()
    raw[:MOTION_DIMS] = np.clip(raw[:MOTION_DIMS], cfg.clamp_low, cfg.clamp_high)
    cmd = policy_to_command(raw, space, cfg.gripper_convention or checkpoint_convention)
    cmd.linear = limit_norm(cmd.linear, cfg.max_linear_step_m)
    cmd.angular = limit_norm(cmd.angular, cfg.max_angular_step_rad)
    cmd.gripper = map_gripper(cmd.gripper, cfg)
    return cmd


def check_image_size(img: np.ndarray, cfg: ControllerConfig) -> None:
    h, w = img.shape[:2]
    if min(h, w) < cfg.min_image_side or max(h, w) > cfg.max_image_side:
        raise ValueError(f"image {w}x{h} outside the accepted sides [{cfg.min_image_side}, {cfg.max_image_side}]")


def validate_instruction(text: str, max_chars: int) -> str:
    """The instruction as the policy gets it (whitespace collapsed), or ValueError saying why not."""
    if any(ord(c) < 32 and c not in "\t\n\r" for c in text):
        raise ValueError("instruction contains control characters")
    cleaned = " ".join(text.split())
    if not cleaned:
        raise ValueError("empty instruction")
    if len(cleaned) > max_chars:
        raise ValueError(f"instruction of {len(cleaned)} characters exceeds max_instruction_chars={max_chars}")
    return cleaned


# ---------------------------------------------------------------- plumbing helpers

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """A one-element mailbox: ``put`` replaces, ``take`` consumes. Nothing ever queues.

    A put that replaces an item nobody took counts as a dropped item (a camera frame the policy
    never saw). Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._item: T | None = None
        self._fresh = False
        self.dropped = 0

    def put(self, item: T) -> None:
        with self._lock:
            if self._fresh:
                self.dropped += 1
            self._item, self._fresh = item, True

    def take(self) -> T | None:
        """The newest item if nobody took it yet, else None."""
        with self._lock:
            if not self._fresh:
                return None
            self._fresh = False
            return self._item

    def peek(self) -> T | None:
        """The newest item, taken or not (None before the first put)."""
        with self._lock:
            return self._item

    def clear(self) -> None:
        with self._lock:
            self._item, self._fresh = None, False


@dataclass
class RejectionLog:
    """Counts rejected inputs and logs once per burst instead of once per message.

    A burst is a run of rejections less than ``quiet_s`` apart; its first rejection is logged, the
    rest are counted and summarised when the next burst starts, so a camera streaming a wrong
    encoding at 30 Hz cannot flood the log.
    """

    log: Callable[[str], None]
    quiet_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    total: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    _suppressed: int = 0
    _last: float = -math.inf

    def reject(self, kind: str, detail: str) -> None:
        now = self.clock()
        self.total += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        if now - self._last >= self.quiet_s:
            extra = f" ({self._suppressed} more rejections since the last report)" if self._suppressed else ""
            self.log(f"rejected {kind}: {detail}{extra}")
            self._suppressed = 0
        else:
            self._suppressed += 1
        self._last = now


class RateMeter:
    """Events per second over a sliding window (the measured control rate in the status)."""

    def __init__(self, window_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._window, self._clock = window_s, clock
        self._times: list[float] = []
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            self._times.append(self._clock())
            self._trim()

    def rate(self) -> float:
        with self._lock:
            self._trim()
            if len(self._times) < 2:
                return 0.0
            span = self._times[-1] - self._times[0]
            return (len(self._times) - 1) / span if span > 0 else 0.0

    def _trim(self) -> None:
        cutoff = self._clock() - self._window
        while self._times and self._times[0] < cutoff:
            self._times.pop(0)
