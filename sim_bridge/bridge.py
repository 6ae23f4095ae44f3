"""The sim bridge's stepping logic, ROS-free: what to step, publish and end, given actions and clock ticks.

:class:`Bridge` owns the :class:`~vla_ros.sim.libero_env.LiberoEpisodeEnv` and everything the bridge decides:
episode start and end, lockstep stepping on answering actions, realtime zero-order hold, the action timeout,
the policy timeout, re-publishing, instruction re-sends until the first answer, recordings and the counters.
Each entry point takes plain values (an action with ``VlaAction``'s fields, its stamp in nanoseconds, the
monotonic time ``now``, whether anyone listens) and returns the list of :data:`Output` s to publish, in order.
The ROS node (:mod:`vla_ros.nodes.sim_bridge_node`) turns those into messages; docs/sim_bridge.md has the
protocol. Simulated time is counted in nanoseconds and only moves forward, also across resets.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np

from vla_ros.conventions import LIBERO_ACTION_SPACE, LIBERO_SUITES, max_steps_for, settle_action
from vla_ros.sim.actions import ActionRejectedError, ActionStats, check_action
from vla_ros.sim.bridge_params import BridgeConfig
from vla_ros.sim.libero_env import LiberoEpisodeEnv, Observation
from vla_ros.sim.recording import EpisodeRecorder
from vla_ros.sim.viewer import StepRecord

DT_NS = round(LIBERO_ACTION_SPACE.dt * 1e9)  # one LIBERO control step of simulated time


# ---------------------------------------------------------------- outputs: what the node publishes, in order
@dataclass(frozen=True)
class PublishClock:
    stamp_ns: int  # /clock


@dataclass(frozen=True)
class PublishObservation:
    """Images, joint state and pose of ``observation`` at ``stamp_ns`` (again with the same stamp: a re-publish)."""

    observation: Observation
    stamp_ns: int


@dataclass(frozen=True)
class PublishStatus:
    """``vla_ros_msgs/EpisodeStatus``'s fields."""

    stamp_ns: int
    episode_id: int
    suite: str
    task_id: int
    init_state_id: int
    instruction: str
    step: int
    max_steps: int
    success: bool
    done: bool
    reason: str
    image_flip: str
    action_space: str


@dataclass(frozen=True)
class PublishInstruction:
    text: str


@dataclass(frozen=True)
class Log:
    level: str  # info, warning, error
    text: str
    throttle_s: float = 0.0  # at most one such message per this many seconds (0: every one)


@dataclass(frozen=True)
class ScheduleReset:
    """Auto-reset: start this episode once the outputs before it are out (not inside the current callback)."""

    suite: str
    task_id: int
    init_state_id: int


Output = PublishClock | PublishObservation | PublishStatus | PublishInstruction | Log | ScheduleReset


class Reply(NamedTuple):
    ok: bool
    message: str  # why not, when not ok
    outputs: list[Output]


def default_env_factory(suite: str, task_id: int, **kwargs: Any) -> LiberoEpisodeEnv:
    """The real env (LIBERO itself is imported when the first one is built)."""
    return LiberoEpisodeEnv(suite, task_id, **kwargs)


class Bridge:
    """The stepping state machine. ``env_factory(suite, task_id, **env options)`` builds the env (seconds)."""

    def __init__(self, config: BridgeConfig, env_factory: Callable[..., Any] = default_env_factory):
        self.config = config  # the node replaces it when a live parameter changes
        self._env_factory = env_factory
        self.env = None
        self.stats = ActionStats()
        self.republished = 0
        self.instructions_sent = 0
        self.episode_id = 0
        self.last_end_reason = ""
        # Time in LIBERO's step (physics + rendering), summed, and the steps taken.
        self.timing = {"env_step_s": 0.0, "steps": 0}
        self.sim_ns = 0  # simulated time; only moves forward, also across resets
        self.observation: Observation | None = None
        self.stamp_ns = 0  # stamp of the current observation: the one a lockstep action must answer
        self.held_at = 0.0  # realtime: monotonic time the held action arrived
        self._held: np.ndarray | None = None  # realtime: the action being held
        self._held_reason = ""  # realtime: the hold reason of the held action ("" for a real action)
        self._gripper = -1.0  # LIBERO's last gripper command (realtime's standing-still hold keeps it)
        self._episode_start_ns = 0
        self._last_pub = 0.0  # monotonic time of the last (re-)publication
        self._waiting_since = 0.0  # lockstep: since when a connected policy owes an answer
        self._answered = False  # the episode's first non-hold answering action has arrived
        self._instr_last = -math.inf
        self._recorder: EpisodeRecorder | None = None

    @property
    def running(self) -> bool:
        return self.env is not None and not self.env.done

    @property
    def lockstep(self) -> bool:
        return self.config.stepping_mode == "lockstep"

    # ------------------------------------------------------------------ episodes
    def start(self, now: float, *, instruction_subscribed: bool) -> Reply:
        """Build the env and, with ``reset_on_start``, start the first episode (the parameters' suite/task/init)."""
        c = self.config
        if c.reset_on_start:
            return self.reset_episode(c.suite, c.task_id, c.init_state_id, now,
                                      instruction_subscribed=instruction_subscribed)
        return self.build(c.suite, c.task_id)

    def reset_target(self, suite: str, task_id: int, init_state_id: int) -> tuple[str, int, int]:
        """A reset request with its blanks filled: an empty suite / negative id keeps the current one."""
        env, c = self.env, self.config
        suite = suite or (env.suite_name if env is not None else c.suite)
        keep_task = env is not None and suite == env.suite_name
        task_id = task_id if task_id >= 0 else (env.task_id if keep_task else c.task_id)
        if init_state_id < 0:
            init_state_id = max(0, env.init_state_id) if env is not None else c.init_state_id
        return suite, task_id, init_state_id

    def build(self, suite: str, task_id: int) -> Reply:
        """Build the env of (suite, task) unless it is the current one."""
        if suite not in LIBERO_SUITES:
            return Reply(False, f"unknown suite {suite!r}; known: {', '.join(LIBERO_SUITES)}", [])
        if self.env is not None and self.env.suite_name == suite and self.env.task_id == task_id:
            return Reply(True, "env reused", [])
        c, t0 = self.config, time.monotonic()
        try:
            env = self._env_factory(suite, task_id, image_size=c.image_size, cameras=c.cameras,
                                    image_flip=c.image_flip, fast_render=c.fast_render, seed=c.seed,
                                    hard_reset=c.hard_reset, viewer_size=self._viewer_size)
        except ValueError as exc:  # unknown task id and the like: the caller's mistake, say which
            return Reply(False, str(exc), [])
        except Exception as exc:  # LIBERO failing to build a scene must not take the node down
            return Reply(False, f"building {suite} task {task_id} failed: {type(exc).__name__}: {exc}",
                         [Log("error", f"building {suite} task {task_id} failed: {exc!r}")])
        if self.env is not None:
            self.env.close()
        self.env = env
        return Reply(True, "env built", [Log("info", f"built {suite} task {task_id} in "
                                                     f"{time.monotonic() - t0:.1f} s: {env.instruction!r}")])

    def reset_episode(self, suite: str, task_id: int, init_state_id: int, now: float, *,
                      instruction_subscribed: bool) -> Reply:
        """End the running episode (reason ``reset``) and start one at (suite, task, init state)."""
        out = self.end_episode("reset")
        built = self.build(suite, task_id)
        out += built.outputs
        if not built.ok:
            return Reply(False, built.message, out)
        env, c = self.env, self.config
        if not 0 <= init_state_id < env.num_init_states:
            return Reply(False, f"init_state_id {init_state_id} out of range 0..{env.num_init_states - 1}", out)
        env.max_steps = c.max_steps or max_steps_for(suite)
        env.num_steps_wait = c.num_steps_wait
        env.end_on_success = c.end_on_success
        try:
            obs = env.reset(init_state_id)
        except Exception as exc:  # a broken scene must not take the node down
            return Reply(False, f"reset failed: {exc}", [*out, Log("error", f"reset failed: {exc!r}")])
        # Settle steps take simulated time too; at least one step so every observation stamp is new.
        self.sim_ns += max(1, env.num_steps_wait) * DT_NS
        self.episode_id += 1
        self._answered = False
        self._instr_last = -math.inf
        self._held, self._gripper = None, -1.0
        self._episode_start_ns = self.sim_ns
        if c.record_dir:
            self._recorder = EpisodeRecorder(
                c.record_dir, suite=suite, task_id=task_id, init_state_id=init_state_id,
                episode_id=self.episode_id, fps=c.record_fps, viewer_every=c.record_viewer_every,
                meta={"instruction": env.instruction, "image_flip": c.image_flip,
                      "camera": c.record_camera, "max_steps": env.max_steps})
        out += self._new_observation(obs, now)
        out += self._instruction_tick(now, instruction_subscribed)
        out.append(Log("info", f"episode {self.episode_id}: {suite} task {task_id} init {init_state_id} "
                               f"(max {env.max_steps} steps): {env.instruction!r}"))
        return Reply(True, "ok", out)

    def end_episode(self, reason: str) -> list[Output]:
        """End the running episode for ``reason`` (policy_done, policy_timeout, reset, error); nothing if none."""
        if not self.running:
            return []
        self.env.finish(reason)
        return [self.status(), *self._after_end()]

    def _after_end(self) -> list[Output]:
        env = self.env
        self.last_end_reason = env.reason
        out: list[Output] = [Log("info", f"episode {self.episode_id} ended: {env.reason} after {env.step_count} "
                                         f"steps (success={env.success})")]
        out += self.render_viewer(final=True)
        out += self._finish_recording(env.reason)
        if self.config.auto_reset and env.reason != "reset":
            out.append(ScheduleReset(env.suite_name, env.task_id, (env.init_state_id + 1) % env.num_init_states))
        return out

    def _finish_recording(self, reason: str) -> list[Output]:
        rec, self._recorder = self._recorder, None
        if rec is None:
            return []
        try:
            path = rec.finish(success=bool(self.env.success), reason=reason, steps=self.env.step_count)
        except Exception as exc:  # a full disk must not stop the simulation
            return [Log("error", f"recording failed: {exc!r}")]
        return [Log("info", f"recorded {path}")]

    # ------------------------------------------------------------------ recording for people
    @property
    def _viewer_size(self) -> int:
        c = self.config
        return c.record_viewer_size if c.record_dir else 0

    def _record_step(self, record: StepRecord) -> None:
        """One decision for the viewer's overlay and the plot (only when either is recorded)."""
        c = self.config
        if self._recorder is not None and (c.record_plot or c.record_viewer_size):
            self._recorder.add_step(record)

    def render_viewer(self, *, final: bool = False) -> list[Output]:
        """Render and queue a viewer frame when one is due (every ``record_viewer_every``-th step; ``final``: the
        last state). The node calls this after publishing a step's outputs, so in lockstep the render overlaps
        the policy's inference instead of delaying the observation."""
        rec, size = self._recorder, self._viewer_size
        if rec is None or not size or self.env is None or not rec.wants_viewer(self.env.step_count, final=final):
            return []
        try:
            rec.add_viewer(self.env.render_viewer(self.config.record_camera, size))
        except Exception as exc:  # a failing viewer must not stop the simulation or the policy's recording
            self.config = replace(self.config, record_viewer_size=0)
            return [Log("error", f"viewer recording failed, switched off: {exc!r}")]
        return []

    def close(self) -> list[Output]:
        """Finish a running recording (reason ``shutdown``) and close the env."""
        out = self._finish_recording("shutdown") if self._recorder is not None else []
        if self.env is not None:
            self.env.close()
            self.env = None
        return out

    # ------------------------------------------------------------------ observation
    def _new_observation(self, obs: Observation, now: float) -> list[Output]:
        self.observation = obs
        self.stamp_ns = self.sim_ns
        out: list[Output] = [PublishClock(self.stamp_ns)]
        camera = self.config.record_camera
        if self._recorder is not None and camera in obs.images:
            try:
                self._recorder.add(obs.images[camera])
            except Exception as exc:
                out.append(Log("error", f"recording failed, stopped: {exc!r}"))
                self._recorder.abort()
                self._recorder = None
        out += self._publish_current(now)
        self._waiting_since = now
        return out

    def _publish_current(self, now: float) -> list[Output]:
        self._last_pub = now
        return [PublishObservation(self.observation, self.stamp_ns), self.status()]

    def status(self) -> PublishStatus:
        """The episode status at the current observation (needs an env)."""
        env = self.env
        return PublishStatus(stamp_ns=self.stamp_ns, episode_id=self.episode_id, suite=env.suite_name,
                             task_id=env.task_id, init_state_id=max(0, env.init_state_id),
                             instruction=env.instruction, step=env.step_count, max_steps=env.max_steps,
                             success=bool(env.success), done=bool(env.done), reason=env.reason,
                             image_flip=self.config.image_flip, action_space=LIBERO_ACTION_SPACE.name)

    # ------------------------------------------------------------------ stepping
    def _step(self, action: np.ndarray, now: float, hold_reason: str = "") -> list[Output]:
        t0 = time.perf_counter()
        try:
            res = self.env.step(action)
        except Exception as exc:  # e.g. a physics blow-up: end the episode, keep the node
            return [Log("error", f"step failed: {exc!r}"), *self.end_episode("error")]
        # before the observation: the step's record is the state the next viewer frame shows
        self._record_step(StepRecord(self.env.step_count, action, hold_reason=hold_reason))
        self.timing["env_step_s"] += time.perf_counter() - t0
        self.timing["steps"] += 1
        self.stats.stepped += 1
        self._gripper = float(action[6])
        self.sim_ns += DT_NS
        out = self._new_observation(res.obs, now)
        if res.done:  # the status just made already says done and why
            out += self._after_end()
        return out

    def on_action(self, action: Any, stamp_ns: int, now: float) -> list[Output]:
        """An action (``VlaAction``'s fields) stamped ``stamp_ns``: step, hold, end, or count it as refused."""
        st = self.stats
        st.received += 1
        if not self.running:
            st.after_end += 1
            return []
        try:
            checked = check_action(action, LIBERO_ACTION_SPACE)
        except ActionRejectedError as exc:
            st.rejected[exc.reason] += 1
            return [Log("warning", f"action rejected ({st.rejected_total} so far): {exc}", throttle_s=1.0)]
        if self.lockstep:
            if stamp_ns != self.stamp_ns:
                st.stale += 1  # answers an earlier observation (e.g. a re-published one already answered)
                return []
        elif stamp_ns < self._episode_start_ns:
            st.stale += 1  # answers the previous episode
            return []
        if action.finished:
            self._record_step(StepRecord(self.env.step_count, None, done=True))
            return self.end_episode("policy_done")
        if action.hold:
            st.holds += 1
            if not self.lockstep:
                self._held, self.held_at = self._stand_still(), now
                self._held_reason = action.hold_reason or "hold"
            else:
                self._record_step(StepRecord(self.env.step_count, None, hold_reason=action.hold_reason or "hold"))
            return []
        self._answered = True
        st.clipped += int(checked.clipped)
        if self.lockstep:
            return self._step(checked.libero, now)
        self._held, self.held_at, self._held_reason = checked.libero, now, ""
        return []

    def _stand_still(self) -> np.ndarray:
        a = settle_action()
        a[6] = self._gripper
        return a

    def realtime_tick(self, now: float) -> list[Output]:
        """Realtime mode's fixed-rate step: the held action while fresh, else stand still."""
        if not self.running:
            return []
        fresh = self._held is not None and now - self.held_at <= self.config.action_timeout_s
        return self._step(self._held if fresh else self._stand_still(), now,
                          hold_reason=self._held_reason if fresh else "action_timeout")

    def watchdog(self, now: float, *, policy_connected: bool, instruction_subscribed: bool) -> list[Output]:
        """The periodic check: instruction re-send; lockstep's re-publish and policy timeout."""
        out = self._instruction_tick(now, instruction_subscribed)
        if not self.running or not self.lockstep:
            return out
        # The policy timeout only runs while a policy is connected: no publisher, nobody to wait for.
        if not policy_connected:
            self._waiting_since = now
        timeout = self.config.policy_timeout_s
        if timeout > 0 and now - self._waiting_since > timeout:
            out.append(Log("warning", f"no answer for {timeout:g} s: ending the episode (policy_timeout)"))
            out += self.end_episode("policy_timeout")
        elif now - self._last_pub > self.config.republish_timeout_s:
            self.republished += 1
            out.append(PublishClock(self.stamp_ns))  # late sim-time nodes learn the time too
            out += self._publish_current(now)
        return out

    def _instruction_tick(self, now: float, subscribed: bool) -> list[Output]:
        # Until the episode's first real action answers: the policy may have missed it (CONVENTIONS.md).
        if not (self.config.publish_instruction and self.running and not self._answered and subscribed):
            return []
        if now - self._instr_last < self.config.instruction_resend_s:
            return []
        self._instr_last = now
        self.instructions_sent += 1
        return [PublishInstruction(self.env.instruction)]
