"""The in-process episode loop (ROS-free): ``LiberoEpisodeEnv`` + a ``Policy`` + the node's action shaping.

Each step does what the graph ``sim_bridge_node`` + ``vla_policy_node`` does in lockstep, with the same
functions, so both routes give the same actions and outcome for one seed:

- the policy sees the flipped camera image the bridge would publish (``LiberoEpisodeEnv`` flips it); any
  centre crop is the backend's preprocessing (its ``center_crop`` option, as the node passes it);
- its raw output is shaped by ``vla_ros.controller.shape_action`` (clamps, step limits, gripper convention of
  the checkpoint) and turned into LIBERO's controller action by ``vla_ros.action_conversion.command_to_libero``
  — the gripper closure passes through float32 as it does in ``VlaAction.gripper``;
- the policy's ``done`` ends the episode with reason ``policy_done`` without executing that action (the bridge
  does the same on ``VlaAction.finished``); an invalid output is counted and the step is held (a hold does not
  step the simulator in lockstep, so the episode ends at the step limit or by a later valid action).
"""

from __future__ import annotations

import time

import numpy as np

from vla_ros.action_conversion import command_to_libero
from vla_ros.controller import ControllerConfig, shape_action
from vla_ros.data.results import EpisodeResult
from vla_ros.policy import Policy
from vla_ros.proprio import PROPRIO_LAYOUT, proprio_vector
from vla_ros.sim.libero_env import LiberoEpisodeEnv, Observation
from vla_ros.sim.recording import EpisodeRecorder


def policy_inputs(policy: Policy, obs: Observation) -> dict:
    """The further inputs the policy's model takes (``metadata.extra_images``, ``proprio_layout``), from the
    same observation the bridge publishes as the wrist camera, ``/joint_states`` and ``/ee_pose``."""
    meta, kw = policy.metadata, {}
    if meta.extra_images:
        missing = [c for c in meta.extra_images if c not in obs.images]
        if missing:
            raise ValueError(f"the policy needs camera(s) {missing}; the env renders {sorted(obs.images)}")
        kw["extra_images"] = {c: obs.images[c] for c in meta.extra_images}
    if meta.proprio_layout:
        if meta.proprio_layout != PROPRIO_LAYOUT:
            raise ValueError(f"unknown proprio layout {meta.proprio_layout!r} (known: {PROPRIO_LAYOUT})")
        kw["proprio"] = proprio_vector(obs.eef_pos, obs.eef_quat, obs.gripper_qpos)
    return kw


def policy_step(policy: Policy, image: np.ndarray, instruction: str, cfg: ControllerConfig,
                inputs: dict | None = None) -> tuple[np.ndarray | None, bool]:
    """One decision as the node makes it: (LIBERO action or None for a hold on invalid output, done)."""
    out = policy.act(image, instruction, **(inputs or {}))
    meta = policy.metadata
    try:
        cmd = shape_action(np.asarray(out.action, dtype=np.float64), meta.action_space, meta.gripper_convention, cfg)
    except ValueError:
        return None, bool(out.done)
    gripper = float(np.float32(cmd.gripper))  # VlaAction.gripper is float32
    return command_to_libero(cmd.linear, cmd.angular, gripper, meta.action_space), bool(out.done)


def run_episode(env: LiberoEpisodeEnv, policy: Policy, init_state_id: int, *,
                controller: ControllerConfig | None = None, camera: str = "agentview",
                record_dir: str | None = None, episode_id: int = 0, max_invalid: int = 10) -> EpisodeResult:
    """Reset ``env`` to ``init_state_id`` (settle steps included), run the policy until the episode ends."""
    cfg = controller or ControllerConfig()
    cfg.validate()
    for cam in (camera, *policy.metadata.extra_images):
        if cam not in env.cameras:
            raise ValueError(f"camera {cam!r} is not rendered by this env (cameras: {env.cameras})")
    t0 = time.monotonic()
    obs = env.reset(init_state_id)
    policy.reset()
    recorder = None
    if record_dir:
        recorder = EpisodeRecorder(record_dir, suite=env.suite_name, task_id=env.task_id,
                                   init_state_id=init_state_id, episode_id=episode_id,
                                   meta={"instruction": env.instruction, "image_flip": env.image_flip,
                                         "camera": camera, "max_steps": env.max_steps, "route": "in-process"})
        recorder.add(obs.images[camera])
    actions: list[list[float]] = []
    invalid = 0
    while not env.done:
        action, done = policy_step(policy, obs.images[camera], env.instruction, cfg, policy_inputs(policy, obs))
        if done:
            env.finish("policy_done")
            break
        if action is None:
            invalid += 1
            if invalid >= max_invalid:  # a policy that only emits garbage would otherwise never end
                env.finish("invalid_output")
            continue
        res = env.step(action)
        actions.append([float(v) for v in action])
        obs = res.obs
        if recorder is not None:
            recorder.add(obs.images[camera])
    video = None
    if recorder is not None:
        recorder.finish(success=env.success, reason=env.reason, steps=env.step_count)
        video = str(recorder.video_path) if recorder.video_path else None
    return EpisodeResult(suite=env.suite_name, task_id=env.task_id, init_state_id=init_state_id,
                         instruction=env.instruction, success=bool(env.success), steps=env.step_count,
                         reason=env.reason, wall_s=time.monotonic() - t0, episode_id=episode_id,
                         invalid_outputs=invalid, video=video, actions=actions)
