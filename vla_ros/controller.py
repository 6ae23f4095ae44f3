"""The policy node's decision logic, ROS-free: when to hold, how to shape an action, what to reject.

vla_policy_node stays a thin shell around this module (parameters, topics, threads), so every safety
rule can be tested without rclpy. No model logic here: a policy's raw output comes in, converted by
:func:`vla_ros.action_conversion.policy_to_command` (the one conversion), and is then bounded.
"""

from __future__ import annotations

import math
import re
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
    "inference_timeout",  # free-running: the inference in flight has run longer than inference_timeout_s
    "unconfigured",  # PolicyStatus only: no policy loaded (nothing is published then)
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


OTHER_EPOCH_S = 3600.0  # a stamp this much older than its receipt is taken to be from another clock (epoch)


def stamp_on_clock(stamp_ns: int, recv_ns: int, tolerance_s: float) -> bool:
    """Whether an image stamp is on the receiver's clock: at most ``tolerance_s`` after its receipt and less than
    :data:`OTHER_EPOCH_S` before it. Else (a camera on another clock, e.g. wall stamps under sim time, or stamps
    since boot) only the receipt tells the frame's age."""
    return -tolerance_s * 1e9 <= recv_ns - stamp_ns < OTHER_EPOCH_S * 1e9


def frame_age_s(now_ns: int, recv_ns: int, stamp_ns: int | None) -> float:
    """A frame's age: since its receipt, or since its stamp where that is older (``stamp_ns`` None: not on the
    clock). A large frame that took seconds to arrive is as old as its stamp says, not as fresh as its receipt."""
    recv_age = (now_ns - recv_ns) * 1e-9
    return recv_age if stamp_ns is None else max(recv_age, (now_ns - stamp_ns) * 1e-9)


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


class RejectedInputError(ValueError):
    """A rejected input, with a short reason code that is counted and logged per reason.

    ``str(exc)`` ends with ``[reason]`` so the code survives where only the message travels (the node
    passes ``str(exc)`` to :class:`RejectionLog`, which reads it back with :func:`rejection_reason`).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{message} [{reason}]")
        self.reason = reason


_REASON_TAG = re.compile(r" \[([a-z][a-z0-9_]*)\]$")


def rejection_reason(detail: str) -> str:
    """The reason code at the end of a rejection's message ("" when it names none)."""
    m = _REASON_TAG.search(detail)
    return m.group(1) if m else ""


def check_image_size(img: np.ndarray, cfg: ControllerConfig) -> None:
    h, w = img.shape[:2]
    if min(h, w) < cfg.min_image_side or max(h, w) > cfg.max_image_side:
        raise RejectedInputError("image_size", f"image {w}x{h} outside the accepted sides "
                                               f"[{cfg.min_image_side}, {cfg.max_image_side}]")


# Reason codes of validate_instruction, and the characters behind them. Tab, LF and CR are whitespace
# (collapsed); every other C0 control, DEL and C1 is refused. Lone surrogates come from a bad decode
# (surrogateescape, JSON "\ud800"); U+FFFD is what rclpy makes of invalid UTF-8 on the wire. Bidi
# overrides, embeddings and isolates make the logged text read differently from what the model gets.
INSTRUCTION_REJECTIONS = ("empty", "zero_width_only", "too_long", "nul", "control_character", "bidi_control",
                          "invalid_utf8")
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff\ufffd]")
_ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\ufeff")


def _forbidden_reason(c: str) -> tuple[str, str]:
    code = ord(c)
    if code == 0:
        return "nul", "a NUL character (ROS strings end at the first NUL: the rest would be lost)"
    if 0xD800 <= code <= 0xDFFF:
        return "invalid_utf8", f"a lone surrogate U+{code:04X} (not valid UTF-8: a bad decode upstream)"
    if code == 0xFFFD:
        return "invalid_utf8", "U+FFFD, the replacement of invalid UTF-8 bytes"
    if 0x202A <= code <= 0x202E or 0x2066 <= code <= 0x2069:
        return "bidi_control", f"a bidirectional override/embedding/isolate U+{code:04X}"
    return "control_character", f"control character U+{code:04X}"


def validate_instruction(text: str, max_chars: int) -> str:
    """The instruction as the policy gets it (whitespace collapsed), or :class:`RejectedInputError` saying why not.

    A NUL reaches here from in-process callers, the HTTP server and :func:`instruction_from_cdr`, not from
    a plain ROS subscription: rclpy's string conversion cuts the text at the first NUL in the sender's
    process and again in the receiver's (``strlen``). Reasons: :data:`INSTRUCTION_REJECTIONS`.
    """
    bad = _FORBIDDEN.search(text)
    if bad is not None:
        reason, what = _forbidden_reason(bad.group())
        raise RejectedInputError(reason, f"instruction contains {what} at index {bad.start()}")
    cleaned = " ".join(text.split())
    if not cleaned:
        raise RejectedInputError("empty", "empty instruction")
    if _ZERO_WIDTH.issuperset(cleaned.replace(" ", "")):
        raise RejectedInputError("zero_width_only", "instruction has only zero-width characters, nothing visible")
    if len(cleaned) > max_chars:
        raise RejectedInputError("too_long", f"instruction of {len(cleaned)} characters exceeds "
                                             f"max_instruction_chars={max_chars}")
    return cleaned


def instruction_from_cdr(raw: bytes) -> str:
    """The text of a serialized std_msgs/String (a ``raw=True`` subscription) with everything rclpy would lose.

    rclpy's conversion cuts at the first NUL and puts U+FFFD for invalid UTF-8; here the string's full CDR
    length is kept and invalid bytes become lone surrogates, so :func:`validate_instruction` names them
    (``nul``, ``invalid_utf8``). Layout: a 4-byte encapsulation header (its low bit: little-endian), then
    a uint32 length that counts the terminating NUL, then the bytes.
    """
    if len(raw) < 9 or raw[0] != 0:
        raise RejectedInputError("malformed", f"not a serialized std_msgs/String ({len(raw)} bytes)")
    n = int.from_bytes(raw[4:8], "little" if raw[1] & 1 else "big")
    if n < 1 or 8 + n > len(raw) or raw[8 + n - 1] != 0:
        raise RejectedInputError("malformed", f"a serialized string of {n} bytes in a {len(raw)}-byte message")
    return raw[8:8 + n - 1].decode("utf-8", "surrogateescape")


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


_QUOTED_OR_NUMBER = re.compile(r"'[^']*'|\"[^\"]*\"|\d+")
_MAX_REASONS_PER_BURST = 16  # lines logged at once in one burst; rarer reasons beyond are only counted


def _burst_label(detail: str) -> str:
    """What tells two rejections' reasons apart in the log: the reason code, else the message with its
    numbers and quoted values masked (sizes and attacker-chosen strings vary, the reason does not)."""
    return rejection_reason(detail) or _QUOTED_OR_NUMBER.sub("…", detail)[:60]


@dataclass
class RejectionLog:
    """Counts rejected inputs per kind and reason; logs each reason once per burst, not once per message.

    A burst is a run of rejections less than ``quiet_s`` apart. In a burst the first rejection of each
    (kind, reason) is logged at once, so every reason is named; repeats are counted, and summarised per
    reason when the burst is over: by :meth:`flush` (call it periodically) or with the first line of the
    next burst. A camera streaming a wrong encoding at 30 Hz thus cannot flood the log.
    ``by_reason`` counts ``"<kind>.<reason code>"`` (``"<kind>.other"`` for a message without a code).
    """

    log: Callable[[str], None]
    quiet_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    total: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    by_reason: dict[str, int] = field(default_factory=dict)
    _burst: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, label) -> repeats not logged
    _last: float = -math.inf

    def reject(self, kind: str, detail: str, reason: str = "") -> None:
        now = self.clock()
        reason = reason or rejection_reason(detail)
        self.total += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        key = f"{kind}.{reason or 'other'}"
        self.by_reason[key] = self.by_reason.get(key, 0) + 1
        summary = self._end_burst() if now - self._last >= self.quiet_s else ""
        self._last = now
        label = (kind, reason or _burst_label(detail))
        if label in self._burst:
            self._burst[label] += 1
        elif len(self._burst) >= _MAX_REASONS_PER_BURST:
            other = (kind, "further reasons")
            self._burst[other] = self._burst.get(other, 0) + 1
        else:
            self._burst[label] = 0
            self.log(f"rejected {kind}: {detail}" + (f" ({summary})" if summary else ""))

    def flush(self) -> None:
        """Log the summary of a burst that is over (nothing while it may go on, nothing twice)."""
        if self._burst and self.clock() - self._last >= self.quiet_s:
            summary = self._end_burst()
            if summary:
                self.log(f"rejections ended: {summary}")

    def _end_burst(self) -> str:
        repeats = [f"{n} more {kind} ({label})" for (kind, label), n in self._burst.items() if n]
        self._burst.clear()
        return "last burst: " + ", ".join(repeats) if repeats else ""


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
