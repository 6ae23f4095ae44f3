"""vla_policy_node's decisions and the state they need, ROS-free: one decision cycle per wake-up of its worker.

The node (:mod:`vla_ros.nodes.policy_node`) owns the threads, the clock and the topics: its callbacks store their
inputs here (frames, further inputs, instruction, episode statuses, enable switch) and its one worker thread calls
:meth:`PolicyControl.cycle`, which hands each answer to the node's ``publish``. A cycle:

1. lockstep: answers each observation once; a re-published observation gets the same answer again, without a second
   inference (a chunked policy would otherwise skip an action);
2. holds, without inference, for the reason of :func:`vla_ros.controller.hold_reason` (inactive, disabled, finished,
   no_instruction, stale_image) — in lockstep at most once per observation and reason;
3. pairs the model's further inputs with the image by stamp (:class:`vla_ros.inputs.ExtraInputs`), waiting for them
   until the deadline of :class:`vla_ros.control_state.InputWait`, then holds with ``missing_inputs``;
4. runs :func:`vla_ros.decision.decide`, the step the in-process rollout runs, resetting the policy first when a new
   episode began (a changed instruction, or a new simulator episode);
5. re-checks the state after inference (a new instruction drops the result; a switch-off turns it into a hold) and
   answers with the action, ``finished``, ``dry_run`` or the hold.

Free-running, nothing is published except through :meth:`PolicyControl.tick` (the control timer): each tick opens one
publish slot, which the decision it starts (or one still running) uses; a decision that finds the slot used waits as
the pending answer of the next tick. So at most one command goes out per tick, whatever wakes the worker. A tick never
waits for the worker: while a decision runs, the tick holds for the state's reason (``disabled``, ...) or, when the
inference has run longer than ``inference_timeout_s``, with ``inference_timeout``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from vla_ros.action_conversion import ArmCommand
from vla_ros.control_state import EpisodeMatch, InputWait, LockstepAnswers, ObservationKey
from vla_ros.controller import ControllerConfig, LatestSlot, RejectionLog, frame_age_s, hold_reason, stamp_on_clock
from vla_ros.conventions import ActionSpace
from vla_ros.decision import decide
from vla_ros.inputs import ExtraInputs
from vla_ros.policy import Policy

EPISODE_WAIT_S = 0.2  # how long a lockstep answer waits for the bridge's status of its observation


@dataclass
class Frame:
    """A main-camera image as the decisions see it."""

    rgb: np.ndarray
    key: ObservationKey  # its header stamp (sec, nanosec)
    recv_ns: int  # node clock at receipt: the free-running staleness
    stamp_ns: int | None  # its stamp as node-clock ns where it is on the node clock (then its age counts too)
    recv_mono: float  # time.monotonic() at receipt: how long a decision waits for its further inputs
    episode: tuple[int, int] | None = None  # the bridge's latest (episode_id, step) at receipt


@dataclass
class Answer:
    """One answer to publish (the content of a ``VlaAction``)."""

    key: ObservationKey | None  # the stamp of the observation answered; None before any frame
    episode: tuple[int, int]  # (episode_id, step)
    reason: str  # "" = execute ``command``; else the hold reason (zero twist, gripper unchanged)
    command: ArmCommand | None  # only when acting
    raw: np.ndarray | None  # the policy's raw output, when there was one
    gripper: float  # the commanded closure; on a hold the last commanded one
    space: ActionSpace | None  # the policy's action space (None unconfigured)
    finished: bool = False  # the policy declared the episode done (this answer holds with "finished")
    new_step: bool = False  # an action that executes a step: not a hold, not a re-sent answer (lockstep: the first
    #                         action for its observation)


@dataclass
class Statistics:
    """What was published and how long inference took (PolicyStatus)."""

    actions: int = 0
    holds: int = 0
    last_reason: str = "inactive"
    last_error: str = ""
    last_ms: float = 0.0
    sum_ms: float = 0.0
    inferences: int = 0

    def inferred(self, ms: float) -> None:
        self.last_ms, self.sum_ms, self.inferences = ms, self.sum_ms + ms, self.inferences + 1

    @property
    def mean_ms(self) -> float:
        return self.sum_ms / self.inferences if self.inferences else 0.0


class PolicyControl:
    """The decision state of vla_policy_node. Thread-safe: callbacks call the setters from executor threads while
    one worker thread runs :meth:`cycle`; ``lock`` guards the state (hold it to read several fields at once)."""

    def __init__(self, cfg: ControllerConfig, *, lockstep: bool, enabled: bool, rejections: RejectionLog,
                 now_ns: Callable[[], int], publish: Callable[[Answer, float], bool], log_error: Callable[[str], None],
                 dry_run: bool = False, sync_tolerance_s: float = 0.025, inference_timeout_s: float = 10.0,
                 stamp_clock_tolerance_s: float = 0.1, log_warning: Callable[[str], None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.lock = threading.Lock()
        self.cfg, self.lockstep, self.enabled, self.dry_run = cfg, lockstep, enabled, dry_run
        self.sync_tolerance_s = sync_tolerance_s
        self.inference_timeout_s, self.stamp_clock_tolerance_s = inference_timeout_s, stamp_clock_tolerance_s
        self.rejections = rejections
        self._now_ns, self._publish, self._log_error = now_ns, publish, log_error
        self._log_warning, self._mono = log_warning or log_error, monotonic
        self._stamp_warned = False
        self.frames: LatestSlot[Frame] = LatestSlot()
        self.policy: Policy | None = None
        self.inputs: ExtraInputs | None = None  # the loaded policy's further inputs (None: unconfigured)
        self.reset()

    def reset(self) -> None:
        """Forget the per-configuration state (cleanup); the enable switch and the parameters stay."""
        with self.lock:
            self.active = self.finished = False
            self.instruction: str | None = None
            self.generation = 0  # +1 per adopted or cleared instruction: a result for an older one is dropped
            self._resets_requested = self._resets_done = 0  # counters lose no request
            self.episodes = EpisodeMatch()
            self.answers: LockstepAnswers[Answer] = LockstepAnswers()
            self.input_wait = InputWait()
            self.last_gripper = 0.0  # before any action: open, as LIBERO and most arms start
            self.stats = Statistics()
            self._slot = False  # free-running: this tick's one publish is still free
            self._pending: tuple[Answer, Frame | None, int, float] | None = None  # (answer, frame, generation, ms)
            self._inferring_since: float | None = None  # monotonic start of the decision step in flight
            self._last_step_key: ObservationKey | None = None  # lockstep: the observation of the last step
            self.frames.clear()
            if self.inputs is not None:
                self.inputs.clear()

    # ------------------------------------------------------------------ inputs and switches
    def update(self, **changes) -> bool:
        """Set fields under the lock: the live parameters ``cfg``, ``dry_run``, ``sync_tolerance_s``,
        ``inference_timeout_s``, ``stamp_clock_tolerance_s`` (they apply at the next decision) and, at
        configure/cleanup, ``inputs``. True when a value changed; then a lockstep answer made under the old values
        is forgotten (the observation is answered anew)."""
        with self.lock:
            changed = False
            for name, value in changes.items():
                changed = changed or getattr(self, name) != value
                setattr(self, name, value)
            if changed:
                self.answers.clear()
            return changed

    def set_active(self, active: bool) -> None:
        with self.lock:
            self.active = active
            if active:
                self.answers.clear()  # activation: every observation is answered anew

    def set_enabled(self, enabled: bool) -> bool:
        """Flip the enable switch; True when it changed (a lockstep answer made before is forgotten)."""
        with self.lock:
            changed, self.enabled = enabled != self.enabled, enabled
            if changed:
                self.answers.clear()
            return changed

    def set_instruction(self, text: str, force_new: bool = False) -> tuple[int, bool]:
        """Adopt an instruction: (its generation, whether it starts a new episode). A changed one (or any after
        ``finished``, or ``force_new``) does and resets the policy before its next use; a repeat of the current one
        (the bridge re-sends it until the episode's first action) does not: it would drop an action chunk."""
        with self.lock:
            new = force_new or text != self.instruction or self.finished
            if new:
                self.instruction, self.finished = text, False
                self.generation += 1
                self._resets_requested += 1
                self.episodes.new_own_episode()
                self.answers.clear()  # an answer (a dry_run hold ...) for the old instruction must not be re-sent
            return self.generation, new

    def clear_instruction(self) -> None:
        with self.lock:
            self.instruction = None
            self.generation += 1
            self.answers.clear()

    def episode_status(self, key: ObservationKey, episode_id: int, step: int) -> None:
        """The bridge's status of the observation ``key``; a new episode clears ``finished`` and resets the policy."""
        with self.lock:
            if self.episodes.record(key, episode_id, step):
                self.finished = False
                self._resets_requested += 1

    def reject(self, kind: str, detail: str) -> None:
        with self.lock:
            self.rejections.reject(kind, detail)

    def put_frame(self, rgb: np.ndarray, key: ObservationKey, recv_ns: int) -> None:
        stamp = key[0] * 1_000_000_000 + key[1]
        on_clock = stamp_on_clock(stamp, recv_ns, self.stamp_clock_tolerance_s)
        if not on_clock and not self.lockstep and not self._stamp_warned:
            self._stamp_warned = True
            self._log_warning(f"image stamp {stamp * 1e-9:.3f} s is not on the node clock (now {recv_ns * 1e-9:.3f} s,"
                              f" tolerance {self.stamp_clock_tolerance_s:g} s): staleness counts from receipt only")
        self.frames.put(Frame(rgb=rgb, key=key, recv_ns=recv_ns, stamp_ns=stamp if on_clock else None,
                              recv_mono=self._mono(), episode=self.episodes.latest))

    def put_input(self, key: str, stamp_ns: int, value) -> bool:
        """Keep a further input by its stamp; True when a decision may be waiting for it (wake the worker)."""
        inputs = self.inputs
        if inputs is None or key not in inputs.history:
            return False  # unconfigured, or the loaded policy does not use this input
        inputs.put(key, stamp_ns, value)
        # free-running: only a decision still waiting for it, not one per message
        return self.lockstep or self.input_wait.waiting(self._mono())

    # ------------------------------------------------------------------ the decision cycle
    def cycle(self) -> bool:
        """One decision on the newest frame; True when another must follow at once (the instruction changed while
        the model ran: the new one gets its own decision)."""
        new = self.frames.take()
        frame = new or self.frames.peek()
        with self.lock:
            instruction, generation, cfg = self.instruction, self.generation, self.cfg
            resets = self._resets_requested  # honoured only when the policy really runs
            policy, dry_run = self.policy, self.dry_run
            reason = self._state_reason(frame, instruction)
        if self.lockstep:
            if frame is None:
                return False  # nothing to answer yet
            with self.lock:
                answer = self.answers.answer(frame.key)
            if answer is not None:
                if new is not None:  # the bridge re-published it: same answer, no second inference
                    self._send(replace(answer, new_step=False))
                return False
        if reason:
            self.input_wait.done()
        inputs = {} if reason else self._further_inputs(frame)
        if inputs is None:
            return False  # waiting for them, or held
        with self.lock:
            self._inferring_since = self._mono()
        try:
            decision = decide(policy, frame.rgb if frame else None, instruction, inputs, cfg, reason,
                              reset=resets != self._resets_done)
        finally:
            with self.lock:
                self._inferring_since = None
        if decision.was_reset:
            self._resets_done = resets
        if decision.inferred:
            self.stats.inferred(decision.inference_ms)
        if decision.hold_reason:  # the state's reason before inference, or the model failed
            if decision.error:
                self.stats.last_error = decision.error
            self._hold(frame, decision.hold_reason, decision.raw, decision.error, decision.inference_ms)
            return False
        with self.lock:  # the world may have changed while the model ran
            if generation != self.generation:
                return True
            reason = decision.outcome(self._state_reason(frame, instruction), dry_run)
            if reason == "finished":
                self.finished = True
        answer = self._answer(frame, reason, decision.command, decision.raw, finished=reason == "finished")
        if not reason:
            answer.new_step = not self.lockstep or frame.key != self._last_step_key
            if self.lockstep:
                self._last_step_key = frame.key
        if self.lockstep:
            with self.lock:
                self.answers.remember(frame.key, answer)
        self._send(answer, decision.inference_ms, frame=frame, generation=generation)
        return False

    def tick(self) -> bool:
        """The free-running control timer: opens this period's one publish slot; never waits for a decision.

        Publishes the pending answer (re-checked against the state now) if a decision found the previous slot used;
        else, while a decision is running, a hold for the state's reason or ``inference_timeout`` (nothing while it
        is within time and nothing holds: its result takes the slot). Returns True when the worker should start a
        decision now (it is idle and nothing was published)."""
        with self.lock:
            self._slot = True
            pending, self._pending = self._pending, None
            running = self._inferring_since is not None
            overdue = running and self._mono() - self._inferring_since > self.inference_timeout_s
            frame = self.frames.peek()
            reason = self._state_reason(frame, self.instruction) if running else ""
            if pending is not None and pending[2] != self.generation:
                pending = None  # made for an older instruction
            elif pending is not None and not pending[0].reason:
                pending_reason = self._state_reason(pending[1], self.instruction)
                if pending_reason:  # e.g. switched off since: the computed action becomes a hold
                    pending = (replace(pending[0], reason=pending_reason, command=None, gripper=self.last_gripper,
                                       new_step=False), *pending[1:])
        if pending is not None:
            self._send(pending[0], pending[3])
            return False
        if not running:
            return True
        reason = reason or ("inference_timeout" if overdue else "")
        if reason:
            self._send(self._answer(frame, reason))
        return False

    def inference_overdue(self) -> bool:
        """A decision step has run longer than ``inference_timeout_s`` (the status says ``inference_timeout``)."""
        with self.lock:
            since = self._inferring_since
            return since is not None and self._mono() - since > self.inference_timeout_s

    def hold_now(self, reason: str) -> None:
        """Publish one hold for the newest frame at once (deactivation: ``inactive``), slot or not."""
        self._send(self._answer(self.frames.peek(), reason), force=True)

    def _state_reason(self, frame: Frame | None, instruction: str | None) -> str:
        if frame is None:
            age = None
        elif self.lockstep:  # the simulator waits for the answer: its observation cannot go stale
            age = 0.0
        else:  # node clock, from receipt and from the stamp where it is on the node clock; before and after inference
            age = frame_age_s(self._now_ns(), frame.recv_ns, frame.stamp_ns)
        return hold_reason(active=self.active, enabled=self.enabled, finished=self.finished,
                           instruction=instruction, frame_age_s=age, image_timeout_s=self.cfg.image_timeout_s)

    def _further_inputs(self, frame: Frame) -> dict | None:
        """``policy.act``'s further inputs of the frame's instant ({} for a plain image model), or None when they
        are missing: then the decision waits (no answer) until they arrive or its deadline passes (lockstep:
        ``image_timeout_s`` after the observation first came; free-running: ``input_sync_tolerance_s``, then each
        tick holds until they come or the image goes stale), after which it holds with ``missing_inputs``."""
        spec = self.inputs
        if not spec:
            return {}
        stamp = frame.key[0] * 1_000_000_000 + frame.key[1]
        inputs, detail = spec.pair(stamp, 0 if self.lockstep else round(self.sync_tolerance_s * 1e9))
        with self.lock:
            if inputs is not None:
                self.input_wait.done()
                return inputs
            wait_s = self.cfg.image_timeout_s if self.lockstep else self.sync_tolerance_s
            verdict = self.input_wait.missing(frame.key, frame.recv_mono, wait_s, self._mono())
            if verdict == InputWait.WAIT:
                return None  # the worker retries when an input arrives or at the deadline
            if verdict == InputWait.REJECT:  # one rejection per observation
                self.rejections.reject("inputs", detail)
        self._hold(frame, "missing_inputs")
        return None

    def _hold(self, frame: Frame | None, reason: str, raw: np.ndarray | None = None, log: str = "",
              inference_ms: float = 0.0) -> None:
        if self.lockstep and not self.answers.first_hold(frame.key if frame else None, reason):
            return  # one hold per observation and reason, not one per wake-up
        if log and reason != self.stats.last_reason:
            self._log_error(log)
        self._send(self._answer(frame, reason, raw=raw), inference_ms)

    def _answer(self, frame: Frame | None, reason: str, command: ArmCommand | None = None,
                raw: np.ndarray | None = None, finished: bool = False) -> Answer:
        policy = self.policy
        episode = self.episodes.episode_of(frame.key if frame else None, frame.episode if frame else None,
                                           EPISODE_WAIT_S if self.lockstep else 0.0)
        acting = command is not None and not reason
        return Answer(key=frame.key if frame else None, episode=episode, reason=reason,
                      command=command if acting else None, raw=raw,
                      gripper=command.gripper if acting else self.last_gripper,
                      space=policy.metadata.action_space if policy is not None else None, finished=finished)

    def _send(self, answer: Answer, inference_ms: float = 0.0, frame: Frame | None = None, generation: int = -1,
              force: bool = False) -> None:
        """Publish ``answer``. Free-running it takes the tick's slot; with the slot used it becomes the pending answer
        of the next tick (``frame`` and ``generation``: what it was made for, to re-check it then)."""
        with self.lock:
            if not (self.lockstep or force):
                if not self._slot:
                    self._pending = (answer, frame, self.generation if generation < 0 else generation, inference_ms)
                    return
                self._slot = False
        if not self._publish(answer, inference_ms):
            return  # not published (inactive publisher): not counted
        with self.lock:
            if answer.reason:
                self.stats.holds += 1
            else:
                self.stats.actions += 1
                if answer.new_step:
                    self.last_gripper = answer.command.gripper
                    self.episodes.count_own_step()
            self.stats.last_reason = answer.reason
