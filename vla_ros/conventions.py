"""The one definition of the quantities every part of vla_ros shares (see docs/conventions.md).

Action, gripper, camera flip and the LIBERO episode constants live here and nowhere else: the
policy node, the sim bridge, the dataset reader, training and evaluation all import them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

ACTION_DIM = 7  # dx, dy, dz, dax, day, daz, gripper

# ---------------------------------------------------------------- action space


@dataclass(frozen=True)
class ActionSpace:
    """What one policy action means physically; recorded in every checkpoint.

    The first six values are end-effector deltas in controller units: ``linear_unit_m`` metres and
    ``angular_unit_rad`` radians (axis-angle) per unit, one action every ``dt`` seconds. ``gripper``
    names how the seventh value encodes the gripper (see ``GRIPPER_CONVENTIONS``).
    """

    name: str
    linear_unit_m: float
    angular_unit_rad: float
    dt: float
    rotation: str = "axis_angle"
    gripper: str = "libero_sign"
    low: float = -1.0
    high: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ActionSpace:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


# robosuite's OSC_POSE controller as LIBERO configures it: output_max 0.05 m / 0.5 rad, 20 Hz.
LIBERO_ACTION_SPACE = ActionSpace(
    name="libero_osc_pose_20hz", linear_unit_m=0.05, angular_unit_rad=0.5, dt=0.05
)

ACTION_SPACES = {LIBERO_ACTION_SPACE.name: LIBERO_ACTION_SPACE}


def get_action_space(name: str) -> ActionSpace:
    try:
        return ACTION_SPACES[name]
    except KeyError:
        raise ValueError(
            f"unknown action space {name!r}; known: {sorted(ACTION_SPACES)}"
        ) from None


# ---------------------------------------------------------------- gripper
# In every message the gripper is a closure command in [0, 1]: 0 = fully open, 1 = fully closed.
# A checkpoint's raw gripper output follows one of these conventions:
#   libero_sign   : LIBERO's own values, -1 open, +1 close (our datasets and models)
#   closure01     : already [0, 1], 1 = closed
#   openvla_open01: [0, 1] with 1 = OPEN (OpenVLA's LIBERO checkpoints flip LIBERO's sign)
GRIPPER_CONVENTIONS = ("libero_sign", "closure01", "openvla_open01")


def gripper_to_closure(raw: float | np.ndarray, convention: str) -> float | np.ndarray:
    """Map a policy's raw gripper output to the message form (closure in [0, 1])."""
    if convention == "libero_sign":
        out = (np.asarray(raw, dtype=np.float64) + 1.0) * 0.5
    elif convention == "closure01":
        out = np.asarray(raw, dtype=np.float64)
    elif convention == "openvla_open01":
        out = 1.0 - np.asarray(raw, dtype=np.float64)
    else:
        raise ValueError(f"unknown gripper convention {convention!r}; known: {GRIPPER_CONVENTIONS}")
    out = np.clip(out, 0.0, 1.0)
    return float(out) if out.ndim == 0 else out


def closure_to_gripper(closure: float | np.ndarray, convention: str) -> float | np.ndarray:
    """Inverse of :func:`gripper_to_closure` (continuous, no binarisation)."""
    c = np.clip(np.asarray(closure, dtype=np.float64), 0.0, 1.0)
    if convention == "libero_sign":
        out = 2.0 * c - 1.0
    elif convention == "closure01":
        out = c
    elif convention == "openvla_open01":
        out = 1.0 - c
    else:
        raise ValueError(f"unknown gripper convention {convention!r}; known: {GRIPPER_CONVENTIONS}")
    return float(out) if out.ndim == 0 else out


def closure_to_libero_binary(closure: float) -> float:
    """The simulator wants a binary gripper: map [0,1] to [-1,1] and take the sign (> 0.5 closes).

    Exactly 0.5 (sign 0) is treated as open, the safe side for a grasp that has not been decided.
    """
    return 1.0 if (2.0 * float(closure) - 1.0) > 0.0 else -1.0


# ---------------------------------------------------------------- image
ImageFlip = Literal["rot180", "vflip", "none"]
IMAGE_FLIPS: tuple[str, ...] = ("rot180", "vflip", "none")
# OpenVLA's and LeRobot's convention for LIBERO's upside-down camera. Note: rot180 is a MIRROR of
# the true view (vflip is the true view), so sim-trained and real-camera data must not be mixed
# without care.
DEFAULT_IMAGE_FLIP: ImageFlip = "rot180"


def flip_image(img: np.ndarray, flip: str = DEFAULT_IMAGE_FLIP) -> np.ndarray:
    """Apply the camera flip convention to an HxWxC (or NxHxWxC) image; returns a contiguous copy."""
    if flip == "rot180":
        out = img[..., ::-1, ::-1, :]
    elif flip == "vflip":
        out = img[..., ::-1, :, :]
    elif flip == "none":
        out = img
    else:
        raise ValueError(f"unknown image flip {flip!r}; known: {IMAGE_FLIPS}")
    return np.ascontiguousarray(out)


# ---------------------------------------------------------------- LIBERO episode protocol
LIBERO_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
# Step limits used in the literature (OpenVLA's run_libero_eval.py), per suite.
SUITE_MAX_STEPS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
# No-op steps after each reset so objects settle (OpenVLA: num_steps_wait = 10), gripper open.
NUM_STEPS_WAIT = 10
# OpenVLA's evaluation renders at 256; LIBERO's released datasets are 128.
SIM_IMAGE_SIZE = 256
DATASET_IMAGE_SIZE = 128


def max_steps_for(suite: str) -> int:
    try:
        return SUITE_MAX_STEPS[suite]
    except KeyError:
        raise ValueError(f"unknown LIBERO suite {suite!r}; known: {list(SUITE_MAX_STEPS)}") from None


def settle_action() -> np.ndarray:
    """The no-op sent during settle steps: zero motion, gripper open (LIBERO's -1)."""
    a = np.zeros(ACTION_DIM, dtype=np.float64)
    a[-1] = -1.0
    return a
