"""vla_policy_node's decision cycle (vla_ros.policy_control) without rclpy: lockstep answering, holds, waiting for the
further inputs, the state re-checked after inference. The node tests (test/test_policy_node*.py) run the same
through ROS topics."""

from __future__ import annotations

import time

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
        mark = len(self.answers)
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
    assert rig.cycle() == [act] and rig.policy.calls == 1  # the same answer, no second inference
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
