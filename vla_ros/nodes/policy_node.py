"""vla_policy_node: a VLA policy as a safe ROS 2 lifecycle controller (docs/policy_node.md).

Threading (why it looks like this): every ROS callback (camera, instruction, episode status, enable
service, timers) only stores its input and wakes one plain worker thread, which owns the policy.
So at most one inference is ever in flight, nothing queues behind a slow model, and no callback
blocks the executor. The ExecuteInstruction server blocks in its own reentrant callback group,
hence ``main`` spins a MultiThreadedExecutor. All safety decisions are in
:mod:`vla_ros.controller` (ROS-free); this file is wiring.

Modes: free-running (``lockstep: false``, a real arm): a timer at ``control_rate_hz`` acts on the
newest frame, holding when it is older than ``image_timeout_s`` on the node clock. Lockstep (a
simulator): each new observation is answered once, stamped with its image stamp; a re-published
observation (same stamp) gets the same answer again without a second inference.

Further model inputs (``metadata.extra_images``, ``metadata.proprio_layout``): subscribed after loading, kept by
header stamp and paired with the main image of a decision (:mod:`vla_ros.inputs`): equal stamps in
lockstep, within ``input_sync_tolerance_s`` otherwise. A decision whose inputs have not (yet) arrived waits for
them briefly, then holds with ``missing_inputs`` and a counted rejection.
"""

from __future__ import annotations

import collections
import gc
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
import rclpy.exceptions
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, TwistStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool

from vla_ros.backends import load_policy
from vla_ros.config import topics
from vla_ros.controller import (
    LatestSlot,
    RateMeter,
    RejectionLog,
    check_image_size,
    hold_reason,
    shape_action,
    validate_instruction,
)
from vla_ros.image_codec import image_msg_to_rgb
from vla_ros.inputs import (
    EE_POSE,
    JOINT_STATES,
    ExtraInputs,
    finger_positions,
    pose_arrays,
    stamp_ns,
)
from vla_ros.nodes import policy_params, policy_status
from vla_ros.nodes.execute_action import GoalHooks, InstructionActionServer
from vla_ros.nodes.qos import command_qos, image_qos, state_qos
from vla_ros.policy import Policy
from vla_ros_msgs.msg import EpisodeStatus, PolicyStatus, VlaAction

_EPISODE_STAMPS_KEPT = 32
_EPISODE_WAIT_S = 0.2  # how long an answer waits for the bridge's status of its observation


@dataclass
class _Frame:
    rgb: np.ndarray
    stamp: Any  # builtin_interfaces/Time of the image
    key: tuple[int, int]
    recv_ns: int  # node clock at receipt
    recv_mono: float  # time.monotonic() at receipt: how long a decision waits for its further inputs
    episode_id: int
    step: int
    from_episode: bool  # episode/step came from the bridge's EpisodeStatus


class VlaPolicyNode(LifecycleNode):
    """The lifecycle node; ``configure`` loads the policy, ``cleanup`` releases it."""

    def __init__(self, node_name: str = policy_params.NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        policy_params.declare(self)
        p = {n: self.get_parameter(n).value for n in policy_params.SPECS}
        for name in policy_params.SPECS:  # ValueError naming the parameter: main() exits with 2
            policy_params.check_choice(name, p[name])
        self._cfg = policy_params.controller_config(p)
        self._dry_run: bool = p["dry_run"]
        self._twist_scale: float = p["twist_scale"]
        self._rate_hz: float = p["control_rate_hz"]
        self._lockstep: bool = p["lockstep"]
        self._sync_tolerance_s: float = p["input_sync_tolerance_s"]
        self._gripper_joints = tuple(p["gripper_joint_names"])
        self.add_on_set_parameters_callback(self._validate_params)
        self.add_post_set_parameters_callback(self._apply_params)

        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._policy: Policy | None = None
        self._frames: LatestSlot[_Frame] = LatestSlot()
        self._rejections = RejectionLog(self.get_logger().warning, p["rejection_log_quiet_s"])
        self._rate = RateMeter()
        self._inputs: ExtraInputs | None = None  # the loaded policy's further inputs (None: unconfigured)
        self._extra_subs: dict[str, Any] = {}  # topic key -> subscription, made when a policy first needs it
        self._inputs_group = None
        self._reset_state()
        self._enabled: bool = p["start_enabled"]
        self._worker: threading.Thread | None = None
        self._stop_worker = False
        self._wake = False
        self._busy = False
        self._ctl_timer = None
        self._interfaces_made = False
        self._pub_action = self._pub_twist = self._pub_status = self._pub_diag = None
        self._base_frame: str = p["base_frame"]
        self._action_server: InstructionActionServer | None = None
        # True when auto_start could not bring the node up (main() then exits with 1).
        self.start_failed = False
        if p["auto_start"]:
            self.start_failed = not (self.trigger_configure() == TransitionCallbackReturn.SUCCESS
                                     and self.trigger_activate() == TransitionCallbackReturn.SUCCESS)

    def _reset_state(self) -> None:
        """Per-configuration state (also what cleanup forgets)."""
        self._active = False
        self._instruction: str | None = None
        self._instr_gen = 0
        self._finished = False
        self._reset_seq = self._reset_done = 0  # requests vs. resets done (a counter loses none)
        self._own_episode = 0
        self._own_step = 0
        self._episode: tuple[int, int] | None = None  # (episode_id, step) of the bridge's latest status
        # The bridge stamps its EpisodeStatus with the observation's stamp and sends it just AFTER the
        # images: answers look their episode/step up by stamp (recent ones kept).
        self._episode_by_stamp: collections.OrderedDict[tuple[int, int], tuple[int, int]] = \
            collections.OrderedDict()
        self._answered: tuple[tuple[int, int], VlaAction] | None = None  # lockstep: key -> answer
        self._last_hold_key: tuple[Any, str] | None = None
        self._last_gripper = 0.0  # before any action: open, as LIBERO and most arms start
        self._last_reason = "inactive"
        self._last_error = ""
        self._actions = self._holds = 0
        self._last_ms = 0.0
        self._sum_ms = 0.0
        self._n_inferences = 0
        self._flip_warned = False
        self._frames.clear()
        # A decision waiting for the further inputs of its image: (frame key, time.monotonic() deadline).
        self._pending: tuple[tuple[int, int], float] | None = None
        self._inputs_rejected_key: tuple[int, int] | None = None  # one rejection per observation
        if self._inputs is not None:
            self._inputs.clear()

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = {n: self.get_parameter(n).value for n in policy_params.SPECS}
        try:
            self._policy = self._load_policy(p)
        except Exception as exc:
            self._last_error = f"loading the policy failed: {exc}"
            self.get_logger().error(self._last_error)
            return TransitionCallbackReturn.FAILURE
        meta = self._policy.metadata
        try:
            inputs = ExtraInputs(meta.extra_images, meta.proprio_layout, topics())
        except ValueError as exc:
            self._teardown()  # releases the policy (and resets the state: the error is set after it)
            self._last_error = f"cannot serve {meta.model_id}: {exc}"
            self.get_logger().error(self._last_error)
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f"loaded {meta.model_id} ({p['backend']}), action space {meta.action_space.name}, "
                               f"gripper {meta.gripper_convention}, image flip {meta.image_flip}"
                               + (f", further inputs {list(inputs.keys)}" if inputs else ""))
        if not self._interfaces_made:
            self._make_interfaces(p)
        self._subscribe_inputs(inputs, p)
        with self._lock:
            self._inputs = inputs
        self._stop_worker = False
        self._worker = threading.Thread(target=self._worker_loop, name="vla_policy_worker", daemon=True)
        self._worker.start()
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        ret = super().on_activate(state)  # enables the lifecycle publishers first
        with self._lock:
            self._active = True
            self._answered, self._last_hold_key = None, None
        if self._ctl_timer is not None:
            self._ctl_timer.reset()  # (re)starts the stopped timer
        self._notify()
        self.get_logger().info(f"active ({'lockstep' if self._lockstep else f'{self._rate_hz:g} Hz'})")
        return ret

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_control()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._active:
            self._stop_control()
        self._teardown()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _load_policy(self, p: dict[str, Any]) -> Policy:
        options = yaml.safe_load(p["backend_options"]) or {}
        if not isinstance(options, dict):
            raise ValueError(f"backend_options must be a YAML mapping, got {p['backend_options']!r}")
        for key in ("quantization", "adapter", "device", "unnorm_key"):
            if p[key]:
                options[key] = p[key]
        if p["center_crop"] != "checkpoint":  # preprocessing is the backend's (same resize as in training)
            options["center_crop"] = p["center_crop"] == "on"
        return load_policy(p["backend"], p["checkpoint"] or None, **options)

    def _make_interfaces(self, p: dict[str, Any]) -> None:
        """Topics, services, timers and the action server, made at the first configure and kept.

        They are not destroyed on cleanup: with rclpy 9 (Kilted) destroying a subscription while a
        MultiThreadedExecutor waits on it can kill the executor (InvalidHandle in
        event_handler.add_to_wait_set, seen in this project's tests). Unconfigured, the callbacks
        only store inputs; nothing acts without a policy and an active state.
        """
        t = topics()
        self._pub_action = self.create_lifecycle_publisher(VlaAction, t["action"], command_qos())
        self._pub_twist = (self.create_lifecycle_publisher(TwistStamped, t["twist"], command_qos())
                           if p["publish_twist"] else None)
        # Status and diagnostics are plain publishers: they also report an inactive or unconfigured node.
        self._pub_status = self.create_publisher(PolicyStatus, t["status"], command_qos())
        self._pub_diag = self.create_publisher(DiagnosticArray, t["diagnostics"], command_qos())
        inputs = self._inputs_group = MutuallyExclusiveCallbackGroup()  # short store-and-notify callbacks
        self.create_subscription(Image, t["camera_image"], self._on_image, image_qos(p["sensor_reliability"]),
                                 callback_group=inputs)
        self.create_subscription(String, t["instruction"], self._on_instruction, command_qos(), callback_group=inputs)
        if p["subscribe_episode_status"]:
            self.create_subscription(EpisodeStatus, t["episode_status"], self._on_episode, command_qos(),
                                     callback_group=inputs)
        self.create_service(SetBool, t["enable_service"], self._on_enable, callback_group=inputs)
        steady = Clock(clock_type=ClockType.STEADY_TIME)  # status flows even when sim time stands still
        self.create_timer(1.0 / p["status_rate_hz"], self._publish_status, callback_group=inputs, clock=steady)
        if not self._lockstep:
            # Node clock: under use_sim_time the control rate follows /clock. Started on activate.
            self._ctl_timer = self.create_timer(1.0 / self._rate_hz, self._notify, callback_group=inputs,
                                                autostart=False)
        if p["enable_action_server"]:
            self._action_server = InstructionActionServer(self, t["execute_action"], GoalHooks(
                can_accept=self._can_accept_goal, start=self._start_goal, stop=self._clear_instruction,
                generation=lambda: self._instr_gen, now_s=lambda: self.get_clock().now().nanoseconds * 1e-9,
                is_active=lambda: self._active))
        self._interfaces_made = True

    def _subscribe_inputs(self, inputs: ExtraInputs, p: dict[str, Any]) -> None:
        """Subscriptions to the policy's further inputs, made the first time a loaded policy needs them and then
        kept (see _make_interfaces); a plain image model subscribes to none of them."""
        t = topics()
        for key in inputs.keys:
            if key in self._extra_subs:
                continue
            if key == JOINT_STATES:
                sub = self.create_subscription(JointState, t[key], self._on_joint_states,
                                               state_qos(p["sensor_reliability"]),
                                               callback_group=self._inputs_group)
            elif key == EE_POSE:
                sub = self.create_subscription(PoseStamped, t[key], self._on_ee_pose,
                                               state_qos(p["sensor_reliability"]),
                                               callback_group=self._inputs_group)
            else:
                sub = self.create_subscription(Image, t[key], lambda msg, k=key: self._on_extra_image(k, msg),
                                               image_qos(p["sensor_reliability"]), callback_group=self._inputs_group)
            self._extra_subs[key] = sub
            self.get_logger().info(f"subscribed to {t[key]} ({key}) for the policy's inputs")

    def _stop_control(self) -> None:
        """Stop acting, let an inference in flight end, then command one hold (reason inactive)."""
        with self._cv:
            self._active = False
            self._cv.notify_all()
            self._cv.wait_for(lambda: not self._busy, timeout=5.0)
        if self._ctl_timer is not None:
            self._ctl_timer.cancel()
        frame = self._frames.peek()
        self._publish(self._make_msg(frame, None, "inactive", None))

    def _teardown(self) -> None:
        """Undo configure: stop the worker and drop every reference to the policy (GPU memory included)."""
        with self._cv:
            self._stop_worker = True
            self._cv.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=10.0)
            self._worker = None
        policy, self._policy = self._policy, None
        if policy is not None:
            try:
                policy.close()
            except Exception as exc:
                self.get_logger().warning(f"policy.close() failed: {exc!r}")
            del policy
        with self._lock:
            self._inputs = None
            self._reset_state()
        gc.collect()
        torch = sys.modules.get("torch")  # only if a backend imported it: never import torch here
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ parameters
    def _validate_params(self, params: list) -> SetParametersResult:
        try:
            values = {p.name: p.value for p in params}
            policy_params.controller_config(values, self._cfg)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _apply_params(self, params: list) -> None:
        values = {p.name: p.value for p in params}
        with self._lock:
            self._cfg = policy_params.controller_config(values, self._cfg)
            self._dry_run = values.get("dry_run", self._dry_run)
            self._twist_scale = values.get("twist_scale", self._twist_scale)
            self._sync_tolerance_s = values.get("input_sync_tolerance_s", self._sync_tolerance_s)
        if "control_rate_hz" in values:
            self._rate_hz = values["control_rate_hz"]
            if self._ctl_timer is not None:
                self._ctl_timer.timer_period_ns = round(1e9 / self._rate_hz)
        self._notify()

    # ------------------------------------------------------------------ inputs (never block)
    def _notify(self) -> None:
        with self._cv:
            self._wake = True
            self._cv.notify_all()

    def _reject(self, kind: str, detail: str) -> None:
        with self._lock:
            self._rejections.reject(kind, detail)

    def _on_image(self, msg: Image) -> None:
        try:
            rgb = image_msg_to_rgb(msg)  # ImageDecodeError is a ValueError
            check_image_size(rgb, self._cfg)
        except ValueError as exc:
            self._reject("image", str(exc))
            return
        ep = self._episode
        self._frames.put(_Frame(
            rgb=rgb, stamp=msg.header.stamp, key=(msg.header.stamp.sec, msg.header.stamp.nanosec),
            recv_ns=self.get_clock().now().nanoseconds, recv_mono=time.monotonic(), episode_id=ep[0] if ep else 0,
            step=ep[1] if ep else 0, from_episode=ep is not None))
        if self._lockstep:
            self._notify()

    def _store_input(self, key: str, stamp, value) -> None:
        """Keep a further input by its stamp; wake the worker when a decision may be waiting for it."""
        inputs = self._inputs
        if inputs is None or key not in inputs.history:
            return  # unconfigured, or the loaded policy does not use this input
        inputs.put(key, stamp_ns(stamp), value)
        pending = self._pending  # free-running: only a decision still waiting for it, not one per message
        if self._lockstep or (pending is not None and time.monotonic() < pending[1]):
            self._notify()

    def _on_extra_image(self, key: str, msg: Image) -> None:
        try:
            rgb = image_msg_to_rgb(msg)
            check_image_size(rgb, self._cfg)
        except ValueError as exc:
            self._reject(key, str(exc))
            return
        self._store_input(key, msg.header.stamp, rgb)

    def _on_joint_states(self, msg: JointState) -> None:
        try:
            fingers = finger_positions(msg.name, msg.position, self._gripper_joints)
        except ValueError as exc:
            self._reject(JOINT_STATES, str(exc))
            return
        self._store_input(JOINT_STATES, msg.header.stamp, fingers)

    def _on_ee_pose(self, msg: PoseStamped) -> None:
        p, q = msg.pose.position, msg.pose.orientation
        try:
            pose = pose_arrays((p.x, p.y, p.z), (q.x, q.y, q.z, q.w))
        except ValueError as exc:
            self._reject(EE_POSE, str(exc))
            return
        self._store_input(EE_POSE, msg.header.stamp, pose)

    def _on_instruction(self, msg: String) -> None:
        try:
            text = validate_instruction(msg.data, self._cfg.max_instruction_chars)
        except ValueError as exc:
            self._reject("instruction", str(exc))
            return
        self._set_instruction(text)

    def _set_instruction(self, text: str, force_new: bool = False) -> int:
        """Adopt an instruction; a changed one (or any after ``finished``) starts a new episode.

        The bridge re-sends the same instruction until the episode's first action: a repeat must
        not reset the policy (it would drop an action chunk in flight).
        """
        with self._cv:
            if force_new or text != self._instruction or self._finished:
                self._instruction = text
                self._instr_gen += 1
                self._finished = False
                self._reset_seq += 1
                self._own_episode += 1
                self._own_step = 0
                self._last_hold_key = None
                self.get_logger().info(f"instruction: {text!r}")
            self._wake = True
            self._cv.notify_all()
            return self._instr_gen

    def _clear_instruction(self) -> None:
        with self._cv:
            self._instruction = None
            self._instr_gen += 1
            self._wake = True
            self._cv.notify_all()

    def _on_episode(self, msg: EpisodeStatus) -> None:
        with self._cv:
            if self._episode is not None and self._episode[0] != msg.episode_id:
                self._finished = False  # a new simulated episode
                self._reset_seq += 1
            self._episode = (int(msg.episode_id), int(msg.step))
            self._episode_by_stamp[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = self._episode
            while len(self._episode_by_stamp) > _EPISODE_STAMPS_KEPT:
                self._episode_by_stamp.popitem(last=False)
            self._cv.notify_all()
        policy = self._policy
        if policy is not None and not self._flip_warned and msg.image_flip:
            want = policy.metadata.image_flip
            if msg.image_flip != want:
                self._flip_warned = True
                self.get_logger().warning(f"the bridge flips images with {msg.image_flip!r} but the checkpoint was "
                                          f"trained with {want!r}: actions will be wrong")

    def _on_enable(self, req: SetBool.Request, resp: SetBool.Response) -> SetBool.Response:
        with self._cv:
            self._enabled = bool(req.data)
            self._last_hold_key = None
            self._wake = True
            self._cv.notify_all()
        resp.success, resp.message = True, "enabled" if req.data else "disabled"
        self.get_logger().info(f"control {resp.message}")
        return resp

    # ------------------------------------------------------------------ action goals
    def _can_accept_goal(self, instruction: str) -> str:
        if not self._active:
            return "node is not active"
        try:
            validate_instruction(instruction, self._cfg.max_instruction_chars)
        except ValueError as exc:
            self._reject("instruction", str(exc))
            return str(exc)
        return ""

    def _start_goal(self, instruction: str) -> int:
        return self._set_instruction(validate_instruction(instruction, self._cfg.max_instruction_chars),
                                     force_new=True)

    # ------------------------------------------------------------------ the control worker
    def _worker_loop(self) -> None:
        while True:
            with self._cv:
                # A decision waiting for its further inputs is retried at its deadline at the latest.
                pending = self._pending
                timeout = pending[1] - time.monotonic() if pending is not None else None
                self._cv.wait_for(lambda: self._stop_worker or self._wake,
                                  timeout=timeout if timeout is not None and timeout > 0 else None)
                if self._stop_worker:
                    return
                self._wake = False
                if not self._active:
                    continue
                self._busy = True
            try:
                self._cycle()
            except Exception as exc:  # the control thread must survive anything
                self._last_error = f"control cycle failed: {exc!r}"
                self.get_logger().error(self._last_error)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _state_reason(self, frame: _Frame | None, instruction: str | None) -> str:
        if frame is None:
            age = None
        elif self._lockstep:  # the simulator waits for the answer: its observation cannot go stale
            age = 0.0
        else:  # measured from receipt on the node clock, before and after inference
            age = (self.get_clock().now().nanoseconds - frame.recv_ns) * 1e-9
        return hold_reason(active=self._active, enabled=self._enabled, finished=self._finished,
                           instruction=instruction, frame_age_s=age, image_timeout_s=self._cfg.image_timeout_s)

    def _cycle(self) -> None:
        new = self._frames.take()
        frame = new or self._frames.peek()
        with self._lock:
            instruction, gen, cfg = self._instruction, self._instr_gen, self._cfg
            reset_seq = self._reset_seq  # honoured only when the policy really runs (below)
            policy, dry_run = self._policy, self._dry_run
            reason = self._state_reason(frame, instruction)
        if self._lockstep:
            if frame is None:
                return  # nothing to answer yet
            if self._answered is not None and self._answered[0] == frame.key:
                if new is not None:  # the bridge re-published it: same answer, no second inference
                    self._publish(self._answered[1])
                return
        if reason:
            self._pending = None
            self._hold(frame, reason)
            return
        inputs = self._further_inputs(frame)
        if inputs is None:
            return  # waiting for them, or held
        t0 = time.perf_counter()
        try:
            if reset_seq != self._reset_done:  # a new episode: forget action chunks and caches
                policy.reset()
                self._reset_done = reset_seq
            out = policy.act(frame.rgb, instruction, **inputs)
        except Exception as exc:
            self._last_error = f"inference failed: {exc!r}"
            self._hold(frame, "inference_error", log=self._last_error)
            return
        ms = (time.perf_counter() - t0) * 1e3
        self._last_ms, self._sum_ms, self._n_inferences = ms, self._sum_ms + ms, self._n_inferences + 1
        raw = np.asarray(out.action, dtype=np.float64).reshape(-1)
        try:
            cmd = shape_action(raw, policy.metadata.action_space, policy.metadata.gripper_convention, cfg)
        except ValueError as exc:
            self._last_error = f"invalid policy output: {exc}"
            self._hold(frame, "invalid_output", raw=raw, log=self._last_error, ms=ms)
            return
        with self._lock:  # the world may have changed while the model ran
            if gen != self._instr_gen:
                self._wake = True  # the new instruction gets its own cycle
                return
            reason = self._state_reason(frame, instruction)
            if not reason and out.done:
                self._finished, reason = True, "finished"
            elif not reason and dry_run:
                reason = "dry_run"
        msg = self._make_msg(frame, cmd, reason, raw, finished=reason == "finished")
        if self._lockstep:
            self._answered = (frame.key, msg)
        if not reason:
            self._last_gripper = cmd.gripper
            self._own_step += 1
        self._publish(msg, ms)

    def _further_inputs(self, frame: _Frame) -> dict | None:
        """``policy.act``'s further inputs of the frame's instant ({} for a plain image model), or None when they
        are missing: then the decision waits (no publish) until they arrive or its deadline passes (lockstep:
        ``image_timeout_s`` after the observation first came; free-running: ``input_sync_tolerance_s``, then each
        tick holds until they come or the image goes stale), after which it holds with ``missing_inputs``."""
        inputs_spec = self._inputs
        if not inputs_spec:
            return {}
        tol_ns = 0 if self._lockstep else round(self._sync_tolerance_s * 1e9)
        stamp = stamp_ns(frame.stamp)
        try:
            inputs, missing = inputs_spec.gather(stamp, tol_ns)
        except ValueError as exc:  # proprio_vector refused the values
            inputs, missing, detail = {}, ["proprio"], str(exc)
        else:
            detail = inputs_spec.describe_missing(missing, stamp, tol_ns) if missing else ""
        now = time.monotonic()
        with self._lock:
            if not missing:
                self._pending = None
                return inputs
            if self._pending is None or self._pending[0] != frame.key:  # a re-published observation keeps its own
                wait_s = self._cfg.image_timeout_s if self._lockstep else self._sync_tolerance_s
                self._pending = (frame.key, frame.recv_mono + wait_s)
            if now < self._pending[1]:
                return None  # the worker retries when an input arrives or at the deadline
            if self._inputs_rejected_key != frame.key:
                self._inputs_rejected_key = frame.key
                self._rejections.reject("inputs", detail)
        self._hold(frame, "missing_inputs")
        return None

    def _hold(self, frame: _Frame | None, reason: str, raw: np.ndarray | None = None, log: str = "",
              ms: float = 0.0) -> None:
        if self._lockstep:  # one hold per observation and reason, not one per wake-up
            key = (frame.key if frame else None, reason)
            if key == self._last_hold_key:
                return
            self._last_hold_key = key
        if log and reason != self._last_reason:
            self.get_logger().error(log)
        self._publish(self._make_msg(frame, None, reason, raw), ms)

    def _make_msg(self, frame: _Frame | None, cmd, reason: str, raw: np.ndarray | None,
                  finished: bool = False) -> VlaAction:
        policy = self._policy
        msg = VlaAction()
        msg.header.stamp = frame.stamp if frame is not None else self.get_clock().now().to_msg()
        msg.header.frame_id = self._base_frame
        msg.episode_id, msg.step = self._episode_of(frame)
        if raw is not None:
            msg.raw_action = [float(v) for v in raw]
        if policy is not None:
            msg.action_space = policy.metadata.action_space.name
            msg.dt = float(policy.metadata.action_space.dt)
        msg.hold, msg.hold_reason, msg.finished = bool(reason), reason, finished
        if cmd is not None and not reason:
            msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(v) for v in cmd.linear)
            msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = (float(v) for v in cmd.angular)
            msg.gripper = float(cmd.gripper)
        else:  # hold: zero twist, gripper unchanged
            msg.gripper = float(self._last_gripper)
        return msg

    def _episode_of(self, frame: _Frame | None) -> tuple[int, int]:
        """Episode and step of the observation answered: the bridge's status with the frame's stamp
        (waited for briefly in lockstep), else the latest status at the frame's receipt, else the
        node's own count (a real arm: one episode per instruction, steps = actions)."""
        if frame is None or self._episode is None:
            return self._own_episode, self._own_step
        with self._cv:
            self._cv.wait_for(lambda: frame.key in self._episode_by_stamp,
                              timeout=_EPISODE_WAIT_S if self._lockstep else 0.0)
            found = self._episode_by_stamp.get(frame.key)
        if found is not None:
            return found
        return (frame.episode_id, frame.step) if frame.from_episode else (self._own_episode, self._own_step)

    def _publish(self, msg: VlaAction, inference_ms: float = 0.0) -> None:
        pub = self._pub_action
        if pub is None or not pub.is_activated:
            return
        pub.publish(msg)
        if self._pub_twist is not None:
            tw = TwistStamped()
            tw.header.stamp = self.get_clock().now().to_msg()  # servo controllers judge age by receipt
            tw.header.frame_id = msg.header.frame_id
            k = self._twist_scale / msg.dt if msg.dt > 0 else 0.0
            for part in ("linear", "angular"):
                src, dst = getattr(msg.twist, part), getattr(tw.twist, part)
                dst.x, dst.y, dst.z = src.x * k, src.y * k, src.z * k
            self._pub_twist.publish(tw)
        with self._lock:
            if msg.hold:
                self._holds += 1
            else:
                self._actions += 1
            self._last_reason = msg.hold_reason
        self._rate.tick()
        if self._action_server is not None:
            self._action_server.on_published(msg, inference_ms)

    # ------------------------------------------------------------------ status
    def status(self) -> PolicyStatus:
        """The current PolicyStatus (also published periodically)."""
        st = PolicyStatus()
        st.header.stamp = self.get_clock().now().to_msg()
        with self._lock:
            st.state, st.hold_reason = policy_status.state_of(self._policy is not None, self._active,
                                                              self._finished, self._last_reason)
            st.state_name = policy_status.STATE_NAMES[st.state]
            st.model_id = self._policy.metadata.model_id if self._policy is not None else ""
            st.instruction = self._instruction or ""
            st.last_inference_ms = float(self._last_ms)
            st.mean_inference_ms = float(self._sum_ms / self._n_inferences) if self._n_inferences else 0.0
            st.actions_published, st.holds_published = self._actions, self._holds
            st.rejected_inputs = self._rejections.total
            st.last_error = self._last_error
        st.control_rate_hz = float(self._rate.rate())
        st.dropped_frames = self._frames.dropped
        return st

    def _publish_status(self) -> None:
        st = self.status()
        if self._pub_status is None:
            return
        self._pub_status.publish(st)
        with self._lock:
            by_kind = dict(self._rejections.by_kind)
        diag = policy_status.diagnostics(st, f"{self.get_name()}: control", by_kind)
        self._pub_diag.publish(diag)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Console script ``vla_policy_node``: spin until SIGINT/SIGTERM, then hold and release the model.

    Exit codes: 0 after a clean stop, 1 when ``auto_start`` could not configure/activate (e.g. the
    model failed to load), 2 on invalid parameters.
    """
    args = sys.argv if argv is None else [sys.argv[0], *argv]
    # Our own signal handling: on Ctrl-C the context must still be up to publish a final hold.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    # also when started with SIGINT ignored (background job of a non-interactive shell): stop on Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)
    node = None
    try:
        try:
            node = VlaPolicyNode()
        except (ValueError, TypeError, RuntimeError, rclpy.exceptions.ParameterException) as exc:
            print(f"vla_policy_node: invalid parameters: {exc}", file=sys.stderr)
            return 2
        if node.start_failed:  # a simple launch wants to see the failure, not an idle node
            return 1
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        try:
            executor.spin()
        finally:
            executor.shutdown(timeout_sec=1.0)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.trigger_shutdown()  # publishes a hold if active, releases the policy
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
