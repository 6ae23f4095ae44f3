"""sim_bridge_node: a LIBERO task that looks, from the outside, like an arm with cameras.

Publishes camera images (flipped per ``vla_ros.conventions``), joint states, the end-effector pose,
the episode status and ``/clock`` at simulation time; executes ``vla_ros_msgs/VlaAction`` messages;
serves ``ResetEpisode``. Two stepping modes (docs/sim_bridge.md):

* ``lockstep``: one step per non-hold action whose ``header.stamp`` equals the current observation's
  stamp; the observation is re-published after ``republish_timeout_s`` without an answer and the
  episode ends with ``policy_timeout`` after ``policy_timeout_s``. A slow policy changes nothing.
* ``realtime``: a wall-clock timer steps at ``control_rate_hz`` with the last action (zero-order
  hold), standing still once no action came for ``action_timeout_s``.

Every decision is ``vla_ros.sim.bridge.Bridge`` (ROS-free; it owns the ``LiberoEpisodeEnv``); this node
declares the parameters, owns the topics, QoS and timers, feeds the bridge actions and clock ticks, and
turns what it returns into messages.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import fields, replace

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede robosuite's import

import rclpy
from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rclpy.clock import Clock
from rclpy.clock_type import ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from vla_ros.config import topics
from vla_ros.image_codec import fill_image_msg
from vla_ros.nodes.node_help import print_node_help, wants_help
from vla_ros.nodes.params import declare_from_specs
from vla_ros.nodes.qos import command_qos, image_qos, status_qos
from vla_ros.sim.actions import ActionStats
from vla_ros.sim.bridge import (
    Bridge,
    Log,
    Output,
    PublishClock,
    PublishInstruction,
    PublishObservation,
    PublishStatus,
    ScheduleReset,
    default_env_factory,
)
from vla_ros.sim.bridge_params import NODE_NAME, PARAMS_FILE, SPECS, BridgeConfig, yaml_defaults
from vla_ros.sim.libero_env import Observation
from vla_ros_msgs.msg import EpisodeStatus, VlaAction
from vla_ros_msgs.srv import ResetEpisode

ARM_JOINTS = tuple(f"robot0_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("robot0_finger_joint1", "robot0_finger_joint2")
_WATCHDOG_PERIOD_S = 0.05
_CONFIG_FIELDS = frozenset(f.name for f in fields(BridgeConfig))

# Reliable and volatile (actions, instruction, joint states, pose): the graph's one definition.
RELIABLE_QOS = command_qos()
STATUS_QOS = status_qos()
# A reliable writer matches rclpy's best-effort /clock subscription as well as reliable ones.
CLOCK_QOS = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.VOLATILE)

EnvFactory = Callable[..., object]


def stamp_from_ns(ns: int) -> TimeMsg:
    return TimeMsg(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def ns_from_stamp(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class SimBridgeNode(Node):
    """The bridge. ``start()`` builds the env (seconds) and, if asked, starts the first episode."""

    def __init__(self, *, env_factory: EnvFactory | None = None, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        values = declare_from_specs(self, SPECS, PARAMS_FILE, NODE_NAME)  # ValueError names a bad parameter
        self.bridge = Bridge(BridgeConfig.from_params(values), env_factory or default_env_factory)
        self.add_post_set_parameters_callback(self._apply_params)
        self.cameras = self.bridge.config.cameras
        self.mode = self.bridge.config.stepping_mode
        self._bridge_s = 0.0  # the bridge's own work per step (all but LIBERO's step), summed
        self._obs_msgs: tuple[int, list[tuple[object, object]]] = (-1, [])  # (stamp, [(publisher, message)])
        self._auto_reset_timer = None

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

    # ------------------------------------------------------------------ the bridge's state, read-only
    def p(self, name: str):
        return self.get_parameter(name).value

    @property
    def env(self):
        """The ``LiberoEpisodeEnv`` (or the test's stand-in); None before ``start``."""
        return self.bridge.env

    @property
    def stats(self) -> ActionStats:
        return self.bridge.stats

    @property
    def episode_id(self) -> int:
        return self.bridge.episode_id

    @property
    def republished(self) -> int:
        return self.bridge.republished

    @property
    def observation(self) -> Observation | None:
        return self.bridge.observation

    @property
    def observation_stamp(self) -> TimeMsg:
        """Stamp of the current observation: the one a lockstep action must answer."""
        return stamp_from_ns(self.bridge.stamp_ns)

    # ------------------------------------------------------------------ parameters
    def _apply_params(self, params: list) -> None:
        changed = {p.name: p.value for p in params if p.name in _CONFIG_FIELDS}
        if changed:  # live ones apply at once or at the next reset, as the bridge reads them
            self.bridge.config = replace(self.bridge.config, **changed)

    # ------------------------------------------------------------------ episodes
    def start(self) -> None:
        """Build the env and start the first episode (if ``reset_on_start``); seconds of work."""
        ok, message, outputs = self.bridge.start(time.monotonic(), instruction_subscribed=self._instruction_heard())
        self._emit(outputs)
        self._emit(self.bridge.render_viewer())
        if not ok:
            raise RuntimeError(message)

    def close(self) -> None:
        self._emit(self.bridge.close())

    def reset_episode(self, suite: str, task_id: int, init_state_id: int) -> tuple[bool, str]:
        """End the running episode (reason ``reset``) and start one at (suite, task, init state)."""
        if self._auto_reset_timer is not None:
            self._auto_reset_timer.cancel()
            self.destroy_timer(self._auto_reset_timer)
            self._auto_reset_timer = None
        self._emit(self.bridge.end_episode("reset"))  # the end goes out before the (slow) reset
        ok, message, outputs = self.bridge.reset_episode(suite, task_id, init_state_id, time.monotonic(),
                                                         instruction_subscribed=self._instruction_heard())
        self._emit(outputs)
        self._emit(self.bridge.render_viewer())
        return ok, message

    def end_episode(self, reason: str) -> None:
        """End the running episode for ``reason`` and publish it (policy_done, policy_timeout, reset, error)."""
        self._emit(self.bridge.end_episode(reason))

    def _instruction_heard(self) -> bool:
        return self._pub_instruction.get_subscription_count() > 0

    # ------------------------------------------------------------------ outputs -> messages
    def _emit(self, outputs: list[Output]) -> None:
        log = self.get_logger()
        for out in outputs:  # in order: the /clock tick before the observation, the status after it
            match out:
                case PublishClock(stamp_ns=ns):
                    if self._pub_clock is not None:
                        self._pub_clock.publish(ClockMsg(clock=stamp_from_ns(ns)))
                case PublishObservation(observation=obs, stamp_ns=ns):
                    if self._obs_msgs[0] != ns:  # a re-publish sends the same messages again
                        self._obs_msgs = (ns, self._observation_msgs(obs, stamp_from_ns(ns)))
                    for pub, msg in self._obs_msgs[1]:
                        pub.publish(msg)
                case PublishStatus():
                    self._pub_status.publish(self._status_msg(out))
                case PublishInstruction(text=text):
                    self._pub_instruction.publish(String(data=text))
                case ScheduleReset(suite=suite, task_id=task, init_state_id=init):
                    # One-shot timer: the end status goes out before the next reset blocks the executor.
                    self._auto_reset_timer = self.create_timer(
                        0.0, lambda s=suite, t=task, i=init: self.reset_episode(s, t, i), clock=self._steady)
                # rclpy wants one severity (and one throttle) per logging call site
                case Log(level="warning", throttle_s=throttle) if throttle > 0:
                    log.warning(out.text, throttle_duration_sec=throttle)
                case Log(level="warning"):
                    log.warning(out.text)
                case Log(level="error"):
                    log.error(out.text)
                case Log():
                    log.info(out.text)

    def _emit_step(self, outputs_of: Callable[[], list[Output]]) -> None:
        """Emit what ``outputs_of()`` returns, adding its time outside LIBERO's step to the bridge's own work."""
        timing = self.bridge.timing
        t0, steps, env_s = time.perf_counter(), timing["steps"], timing["env_step_s"]
        self._emit(outputs_of())
        if timing["steps"] > steps:
            self._bridge_s += time.perf_counter() - t0 - (timing["env_step_s"] - env_s)
        # After the observation is out: in lockstep the viewer render overlaps the policy's inference.
        self._emit(self.bridge.render_viewer())

    def _observation_msgs(self, obs: Observation, stamp: TimeMsg) -> list[tuple[object, object]]:
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

    @staticmethod
    def _status_msg(st: PublishStatus) -> EpisodeStatus:
        msg = EpisodeStatus(episode_id=st.episode_id, suite=st.suite, task_id=st.task_id,
                            init_state_id=st.init_state_id, instruction=st.instruction, step=st.step,
                            max_steps=st.max_steps, success=st.success, done=st.done, reason=st.reason,
                            image_flip=st.image_flip, action_space=st.action_space)
        msg.header.stamp = stamp_from_ns(st.stamp_ns)
        return msg

    # ------------------------------------------------------------------ inputs and clock ticks
    def _on_action(self, msg: VlaAction) -> None:
        self._emit_step(lambda: self.bridge.on_action(msg, ns_from_stamp(msg.header.stamp), time.monotonic()))

    def _realtime_tick(self) -> None:
        self._emit_step(lambda: self.bridge.realtime_tick(time.monotonic()))

    def _watchdog(self) -> None:
        connected = self.count_publishers(self._action_sub.topic_name) > 0
        self._emit(self.bridge.watchdog(time.monotonic(), policy_connected=connected,
                                        instruction_subscribed=self._instruction_heard()))

    # ------------------------------------------------------------------ service, diagnostics
    def _on_reset(self, req: ResetEpisode.Request, resp: ResetEpisode.Response) -> ResetEpisode.Response:
        suite, task_id, init_id = self.bridge.reset_target(req.suite, req.task_id, req.init_state_id)
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
        st, timing = self.stats, self.bridge.timing
        values = {**st.as_dict(), "republished": self.republished, "episode_id": self.episode_id,
                  "instructions_sent": self.bridge.instructions_sent, "stepping_mode": self.mode,
                  "last_end_reason": self.bridge.last_end_reason}
        if timing["steps"]:
            n = timing["steps"]
            values["env_step_ms_mean"] = f"{1e3 * timing['env_step_s'] / n:.2f}"
            values["bridge_publish_ms_mean"] = f"{1e3 * self._bridge_s / n:.2f}"
        status = DiagnosticStatus(name=f"{self.get_name()}: actions", hardware_id="libero",
                                  level=DiagnosticStatus.WARN if st.rejected_total else DiagnosticStatus.OK,
                                  message=f"{st.rejected_total} actions rejected" if st.rejected_total else "ok",
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self._pub_diag.publish(arr)


def main(argv: list[str] | None = None) -> int:
    """``sim_bridge_node [--help] [--ros-args ...]``: run the bridge until SIGINT/shutdown; 0 on a clean exit."""
    args = sys.argv if argv is None else argv
    if wants_help(args):  # print the parameters and exit, without starting a node
        return print_node_help(NODE_NAME, SPECS, yaml_defaults())
    rclpy.init(args=args)
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
