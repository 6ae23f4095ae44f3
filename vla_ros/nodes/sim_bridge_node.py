"""sim_bridge_node: a LIBERO task that looks, from the outside, like an arm with cameras.

Publishes camera images (flipped per ``vla_ros.conventions``), joint states, the end-effector pose,
the episode status and ``/clock`` at simulation time; executes ``vla_ros_msgs/VlaAction`` messages;
serves ``ResetEpisode``. Two stepping modes (docs/sim_bridge.md):

* ``lockstep``: one step per non-hold action whose ``header.stamp`` equals the current observation's
  stamp; the observation is re-published after ``republish_timeout_s`` without an answer and the
  episode ends with ``policy_timeout`` after ``policy_timeout_s``. A slow policy changes nothing.
* ``realtime``: a wall-clock timer steps at ``control_rate_hz`` with the last action (zero-order
  hold), standing still once no action came for ``action_timeout_s``.

The episode protocol itself (settle steps, step limits, success check, flip) is
``vla_ros.sim.libero_env.LiberoEpisodeEnv``, shared with in-process evaluation.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede robosuite's import

import numpy as np
import rclpy
from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.clock import Clock
from rclpy.clock_type import ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from vla_ros.config import topics
from vla_ros.conventions import LIBERO_ACTION_SPACE, LIBERO_SUITES, max_steps_for, settle_action
from vla_ros.image_codec import fill_image_msg
from vla_ros.nodes.qos import command_qos, image_qos, status_qos
from vla_ros.sim.actions import ActionRejectedError, ActionStats, check_action
from vla_ros.sim.bridge_params import NODE_NAME, PARAMS, ParamSpec
from vla_ros.sim.recording import EpisodeRecorder
from vla_ros_msgs.msg import EpisodeStatus, VlaAction
from vla_ros_msgs.srv import ResetEpisode

ARM_JOINTS = tuple(f"robot0_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("robot0_finger_joint1", "robot0_finger_joint2")
DT_NS = round(LIBERO_ACTION_SPACE.dt * 1e9)  # one LIBERO control step of simulated time
_WATCHDOG_PERIOD_S = 0.05

# Reliable and volatile (actions, instruction, joint states, pose): the graph's one definition.
RELIABLE_QOS = command_qos()
STATUS_QOS = status_qos()
# A reliable writer matches rclpy's best-effort /clock subscription as well as reliable ones.
CLOCK_QOS = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.VOLATILE)

EnvFactory = Callable[..., object]


def _default_env_factory(suite: str, task_id: int, **kwargs):
    from vla_ros.sim.libero_env import LiberoEpisodeEnv  # LIBERO is imported only when an env is built

    return LiberoEpisodeEnv(suite, task_id, **kwargs)


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    desc = spec.description + (f" (one of {', '.join(spec.choices)})" if spec.choices else "")
    d = ParameterDescriptor(description=desc, read_only=spec.read_only)
    if spec.range is not None:
        lo, hi = spec.range
        if isinstance(spec.default, float):
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
        else:
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
    return d


def stamp_from_ns(ns: int) -> TimeMsg:
    return TimeMsg(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def stamp_key(stamp) -> tuple[int, int]:
    return int(stamp.sec), int(stamp.nanosec)


class SimBridgeNode(Node):
    """The bridge. ``start()`` builds the env (seconds) and, if asked, starts the first episode."""

    def __init__(self, *, env_factory: EnvFactory | None = None, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        for spec in PARAMS:
            self.declare_parameter(spec.name, spec.default, _descriptor(spec))
        for spec in PARAMS:
            if spec.choices and self.p(spec.name) not in spec.choices:
                raise ValueError(f"parameter {spec.name}={self.p(spec.name)!r}: expected one of {spec.choices}")
        self.cameras = tuple(self.p("cameras"))
        for cam in self.cameras:
            if cam not in ("agentview", "wrist"):
                raise ValueError(f"parameter cameras: unknown camera {cam!r}; known: agentview, wrist")
        if self.p("record_dir") and self.p("record_camera") not in self.cameras:
            raise ValueError(f"parameter record_camera={self.p('record_camera')!r} is not among cameras {self.cameras}")
        self.mode = self.p("stepping_mode")
        self._env_factory = env_factory or _default_env_factory
        self.env = None
        self.stats = ActionStats()
        self.republished = 0
        # Where the time goes (seconds, summed): LIBERO's step (physics + rendering) vs the bridge's own work.
        self.timing = {"env_step_s": 0.0, "bridge_s": 0.0, "steps": 0}
        self.instructions_sent = 0
        self.episode_id = 0
        self.sim_ns = 0  # simulated time; only moves forward, also across resets
        self._obs = None
        self._obs_stamp = TimeMsg()
        self._obs_msgs: list[tuple[object, object]] = []  # (publisher, message) of the current observation
        self._episode_start = (0, 0)
        self._last_pub = 0.0  # monotonic time of the last (re-)publication
        self._waiting_since = 0.0  # lockstep: since when a connected policy owes an answer
        self._answered = False  # the episode's first non-hold answering action has arrived
        self._instr_last = -math.inf
        self._held: np.ndarray | None = None  # realtime: the action being held
        self._held_at = 0.0
        self._gripper = -1.0  # LIBERO's last gripper command (realtime's standing-still hold keeps it)
        self._recorder: EpisodeRecorder | None = None
        self._auto_reset_timer = None
        self.last_end_reason = ""

        names = topics()
        self._pub_images = {}
        if "agentview" in self.cameras:
            self._pub_images["agentview"] = self.create_publisher(Image, names["camera_image"], image_qos())
        if "wrist" in self.cameras:
            self._pub_images["wrist"] = self.create_publisher(Image, names["wrist_image"], image_qos())
        self._frame_ids = {"agentview": self.p("camera_frame_id"), "wrist": self.p("wrist_frame_id")}
        self._pub_joints = self.create_publisher(JointState, names["joint_states"], RELIABLE_QOS)
        self._pub_pose = self.create_publisher(PoseStamped, names["ee_pose"], RELIABLE_QOS)
        self._pub_status = self.create_publisher(EpisodeStatus, names["episode_status"], STATUS_QOS)
        self._pub_instruction = self.create_publisher(String, names["instruction"], RELIABLE_QOS)
        self._pub_diag = self.create_publisher(DiagnosticArray, names["diagnostics"], RELIABLE_QOS)
        self._pub_clock = self.create_publisher(ClockMsg, "/clock", CLOCK_QOS) if self.p("publish_clock") else None
        self._action_sub = self.create_subscription(VlaAction, names["action"], self._on_action, RELIABLE_QOS)
        self.create_service(ResetEpisode, names["reset_service"], self._on_reset)

        # Wall-clock timers on the steady clock: the bridge is the source of /clock, its own timers
        # must not wait on it (also when someone sets use_sim_time for every node).
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(_WATCHDOG_PERIOD_S, self._watchdog, clock=steady)
        self.create_timer(self.p("diagnostics_period_s"), self._publish_diagnostics, clock=steady)
        if self.mode == "realtime":
            self.create_timer(1.0 / self.p("control_rate_hz"), self._realtime_tick, clock=steady)
        self._steady = steady

    # ------------------------------------------------------------------ helpers
    def p(self, name: str):
        return self.get_parameter(name).value

    @property
    def running(self) -> bool:
        return self.env is not None and not self.env.done

    @property
    def observation_stamp(self) -> TimeMsg:
        """Stamp of the current observation: the one a lockstep action must answer."""
        return self._obs_stamp

    @property
    def observation(self):
        return self._obs

    def start(self) -> None:
        """Build the env and start the first episode (if ``reset_on_start``); seconds of work."""
        ok, message = (self.reset_episode(self.p("suite"), self.p("task_id"), self.p("init_state_id"))
                       if self.p("reset_on_start") else self._build(self.p("suite"), self.p("task_id")))
        if not ok:
            raise RuntimeError(message)

    def close(self) -> None:
        if self._recorder is not None:
            self._finish_recording("shutdown")
        if self.env is not None:
            self.env.close()
            self.env = None

    # ------------------------------------------------------------------ episodes
    def _build(self, suite: str, task_id: int) -> tuple[bool, str]:
        if suite not in LIBERO_SUITES:
            return False, f"unknown suite {suite!r}; known: {', '.join(LIBERO_SUITES)}"
        if self.env is not None and self.env.suite_name == suite and self.env.task_id == task_id:
            return True, "env reused"
        t0 = time.monotonic()
        try:
            env = self._env_factory(suite, task_id, image_size=self.p("image_size"), cameras=self.cameras,
                                    image_flip=self.p("image_flip"), fast_render=self.p("fast_render"),
                                    seed=self.p("seed"), hard_reset=self.p("hard_reset"))
        except ValueError as exc:  # unknown task id and the like: the caller's mistake, say which
            return False, str(exc)
        except Exception as exc:  # LIBERO failing to build a scene must not take the node down
            self.get_logger().error(f"building {suite} task {task_id} failed: {exc!r}")
            return False, f"building {suite} task {task_id} failed: {type(exc).__name__}: {exc}"
        if self.env is not None:
            self.env.close()
        self.env = env
        self.get_logger().info(f"built {suite} task {task_id} in {time.monotonic() - t0:.1f} s: {env.instruction!r}")
        return True, "env built"

    def reset_episode(self, suite: str, task_id: int, init_state_id: int) -> tuple[bool, str]:
        """End the running episode (reason ``reset``) and start one at (suite, task, init state)."""
        if self._auto_reset_timer is not None:
            self._auto_reset_timer.cancel()
            self.destroy_timer(self._auto_reset_timer)
            self._auto_reset_timer = None
        if self.running:
            self.end_episode("reset")
        ok, message = self._build(suite, task_id)
        if not ok:
            return False, message
        env = self.env
        if not 0 <= init_state_id < env.num_init_states:
            return False, f"init_state_id {init_state_id} out of range 0..{env.num_init_states - 1}"
        env.max_steps = self.p("max_steps") or max_steps_for(suite)
        env.num_steps_wait = self.p("num_steps_wait")
        env.end_on_success = self.p("end_on_success")
        try:
            obs = env.reset(init_state_id)
        except Exception as exc:  # a broken scene must not take the node down
            self.get_logger().error(f"reset failed: {exc!r}")
            return False, f"reset failed: {exc}"
        # Settle steps take simulated time too; at least one step so every observation stamp is new.
        self.sim_ns += max(1, env.num_steps_wait) * DT_NS
        self.episode_id += 1
        self._answered = False
        self._instr_last = -math.inf
        self._held, self._gripper = None, -1.0
        self._episode_start = stamp_key(stamp_from_ns(self.sim_ns))
        if self.p("record_dir"):
            self._recorder = EpisodeRecorder(
                self.p("record_dir"), suite=suite, task_id=task_id, init_state_id=init_state_id,
                episode_id=self.episode_id, fps=self.p("record_fps"),
                meta={"instruction": env.instruction, "image_flip": self.p("image_flip"),
                      "camera": self.p("record_camera"), "max_steps": env.max_steps})
        self._new_observation(obs)
        self._instruction_tick()
        self.get_logger().info(f"episode {self.episode_id}: {suite} task {task_id} init {init_state_id} "
                               f"(max {env.max_steps} steps): {env.instruction!r}")
        return True, "ok"

    def end_episode(self, reason: str) -> None:
        """End the running episode for ``reason`` and publish it (policy_done, policy_timeout, reset, error)."""
        if not self.running:
            return
        self.env.finish(reason)
        self._pub_status.publish(self._status_msg())
        self._after_end()

    def _after_end(self) -> None:
        env = self.env
        self.last_end_reason = env.reason
        self.get_logger().info(f"episode {self.episode_id} ended: {env.reason} after {env.step_count} steps "
                               f"(success={env.success})")
        self._finish_recording(env.reason)
        if self.p("auto_reset") and env.reason != "reset":
            nxt = (env.init_state_id + 1) % env.num_init_states
            # One-shot timer: the end status goes out before the next reset blocks the executor.
            def fire():
                self.reset_episode(env.suite_name, env.task_id, nxt)

            self._auto_reset_timer = self.create_timer(0.0, fire, clock=self._steady)

    def _finish_recording(self, reason: str) -> None:
        rec, self._recorder = self._recorder, None
        if rec is None:
            return
        try:
            path = rec.finish(success=bool(self.env.success), reason=reason, steps=self.env.step_count)
            self.get_logger().info(f"recorded {path}")
        except Exception as exc:  # a full disk must not stop the simulation
            self.get_logger().error(f"recording failed: {exc!r}")

    # ------------------------------------------------------------------ observation
    def _new_observation(self, obs) -> None:
        self._obs = obs
        self._obs_stamp = stamp_from_ns(self.sim_ns)
        if self._pub_clock is not None:
            self._pub_clock.publish(ClockMsg(clock=self._obs_stamp))
        self._obs_msgs = self._observation_msgs(obs, self._obs_stamp)
        if self._recorder is not None and self.p("record_camera") in obs.images:
            try:
                self._recorder.add(obs.images[self.p("record_camera")])
            except Exception as exc:
                self.get_logger().error(f"recording failed, stopped: {exc!r}")
                self._recorder.abort()
                self._recorder = None
        self._publish_current()
        self._waiting_since = time.monotonic()

    def _observation_msgs(self, obs, stamp: TimeMsg) -> list[tuple[object, object]]:
        out = []
        for cam, pub in self._pub_images.items():
            msg = fill_image_msg(Image(), obs.images[cam])
            msg.header.stamp = stamp
            msg.header.frame_id = self._frame_ids[cam]
            out.append((pub, msg))
        js = JointState()
        js.header.stamp = stamp
        js.header.frame_id = self.p("base_frame_id")
        js.name = [*ARM_JOINTS, *FINGER_JOINTS]
        js.position = [float(v) for v in (*obs.joint_pos, *obs.gripper_qpos)]
        if "robot0_joint_vel" in obs.raw and "robot0_gripper_qvel" in obs.raw:
            js.velocity = [float(v) for v in (*obs.raw["robot0_joint_vel"], *obs.raw["robot0_gripper_qvel"])]
        out.append((self._pub_joints, js))
        pose = PoseStamped()
        pose.header.stamp = stamp
        pose.header.frame_id = self.p("base_frame_id")
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = (float(v) for v in obs.eef_pos)
        q = pose.pose.orientation
        q.x, q.y, q.z, q.w = (float(v) for v in obs.eef_quat)  # robosuite's order is x, y, z, w
        out.append((self._pub_pose, pose))
        return out

    def _publish_current(self) -> None:
        for pub, msg in self._obs_msgs:
            pub.publish(msg)
        self._pub_status.publish(self._status_msg())
        self._last_pub = time.monotonic()

    def _status_msg(self) -> EpisodeStatus:
        env = self.env
        msg = EpisodeStatus(episode_id=self.episode_id, image_flip=self.p("image_flip"),
                            action_space=LIBERO_ACTION_SPACE.name)
        msg.header.stamp = self._obs_stamp
        if env is not None:
            msg.suite = env.suite_name
            msg.task_id = env.task_id
            msg.init_state_id = max(0, env.init_state_id)
            msg.instruction = env.instruction
            msg.step = env.step_count
            msg.max_steps = env.max_steps
            msg.success = bool(env.success)
            msg.done = bool(env.done)
            msg.reason = env.reason
        return msg

    # ------------------------------------------------------------------ stepping
    def _step(self, action: np.ndarray) -> None:
        t0 = time.perf_counter()
        try:
            res = self.env.step(action)
        except Exception as exc:  # e.g. a physics blow-up: end the episode, keep the node
            self.get_logger().error(f"step failed: {exc!r}")
            self.end_episode("error")
            return
        t1 = time.perf_counter()
        self.stats.stepped += 1
        self._gripper = float(action[6])
        self.sim_ns += DT_NS
        self._new_observation(res.obs)
        if res.done:  # the status just published already says done and why
            self._after_end()
        self.timing["env_step_s"] += t1 - t0
        self.timing["bridge_s"] += time.perf_counter() - t1
        self.timing["steps"] += 1

    def _on_action(self, msg: VlaAction) -> None:
        st = self.stats
        st.received += 1
        if not self.running:
            st.after_end += 1
            return
        try:
            checked = check_action(msg, LIBERO_ACTION_SPACE)
        except ActionRejectedError as exc:
            st.rejected[exc.reason] += 1
            self.get_logger().warning(f"action rejected ({st.rejected_total} so far): {exc}",
                                      throttle_duration_sec=1.0)
            return
        key = stamp_key(msg.header.stamp)
        if self.mode == "lockstep":
            if key != stamp_key(self._obs_stamp):
                st.stale += 1  # answers an earlier observation (e.g. a re-published one already answered)
                return
        elif key < self._episode_start:
            st.stale += 1  # answers the previous episode
            return
        if msg.finished:
            self.end_episode("policy_done")
            return
        if msg.hold:
            st.holds += 1
            if self.mode == "realtime":
                self._held, self._held_at = self._stand_still(), time.monotonic()
            return
        self._answered = True
        st.clipped += int(checked.clipped)
        if self.mode == "lockstep":
            self._step(checked.libero)
        else:
            self._held, self._held_at = checked.libero, time.monotonic()

    def _stand_still(self) -> np.ndarray:
        a = settle_action()
        a[6] = self._gripper
        return a

    def _realtime_tick(self) -> None:
        if not self.running:
            return
        fresh = self._held is not None and time.monotonic() - self._held_at <= self.p("action_timeout_s")
        self._step(self._held if fresh else self._stand_still())

    def _watchdog(self) -> None:
        self._instruction_tick()
        if not self.running or self.mode != "lockstep":
            return
        now = time.monotonic()
        # The policy timeout only runs while a policy is connected: no publisher, nobody to wait for.
        if self.count_publishers(self._action_sub.topic_name) == 0:
            self._waiting_since = now
        timeout = self.p("policy_timeout_s")
        if timeout > 0 and now - self._waiting_since > timeout:
            self.get_logger().warning(f"no answer for {timeout:g} s: ending the episode (policy_timeout)")
            self.end_episode("policy_timeout")
        elif now - self._last_pub > self.p("republish_timeout_s"):
            self.republished += 1
            if self._pub_clock is not None:  # late sim-time nodes learn the time too
                self._pub_clock.publish(ClockMsg(clock=self._obs_stamp))
            self._publish_current()

    def _instruction_tick(self) -> None:
        # Until the episode's first real action answers: the policy may have missed it (CONVENTIONS.md).
        if not (self.p("publish_instruction") and self.running and not self._answered):
            return
        if self._pub_instruction.get_subscription_count() == 0:
            return
        now = time.monotonic()
        if now - self._instr_last >= self.p("instruction_resend_s"):
            self._pub_instruction.publish(String(data=self.env.instruction))
            self._instr_last = now
            self.instructions_sent += 1

    # ------------------------------------------------------------------ service, diagnostics
    def _on_reset(self, req: ResetEpisode.Request, resp: ResetEpisode.Response) -> ResetEpisode.Response:
        env = self.env
        suite = req.suite or (env.suite_name if env is not None else self.p("suite"))
        keep_task = env is not None and suite == env.suite_name
        task_id = req.task_id if req.task_id >= 0 else (env.task_id if keep_task else self.p("task_id"))
        init_id = req.init_state_id if req.init_state_id >= 0 else (
            max(0, env.init_state_id) if env is not None else self.p("init_state_id"))
        ok, message = self.reset_episode(suite, task_id, init_id)
        resp.success, resp.message = ok, message
        if ok:
            resp.instruction = self.env.instruction
            resp.episode_id = self.episode_id
            resp.max_steps = self.env.max_steps
        else:
            self.get_logger().error(f"reset to {suite} task {task_id} init {init_id} refused: {message}")
        return resp

    def _publish_diagnostics(self) -> None:
        st = self.stats
        values = {**st.as_dict(), "republished": self.republished, "episode_id": self.episode_id,
                  "instructions_sent": self.instructions_sent, "stepping_mode": self.mode,
                  "last_end_reason": self.last_end_reason}
        if self.timing["steps"]:
            n = self.timing["steps"]
            values["env_step_ms_mean"] = f"{1e3 * self.timing['env_step_s'] / n:.2f}"
            values["bridge_publish_ms_mean"] = f"{1e3 * self.timing['bridge_s'] / n:.2f}"
        status = DiagnosticStatus(name=f"{self.get_name()}: actions", hardware_id="libero",
                                  level=DiagnosticStatus.WARN if st.rejected_total else DiagnosticStatus.OK,
                                  message=f"{st.rejected_total} actions rejected" if st.rejected_total else "ok",
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self._pub_diag.publish(arr)


def main(argv: list[str] | None = None) -> int:
    """``sim_bridge_node [--ros-args ...]``: run the bridge until SIGINT/shutdown; 0 on a clean exit."""
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = None
    rc = 0
    try:
        node = SimBridgeNode()
        node.start()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:
        if rclpy.ok():
            print(f"sim_bridge_node: {exc}", file=sys.stderr)
            rc = 1
        # else: SIGINT arrived while the env was being built; rclpy shut the context, publishing then
        # failed. That is a requested stop, not an error.
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
    return rc


if __name__ == "__main__":
    sys.exit(main())
