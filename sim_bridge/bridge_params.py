"""The sim bridge's parameters (ROS-free): the spec table; the defaults are in ``config/sim_bridge.yaml`` only.

Every spec states ``read_only`` (``vla_ros.params``' rule). Read-only ones shape the env or the node's wiring,
built once; the others take effect at once or at the next reset (their description says which). The node
declares them through ``vla_ros.nodes.params``; the ROS-free stepping (:mod:`vla_ros.sim.bridge`) reads the
ones it needs as a :class:`BridgeConfig`, made from the same values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from vla_ros.conventions import IMAGE_FLIPS, LIBERO_SUITES
from vla_ros.params import ParamSpec, checked_values
from vla_ros.params import yaml_defaults as _yaml_defaults
from vla_ros.sim.libero_env import CAMERAS as _LIBERO_CAMERAS

NODE_NAME = "sim_bridge"
PARAMS_FILE = "sim_bridge.yaml"
STEPPING_MODES = ("lockstep", "realtime")
CAMERAS = tuple(_LIBERO_CAMERAS)  # agentview, wrist

SPECS: dict[str, ParamSpec] = {
    # --- what to simulate (initial episode; the reset service picks later ones)
    "suite": ParamSpec(str, "LIBERO suite of the first episode", choices=LIBERO_SUITES, read_only=True),
    "task_id": ParamSpec(int, "task index in the suite for the first episode", range=(0, 89), read_only=True),
    "init_state_id": ParamSpec(int, "fixed init state (0..49) of the first episode", range=(0, 49), read_only=True),
    "seed": ParamSpec(int, "simulator seed", range=(0, 2**31 - 1), read_only=True),
    "reset_on_start": ParamSpec(bool, "start the first episode when the node starts", read_only=True),
    "auto_reset": ParamSpec(bool, "after an episode ends (not by a reset), start the next init state of the task",
                            read_only=False),
    # --- cameras
    "image_size": ParamSpec(int, "rendered image height = width, pixels (OpenVLA's eval: 256)", range=(16, 1024),
                            read_only=True),
    "cameras": ParamSpec(list, "cameras to render and publish (agentview, wrist)", item=str, choices=CAMERAS,
                         read_only=True),
    "image_flip": ParamSpec(str, "flip applied before publishing (rot180, vflip, none)", choices=IMAGE_FLIPS,
                            read_only=True),
    "fast_render": ParamSpec(bool, "render without MSAA, shadows and reflections (about 2x faster on a CPU)",
                             read_only=True),
    # --- episode protocol
    "hard_reset": ParamSpec(bool, "rebuild the MuJoCo model at every reset as LIBERO/OpenVLA do (~2.5 s); false: "
                            "~0.5 s, reproducible, not bit-identical to hard resets", read_only=True),
    "max_steps": ParamSpec(int, "step limit; 0 = the suite's limit from the literature (applies at the next reset)",
                           range=(0, 100000), read_only=False),
    "num_steps_wait": ParamSpec(int, "no-op settle steps after each reset, not counted (next reset)",
                                range=(0, 1000), read_only=False),
    "end_on_success": ParamSpec(bool, "end the episode when the success check holds (applies at the next reset)",
                                read_only=False),
    # --- stepping
    "stepping_mode": ParamSpec(str, "lockstep: one step per answering action; realtime: fixed rate, zero-order hold",
                               choices=STEPPING_MODES, read_only=True),
    "control_rate_hz": ParamSpec(float, "realtime mode: steps per wall-clock second", range=(0.1, 1000.0),
                                 read_only=True),
    "action_timeout_s": ParamSpec(float, "realtime mode: hold still when no action came for this long",
                                  range=(0.0, 3600.0), read_only=False),
    "republish_timeout_s": ParamSpec(float, "lockstep: re-publish the observation after this long without an "
                                     "answer", range=(0.05, 3600.0), read_only=False),
    "policy_timeout_s": ParamSpec(float, "lockstep: end with policy_timeout after this long without an answer "
                                  "while a policy publishes actions; 0 = never", range=(0.0, 86400.0),
                                  read_only=False),
    # --- instruction
    "publish_instruction": ParamSpec(bool, "publish the task's instruction after each reset", read_only=False),
    "instruction_resend_s": ParamSpec(float, "re-send the instruction this often until the first action answers",
                                      range=(0.05, 60.0), read_only=False),
    # --- outputs
    "publish_clock": ParamSpec(bool, "publish /clock at simulation time", read_only=True),
    "base_frame_id": ParamSpec(str, "frame of the end-effector pose", read_only=True),
    "camera_frame_id": ParamSpec(str, "frame id of the main camera's images", read_only=True),
    "wrist_frame_id": ParamSpec(str, "frame id of the wrist camera's images", read_only=True),
    "diagnostics_period_s": ParamSpec(float, "period of the /diagnostics counters", range=(0.1, 60.0),
                                      read_only=True),
    # --- recording
    "record_dir": ParamSpec(str, "write an mp4 + JSON sidecar per episode here; empty = off", read_only=True),
    "record_camera": ParamSpec(str, "camera to record", choices=CAMERAS, read_only=True),
    "record_fps": ParamSpec(float, "frame rate of the recordings", range=(1.0, 120.0), read_only=True),
    "record_viewer_size": ParamSpec(int, "also record an upright viewer video of record_camera at this size, with "
                                    "step, instruction, gripper and done drawn on it; 0 = off",
                                    range=(0, 1024), read_only=True),
    "record_viewer_every": ParamSpec(int, "viewer frame every this many steps (a 512 px render costs about half "
                                     "a step on a CPU)", range=(1, 1000), read_only=True),
    "record_plot": ParamSpec(bool, "also write a PNG plot per episode: the 7 action dimensions over time and "
                             "the holds", read_only=True),
}


def yaml_defaults() -> dict[str, Any]:
    """The defaults as written in config/sim_bridge.yaml."""
    return _yaml_defaults(PARAMS_FILE, NODE_NAME)


@dataclass(frozen=True)
class BridgeConfig:
    """The node parameters the stepping reads (names as in config/sim_bridge.yaml; the rest is ROS wiring)."""

    suite: str
    task_id: int
    init_state_id: int
    reset_on_start: bool
    seed: int
    auto_reset: bool
    image_size: int
    cameras: tuple[str, ...]
    image_flip: str
    fast_render: bool
    hard_reset: bool
    max_steps: int
    num_steps_wait: int
    end_on_success: bool
    stepping_mode: str
    action_timeout_s: float
    republish_timeout_s: float
    policy_timeout_s: float
    publish_instruction: bool
    instruction_resend_s: float
    record_dir: str
    record_camera: str
    record_fps: float
    record_viewer_size: int
    record_viewer_every: int
    record_plot: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "cameras", tuple(self.cameras))
        if self.record_dir and self.record_camera not in self.cameras:
            raise ValueError(f"parameter record_camera={self.record_camera!r} is not among cameras {self.cameras}")

    @classmethod
    def from_params(cls, values: Mapping[str, Any]) -> BridgeConfig:
        """From node parameter values (extra names, e.g. ``publish_clock``, are not the stepping's business)."""
        return cls(**{f.name: values[f.name] for f in fields(cls)})

    @classmethod
    def defaults(cls, **overrides: Any) -> BridgeConfig:
        """The YAML defaults with ``overrides``, checked against the parameter specs (ROS-free users, tests)."""
        return cls.from_params(checked_values(SPECS, {**yaml_defaults(), **overrides}))
