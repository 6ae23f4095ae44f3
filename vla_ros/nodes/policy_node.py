"""vla_policy_node: a VLA policy as a safe ROS 2 lifecycle controller (docs/policy_node.md).

Threading (why it looks like this): every ROS callback (cameras, proprio sources, instruction, episode status,
enable service, timers) only stores its input; one plain worker thread owns the policy. So at most one inference is
ever in flight, nothing queues behind a slow model, and no callback blocks the executor. Free-running, only the
control timer wakes the worker and publishes (one command per tick, holds even while a model hangs); in lockstep an
observation or a changed switch wakes it. The ExecuteInstruction server blocks in its own reentrant callback group,
hence ``main`` spins a MultiThreadedExecutor.

This file is wiring: parameters, topics, QoS, threads. The decisions and their state (lockstep answering, holds,
waiting for further inputs, episode matching; free-running at ``control_rate_hz`` or lockstep) are ROS-free in
:class:`vla_ros.policy_control.PolicyControl`, whose step is :func:`vla_ros.decision.decide`, the one the in-process
rollout runs; message conversion is :mod:`vla_ros.nodes.policy_io`.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import TwistStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import Image
from std_msgs.msg import String
from std_srvs.srv import SetBool

from vla_ros.config import topics
from vla_ros.controller import RateMeter, RejectionLog, validate_instruction
from vla_ros.inputs import ExtraInputs, stamp_ns
from vla_ros.nodes import policy_io, policy_params, policy_status
from vla_ros.nodes.execute_action import GoalHooks, InstructionActionServer
from vla_ros.nodes.node_help import print_node_help, wants_help
from vla_ros.nodes.qos import command_qos, image_qos
from vla_ros.policy_control import Answer, PolicyControl
from vla_ros_msgs.msg import EpisodeStatus, PolicyStatus, VlaAction


class VlaPolicyNode(LifecycleNode):
    """The lifecycle node; ``configure`` loads the policy, ``cleanup`` releases it."""

    def __init__(self, node_name: str = policy_params.NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        policy_params.declare(self)
        p = self._params()
        for name in policy_params.SPECS:  # ValueError naming the parameter: main() exits with 2
            policy_params.check_choice(name, p[name])
        self._twist_scale, self._rate_hz, self._lockstep = p["twist_scale"], p["control_rate_hz"], p["lockstep"]
        self._gripper_joints, self._base_frame = tuple(p["gripper_joint_names"]), p["base_frame"]
        self._rejections = RejectionLog(self.get_logger().warning, p["rejection_log_quiet_s"])
        self._control = PolicyControl(
            policy_params.controller_config(p), lockstep=self._lockstep, enabled=p["start_enabled"],
            rejections=self._rejections, now_ns=lambda: self.get_clock().now().nanoseconds, publish=self._publish,
            log_error=self.get_logger().error, dry_run=p["dry_run"], sync_tolerance_s=p["input_sync_tolerance_s"],
            inference_timeout_s=p["inference_timeout_s"], stamp_clock_tolerance_s=p["stamp_clock_tolerance_s"],
            log_warning=self.get_logger().warning)
        self.add_on_set_parameters_callback(self._validate_params)
        self.add_post_set_parameters_callback(self._apply_params)
        self._rate = RateMeter()
        self._cv = threading.Condition()  # wakes the worker; guards the flags below
        self._worker: threading.Thread | None = None
        self._stop_worker = self._wake = self._busy = False
        self._flip_warned = False
        self._extra_subs: dict[str, Any] = {}  # topic key -> subscription, made when a policy first needs it
        self._ctl_timer = self._pub_action = self._pub_twist = None
        self._action_server: InstructionActionServer | None = None
        self._inputs_group = MutuallyExclusiveCallbackGroup()  # short store-and-notify callbacks
        # Status and diagnostics exist from the start: they also report an unconfigured or inactive node (and why).
        t = topics()
        self._pub_status = self.create_publisher(PolicyStatus, t["status"], command_qos())
        self._pub_diag = self.create_publisher(DiagnosticArray, t["diagnostics"], command_qos())
        steady = Clock(clock_type=ClockType.STEADY_TIME)  # status flows even when sim time stands still
        self.create_timer(1.0 / p["status_rate_hz"], self._publish_status, callback_group=self._inputs_group,
                          clock=steady)
        self.start_failed = False  # True when auto_start could not bring the node up (main() then exits with 1)
        if p["auto_start"]:
            self.start_failed = not (self.trigger_configure() == TransitionCallbackReturn.SUCCESS
                                     and self.trigger_activate() == TransitionCallbackReturn.SUCCESS)

    def _params(self) -> dict[str, Any]:
        return {n: self.get_parameter(n).value for n in policy_params.SPECS}

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p, control = self._params(), self._control
        try:
            control.policy = policy_io.load_policy_from_params(p)
        except Exception as exc:
            control.stats.last_error = f"loading the policy failed: {exc}"
            self.get_logger().error(control.stats.last_error)
            return TransitionCallbackReturn.FAILURE
        meta = control.policy.metadata
        try:
            inputs = ExtraInputs(meta.extra_images, meta.proprio_layout, topics())
        except ValueError as exc:
            self._teardown()  # releases the policy (and resets the state: the error is set after it)
            control.stats.last_error = f"cannot serve {meta.model_id}: {exc}"
            self.get_logger().error(control.stats.last_error)
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f"loaded {meta.model_id} ({p['backend']}), action space {meta.action_space.name}, "
                               f"gripper {meta.gripper_convention}, image flip {meta.image_flip}"
                               + (f", further inputs {list(inputs.keys)}" if inputs else ""))
        if self._pub_action is None:
            self._make_interfaces(p)
        t = topics()
        for key in (k for k in inputs.keys if k not in self._extra_subs):  # kept across cleanup, as all others
            self._extra_subs[key] = policy_io.subscribe_input(self, key, t[key], p["sensor_reliability"],
                                                              self._on_input, self._inputs_group)
            self.get_logger().info(f"subscribed to {t[key]} ({key}) for the policy's inputs")
        control.update(inputs=inputs)
        self._stop_worker = False
        self._worker = threading.Thread(target=self._worker_loop, name="vla_policy_worker", daemon=True)
        self._worker.start()
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        ret = super().on_activate(state)  # enables the lifecycle publishers first
        self._control.set_active(True)
        if self._ctl_timer is not None:
            self._ctl_timer.reset()  # (re)starts the stopped timer
        self._notify_lockstep()  # free-running: the first tick starts the first decision
        self.get_logger().info(f"active ({'lockstep' if self._lockstep else f'{self._rate_hz:g} Hz'})")
        return ret

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_control()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._control.active:
            self._stop_control()
        self._teardown()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _make_interfaces(self, p: dict[str, Any]) -> None:
        """Topics, services, timers and the action server, made at the first configure and kept: with rclpy 9
        destroying a subscription while a MultiThreadedExecutor waits on it can kill the executor (InvalidHandle in
        event_handler.add_to_wait_set, seen in this project's tests). Unconfigured, callbacks only store inputs."""
        t = topics()
        self._pub_action = self.create_lifecycle_publisher(VlaAction, t["action"], command_qos())
        self._pub_twist = (self.create_lifecycle_publisher(TwistStamped, t["twist"], command_qos())
                           if p["publish_twist"] else None)
        group = self._inputs_group
        self.create_subscription(Image, t["camera_image"], self._on_image, image_qos(p["sensor_reliability"]),
                                 callback_group=group)
        self.create_subscription(String, t["instruction"], self._on_instruction, command_qos(), callback_group=group)
        if p["subscribe_episode_status"]:
            self.create_subscription(EpisodeStatus, t["episode_status"], self._on_episode, command_qos(),
                                     callback_group=group)
        self.create_service(SetBool, t["enable_service"], self._on_enable, callback_group=group)
        if not self._lockstep:  # node clock: under use_sim_time the rate follows /clock; started on activate
            self._ctl_timer = self.create_timer(1.0 / self._rate_hz, self._on_tick, callback_group=group,
                                                autostart=False)
        if p["enable_action_server"]:
            self._action_server = InstructionActionServer(self, t["execute_action"], GoalHooks(
                can_accept=self._can_accept_goal, start=self._start_goal, stop=self._clear_instruction,
                generation=lambda: self._control.generation,
                now_s=lambda: self.get_clock().now().nanoseconds * 1e-9, is_active=lambda: self._control.active))

    def _stop_control(self) -> None:
        """Stop acting, let an inference in flight end, then command one hold (reason inactive)."""
        self._control.set_active(False)
        with self._cv:
            self._cv.notify_all()
            self._cv.wait_for(lambda: not self._busy, timeout=5.0)
        if self._ctl_timer is not None:
            self._ctl_timer.cancel()
        self._control.hold_now("inactive")

    def _teardown(self) -> None:
        """Undo configure: stop the worker and drop every reference to the policy (GPU memory included)."""
        with self._cv:
            self._stop_worker = True
            self._cv.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=10.0)
            self._worker = None
        policy, self._control.policy = self._control.policy, None
        self._control.update(inputs=None)
        self._control.reset()
        self._flip_warned = False
        policy_io.close_policy(policy, self.get_logger().warning)
        del policy
        policy_io.release_memory()

    # ------------------------------------------------------------------ parameters
    def _validate_params(self, params: list) -> SetParametersResult:
        try:
            policy_params.controller_config({p.name: p.value for p in params}, self._control.cfg)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _apply_params(self, params: list) -> None:
        values, control = {p.name: p.value for p in params}, self._control
        changed = control.update(
            cfg=policy_params.controller_config(values, control.cfg), dry_run=values.get("dry_run", control.dry_run),
            sync_tolerance_s=values.get("input_sync_tolerance_s", control.sync_tolerance_s),
            inference_timeout_s=values.get("inference_timeout_s", control.inference_timeout_s),
            stamp_clock_tolerance_s=values.get("stamp_clock_tolerance_s", control.stamp_clock_tolerance_s))
        self._twist_scale = values.get("twist_scale", self._twist_scale)
        if "control_rate_hz" in values:
            self._rate_hz = values["control_rate_hz"]
            if self._ctl_timer is not None:
                self._ctl_timer.timer_period_ns = round(1e9 / self._rate_hz)
        if changed:
            self._notify_lockstep()

    # ------------------------------------------------------------------ inputs (never block)
    def _notify(self) -> None:
        with self._cv:
            self._wake = True
            self._cv.notify_all()

    def _notify_lockstep(self) -> None:
        """A changed input or switch: lockstep answers anew now; free-running waits for the next tick."""
        if self._lockstep:
            self._notify()

    def _on_tick(self) -> None:
        """The free-running control timer: one publish slot per tick; a decision starts when the worker is idle."""
        with self._cv:
            busy = self._busy
        if self._control.tick() and not busy:
            self._notify()

    def _on_image(self, msg: Image) -> None:
        try:
            rgb = policy_io.camera_rgb(msg, self._control.cfg)
        except ValueError as exc:
            self._control.reject("image", str(exc))
            return
        self._control.put_frame(rgb, (msg.header.stamp.sec, msg.header.stamp.nanosec),
                                self.get_clock().now().nanoseconds)
        if self._lockstep:
            self._notify()

    def _on_input(self, key: str, msg: Any) -> None:
        """A further input (wrist camera, joint_states, ee_pose): checked, kept by stamp."""
        try:
            value = policy_io.input_value(key, msg, self._control.cfg, self._gripper_joints)
        except ValueError as exc:
            self._control.reject(key, str(exc))
            return
        if self._control.put_input(key, stamp_ns(msg.header.stamp), value):
            self._notify()

    def _on_instruction(self, msg: String) -> None:
        try:
            text = validate_instruction(msg.data, self._control.cfg.max_instruction_chars)
        except ValueError as exc:
            self._control.reject("instruction", str(exc))
            return
        self._set_instruction(text)

    def _set_instruction(self, text: str, force_new: bool = False) -> int:
        generation, new = self._control.set_instruction(text, force_new)
        if new:
            self.get_logger().info(f"instruction: {text!r}")
            self._notify_lockstep()
        return generation

    def _clear_instruction(self) -> None:
        self._control.clear_instruction()
        self._notify_lockstep()

    def _on_episode(self, msg: EpisodeStatus) -> None:
        self._control.episode_status((msg.header.stamp.sec, msg.header.stamp.nanosec), msg.episode_id, msg.step)
        policy = self._control.policy
        if policy is not None and not self._flip_warned and msg.image_flip:
            want = policy.metadata.image_flip
            if msg.image_flip != want:
                self._flip_warned = True
                self.get_logger().warning(f"the bridge flips images with {msg.image_flip!r} but the checkpoint was "
                                          f"trained with {want!r}: actions will be wrong")

    def _on_enable(self, req: SetBool.Request, resp: SetBool.Response) -> SetBool.Response:
        if self._control.set_enabled(bool(req.data)):
            self._notify_lockstep()
        resp.success, resp.message = True, "enabled" if req.data else "disabled"
        self.get_logger().info(f"control {resp.message}")
        return resp

    # ------------------------------------------------------------------ action goals
    def _can_accept_goal(self, instruction: str) -> str:
        if not self._control.active:
            return "node is not active"
        try:
            validate_instruction(instruction, self._control.cfg.max_instruction_chars)
        except ValueError as exc:
            self._control.reject("instruction", str(exc))
            return str(exc)
        return ""

    def _start_goal(self, instruction: str) -> int:
        return self._set_instruction(validate_instruction(instruction, self._control.cfg.max_instruction_chars),
                                     force_new=True)

    # ------------------------------------------------------------------ the control worker
    def _worker_loop(self) -> None:
        control = self._control
        while True:
            with self._cv:
                deadline = control.input_wait.deadline  # a decision waiting for its inputs retries by then
                timeout = deadline - time.monotonic() if deadline is not None else None
                self._cv.wait_for(lambda: self._stop_worker or self._wake,
                                  timeout=timeout if timeout is not None and timeout > 0 else None)
                if self._stop_worker:
                    return
                self._wake = False
                if not control.active:
                    continue
                self._busy = True
            again = False
            try:
                again = control.cycle()
            except Exception as exc:  # the control thread must survive anything
                control.stats.last_error = f"control cycle failed: {exc!r}"
                self.get_logger().error(control.stats.last_error)
            finally:
                with self._cv:
                    self._busy = False
                    self._wake = self._wake or again  # a new instruction came during inference: its own cycle
                    self._cv.notify_all()

    def _publish(self, answer: Answer, inference_ms: float) -> bool:
        """Publish an answer of the control (and its twist mirror); False while the publisher is inactive."""
        pub = self._pub_action
        if pub is None or not pub.is_activated:
            return False
        now = self.get_clock().now().to_msg()
        msg = policy_io.action_msg(answer, now, self._base_frame)
        pub.publish(msg)
        if self._pub_twist is not None:  # stamped now: servo controllers judge age by receipt
            self._pub_twist.publish(policy_io.twist_mirror(msg, now, self._twist_scale))
        self._rate.tick()
        if self._action_server is not None:
            self._action_server.on_published(msg, inference_ms, answer.new_step)
        return True

    # ------------------------------------------------------------------ status
    def status(self) -> PolicyStatus:
        """The current PolicyStatus (also published periodically)."""
        return policy_status.status_msg(self._control, self._rejections.total, self._rate.rate(),
                                        self.get_clock().now().to_msg())

    def _publish_status(self) -> None:
        st = self.status()
        self._pub_status.publish(st)
        with self._control.lock:
            self._rejections.flush()  # the summary of a burst of rejections that is over
            by_kind, by_reason = dict(self._rejections.by_kind), dict(self._rejections.by_reason)
        self._pub_diag.publish(policy_status.diagnostics(st, f"{self.get_name()}: control", by_kind, by_reason))


def main(argv: list[str] | None = None) -> int:
    """Console script ``vla_policy_node``: spin until SIGINT/SIGTERM, then hold and release the model.

    Exit codes: 0 after a clean stop, 1 when ``auto_start`` could not configure/activate (e.g. the
    model failed to load), 2 on invalid parameters.
    """
    if wants_help(sys.argv if argv is None else [sys.argv[0], *argv]):  # the parameters, without starting ROS
        return print_node_help(policy_params.NODE_NAME, policy_params.SPECS, policy_params.yaml_defaults())
    return policy_io.run_node(VlaPolicyNode, argv, "vla_policy_node")


if __name__ == "__main__":
    sys.exit(main())
