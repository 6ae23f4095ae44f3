"""One demonstration in memory, in LIBERO's dataset vocabulary (the unit every format here converts).

Arrays follow LIBERO's released HDF5 files (``libero/scripts/create_dataset.py`` in
github.com/Lifelong-Robot-Learning/LIBERO): per step ``actions`` (7, LIBERO's controller units,
gripper -1 open / +1 close), the flattened MuJoCo ``states``, ``rewards``/``dones`` (uint8),
``robot_states`` (gripper qpos 2 + eef pos 3 + eef quat xyzw 4) and ``obs/*``. Images are stored
raw, as LIBERO renders them (upside down); readers apply ``vla_ros.conventions.flip_image``.

One deliberate difference from LIBERO's own script: there the observation stored with action ``t``
is the one *after* the action (an off-by-one of the replay loop); here ``obs[t]`` is what the robot
saw when it chose ``actions[t]`` (``states[t]`` is the same instant), the pairing a policy learns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vla_ros.proprio import axis_angle_to_quat_xyzw, proprio_from_axis_angle, quat_xyzw_to_axis_angle

# obs/<key> written for every demo; images are HxWx3 uint8, the rest float64 like LIBERO's files.
IMAGE_KEYS = ("agentview_rgb", "eye_in_hand_rgb")
LOWDIM_KEYS = ("ee_states", "ee_pos", "ee_ori", "gripper_states", "joint_states")
OBS_KEYS = IMAGE_KEYS + LOWDIM_KEYS
LOWDIM_DIMS = {"ee_states": 6, "ee_pos": 3, "ee_ori": 3, "gripper_states": 2, "joint_states": 7}
DONE = 1


@dataclass
class Episode:
    """One demonstration. ``obs`` maps LIBERO's obs keys to (T, ...) arrays."""

    actions: np.ndarray  # (T, 7)
    obs: dict[str, np.ndarray]
    states: np.ndarray | None = None  # (T, S) flattened MuJoCo state; None for real-robot data
    rewards: np.ndarray | None = None  # (T,) uint8; default: 1 on the last step
    dones: np.ndarray | None = None  # (T,) uint8; default: 1 on the last step
    robot_states: np.ndarray | None = None  # (T, 9); default: from the obs
    instruction: str = ""
    attrs: dict = field(default_factory=dict)  # extra per-demo attributes (seed, init_state, ...)

    def __post_init__(self) -> None:
        self.actions = np.asarray(self.actions, dtype=np.float64)
        if self.actions.ndim != 2 or self.actions.shape[1] != 7 or len(self.actions) == 0:
            raise ValueError(f"actions must be (T>0, 7), got {self.actions.shape}")
        t = len(self.actions)
        for key, arr in self.obs.items():
            if len(arr) != t:
                raise ValueError(f"obs/{key} has {len(arr)} steps, actions have {t}")
        for key in IMAGE_KEYS:
            if key in self.obs:
                img = np.asarray(self.obs[key])
                if img.ndim != 4 or img.shape[-1] != 3 or img.dtype != np.uint8:
                    raise ValueError(f"obs/{key} must be (T, H, W, 3) uint8, got {img.shape} {img.dtype}")
        if self.dones is None:
            self.dones = last_step_flags(t)
        if self.rewards is None:
            self.rewards = last_step_flags(t)
        self.dones = np.asarray(self.dones, dtype=np.uint8)
        self.rewards = np.asarray(self.rewards, dtype=np.uint8)
        if self.dones.shape != (t,) or self.rewards.shape != (t,):
            raise ValueError("rewards and dones must have one value per step")
        if self.states is not None and len(self.states) != t:
            raise ValueError(f"states has {len(self.states)} steps, actions have {t}")
        if self.robot_states is None and all(k in self.obs for k in ("gripper_states", "ee_pos", "ee_ori")):
            # LIBERO's get_robot_state_vector: gripper qpos, eef pos, eef quat (x, y, z, w)
            quat = axis_angle_to_quat_xyzw(self.obs["ee_ori"])
            self.robot_states = np.concatenate([self.obs["gripper_states"], self.obs["ee_pos"], quat], axis=1)

    def __len__(self) -> int:
        return len(self.actions)

    def proprio(self) -> np.ndarray:
        """OpenVLA's LIBERO proprio: eef pos (3) + eef axis-angle (3) + gripper qpos (2) = 8 values."""
        return np.concatenate([self.obs["ee_states"], self.obs["gripper_states"]], axis=1)

    def model_proprio(self) -> np.ndarray:
        """(T, 11) proprio in the layout the VLA consumes (``vla_ros.proprio``), from the obs keys."""
        ee = self.obs["ee_states"]  # eef pos (3) + axis-angle (3); the compact format keeps only this
        return proprio_from_axis_angle(ee[:, :3], ee[:, 3:6], self.obs["gripper_states"])

    @property
    def has_proprio(self) -> bool:
        return "ee_states" in self.obs and "gripper_states" in self.obs


def last_step_flags(t: int, n_last: int = 1) -> np.ndarray:
    """uint8 flags, 1 on the last ``n_last`` steps (LIBERO's rewards/dones mark the final step)."""
    out = np.zeros(t, dtype=np.uint8)
    out[max(0, t - n_last):] = 1
    return out


__all__ = ["Episode", "axis_angle_to_quat_xyzw", "last_step_flags", "quat_xyzw_to_axis_angle"]
