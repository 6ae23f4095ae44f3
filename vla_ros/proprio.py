"""Proprioception as the VLA consumes it: one vector built the same way from a dataset, the simulator and ROS.

Layout ``eef_rot6d_gripper`` (11 values): end-effector position (3, metres, in the frame the robot reports it),
end-effector orientation as the first two columns of its rotation matrix (6; Zhou et al., "On the Continuity of
Rotation Representations in Neural Networks", 2019) and the two finger joint positions (2, metres).

Why not LIBERO's axis-angle (OpenVLA's 8-value proprio): the gripper of a tabletop arm points down, a rotation
near pi, where axis-angle flips sign between nearly equal poses; the 6-D form is continuous everywhere.
"""

from __future__ import annotations

import numpy as np

PROPRIO_LAYOUT = "eef_rot6d_gripper"
PROPRIO_DIM = 11
PROPRIO_NAMES = ("x", "y", "z", "r11", "r21", "r31", "r12", "r22", "r32", "finger_left", "finger_right")


def quat_xyzw_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) x, y, z, w quaternions (any norm > 0, either sign) -> (..., 3, 3) rotation matrices."""
    q = np.asarray(q, dtype=np.float64)
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(n < 1e-9) or not np.all(np.isfinite(q)):
        raise ValueError("quaternion must be finite and non-zero")
    x, y, z, w = np.moveaxis(q / n, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def quat_xyzw_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """(..., 4) x, y, z, w quaternions -> (..., 3) axis-angle, like robosuite's ``quat2axisangle``."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w = np.clip(q[..., 3], -1.0, 1.0)
    den = np.sqrt(np.clip(1.0 - w * w, 0.0, None))
    angle = 2.0 * np.arccos(w)
    scale = np.where(den > 1e-9, angle / np.where(den > 1e-9, den, 1.0), 0.0)
    return q[..., :3] * scale[..., None]


def axis_angle_to_quat_xyzw(aa: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle -> (..., 4) x, y, z, w quaternions."""
    aa = np.asarray(aa, dtype=np.float64)
    angle = np.linalg.norm(aa, axis=-1, keepdims=True)
    axis = np.where(angle > 1e-12, aa / np.where(angle > 1e-12, angle, 1.0), 0.0)
    return np.concatenate([axis * np.sin(angle / 2), np.cos(angle / 2)], axis=-1)


def proprio_vector(eef_pos: np.ndarray, eef_quat_xyzw: np.ndarray, gripper_qpos: np.ndarray) -> np.ndarray:
    """The ``eef_rot6d_gripper`` vector(s): (..., 3), (..., 4), (..., 2) -> (..., 11) float64."""
    pos = np.asarray(eef_pos, dtype=np.float64)
    fingers = np.asarray(gripper_qpos, dtype=np.float64)
    if pos.shape[-1] != 3 or fingers.shape[-1] != 2:
        raise ValueError(f"need eef_pos (..., 3) and gripper_qpos (..., 2), got {pos.shape} and {fingers.shape}")
    rot = quat_xyzw_to_matrix(eef_quat_xyzw)
    rot6d = np.concatenate([rot[..., :, 0], rot[..., :, 1]], axis=-1)
    out = np.concatenate([pos, rot6d, fingers], axis=-1)
    if not np.all(np.isfinite(out)):
        raise ValueError("proprio has NaN/inf values")
    return out


def proprio_from_axis_angle(eef_pos: np.ndarray, eef_axis_angle: np.ndarray, gripper_qpos: np.ndarray
                            ) -> np.ndarray:
    """Same vector from LIBERO's dataset keys (``ee_pos``, ``ee_ori`` axis-angle, ``gripper_states``)."""
    return proprio_vector(eef_pos, axis_angle_to_quat_xyzw(eef_axis_angle), gripper_qpos)


def proprio_statistics(proprio: np.ndarray) -> dict:
    """Mean/std (std floored, so a constant dimension does not blow up) of (N, D) proprio vectors."""
    p = np.asarray(proprio, dtype=np.float64)
    return {"layout": PROPRIO_LAYOUT, "mean": p.mean(0).tolist(), "std": np.maximum(p.std(0), 1e-3).tolist()}


def normalize_proprio(proprio: np.ndarray, stats: dict, clip: float = 5.0) -> np.ndarray:
    """Standardise with the checkpoint's statistics; clipped so an out-of-range reading stays bounded."""
    p = np.asarray(proprio, dtype=np.float64)
    mean, std = np.asarray(stats["mean"]), np.asarray(stats["std"])
    if p.shape[-1] != mean.shape[0]:
        raise ValueError(f"proprio has {p.shape[-1]} values, the model expects {mean.shape[0]}")
    return np.clip((p - mean) / std, -clip, clip)
