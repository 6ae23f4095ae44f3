"""vla_policy_node's further model inputs (wrist camera, proprio) and their pairing with the main image; ROS-free.

A policy lists what it needs besides the main camera in ``metadata.extra_images`` (cameras, each on topic
``<name>_image`` of ``config/topics.yaml``) and ``metadata.proprio_layout`` (proprio from ``joint_states``:
the gripper's finger joints, and ``ee_pose``: end-effector position and x, y, z, w quaternion). The node's
callbacks turn messages into arrays (the functions here) and keep recent ones by header stamp
(:class:`StampedHistory`); a decision takes those of the main image's instant (:meth:`ExtraInputs.gather`):
the message with the image's exact stamp, else the newest whose stamp lies within the tolerance of it
(tolerance 0 = equal stamps only, as in lockstep). What ``policy.act`` then gets is built by
:func:`further_inputs`, the one function the in-process rollout also builds them with from its observation (the
proprio vector itself is ``vla_ros.proprio.proprio_vector``, as in training).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vla_ros.proprio import PROPRIO_LAYOUT, proprio_vector, quat_xyzw_to_matrix

JOINT_STATES, EE_POSE = "joint_states", "ee_pose"  # topic keys of the proprio sources (config/topics.yaml)
HISTORY = 256  # messages kept per input: 0.5 s of 500 Hz joint states, 8 s of a 30 Hz camera


def image_key(camera: str) -> str:
    """Topic key of a camera in config/topics.yaml (``wrist`` -> ``wrist_image``)."""
    return f"{camera}_image"


def stamp_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (anything with sec, nanosec) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class StampedHistory:
    """Recent values of one input keyed by their header stamp, newest last. Thread-safe."""

    def __init__(self, maxlen: int = HISTORY) -> None:
        self._items: collections.deque[tuple[int, Any]] = collections.deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def put(self, stamp: int, value: Any) -> None:
        with self._lock:
            self._items.append((stamp, value))

    def match(self, stamp: int, tolerance_ns: int) -> Any | None:
        """The value with exactly ``stamp``, else the one with the newest stamp within ``tolerance_ns``."""
        best: tuple[int, Any] | None = None
        with self._lock:
            for s, v in self._items:
                if s == stamp:
                    return v
                if abs(s - stamp) <= tolerance_ns and (best is None or s > best[0]):
                    best = (s, v)
        return None if best is None else best[1]

    def newest_stamp(self) -> int | None:
        with self._lock:
            return max((s for s, _ in self._items), default=None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def further_inputs(cameras: Sequence[str], proprio_layout: str, images: Mapping[str, np.ndarray],
                   ee_pose: tuple[np.ndarray, np.ndarray] | None = None,
                   fingers: np.ndarray | None = None) -> dict[str, Any]:
    """``policy.act``'s further keyword arguments for a model that takes ``cameras`` besides the main one and proprio
    of ``proprio_layout`` ("" = none): ``extra_images`` (camera -> image, from ``images``) and ``proprio`` (from the
    end-effector ``ee_pose`` = (position, x, y, z, w quaternion) and the two ``fingers`` positions). {} for a plain
    image model. ValueError on a camera missing from ``images``, an unknown layout or bad proprio values."""
    kw: dict[str, Any] = {}
    if cameras:
        missing = [c for c in cameras if c not in images]
        if missing:
            raise ValueError(f"the policy needs camera(s) {missing}; the inputs have {sorted(images)}")
        kw["extra_images"] = {c: images[c] for c in cameras}
    if proprio_layout:
        if proprio_layout != PROPRIO_LAYOUT:
            raise ValueError(f"unknown proprio layout {proprio_layout!r} (known: {PROPRIO_LAYOUT})")
        if ee_pose is None or fingers is None:
            raise ValueError("the policy takes proprio: the end-effector pose and the finger positions are needed")
        kw["proprio"] = proprio_vector(ee_pose[0], ee_pose[1], fingers)
    return kw


def finger_positions(names: Sequence[str], positions: Sequence[float], wanted: Sequence[str]) -> np.ndarray:
    """The positions of the ``wanted`` joints (the gripper's fingers) from a JointState's names/positions."""
    if len(positions) != len(names):
        raise ValueError(f"JointState has {len(names)} names but {len(positions)} positions")
    by_name = dict(zip(names, positions, strict=True))
    missing = [n for n in wanted if n not in by_name]
    if missing:
        raise ValueError(f"JointState lacks the gripper joint(s) {missing} (parameter gripper_joint_names; "
                         f"it has {list(names)})")
    out = np.array([by_name[n] for n in wanted], dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"gripper joint positions are not finite: {out.tolist()}")
    return out


def pose_arrays(position: Sequence[float], quat_xyzw: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """End-effector position (3) and quaternion x, y, z, w (4), checked (finite, non-zero quaternion)."""
    pos, quat = np.asarray(position, dtype=np.float64), np.asarray(quat_xyzw, dtype=np.float64)
    if not np.all(np.isfinite(pos)):
        raise ValueError(f"end-effector position is not finite: {pos.tolist()}")
    quat_xyzw_to_matrix(quat)  # ValueError on a zero or non-finite quaternion
    return pos, quat


class ExtraInputs:
    """What a policy needs besides the main image, the recent messages of each, and their pairing."""

    def __init__(self, extra_images: Sequence[str], proprio_layout: str, topic_names: dict[str, str]) -> None:
        keys = [image_key(c) for c in extra_images]
        unknown = [k for k in keys if k not in topic_names]
        if unknown:
            raise ValueError(f"the policy needs camera(s) {[k[:-len('_image')] for k in unknown]}, but "
                             f"config/topics.yaml has no topic {unknown} (known: {sorted(topic_names)})")
        if proprio_layout and proprio_layout != PROPRIO_LAYOUT:
            raise ValueError(f"the policy needs proprio layout {proprio_layout!r}; this node builds "
                             f"{PROPRIO_LAYOUT!r} only")
        self.cameras = tuple(extra_images)
        self.proprio_layout = proprio_layout
        self.proprio = bool(proprio_layout)
        self.keys = (*keys, *((JOINT_STATES, EE_POSE) if self.proprio else ()))
        self.history = {k: StampedHistory() for k in self.keys}

    def __bool__(self) -> bool:
        return bool(self.keys)

    def put(self, key: str, stamp: int, value: Any) -> None:
        self.history[key].put(stamp, value)

    def clear(self) -> None:
        for h in self.history.values():
            h.clear()

    def gather(self, stamp: int, tolerance_ns: int) -> tuple[dict, list[str]]:
        """(``policy.act`` keyword arguments, []) for the main image's ``stamp``, or ({}, the inputs missing)."""
        found = {k: h.match(stamp, tolerance_ns) for k, h in self.history.items()}
        missing = [k for k, v in found.items() if v is None]
        if missing:
            return {}, missing
        images = {c: found[image_key(c)] for c in self.cameras}
        kw = further_inputs(self.cameras, self.proprio_layout, images, found.get(EE_POSE), found.get(JOINT_STATES))
        return kw, []

    def pair(self, stamp: int, tolerance_ns: int) -> tuple[dict | None, str]:
        """(``policy.act`` keyword arguments, "") for the main image's ``stamp``, or (None, why they are missing:
        not received or not paired, or proprio values the vector refused)."""
        try:
            kw, missing = self.gather(stamp, tolerance_ns)
        except ValueError as exc:  # proprio_vector refused the values
            return None, str(exc)
        if missing:
            return None, self.describe_missing(missing, stamp, tolerance_ns)
        return kw, ""

    def describe_missing(self, missing: Sequence[str], stamp: int, tolerance_ns: int) -> str:
        """Why the pairing failed, per input: nothing received, or the newest stamp seen."""
        parts = []
        for k in missing:
            newest = self.history[k].newest_stamp()
            parts.append(f"{k}: " + ("nothing received" if newest is None else f"newest stamp {newest * 1e-9:.6f}"))
        within = "equal stamps" if tolerance_ns == 0 else f"within {tolerance_ns * 1e-9:g} s"
        return f"no {', '.join(missing)} {within} of the image stamp {stamp * 1e-9:.6f} ({'; '.join(parts)})"
