"""The sim bridge's parameters: name, default, range, whether they can change at run time (ROS-free).

``config/sim_bridge.yaml`` holds the same defaults in ROS params-file form; the launch file and the
pip runner load that file, and a test checks that the two agree. The node declares every entry
here with a descriptor (description, range, read-only).
"""

from __future__ import annotations

from dataclasses import dataclass

from vla_ros.conventions import DEFAULT_IMAGE_FLIP, IMAGE_FLIPS, LIBERO_SUITES, NUM_STEPS_WAIT, SIM_IMAGE_SIZE

NODE_NAME = "sim_bridge"
PARAMS_FILE = "sim_bridge.yaml"
STEPPING_MODES = ("lockstep", "realtime")


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: object
    description: str
    read_only: bool = True  # read-only ones shape the env or the node's wiring, built once
    range: tuple[float, float] | None = None  # inclusive; int or float by the default's type
    choices: tuple[str, ...] | None = None  # allowed strings (checked by the node)


PARAMS: tuple[ParamSpec, ...] = (
    # --- what to simulate (initial episode; the reset service picks later ones)
    ParamSpec("suite", "libero_spatial", "LIBERO suite of the first episode", choices=LIBERO_SUITES),
    ParamSpec("task_id", 0, "task index in the suite for the first episode", range=(0, 89)),
    ParamSpec("init_state_id", 0, "fixed init state (0..49) of the first episode", range=(0, 49)),
    ParamSpec("seed", 0, "simulator seed", range=(0, 2**31 - 1)),
    ParamSpec("reset_on_start", True, "start the first episode when the node starts"),
    ParamSpec("auto_reset", False, "after an episode ends (not by a reset), start the next init state of the task",
              read_only=False),
    # --- cameras
    ParamSpec("image_size", SIM_IMAGE_SIZE, "rendered image height = width, pixels (OpenVLA's eval: 256)",
              range=(16, 1024)),
    ParamSpec("cameras", ["agentview", "wrist"], "cameras to render and publish (agentview, wrist)"),
    ParamSpec("image_flip", DEFAULT_IMAGE_FLIP, "flip applied before publishing (rot180, vflip, none)",
              choices=IMAGE_FLIPS),
    ParamSpec("fast_render", True, "render without MSAA, shadows and reflections (about 2x faster on a CPU)"),
    # --- episode protocol
    ParamSpec("hard_reset", True, "rebuild the MuJoCo model at every reset as LIBERO/OpenVLA do (~2.5 s); false: "
              "~0.5 s, reproducible, not bit-identical to hard resets"),
    ParamSpec("max_steps", 0, "step limit; 0 = the suite's limit from the literature (applies at the next reset)",
              read_only=False, range=(0, 100000)),
    ParamSpec("num_steps_wait", NUM_STEPS_WAIT, "no-op settle steps after each reset, not counted (next reset)",
              read_only=False, range=(0, 1000)),
    ParamSpec("end_on_success", True, "end the episode when the success check holds (applies at the next reset)",
              read_only=False),
    # --- stepping
    ParamSpec("stepping_mode", "lockstep", "lockstep: one step per answering action; realtime: fixed rate, "
              "zero-order hold", choices=STEPPING_MODES),
    ParamSpec("control_rate_hz", 20.0, "realtime mode: steps per wall-clock second", range=(0.1, 1000.0)),
    ParamSpec("action_timeout_s", 0.5, "realtime mode: hold still when no action came for this long",
              read_only=False, range=(0.0, 3600.0)),
    ParamSpec("republish_timeout_s", 2.0, "lockstep: re-publish the observation after this long without an answer",
              read_only=False, range=(0.05, 3600.0)),
    ParamSpec("policy_timeout_s", 120.0, "lockstep: end with policy_timeout after this long without an answer "
              "while a policy publishes actions; 0 = never", read_only=False, range=(0.0, 86400.0)),
    # --- instruction
    ParamSpec("publish_instruction", True, "publish the task's instruction after each reset", read_only=False),
    ParamSpec("instruction_resend_s", 1.0, "re-send the instruction this often until the first action answers",
              read_only=False, range=(0.05, 60.0)),
    # --- outputs
    ParamSpec("publish_clock", True, "publish /clock at simulation time"),
    ParamSpec("base_frame_id", "world", "frame of the end-effector pose"),
    ParamSpec("camera_frame_id", "agentview_camera", "frame id of the main camera's images"),
    ParamSpec("wrist_frame_id", "wrist_camera", "frame id of the wrist camera's images"),
    ParamSpec("diagnostics_period_s", 1.0, "period of the /diagnostics counters", range=(0.1, 60.0)),
    # --- recording
    ParamSpec("record_dir", "", "write an mp4 + JSON sidecar per episode here; empty = off"),
    ParamSpec("record_camera", "agentview", "camera to record", choices=("agentview", "wrist")),
    ParamSpec("record_fps", 20.0, "frame rate of the recordings", range=(1.0, 120.0)),
)

PARAMS_BY_NAME = {p.name: p for p in PARAMS}


def defaults() -> dict[str, object]:
    """Parameter name -> default, as the node declares them."""
    return {p.name: p.default for p in PARAMS}
