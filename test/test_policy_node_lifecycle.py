"""vla_policy_node's lifecycle (configure/activate/deactivate/cleanup) and its ExecuteInstruction action."""

from __future__ import annotations

import gc
import weakref

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")

from policy_node_harness import DEADLINE, Harness
from rclpy.lifecycle import TransitionCallbackReturn

from helpers import wait_for
from vla_ros.config import topics
from vla_ros_msgs.action import ExecuteInstruction
from vla_ros_msgs.msg import PolicyStatus

pytestmark = pytest.mark.ros
OK = TransitionCallbackReturn.SUCCESS


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.close()


def _state(node) -> str:
    return node._state_machine.current_state[1]


def test_lifecycle_transitions_and_cleanup_releases_the_policy(h):
    node = h.start(sim_time=False, auto_start=False, lockstep=True)
    assert _state(node) == "unconfigured" and node._control.policy is None
    assert node.trigger_configure() == OK and _state(node) == "inactive"
    ref = weakref.ref(node._control.policy)
    assert h.status().state == PolicyStatus.STATE_INACTIVE
    assert node.trigger_activate() == OK
    h.wait_matched()
    h.instruct("turn on the stove")
    h.send_image(stamp=3.0)
    h.wait_action(lambda a: a.header.stamp.sec == 3 and not a.hold, "answer while active")

    assert node.trigger_deactivate() == OK and _state(node) == "inactive"
    last = h.wait_action(lambda a: a.hold_reason == "inactive", "the hold commanded on deactivate")
    assert last.hold and last.twist.linear.x == 0.0
    assert not node._pub_action.is_activated and h.status().state == PolicyStatus.STATE_INACTIVE

    assert node.trigger_activate() == OK  # and back: still configured, same policy
    assert ref() is node._control.policy
    h.instruct("turn off the stove")
    h.send_image(stamp=4.0)
    h.wait_action(lambda a: a.header.stamp.sec == 4 and not a.hold, "answer after re-activation")

    assert node.trigger_deactivate() == OK and node.trigger_cleanup() == OK
    assert _state(node) == "unconfigured"
    gc.collect()
    assert ref() is None, "cleanup left a reference to the policy"
    assert node._control.policy is None and node._worker is None
    assert h.status().state == PolicyStatus.STATE_UNCONFIGURED

    assert node.trigger_configure() == OK and node._control.policy is not None  # configure again works
    assert node.trigger_cleanup() == OK


def test_configure_fails_cleanly_on_a_bad_backend(h):
    node = h.start(sim_time=False, auto_start=False, backend="no_such_backend")
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert _state(node) == "unconfigured" and node._control.policy is None
    assert "no_such_backend" in h.status().last_error


def _goal(h: Harness, instruction: str, max_steps: int = 0, timeout_s: float = 0.0):
    assert h.action_client.wait_for_server(timeout_sec=DEADLINE)
    feedback: list = []
    fut = h.action_client.send_goal_async(
        ExecuteInstruction.Goal(instruction=instruction, max_steps=max_steps, timeout_s=timeout_s),
        feedback_callback=lambda fb: feedback.append(fb.feedback))
    wait_for(fut.done, DEADLINE, what="goal response")
    return fut.result(), feedback


def _result(h: Harness, goal_handle):
    fut = goal_handle.get_result_async()
    wait_for(fut.done, DEADLINE, what="goal result")
    return fut.result().result


def test_action_runs_to_a_result_and_cancel_holds(h):
    node = h.start(sim_time=False, backend_options="{done_after: 4}", image_timeout_s=1000.0)
    h.send_image(stamp=1.0)
    wait_for(lambda: node._control.frames.peek() is not None, DEADLINE, what="frame")

    gh, feedback = _goal(h, "put the cream cheese in the bowl")
    assert gh.accepted
    res = _result(h, gh)
    assert (res.success, res.finished_by_policy, res.reason, res.steps) == (True, True, "finished", 3)
    assert len(feedback) >= 4 and sum(not f.hold for f in feedback) == 3
    assert feedback[-1].hold_reason == "finished"

    gh, _ = _goal(h, "put the cream cheese in the bowl", max_steps=2)  # a goal restarts the episode
    res = _result(h, gh)
    assert (res.success, res.reason, res.steps) == (False, "step_limit", 2)
    assert node._control.instruction is None  # the node holds after the goal
    mark = len(h.snapshot())
    assert h.wait_action(lambda a: a.hold, "hold after the step limit", start=mark).hold_reason == "no_instruction"

    gh, _ = _goal(h, "")  # an invalid instruction is refused at the door
    assert not gh.accepted

    assert h.enable(False).success  # the goal now waits forever: cancel it, then a timeout
    gh, feedback = _goal(h, "open the top drawer")
    assert gh.accepted
    wait_for(lambda: any(f.hold_reason == "disabled" for f in feedback), DEADLINE, what="feedback while disabled")
    gh2, _ = _goal(h, "another goal while one runs")
    assert not gh2.accepted
    cancel = gh.cancel_goal_async()
    wait_for(cancel.done, DEADLINE, what="cancel response")
    res = _result(h, gh)
    assert res.reason == "canceled" and not res.success and node._control.instruction is None
    gh, _ = _goal(h, "open the top drawer", timeout_s=0.2)
    assert _result(h, gh).reason == "timeout"
    assert h.enable(True).success
    mark = len(h.snapshot())
    held = h.wait_action(lambda a: a.hold_reason != "disabled", "hold after cancel and timeout", start=mark)
    assert held.hold and held.hold_reason == "no_instruction"
    assert topics()["execute_action"] == "/vla/execute_instruction"


@pytest.mark.slow
def test_native_checkpoint_is_configured_served_and_released(h, tmp_path):
    pytest.importorskip("timm", reason="the native backend needs torch + timm")
    from vla_ros.backends.native import random_policy
    from vla_ros.models.prismatic.checkpoint import save_checkpoint

    built = random_policy("test-fused", device="cpu", fast=False)  # a minuscule Prismatic VLA, random weights
    ckpt = save_checkpoint(built.model, built.processor.tokenizer, tmp_path / "tiny")
    del built
    node = h.start(sim_time=False, auto_start=False, lockstep=True, backend="native", checkpoint=str(ckpt),
                   device="cpu", center_crop="on", backend_options="{fast: false}")
    assert node.trigger_configure() == OK, h.status().last_error
    policy = node._control.policy
    assert policy.metadata.extra["backend"] == "native" and policy.processor.center_crop  # option reached it
    ref, model_ref = weakref.ref(policy), weakref.ref(policy.model)
    del policy
    assert node.trigger_activate() == OK
    h.wait_matched()
    h.instruct("pick up the black bowl")
    h.send_image(value=90, stamp=21.0, size=64)
    # the image may overtake the instruction (two topics): then a hold comes first, the answer after it
    a = h.wait_action(lambda a: a.header.stamp.sec == 21 and not a.hold, "an answer from the native model")
    assert len(a.raw_action) == 7 and a.action_space == "libero_osc_pose_20hz"
    assert node.trigger_deactivate() == OK and node.trigger_cleanup() == OK
    gc.collect()
    assert ref() is None and model_ref() is None, "cleanup left the native model alive"
