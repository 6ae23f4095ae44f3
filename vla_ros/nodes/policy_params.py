"""vla_policy_node's parameters: descriptors here, defaults in ``config/policy_node.yaml`` only.

Every parameter is declared with a ``ParameterDescriptor`` (description, range, read-only). Those
the node uses only in ``configure`` (model, topics, QoS, threads) are read-only; the adapters of
:class:`vla_ros.controller.ControllerConfig` and the rate can change while the node is active.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from vla_ros.config import load_yaml
from vla_ros.controller import GRIPPER_MODES, ControllerConfig
from vla_ros.conventions import GRIPPER_CONVENTIONS
from vla_ros.nodes.qos import RELIABILITY

NODE_NAME = "vla_policy_node"
PARAMS_FILE = "policy_node.yaml"


@dataclass(frozen=True)
class ParamSpec:
    type: type  # bool, int, float, str or list (of ``item``)
    description: str
    read_only: bool = False
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None
    item: type = float  # element type of a list: float (double[]) or str (string[])
    length: int | None = None  # a list's required length

    def descriptor(self, name: str) -> ParameterDescriptor:
        d = ParameterDescriptor(name=name, description=self.description, read_only=self.read_only)
        if self.range is not None and self.type is float:
            d.floating_point_range = [FloatingPointRange(from_value=float(self.range[0]),
                                                         to_value=float(self.range[1]), step=0.0)]
        elif self.range is not None and self.type is int:
            d.integer_range = [IntegerRange(from_value=int(self.range[0]), to_value=int(self.range[1]), step=1)]
        if self.choices is not None:
            d.additional_constraints = "one of: " + ", ".join(repr(c) for c in self.choices)
        return d


_RO = {"read_only": True}
SPECS: dict[str, ParamSpec] = {
    # ---- start-up and model: read at configure, so read-only
    "auto_start": ParamSpec(bool, "Configure and activate at start (simple launches).", **_RO),
    "backend": ParamSpec(str, "Model backend for vla_ros.backends.load_policy (debug, native, hf, remote, ...).",
                         **_RO),
    "checkpoint": ParamSpec(str, "Checkpoint path or id; empty = the backend's default.", **_RO),
    "quantization": ParamSpec(str, "Backend-specific quantization (native: none, 8bit, 4bit); empty = default.", **_RO),
    "adapter": ParamSpec(str, "LoRA adapter path; empty = none.", **_RO),
    "device": ParamSpec(str, "Torch device (cpu, cuda, cuda:0); empty = the backend's default.", **_RO),
    "unnorm_key": ParamSpec(str, "Dataset statistics key that un-normalises actions; empty = checkpoint's.", **_RO),
    "backend_options": ParamSpec(str, "YAML mapping of further backend options, e.g. '{mode: image_mean}'.", **_RO),
    "lockstep": ParamSpec(bool, "Answer each new observation exactly once (simulator) instead of a timer.", **_RO),
    "sensor_reliability": ParamSpec(str, "Reliability of the camera, joint_states and ee_pose subscriptions.",
                                    choices=tuple(RELIABILITY), **_RO),
    "subscribe_episode_status": ParamSpec(bool, "Take episode/step and image_flip from the sim bridge.", **_RO),
    "center_crop": ParamSpec(str, "Backend's centre crop (OpenVLA's 90%-area crop for models trained with random "
                             "crops): checkpoint = as the checkpoint records, on, off.",
                             choices=("checkpoint", "on", "off"), **_RO),
    "enable_action_server": ParamSpec(bool, "Offer the ExecuteInstruction action.", **_RO),
    "publish_twist": ParamSpec(bool, "Mirror each command as geometry_msgs/TwistStamped in m/s and rad/s.", **_RO),
    "status_rate_hz": ParamSpec(float, "PolicyStatus and diagnostics rate, wall clock.", range=(0.1, 100.0), **_RO),
    "start_enabled": ParamSpec(bool, "Initial state of the enable switch (std_srvs/SetBool service).", **_RO),
    "base_frame": ParamSpec(str, "frame_id of the actions and twists (the robot base frame).", **_RO),
    "rejection_log_quiet_s": ParamSpec(float, "Rejections closer than this form one burst, logged once.",
                                       range=(0.0, 3600.0), **_RO),
    "gripper_joint_names": ParamSpec(list, "The two finger joints in sensor_msgs/JointState whose positions form "
                                     "the gripper part of the proprio (models with proprio input only).",
                                     item=str, length=2, **_RO),
    # ---- run time
    "control_rate_hz": ParamSpec(float, "Free-running control timer rate.", range=(0.1, 1000.0)),
    "image_timeout_s": ParamSpec(float, "A frame older than this (node clock) is stale: hold.", range=(0.001, 3600.0)),
    "dry_run": ParamSpec(bool, "Compute and report actions, but publish holds."),
    "gripper_convention": ParamSpec(str, "Raw gripper convention; empty = the checkpoint's.",
                                    choices=("", *GRIPPER_CONVENTIONS)),
    "gripper_mode": ParamSpec(str, "continuous closure, or binary: closure > gripper_threshold closes.",
                              choices=GRIPPER_MODES),
    "gripper_threshold": ParamSpec(float, "Closure above which binary mode closes the gripper.", range=(0.01, 0.99)),
    "clamp_low": ParamSpec(list, "Lower clamp of the 6 motion values, controller units of the action space."),
    "clamp_high": ParamSpec(list, "Upper clamp of the 6 motion values, controller units of the action space."),
    "max_linear_step_m": ParamSpec(float, "Bound on one step's translation norm, metres.", range=(1e-4, 1.0)),
    "max_angular_step_rad": ParamSpec(float, "Bound on one step's rotation-vector norm, radians.",
                                      range=(1e-4, 6.3)),
    "twist_scale": ParamSpec(float, "TwistStamped = step delta / dt * twist_scale.", range=(0.0, 10.0)),
    "max_instruction_chars": ParamSpec(int, "Longer instructions are rejected.", range=(1, 100000)),
    "min_image_side": ParamSpec(int, "Images with a smaller side are rejected.", range=(1, 65535)),
    "max_image_side": ParamSpec(int, "Images with a larger side are rejected.", range=(1, 65535)),
    "input_sync_tolerance_s": ParamSpec(float, "Free-running: wrist image / joint states / pose are paired with "
                                        "the main image if their stamp is within this (lockstep: equal stamps).",
                                        range=(0.0, 10.0)),
}

# Parameters that are fields of ControllerConfig (same names).
CONTROLLER_FIELDS = tuple(n for n in SPECS if n in ControllerConfig.__dataclass_fields__)


def yaml_defaults() -> dict[str, Any]:
    """The defaults as written in config/policy_node.yaml."""
    return dict(load_yaml(PARAMS_FILE)[NODE_NAME]["ros__parameters"])


def _typed(name: str, value: Any) -> Any:
    spec = SPECS[name]
    if spec.type is float:
        return float(value)
    if spec.type is list:
        return [spec.item(v) for v in value]
    return value


def declare(node) -> None:
    """Declare every parameter with its descriptor and the YAML default (overrides win as usual)."""
    defaults = yaml_defaults()
    missing = set(SPECS) ^ set(defaults)
    if missing:
        raise RuntimeError(f"{PARAMS_FILE} and policy_params.SPECS disagree on {sorted(missing)}")
    node.declare_parameters("", [(n, _typed(n, defaults[n]), s.descriptor(n)) for n, s in SPECS.items()])


def check_choice(name: str, value: Any) -> None:
    spec = SPECS[name]
    if spec.choices is not None and value not in spec.choices:
        raise ValueError(f"{name}={value!r} not in {spec.choices}")
    if spec.length is not None and len(value) != spec.length:
        raise ValueError(f"{name} needs {spec.length} values, got {list(value)!r}")
    if spec.type is list and spec.item is str and not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{name} needs non-empty names, got {list(value)!r}")


def controller_config(values: dict[str, Any], base: ControllerConfig | None = None) -> ControllerConfig:
    """A validated ControllerConfig from parameter values (only its fields are read)."""
    for n in CONTROLLER_FIELDS:
        if n in values:
            check_choice(n, values[n])
    return (base or ControllerConfig()).with_updates(**{n: values[n] for n in CONTROLLER_FIELDS if n in values})
