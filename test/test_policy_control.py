"""vla_policy_node's decision cycle (vla_ros.policy_control) without rclpy: lockstep answering, holds, waiting for the
further inputs, the state re-checked after inference. The node tests (test/test_policy_node*.py) run the same
through ROS topics."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from vla_ros.backends.debug import DebugPolicy
from vla_ros.controller import ControllerConfig, RejectionLog
from vla_ros.inputs import ExtraInputs
from vla_ros.policy_control import Answer, PolicyControl

INSTR = "open the top drawer"


class Rig:
    """A PolicyControl with a recording publisher and a clock the test sets (node clock, ns)."""

    def __init__(self, policy=None, lockstep: bool = True, **cfg) -> None:
        self.answers: list[Answer] = []
        self.errors: list[str] = []
        self.now_ns = 0
        self.rejections = RejectionLog(lambda line: None)
        self.control = PolicyControl(ControllerConfig(**cfg), lockstep=lockstep, enabled=True,
                                     rejections=self.rejections, now_ns=lambda: self.now_ns,
                                     publish=lambda a, ms: self.answers.append(a) or True, log_error=self.errors.append)
        self.policy = self.control.policy = policy or DebugPolicy(mode="image_mean")
        self.control.update(inputs=ExtraInputs(self.policy.metadata.extra_images, "", {"wrist_image": "/w"}))
        self.control.set_active(True)

    def frame(self, value: int, sec: int) -> None:
        self.control.put_frame(np.full((8, 8, 3), value, np.uint8), (sec, 0), recv_ns=self.now_ns)

    def cycle(self) -> list[Answer]:
        """One decision; free-running, first the control tick that opens its publish slot."""
        mark = len(self.answers)
        if not self.control.lockstep:
            self.control.tick()
        self.control.cycle()
        return self.answers[mark:]


def test_lockstep_answers_each_observation_once_and_re_sends_it_without_inference():
    rig = Rig()
    rig.frame(10, sec=5)
    (hold,) = rig.cycle()
    assert hold.reason == "no_instruction" and hold.key == (5, 0) and hold.command is None
    assert rig.cycle() == []  # one hold per observation and reason, not one per wake-up
    rig.control.set_instruction(INSTR)
    (act,) = rig.cycle()  # the same observation gets its action once the reason clears
    assert act.reason == "" and act.key == (5, 0) and act.raw[0] == pytest.approx(10 / 255 * 2 - 1)
    assert rig.cycle() == [] and rig.policy.calls == 1  # nothing new: nothing to answer
    rig.frame(10, sec=5)  # the bridge re-publishes the observation
    (resent,) = rig.cycle()  # the same answer, no second inference; not another step (ExecuteInstruction counts)
    assert replace(resent, new_step=True) == act and act.new_step and rig.policy.calls == 1
    _, new_episode = rig.control.set_instruction(INSTR)  # the bridge re-sends the instruction
    assert not new_episode
    rig.frame(90, sec=6)
    (nxt,) = rig.cycle()
    assert nxt.key == (6, 0) and rig.policy.calls == 2  # a repeated instruction did not reset the policy
    assert rig.control.stats.actions == 3 and rig.control.stats.holds == 1


def test_missing_inputs_wait_then_hold_once_and_count_one_rejection():
    wrist_policy = DebugPolicy()
    wrist_policy.metadata.extra_images = ("wrist",)
    rig = Rig(wrist_policy, image_timeout_s=0.05)
    rig.control.set_instruction(INSTR)
    rig.frame(10, sec=1)
    assert rig.cycle() == [] and rig.control.input_wait.deadline is not None  # waits: no answer yet
    deadline = rig.control.input_wait.deadline
    while time.monotonic() < deadline:
        time.sleep(0.01)
    (hold,) = rig.cycle()
    assert hold.reason == "missing_inputs" and rig.rejections.by_kind == {"inputs": 1}
    assert rig.cycle() == [] and rig.rejections.by_kind == {"inputs": 1}  # once per observation
    assert rig.control.put_input("wrist_image", 1_000_000_000, np.zeros((8, 8, 3), np.uint8))  # wake the worker
    (act,) = rig.cycle()  # its inputs still came: the observation gets its action
    assert act.reason == "" and act.key == (1, 0) and wrist_policy.calls == 1


def test_free_running_rechecks_the_state_after_inference():
    class SwitchedOffDuringInference(DebugPolicy):
        def act_batch(self, images, instructions, **kw):
            rig.control.set_enabled(False)
            return super().act_batch(images, instructions, **kw)

    rig = Rig(SwitchedOffDuringInference(action=[0.5, 0, 0, 0, 0, 0, 1]), lockstep=False, image_timeout_s=1.0)
    rig.control.set_instruction(INSTR)
    rig.frame(0, sec=1)
    (held,) = rig.cycle()
    assert held.reason == "disabled" and held.command is None and held.raw[0] == 0.5  # computed, not commanded
    assert held.gripper == 0.0  # a hold keeps the last commanded closure (open before any action)
    rig.control.set_enabled(True)
    rig.now_ns = 2_000_000_000  # 2 s after the frame's receipt on the node clock
    (stale,) = rig.cycle()
    assert stale.reason == "stale_image"


def test_a_new_instruction_during_inference_drops_the_result():
    class Replaced(DebugPolicy):
        def act_batch(self, images, instructions, **kw):
            rig.control.set_instruction("close the drawer")
            return super().act_batch(images, instructions, **kw)

    rig = Rig(Replaced())
    rig.control.set_instruction(INSTR)
    rig.frame(0, sec=1)
    assert rig.control.cycle() is True and rig.answers == []  # the new instruction gets its own cycle


def test_done_finishes_until_a_new_instruction_or_simulator_episode():
    rig = Rig(DebugPolicy(done_after=2), lockstep=False)
    rig.control.set_instruction(INSTR)
    rig.frame(0, sec=1)
    (act,) = rig.cycle()
    (fin,) = rig.cycle()
    assert act.reason == "" and fin.reason == "finished" and fin.finished and fin.raw is not None
    (after,) = rig.cycle()
    assert after.reason == "finished" and not after.finished and rig.policy.calls == 2  # no inference
    rig.control.episode_status((1, 0), episode_id=4, step=0)
    rig.control.episode_status((2, 0), episode_id=5, step=0)  # the simulator started another episode
    (again,) = rig.cycle()
    assert again.reason == "" and rig.policy.calls == 1  # the policy was reset first (DebugPolicy counts anew)


# ---------------------------------------------------------------- issue #20: one command per tick, watchdog, stamps


def test_free_running_publishes_one_command_per_tick_however_often_the_worker_wakes():
    rig = Rig(DebugPolicy(action=[0.5, 0, 0, 0, 0, 0, 1]), lockstep=False, image_timeout_s=100.0)
    rig.control.set_instruction(INSTR)
    rig.frame(0, sec=0)
    for _ in range(5):
        rig.control.tick()
        for _ in range(10):  # spurious wake-ups: instruction re-sends, enable(true), a parameter set to its value
            rig.control.set_instruction(INSTR)
            rig.control.set_enabled(True)
            rig.control.update(dry_run=False)
            rig.control.cycle()
    assert len(rig.answers) == 5 and all(a.reason == "" for a in rig.answers)


class _Blocking(DebugPolicy):
    """act blocks until ``release`` is set (a hung model)."""

    def __init__(self, **kw) -> None:
        import threading

        super().__init__(**kw)
        self.entered, self.release = threading.Event(), threading.Event()

    def act_batch(self, images, instructions, **kw):
        self.entered.set()
        assert self.release.wait(30.0)
        return super().act_batch(images, instructions, **kw)


def test_a_hung_inference_makes_each_tick_hold_with_inference_timeout_and_switches_apply_at_once():
    import threading

    clock = [0.0]
    policy = _Blocking(action=[0.5, 0, 0, 0, 0, 0, 1])
    rig = Rig(policy, lockstep=False, image_timeout_s=100.0)
    rig.control._mono = lambda: clock[0]
    rig.control.update(inference_timeout_s=1.0)
    rig.control.set_instruction(INSTR)
    rig.frame(0, sec=0)
    assert rig.control.tick() is True  # idle: start a decision
    worker = threading.Thread(target=rig.control.cycle)
    worker.start()
    try:
        assert policy.entered.wait(30.0)
        assert rig.control.tick() is False and rig.answers == []  # within its time: nothing yet, no hold
        clock[0] = 1.5
        assert rig.control.inference_overdue()
        rig.control.tick()
        (timeout_hold,) = rig.answers
        assert timeout_hold.reason == "inference_timeout" and timeout_hold.command is None
        rig.control.set_enabled(False)  # takes effect at the next tick, the model still hung
        rig.control.tick()
        assert rig.answers[-1].reason == "disabled" and len(rig.answers) == 2
    finally:
        policy.release.set()
        worker.join(30.0)
    # the late result found this period's slot used: the next tick publishes it, re-checked (still disabled)
    assert len(rig.answers) == 2
    rig.control.tick()
    assert rig.answers[-1].reason == "disabled" and rig.answers[-1].raw[0] == 0.5 and len(rig.answers) == 3


def test_staleness_counts_from_the_stamp_when_it_is_on_the_node_clock():
    warnings: list[str] = []
    rig = Rig(DebugPolicy(), lockstep=False, image_timeout_s=0.5)
    rig.control._log_warning = warnings.append
    rig.control.set_instruction(INSTR)
    rig.now_ns = 10_000_000_000
    rig.frame(0, sec=5)  # received now, stamped 5 s ago (a large frame that took long to arrive)
    (held,) = rig.cycle()
    assert held.reason == "stale_image" and warnings == []
    rig.frame(0, sec=11)  # a stamp 1 s ahead of the node clock (beyond the tolerance): receipt age only
    (act,) = rig.cycle()
    assert act.reason == "" and len(warnings) == 1
    rig.frame(0, sec=12)
    rig.cycle()
    assert len(warnings) == 1  # logged once
    rig.control.put_frame(np.zeros((8, 8, 3), np.uint8), (10, 50_000_000), recv_ns=rig.now_ns)  # within tolerance
    (act,) = rig.cycle()
    assert act.reason == ""


def test_lockstep_answers_do_not_outlive_the_switches_they_were_made_under():
    rig = Rig(DebugPolicy(action=[0.5, 0, 0, 0, 0, 0, 1]))
    rig.control.set_instruction(INSTR)
    rig.control.update(dry_run=True)
    rig.frame(0, sec=1)
    (dry,) = rig.cycle()
    assert dry.reason == "dry_run"
    rig.frame(0, sec=1)  # re-published: the same answer
    assert [a.reason for a in rig.cycle()] == ["dry_run"]
    assert rig.control.update(dry_run=False)
    (act,) = rig.cycle()  # the dry_run hold was made for dry_run: the observation is answered anew
    assert act.reason == "" and act.key == (1, 0) and act.new_step
    assert not rig.control.update(dry_run=False)  # unchanged: the answer stays
    rig.frame(0, sec=1)
    (again,) = rig.cycle()
    assert again.reason == "" and not again.new_step and rig.policy.calls == 2
    assert rig.control.set_enabled(False)
    (off,) = rig.cycle()
    assert off.reason == "disabled"
    rig.control.set_enabled(True)
    rig.control.set_instruction("close the drawer")
    (new,) = rig.cycle()
    assert new.reason == "" and new.key == (1, 0) and not new.new_step  # the simulator already stepped on it
