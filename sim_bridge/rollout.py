"""The in-process episode loop (ROS-free): ``LiberoEpisodeEnv`` + a ``Policy`` + the node's decision step.

Each step does what the graph ``sim_bridge_node`` + ``vla_policy_node`` does in lockstep, with the same
functions, so both routes give the same actions and outcome for one seed:

- the policy sees the flipped camera image the bridge would publish (``LiberoEpisodeEnv`` flips it); any
  centre crop is the backend's preprocessing (its ``center_crop`` option, as the node passes it);
- its further inputs (wrist camera, proprio) are built by ``vla_ros.inputs.further_inputs`` from the observation
  the bridge publishes as the wrist camera, ``/joint_states`` and ``/ee_pose``, as the node builds them;
- the decision is the node's: ``vla_ros.decision.decide`` (``policy.act``, ``vla_ros.controller.shape_action``,
  holds on invalid output) and ``vla_ros.action_conversion.libero_action``, the LIBERO action of a command sent
  as ``VlaAction`` (gripper through float32);
- the policy's ``done`` ends the episode with reason ``policy_done`` without executing that action (the bridge
  does the same on ``VlaAction.finished``); an invalid output is counted and the step is held (a hold does not
  step the simulator in lockstep, so the episode ends at the step limit or by a later valid action). A policy that
  raises ends the run with its exception: in-process that is a bug to see, not a state of the robot.
"""

from __future__ import annotations

import time

import numpy as np

from vla_ros.action_conversion import libero_action
from vla_ros.controller import ControllerConfig
from vla_ros.data.results import EpisodeResult
from vla_ros.decision import decide
from vla_ros.inputs import further_inputs
from vla_ros.policy import Policy
from vla_ros.sim.libero_env import LiberoEpisodeEnv, Observation
from vla_ros.sim.recording import EpisodeRecorder


def policy_inputs(policy: Policy, obs: Observation) -> dict:
    """The further inputs the policy's model takes (``metadata.extra_images``, ``proprio_layout``), from the
    same observation the bridge publishes as the wrist camera, ``/joint_states`` and ``/ee_pose``."""
    meta = policy.metadata
    return further_inputs(meta.extra_images, meta.proprio_layout, obs.images, (obs.eef_pos, obs.eef_quat),
                          obs.gripper_qpos)


def policy_step(policy: Policy, image: np.ndarray, instruction: str, cfg: ControllerConfig,
                inputs: dict | None = None) -> tuple[np.ndarray | None, bool]:
    """One decision as the node makes it (``vla_ros.decision.decide``): (LIBERO action, False) to execute,
    (None, True) when the policy declared the episode done, (None, False) for a hold on an invalid output.
    An exception of the policy is re-raised."""
    decision = decide(policy, image, instruction, inputs or {}, cfg)
    if decision.exception is not None:
        raise decision.exception
    reason = decision.outcome()
    if reason or decision.command is None:
        return None, reason == "finished"
    cmd = decision.command
    return libero_action(cmd.linear, cmd.angular, cmd.gripper, policy.metadata.action_space), False


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
