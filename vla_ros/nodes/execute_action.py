"""The ExecuteInstruction action server of vla_policy_node: one goal at a time, feedback per action.

The control worker publishes actions; this server only follows them (``on_published``), counts the executed steps
(actions, not holds, not the answers lockstep re-sends for a re-published observation) and ends a
goal on the policy's ``finished`` flag, the goal's step limit or timeout, a cancel (which clears
the instruction, so the node holds), or when the instruction is replaced from the topic.
Its execute callback blocks while the goal runs, so it lives in its own reentrant callback group
and needs a MultiThreadedExecutor; it never blocks the control worker or the subscriptions.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup

from vla_ros_msgs.action import ExecuteInstruction
from vla_ros_msgs.msg import VlaAction


@dataclass
class GoalHooks:
    """What the server needs from the node."""

    can_accept: Callable[[str], str]  # instruction -> "" to accept, else why not
    start: Callable[[str], int]  # set the instruction, reset the policy; returns its generation
    stop: Callable[[], None]  # clear the instruction: the node holds
    generation: Callable[[], int]  # current instruction generation (changes when replaced)
    now_s: Callable[[], float]  # node clock, seconds (follows /clock under use_sim_time)
    is_active: Callable[[], bool]


class InstructionActionServer:
    def __init__(self, node, name: str, hooks: GoalHooks) -> None:
        self._node, self._hooks = node, hooks
        self._cv = threading.Condition()
        self._events: collections.deque[tuple[VlaAction, float, bool]] = collections.deque()
        self._busy = False
        self._server = ActionServer(
            node, ExecuteInstruction, name, self._execute, callback_group=ReentrantCallbackGroup(),
            goal_callback=self._on_goal, cancel_callback=lambda _req: CancelResponse.ACCEPT)

    # ---- called by the node
    def on_published(self, msg: VlaAction, inference_ms: float, new_step: bool) -> None:
        """A published answer; ``new_step``: an action that executes a step (not a hold, not a re-sent answer)."""
        with self._cv:
            if self._busy:
                self._events.append((msg, inference_ms, new_step))
                self._cv.notify_all()

    # ---- action server callbacks
    def _on_goal(self, goal: ExecuteInstruction.Goal) -> GoalResponse:
        with self._cv:
            busy = self._busy
        why = "another goal is running" if busy else self._hooks.can_accept(goal.instruction)
        if why:
            self._node.get_logger().warning(f"ExecuteInstruction goal rejected: {why}")
            return GoalResponse.REJECT
        with self._cv:
            self._busy = True  # reserve now: a second goal arriving before execute starts is refused
            self._events.clear()
        return GoalResponse.ACCEPT

    def _execute(self, gh) -> ExecuteInstruction.Result:
        goal = gh.request
        result = ExecuteInstruction.Result(steps=0)
        try:
            gen = self._hooks.start(goal.instruction)
            deadline = self._hooks.now_s() + goal.timeout_s if goal.timeout_s > 0 else None
            while True:
                with self._cv:
                    self._cv.wait_for(lambda: self._events or gh.is_cancel_requested, timeout=0.05)
                    events = list(self._events)
                    self._events.clear()
                for msg, ms, new_step in events:
                    if new_step:  # executed steps: re-sent answers and holds do not move the robot
                        result.steps += 1
                    gh.publish_feedback(ExecuteInstruction.Feedback(
                        step=result.steps, inference_ms=float(ms), hold=msg.hold, hold_reason=msg.hold_reason))
                    if msg.finished:
                        result.success = result.finished_by_policy = True
                        result.reason = "finished"
                        gh.succeed()
                        return result
                    if goal.max_steps and result.steps >= goal.max_steps:
                        self._hooks.stop()
                        result.reason = "step_limit"
                        gh.abort()
                        return result
                if gh.is_cancel_requested:
                    self._hooks.stop()
                    result.reason = "canceled"
                    gh.canceled()
                    return result
                if deadline is not None and self._hooks.now_s() >= deadline:
                    self._hooks.stop()
                    result.reason = "timeout"
                    gh.abort()
                    return result
                if not self._hooks.is_active() or self._hooks.generation() != gen:
                    result.reason = "aborted"  # node deactivated, or the topic replaced the instruction
                    gh.abort()
                    return result
        except Exception as exc:  # an execute callback must return a result, whatever happened
            self._node.get_logger().error(f"ExecuteInstruction failed: {exc!r}")
            result.reason = "error"
            if gh.is_active:
                gh.abort()
            return result
        finally:
            with self._cv:
                self._busy = False
                self._cv.notify_all()
