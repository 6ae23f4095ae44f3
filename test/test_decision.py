"""The one decision step (vla_ros.decision) and its users: the in-process rollout and the node's control agree.

The graph-level proof is test/test_eval.py (every action of an episode, in-process vs through ROS); here, without
rclpy or LIBERO, the same inputs go through ``vla_ros.sim.rollout.policy_step`` and through
``vla_ros.policy_control.PolicyControl`` (what vla_policy_node runs) and give the same LIBERO action.
"""

from __future__ import annotations

import numpy as np
import pytest

from vla_ros.action_conversion import command_to_libero, libero_action
from vla_ros.backends.debug import DebugPolicy
from vla_ros.controller import ControllerConfig, RejectionLog, shape_action
from vla_ros.decision import decide
from vla_ros.inputs import ExtraInputs, further_inputs, pose_arrays
from vla_ros.policy import Policy, PolicyMetadata, PolicyOutput
from vla_ros.policy_control import Answer, PolicyControl
from vla_ros.proprio import PROPRIO_LAYOUT, proprio_vector
from vla_ros.sim.libero_env import Observation
from vla_ros.sim.rollout import policy_inputs, policy_step

INSTR = "put the black bowl on the plate"
IMAGE = np.full((16, 16, 3), 200, np.uint8)


def test_decide_shapes_the_output_and_reports_done():
    policy, cfg = DebugPolicy(action=[3.0, -0.2, 0, 0, 0, 0.4, 1.0], done_after=2), ControllerConfig()
    first = decide(policy, IMAGE, INSTR, {}, cfg)
    meta = policy.metadata
    want = shape_action(np.array([3.0, -0.2, 0, 0, 0, 0.4, 1.0]), meta.action_space, meta.gripper_convention, cfg)
    assert first.hold_reason == "" and not first.done and first.inferred and first.outcome() == ""
    np.testing.assert_array_equal(first.command.linear, want.linear)  # clamped to 1.0 before scaling
    assert first.raw.tolist() == [3.0, -0.2, 0, 0, 0, 0.4, 1.0]  # the raw output as the policy gave it
    second = decide(policy, IMAGE, INSTR, {}, cfg)
    assert second.done and second.outcome() == "finished"
    assert second.outcome(state_reason="disabled") == "disabled"  # switched off while the model ran
    assert first.outcome(dry_run=True) == "dry_run"


def test_decide_holds_before_inference_and_on_bad_output():
    policy = DebugPolicy()
    held = decide(policy, IMAGE, INSTR, {}, ControllerConfig(), hold_reason="stale_image", reset=True)
    assert held.hold_reason == "stale_image" and policy.calls == 0 and not held.was_reset and not held.inferred

    nan = decide(DebugPolicy(mode="nan", done_after=1), IMAGE, INSTR, {}, ControllerConfig())
    assert nan.hold_reason == "invalid_output" and nan.command is None and "NaN" in nan.error
    assert np.isnan(nan.raw).all() and nan.inferred
    assert not nan.done and nan.outcome() == "invalid_output"  # no end on an output that cannot be executed

    failing = DebugPolicy(fail_with="model exploded")
    err = decide(failing, IMAGE, INSTR, {}, ControllerConfig(), reset=True)
    assert err.hold_reason == "inference_error" and "model exploded" in err.error
    assert isinstance(err.exception, RuntimeError) and err.was_reset and not err.inferred  # reset ran, act raised


class _WristProprioPolicy(Policy):
    """Its action depends on the main image, the wrist image and the proprio vector; it records its inputs."""

    def __init__(self) -> None:
        self.metadata = PolicyMetadata(model_id="wrist-proprio", extra_images=("wrist",),
                                       proprio_layout=PROPRIO_LAYOUT)
        self.seen: list[dict] = []

    def act_batch(self, images, instructions, *, extra_images=None, proprios=None):
        self.seen.append({"wrist": extra_images["wrist"][0], "proprio": proprios[0]})
        a = np.r_[images[0].mean() / 255 - 0.3, extra_images["wrist"][0].mean() / 255 - 0.6, proprios[0][:3],
                  proprios[0][-1] * 10, 0.3]
        return [PolicyOutput(a)]


def _observation(rng) -> Observation:
    return Observation(images={"agentview": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
                               "wrist": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)},
                       eef_pos=np.array([-0.2, 0.05, 1.1]), eef_quat=np.array([0.99, 0.05, -0.02, 0.1]),
                       gripper_qpos=np.array([0.031, -0.029]), joint_pos=np.zeros(7))


def test_further_inputs_are_one_fact_for_the_rollout_and_the_node():
    obs = _observation(np.random.default_rng(0))
    rollout = policy_inputs(_WristProprioPolicy(), obs)
    node = ExtraInputs(("wrist",), PROPRIO_LAYOUT, {"wrist_image": "/w"})
    for key, value in (("wrist_image", obs.images["wrist"]), ("joint_states", obs.gripper_qpos),
                       ("ee_pose", pose_arrays(obs.eef_pos, obs.eef_quat))):
        node.put(key, 1000, value)
    paired, why = node.pair(1000, 0)
    assert why == "" and set(paired) == set(rollout) == {"extra_images", "proprio"}
    assert paired["extra_images"]["wrist"] is rollout["extra_images"]["wrist"]
    np.testing.assert_array_equal(paired["proprio"], rollout["proprio"])
    np.testing.assert_array_equal(rollout["proprio"], proprio_vector(obs.eef_pos, obs.eef_quat, obs.gripper_qpos))
    assert further_inputs((), "", {}) == {}  # a plain image model
    with pytest.raises(ValueError, match="wrist"):
        further_inputs(("wrist",), "", {"agentview": obs.images["agentview"]})
    with pytest.raises(ValueError, match="layout"):
        further_inputs((), "axis_angle8", {})


def _node_decision(policy: Policy, obs: Observation, cfg: ControllerConfig) -> Answer:
    """What vla_policy_node answers in lockstep for the observation, through the same core it runs."""
    answers: list[Answer] = []
    control = PolicyControl(cfg, lockstep=True, enabled=True, rejections=RejectionLog(print), now_ns=lambda: 0,
                            publish=lambda a, ms: answers.append(a) or True, log_error=print)
    control.policy = policy
    control.update(inputs=ExtraInputs(policy.metadata.extra_images, policy.metadata.proprio_layout,
                                      {"wrist_image": "/w"}))
    stamp = (3, 500)
    for key, value in (("wrist_image", obs.images.get("wrist")), ("joint_states", obs.gripper_qpos),
                       ("ee_pose", pose_arrays(obs.eef_pos, obs.eef_quat))):
        control.put_input(key, stamp[0] * 10**9 + stamp[1], value)
    control.put_frame(obs.images["agentview"], stamp, recv_ns=0)
    control.set_instruction(INSTR)
    control.set_active(True)
    assert control.cycle() is False
    (answer,) = answers
    return answer


@pytest.mark.parametrize("policy_factory", [lambda: DebugPolicy(mode="image_mean"), _WristProprioPolicy])
@pytest.mark.parametrize("cfg", [ControllerConfig(), ControllerConfig(gripper_mode="binary", max_linear_step_m=0.02,
                                                                      clamp_high=(0.5,) * 6)])
def test_the_rollout_and_the_node_take_the_same_decision(policy_factory, cfg):
    rng = np.random.default_rng(1)
    for _ in range(3):
        obs = _observation(rng)
        in_process, node_policy = policy_factory(), policy_factory()
        action, done = policy_step(in_process, obs.images["agentview"], INSTR, cfg, policy_inputs(in_process, obs))
        answer = _node_decision(node_policy, obs, cfg)
        assert not done and answer.reason == "" and action is not None
        # the graph's route: VlaAction carries the gripper as float32; the eval client rebuilds with libero_action
        sent_gripper = np.float32(answer.gripper)
        graph = libero_action(answer.command.linear, answer.command.angular, sent_gripper, answer.space)
        np.testing.assert_array_equal(action, graph)
        if isinstance(in_process, _WristProprioPolicy):
            (a,), (b,) = in_process.seen, node_policy.seen
            assert a["wrist"] is b["wrist"] and np.array_equal(a["proprio"], b["proprio"])


def test_libero_action_is_the_command_as_the_message_carries_it():
    space = DebugPolicy().metadata.action_space
    closure = 0.1 + 1e-9  # not a float32 value
    expected = command_to_libero([0.01, 0, 0], [0, 0, 0.1], float(np.float32(closure)), space)
    np.testing.assert_array_equal(libero_action([0.01, 0, 0], [0, 0, 0.1], closure, space), expected)


def test_the_rollout_ends_on_done_holds_on_invalid_output_and_raises_inference_errors():
    cfg = ControllerConfig()
    assert policy_step(DebugPolicy(done_after=1), IMAGE, INSTR, cfg) == (None, True)
    assert policy_step(DebugPolicy(mode="nan", done_after=1), IMAGE, INSTR, cfg) == (None, False)  # as the node
    with pytest.raises(RuntimeError, match="model exploded"):
        policy_step(DebugPolicy(fail_with="model exploded"), IMAGE, INSTR, cfg)
