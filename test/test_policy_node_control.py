"""vla_policy_node's control through a running node (issue #20): one command per tick whatever the inputs do, the
inference watchdog, staleness by stamp, lockstep answers that do not outlive dry_run, ExecuteInstruction counting
executed steps, and a status from an unconfigured node. The same rules ROS-free: test/test_policy_control.py."""

from __future__ import annotations

import threading
import time

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")

from policy_node_harness import DEADLINE, BlockingPolicy, Harness
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from std_srvs.srv import SetBool

from helpers import wait_for
from vla_ros_msgs.action import ExecuteInstruction
from vla_ros_msgs.msg import PolicyStatus

pytestmark = pytest.mark.ros
INSTR = "put the bowl on the plate"


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.close()


def _published(node) -> int:
    """Commands published so far (counted when published: nothing in flight is missed)."""
    st = node.status()
    return st.actions_published + st.holds_published


def _idle(node) -> None:
    wait_for(lambda: not node._busy, DEADLINE, what="worker idle")


def test_free_running_publishes_at_most_one_command_per_tick_under_input_spam(h):
    node = h.start(image_timeout_s=100.0)
    h.clock(1.0)
    h.instruct(INSTR)
    wait_for(lambda: node._control.instruction == INSTR, DEADLINE, what="instruction")
    h.send_image(stamp=1.0)
    h.clock(1.05)
    h.wait_action(lambda a: not a.hold, "a first action")
    _idle(node)
    stop = threading.Event()

    def spam() -> None:  # the current instruction re-sent, enable(true), a parameter set to its value
        while not stop.is_set():
            h.instruct(INSTR)
            h.enable_client.call_async(SetBool.Request(data=True))
            node.set_parameters([Parameter("dry_run", value=False)])
            time.sleep(0.003)
    spammer = threading.Thread(target=spam, daemon=True)
    n0 = _published(node)
    spammer.start()
    try:
        for i in range(1, 101):  # 1 s of sim time at 20 Hz in 10 ms steps: 20 ticks, 21 if the one at 1.05 is late
            h.clock(1.05 + i * 0.01)
    finally:
        stop.set()
        spammer.join(DEADLINE)
    _idle(node)
    n = _published(node) - n0
    assert 15 <= n <= 21 + 1, n  # at most the ticks + 1; the spam never adds a command
    assert node.status().hold_reason == ""  # still acting


def test_a_hung_inference_holds_on_the_next_tick_and_the_switch_applies_at_once(h):
    node = h.start(auto_start=False, image_timeout_s=100.0, inference_timeout_s=0.2)
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    policy = node._control.policy = BlockingPolicy(node._control.policy)
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    h.wait_matched()
    try:
        h.clock(1.0)
        h.instruct(INSTR)
        wait_for(lambda: node._control.instruction == INSTR, DEADLINE, what="instruction")
        h.send_image(stamp=1.0)
        h.clock(1.05)
        assert policy.entered.wait(DEADLINE)  # the model hangs from now on
        wait_for(node._control.inference_overdue, DEADLINE, what="the inference overdue")
        assert h.status().hold_reason == "inference_timeout" and h.status().state == PolicyStatus.STATE_ERROR
        mark = len(h.snapshot())
        h.clock(1.10)
        held = h.wait_action(lambda a: True, "the tick's hold", start=mark)
        assert held.hold and held.hold_reason == "inference_timeout" and held.twist.linear.x == 0.0
        wait_for(lambda: any(s.hold_reason == "inference_timeout" for s in list(h.statuses)), DEADLINE,
                 what="published status inference_timeout")
        assert h.enable(False).success
        mark = len(h.snapshot())
        h.clock(1.15)
        off = h.wait_action(lambda a: True, "the hold after enable(false)", start=mark)
        assert off.hold and off.hold_reason == "disabled" and policy.running == 1  # the model still hangs
    finally:
        policy.release.set()
    assert policy.max_running == 1


def test_staleness_counts_from_the_stamp_on_the_node_clock_and_rejections_by_reason(h):
    node = h.start(image_timeout_s=0.5)
    h.clock(10.0)
    h.instruct(INSTR)
    wait_for(lambda: node._control.instruction == INSTR, DEADLINE, what="instruction")
    h.send_image(stamp=5.0)  # received now, stamped 5 s ago
    mark = len(h.snapshot())
    h.clock(10.05)
    held = h.wait_action(lambda a: True, "a hold for the old frame", start=mark)
    assert held.hold and held.hold_reason == "stale_image"
    h.send_image(stamp=10.05)
    mark = len(h.snapshot())
    h.clock(10.10)
    assert not h.wait_action(lambda a: a.header.stamp.sec == 10, "an action on the fresh frame", start=mark).hold
    h.instruct("")
    wait_for(lambda: any(kv.key == "rejected_instruction.empty" and kv.value == "1"
                         for d in list(h.diagnostics) for s in d.status for kv in s.values),
             DEADLINE, what="rejections by reason in /diagnostics")


def test_lockstep_answer_made_under_dry_run_is_not_re_sent_after_it(h):
    node = h.start(sim_time=False, lockstep=True, backend_options="{action: [0.5, 0, 0, 0, 0, 0, 1]}")
    h.instruct(INSTR)
    wait_for(lambda: node._control.instruction == INSTR, DEADLINE, what="instruction")
    assert node.set_parameters([Parameter("dry_run", value=True)])[0].successful
    h.send_image(stamp=5.0)
    h.wait_action(lambda a: a.hold_reason == "dry_run", "the dry_run hold")
    assert node.set_parameters([Parameter("dry_run", value=False)])[0].successful
    assert h.enable(True).success
    h.instruct("open the drawer")
    mark = len(h.snapshot())
    h.image(stamp=5.0)  # the simulator re-publishes the observation it waits on
    act = h.wait_action(lambda a: not a.hold, "an action for the waiting observation", start=mark)
    assert act.header.stamp.sec == 5 and act.raw_action[0] == pytest.approx(0.5)


def test_execute_instruction_counts_executed_steps_not_re_sent_answers(h):
    node = h.start(sim_time=False, lockstep=True)
    assert h.action_client.wait_for_server(timeout_sec=DEADLINE)
    feedback: list = []
    fut = h.action_client.send_goal_async(ExecuteInstruction.Goal(instruction=INSTR, max_steps=4),
                                          feedback_callback=lambda fb: feedback.append(fb.feedback))
    wait_for(fut.done, DEADLINE, what="goal response")
    gh = fut.result()
    assert gh.accepted
    wait_for(lambda: node._control.instruction == INSTR, DEADLINE, what="the goal's instruction")
    for step in range(1, 5):
        h.send_image(value=10 * step, stamp=float(step))
        h.wait_action(lambda a, s=step: a.header.stamp.sec == s and not a.hold, f"the action of step {step}")
        if step < 4:  # the bridge re-publishes: the same answer again, not another step
            h.image(value=10 * step, stamp=float(step))
            wait_for(lambda s=step: sum(a.header.stamp.sec == s and not a.hold for a in h.snapshot()) >= 2,
                     DEADLINE, what=f"the re-sent answer of step {step}")
    res_fut = gh.get_result_async()
    wait_for(res_fut.done, DEADLINE, what="goal result")
    res = res_fut.result().result
    assert (res.reason, res.steps) == ("step_limit", 4)
    assert max(f.step for f in feedback) == 4


def test_an_unconfigured_node_publishes_its_status(h):
    h.start(sim_time=False, auto_start=False)
    wait_for(lambda: any(s.state == PolicyStatus.STATE_UNCONFIGURED and s.hold_reason == "unconfigured"
                         for s in list(h.statuses)), DEADLINE, what="an unconfigured status")
    wait_for(lambda: any(d.status and "unconfigured" in d.status[0].message for d in list(h.diagnostics)),
             DEADLINE, what="an unconfigured diagnostic")
