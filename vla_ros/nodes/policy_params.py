"""vla_policy_node's parameters: the spec table here, defaults in ``config/policy_node.yaml`` only.

Every spec states ``read_only`` (``vla_ros.params``' rule). Those the node uses only in ``configure`` (model,
topics, QoS, threads) are read-only; the adapters of :class:`vla_ros.controller.ControllerConfig`, the rate and
the input checks can change while the node is active. Declaring them is ``vla_ros.nodes.params``' job.
"""

from __future__ import annotations

from typing import Any

from vla_ros.controller import GRIPPER_MODES, ControllerConfig
from vla_ros.conventions import GRIPPER_CONVENTIONS
from vla_ros.nodes.params import declare_from_specs
from vla_ros.nodes.qos import RELIABILITY
from vla_ros.params import ParamSpec
from vla_ros.params import yaml_defaults as _yaml_defaults

__all__ = ["CONTROLLER_FIELDS", "NODE_NAME", "PARAMS_FILE", "SPECS", "ParamSpec", "check_choice",
           "controller_config", "declare", "yaml_defaults"]

NODE_NAME = "vla_policy_node"
PARAMS_FILE = "policy_node.yaml"

SPECS: dict[str, ParamSpec] = {
    # ---- start-up and model: read at configure, so read-only
    "auto_start": ParamSpec(bool, "Configure and activate at start (simple launches).", read_only=True),
    "backend": ParamSpec(str, "Model backend for vla_ros.backends.load_policy (debug, native, hf, remote, ...).",
                         read_only=True),
    "checkpoint": ParamSpec(str, "Checkpoint path or id; empty = the backend's default.", read_only=True),
    "quantization": ParamSpec(str, "Backend-specific quantization (native: none, 8bit, 4bit); empty = default.",
                              read_only=True),
    "adapter": ParamSpec(str, "LoRA adapter path; empty = none.", read_only=True),
    "device": ParamSpec(str, "Torch device (cpu, cuda, cuda:0); empty = the backend's default.", read_only=True),
    "unnorm_key": ParamSpec(str, "Dataset statistics key that un-normalises actions; empty = checkpoint's.",
                            read_only=True),
    "backend_options": ParamSpec(str, "YAML mapping of further backend options, e.g. '{mode: image_mean}'.",
                                 read_only=True),
    "lockstep": ParamSpec(bool, "Answer each new observation exactly once (simulator) instead of a timer.",
                          read_only=True),
    "sensor_reliability": ParamSpec(str, "Reliability of the camera, joint_states and ee_pose subscriptions.",
                                    choices=tuple(RELIABILITY), read_only=True),
    "subscribe_episode_status": ParamSpec(bool, "Take episode/step and image_flip from the sim bridge.",
                                          read_only=True),
    "center_crop": ParamSpec(str, "Backend's centre crop (OpenVLA's 90%-area crop for models trained with random "
                             "crops): checkpoint = as the checkpoint records, on, off.",
                             choices=("checkpoint", "on", "off"), read_only=True),
    "enable_action_server": ParamSpec(bool, "Offer the ExecuteInstruction action.", read_only=True),
    "publish_twist": ParamSpec(bool, "Mirror each command as geometry_msgs/TwistStamped in m/s and rad/s.",
                               read_only=True),
    "status_rate_hz": ParamSpec(float, "PolicyStatus and diagnostics rate, wall clock.", range=(0.1, 100.0),
                                read_only=True),
    "start_enabled": ParamSpec(bool, "Initial state of the enable switch (std_srvs/SetBool service).",
                               read_only=True),
    "base_frame": ParamSpec(str, "frame_id of the actions and twists (the robot base frame).", read_only=True),
    "rejection_log_quiet_s": ParamSpec(float, "Rejections closer than this form one burst, logged once.",
                                       range=(0.0, 3600.0), read_only=True),
    "gripper_joint_names": ParamSpec(list, "The two finger joints in sensor_msgs/JointState whose positions form "
                                     "the gripper part of the proprio (models with proprio input only).",
                                     item=str, length=2, read_only=True),
    # ---- run time
    "control_rate_hz": ParamSpec(float, "Free-running control timer rate.", range=(0.1, 1000.0), read_only=False),
    "image_timeout_s": ParamSpec(float, "A frame older than this (node clock) is stale: hold.",
                                 range=(0.001, 3600.0), read_only=False),
    "dry_run": ParamSpec(bool, "Compute and report actions, but publish holds.", read_only=False),
    "gripper_convention": ParamSpec(str, "Raw gripper convention; empty = the checkpoint's.",
                                    choices=("", *GRIPPER_CONVENTIONS), read_only=False),
    "gripper_mode": ParamSpec(str, "continuous closure, or binary: closure > gripper_threshold closes.",
                              choices=GRIPPER_MODES, read_only=False),
    "gripper_threshold": ParamSpec(float, "Closure above which binary mode closes the gripper.", range=(0.01, 0.99),
                                   read_only=False),
    "clamp_low": ParamSpec(list, "Lower clamp of the 6 motion values, controller units of the action space.",
                           length=6, read_only=False),
    "clamp_high": ParamSpec(list, "Upper clamp of the 6 motion values, controller units of the action space.",
                            length=6, read_only=False),
    "max_linear_step_m": ParamSpec(float, "Bound on one step's translation norm, metres.", range=(1e-4, 1.0),
                                   read_only=False),
    "max_angular_step_rad": ParamSpec(float, "Bound on one step's rotation-vector norm, radians.",
                                      range=(1e-4, 6.3), read_only=False),
    "twist_scale": ParamSpec(float, "TwistStamped = step delta / dt * twist_scale.", range=(0.0, 10.0),
                             read_only=False),
    "max_instruction_chars": ParamSpec(int, "Longer instructions are rejected.", range=(1, 100000), read_only=False),
    "min_image_side": ParamSpec(int, "Images with a smaller side are rejected.", range=(1, 65535), read_only=False),
    "max_image_side": ParamSpec(int, "Images with a larger side are rejected.", range=(1, 65535), read_only=False),
    "input_sync_tolerance_s": ParamSpec(float, "Free-running: wrist image / joint states / pose are paired with "
                                        "the main image if their stamp is within this (lockstep: equal stamps).",
                                        range=(0.0, 10.0), read_only=False),
    "inference_timeout_s": ParamSpec(float, "Free-running: an inference running longer than this makes each control "
                                     "tick hold (inference_timeout) until it returns.", range=(0.001, 3600.0),
                                     read_only=False),
    "stamp_clock_tolerance_s": ParamSpec(float, "An image stamp at most this far ahead of its receipt is on the node "
                                         "clock and its age counts for staleness too; else the receipt's age only.",
                                         range=(0.0, 60.0), read_only=False),
}

# Parameters that are fields of ControllerConfig (same names).
CONTROLLER_FIELDS = tuple(n for n in SPECS if n in ControllerConfig.__dataclass_fields__)


def yaml_defaults() -> dict[str, Any]:
    """The defaults as written in config/policy_node.yaml."""
    return _yaml_defaults(PARAMS_FILE, NODE_NAME)


def declare(node) -> None:
    """Declare every parameter with its descriptor and the YAML default (overrides win as usual).

    ValueError naming the parameter if the YAML and SPECS disagree or a start value breaks its spec.
    """
    declare_from_specs(node, SPECS, PARAMS_FILE, NODE_NAME)


def check_choice(name: str, value: Any) -> None:
    """ValueError naming ``name`` if ``value`` is not among its choices, has the wrong length or range."""
    SPECS[name].check(name, value)


def controller_config(values: dict[str, Any], base: ControllerConfig | None = None) -> ControllerConfig:
    """A validated ControllerConfig from parameter values (only its fields are read)."""
    for n in CONTROLLER_FIELDS:
        if n in values:
            check_choice(n, values[n])
    return (base or ControllerConfig()).with_updates(**{n: values[n] for n in CONTROLLER_FIELDS if n in values})
