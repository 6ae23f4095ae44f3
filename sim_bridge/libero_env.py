"""The LIBERO episode protocol, ROS-free: shared by the sim bridge node and in-process evaluation.

One place defines how an episode runs: the suite's fixed init states, ``NUM_STEPS_WAIT`` settle
steps (not counted), the per-suite step limit, the success check, and the camera flip applied to
every published/consumed image. LIBERO is imported lazily, only when an env is built.
``LiberoEpisodeEnv.render_viewer`` renders a larger, upright frame for people (the viewer recording) from the
same render context, without changing what the policy's cameras render.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from vla_ros.conventions import (
    DEFAULT_IMAGE_FLIP,
    NUM_STEPS_WAIT,
    SIM_IMAGE_SIZE,
    flip_image,
    max_steps_for,
    settle_action,
)

# LIBERO camera names for the two cameras vla_ros knows.
CAMERAS = {"agentview": "agentview", "wrist": "robot0_eye_in_hand"}
# The viewer's frames are the true camera view: LIBERO renders upside down and "vflip" undoes exactly that
# (the policy's "rot180" is a mirror of the true view, docs/conventions.md).
VIEWER_FLIP = "vflip"
VIEWER_SIZE = 512

_fast_render = {"on": False}
# Smallest offscreen buffer (width, height) a new render context gets, for the largest viewer frame asked for
# in this process. MuJoCo's default is 640x480: a larger render makes robosuite rebuild its MuJoCo render
# context (every mesh and texture uploaded again: 2-4 s measured on this CPU), and a hard reset makes a new
# context at the model's default size. A larger buffer does not change the policy's frames (checked pixel
# for pixel, test/test_viewer_recording.py); it never shrinks, so one process pays the rebuild at most once.
_offscreen_reserve = {"width": 0, "height": 0}


def _reserve_offscreen(width: int, height: int) -> None:
    _offscreen_reserve["width"] = max(_offscreen_reserve["width"], int(width))
    _offscreen_reserve["height"] = max(_offscreen_reserve["height"], int(height))


def _install_fast_render_hook() -> None:
    """Make robosuite's offscreen render contexts skip MSAA, shadows and reflections when asked, and make
    their offscreen buffer as large as the viewer frames need (``_offscreen_reserve``).

    LIBERO's scenes have ~726k vertices and rendering dominates a CPU step (157 ms vs 19 ms physics
    for one 128px camera, ../shared/ENVIRONMENT.md). MSAA samples and the buffer size are read when the
    GL context is made, so the switch must act inside the context constructor, which robosuite calls after
    every (hard) reset: a wrapper around it is the one place that sees every new context.
    """
    import mujoco
    from robosuite.utils import binding_utils

    cls = binding_utils.MjRenderContext
    if getattr(cls, "_vla_ros_fast_hook", False):
        return
    original_init = cls.__init__

    def init(self, sim, *args, **kwargs):
        if _fast_render["on"]:
            sim.model._model.vis.quality.offsamples = 0
        buffer = sim.model._model.vis.global_
        buffer.offwidth = max(buffer.offwidth, _offscreen_reserve["width"])
        buffer.offheight = max(buffer.offheight, _offscreen_reserve["height"])
        original_init(self, sim, *args, **kwargs)
        if _fast_render["on"]:
            self.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            self.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0

    cls.__init__ = init
    cls._vla_ros_fast_hook = True


@dataclass
class Observation:
    """What the robot's sensors report after a step (images already flipped per convention)."""

    images: dict[str, np.ndarray]  # camera name -> HxWx3 uint8 RGB
    eef_pos: np.ndarray  # (3,) metres, base/world frame
    eef_quat: np.ndarray  # (4,) x, y, z, w (robosuite order)
    gripper_qpos: np.ndarray  # (2,) finger joint positions
    joint_pos: np.ndarray  # (7,) arm joint positions
    raw: dict = field(repr=False, default_factory=dict)  # LIBERO's own observation dict


@dataclass
class StepResult:
    obs: Observation
    success: bool
    done: bool
    reason: str  # "" while running; success, step_limit, policy_done, policy_timeout


def task_names(suite: str) -> list[str]:
    from libero.libero import benchmark

    s = benchmark.get_benchmark_dict()[suite]()
    return [s.get_task(i).language for i in range(s.n_tasks)]


class LiberoEpisodeEnv:
    """One LIBERO task with the evaluation protocol of OpenVLA's ``run_libero_eval.py``.

    ``reset(init_state_id)`` -> settle -> ``step(action)`` until ``done``. Actions are LIBERO's
    controller actions (see ``vla_ros.action_conversion.command_to_libero``).
    """

    def __init__(self, suite: str, task_id: int, *, image_size: int = SIM_IMAGE_SIZE,
                 cameras: tuple[str, ...] = ("agentview", "wrist"), image_flip: str = DEFAULT_IMAGE_FLIP,
                 fast_render: bool = True, max_steps: int | None = None, num_steps_wait: int = NUM_STEPS_WAIT,
                 end_on_success: bool = True, seed: int = 0, hard_reset: bool = True, viewer_size: int = 0):
        """``viewer_size`` (0: none) makes the render contexts large enough for viewer frames of that size from
        the start, so that the first :meth:`render_viewer` does not rebuild one (seconds)."""
        from libero.libero import benchmark, get_libero_path
        from libero.libero.envs import OffScreenRenderEnv

        for cam in cameras:
            if cam not in CAMERAS:
                raise ValueError(f"unknown camera {cam!r}; known: {list(CAMERAS)}")
        flip_image(np.zeros((1, 1, 3), np.uint8), image_flip)  # validates the setting early
        suites = benchmark.get_benchmark_dict()
        if suite not in suites:
            raise ValueError(f"unknown LIBERO suite {suite!r}; known: {sorted(suites)}")
        self.suite_name = suite
        self.benchmark = suites[suite]()
        if not 0 <= task_id < self.benchmark.n_tasks:
            raise ValueError(f"task_id {task_id} out of range 0..{self.benchmark.n_tasks - 1} for {suite}")
        self.task_id = task_id
        self.task = self.benchmark.get_task(task_id)
        self.instruction: str = self.task.language
        self.init_states = self.benchmark.get_task_init_states(task_id)
        self.cameras = tuple(cameras)
        self.image_size = int(image_size)
        self.image_flip = image_flip
        self.max_steps = int(max_steps) if max_steps else max_steps_for(suite)
        self.num_steps_wait = int(num_steps_wait)
        self.end_on_success = bool(end_on_success)
        self.seed = int(seed)

        _install_fast_render_hook()
        _fast_render["on"] = bool(fast_render)
        if viewer_size:
            _reserve_offscreen(viewer_size, viewer_size)
        bddl = os.path.join(get_libero_path("bddl_files"), self.task.problem_folder, self.task.bddl_file)
        self.env = OffScreenRenderEnv(
            bddl_file_name=bddl,
            camera_heights=self.image_size,
            camera_widths=self.image_size,
            camera_names=[CAMERAS[c] for c in self.cameras] or ["agentview"],
            has_offscreen_renderer=bool(self.cameras),
            use_camera_obs=bool(self.cameras),
        )
        self.env.seed(self.seed)
        # LIBERO's default (and OpenVLA's evaluation) rebuilds the MuJoCo model at every reset (~2.5 s on a
        # CPU). The init state then overwrites the whole simulator state, so a soft reset (~0.5 s) gives the
        # same scene; trajectories stay reproducible run to run but differ from hard-reset ones in the last
        # digits (~4e-6 m after 40 steps, measured: solver warm-start state survives a soft reset).
        self.hard_reset = bool(hard_reset)
        self.env.env.hard_reset = self.hard_reset
        self.step_count = 0
        self.init_state_id = -1
        self.done = True
        self.reason = ""
        self.success = False

    # ------------------------------------------------------------------ episode
    @property
    def num_init_states(self) -> int:
        return len(self.init_states)

    def reset(self, init_state_id: int) -> Observation:
        """Reset to one of the suite's fixed init states and run the settle steps."""
        if not 0 <= init_state_id < len(self.init_states):
            raise ValueError(f"init_state_id {init_state_id} out of range 0..{len(self.init_states) - 1}")
        self.env.reset()
        raw = self.env.set_init_state(self.init_states[init_state_id])
        noop = settle_action()
        for _ in range(self.num_steps_wait):
            raw, _, _, _ = self.env.step(noop)
        self.init_state_id = init_state_id
        self.step_count = 0
        self.done = False
        self.reason = ""
        self.success = False
        return self._observation(raw)

    def reset_random(self, seed: int) -> Observation:
        """Reset to a fresh random placement (LIBERO samples it from the BDDL regions), then settle.

        For generating demonstrations: the suite's fixed init states are the evaluation set and must
        not be trained on. LIBERO's placement samplers draw from numpy's global generator, so it is
        seeded here; the same seed gives the same scene. ``init_state_id`` is -1 for such episodes.
        """
        np.random.seed(int(seed) % 2**32)
        raw = self.env.reset()
        noop = settle_action()
        for _ in range(self.num_steps_wait):
            raw, _, _, _ = self.env.step(noop)
        self.init_state_id = -1
        self.step_count = 0
        self.done = False
        self.reason = ""
        self.success = False
        return self._observation(raw)

    def step(self, action: np.ndarray) -> StepResult:
        """Apply one LIBERO controller action (7 values in [-1, 1]); counts toward the step limit."""
        if self.done:
            raise RuntimeError(f"episode is over ({self.reason}); reset first")
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (7,) or not np.all(np.isfinite(action)):
            raise ValueError(f"invalid LIBERO action {action!r}")
        raw, _, _, _ = self.env.step(np.clip(action, -1.0, 1.0))
        self.step_count += 1
        self.success = bool(self.env.check_success())
        if self.success and self.end_on_success:
            self.finish("success")
        elif self.step_count >= self.max_steps:
            self.finish("step_limit")
        return StepResult(self._observation(raw), self.success, self.done, self.reason)

    def finish(self, reason: str) -> None:
        """End the episode for ``reason`` (success, step_limit, policy_done, policy_timeout, ...)."""
        self.done = True
        self.reason = reason

    def close(self) -> None:
        env, self.env = getattr(self, "env", None), None
        if env is not None:
            env.close()

    # ------------------------------------------------------------------ observation
    def _observation(self, raw: dict) -> Observation:
        images = {
            cam: flip_image(raw[f"{CAMERAS[cam]}_image"], self.image_flip) for cam in self.cameras
        }
        return Observation(
            images=images,
            eef_pos=np.asarray(raw["robot0_eef_pos"], dtype=np.float64),
            eef_quat=np.asarray(raw["robot0_eef_quat"], dtype=np.float64),
            gripper_qpos=np.asarray(raw["robot0_gripper_qpos"], dtype=np.float64),
            joint_pos=np.asarray(raw["robot0_joint_pos"], dtype=np.float64),
            raw=raw,
        )

    def raw_frame(self, camera: str = "agentview", size: int | None = None) -> np.ndarray:
        """The current frame exactly as LIBERO renders it (no flip), at ``image_size`` unless ``size`` is given."""
        if camera not in CAMERAS:
            raise ValueError(f"unknown camera {camera!r}; known: {list(CAMERAS)}")
        if self.env is None or self.env.sim._render_context_offscreen is None:
            raise RuntimeError("this env renders no images (built without cameras, or closed)")
        size = int(size or self.image_size)
        return self.env.sim.render(camera_name=CAMERAS[camera], height=size, width=size)[..., :3]

    def render_viewer(self, camera: str = "agentview", size: int = VIEWER_SIZE) -> np.ndarray:
        """The current scene from ``camera`` at ``size`` x ``size``, upright (the true camera view, not the
        policy's flip): a frame for people, e.g. ``EpisodeRecorder.add_viewer``. Call it from the thread that
        steps the env (robosuite's GL context is current there), after :meth:`step`/:meth:`reset`.

        It renders once more through the env's own render context (the policy's frames stay exactly as they
        are). On a CPU that costs about 0.6 of a two-camera 128 px step at 512 px, and not much less at 256 px
        (``vla_ros.sim.recording.VIEWER_EVERY`` has the numbers): render every k-th step, not every step.
        """
        size = int(size)
        if not 16 <= size <= 4096:
            raise ValueError(f"viewer size must be 16..4096 px, got {size}")
        # The next render context (after a hard reset) is made this large at once: no rebuild per episode.
        _reserve_offscreen(size, size)
        return flip_image(self.raw_frame(camera, size), VIEWER_FLIP)
