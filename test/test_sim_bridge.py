"""sim_bridge_node on a real LIBERO scene, in-process (one module-scoped bridge at 64 px to keep CI time down):
reset through the service, image orientation against LIBERO's raw frame, motion of the end effector, the step
limit, rejected actions, and a scripted episode replayed through the bridge reaching success."""

from __future__ import annotations

import math

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")
pytest.importorskip("robosuite", reason="LIBERO's simulation stack is not installed")

from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter

from vla_ros.conventions import flip_image
from vla_ros.image_codec import image_msg_to_rgb
from vla_ros.nodes.sim_bridge_node import SimBridgeNode
from vla_ros.nodes.sim_client import BridgeClient, libero_to_msg

pytestmark = [pytest.mark.ros, pytest.mark.sim]

SIZE = 64
OPEN, CLOSE = -1.0, 1.0


@pytest.fixture(scope="module")
def bridge():
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    node = SimBridgeNode(context=ctx, parameter_overrides=[
        Parameter("image_size", value=SIZE), Parameter("cameras", value=["agentview"]),
        Parameter("policy_timeout_s", value=0.0), Parameter("republish_timeout_s", value=30.0)])
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    client = BridgeClient(ctx, ex)
    try:
        node.start()
        client.wait_connected()
        yield node, client
    finally:
        client.close()
        ex.shutdown()
        node.close()
        node.destroy_node()
        rclpy.shutdown(context=ctx)


def _pos(client, stamp) -> np.ndarray:
    client.spin_until(lambda: any(p.header.stamp == stamp for p in client.poses), "pose of the observation")
    p = next(p for p in reversed(client.poses) if p.header.stamp == stamp).pose.position
    return np.array([p.x, p.y, p.z])


def test_reset_service_returns_the_instruction(bridge):
    from vla_ros.sim.libero_env import task_names

    node, c = bridge
    before = node.episode_id
    resp = c.reset("libero_spatial", 1, 2)
    assert resp.success, resp.message
    assert resp.instruction == task_names("libero_spatial")[1]
    assert resp.episode_id == before + 1 and resp.max_steps == 220
    st = c.last
    assert (st.suite, st.task_id, st.init_state_id, st.step, st.reason) == ("libero_spatial", 1, 2, 0, "")
    assert st.instruction == resp.instruction and st.image_flip == "rot180"
    assert st.action_space == "libero_osc_pose_20hz"
    c.spin_until(lambda: resp.instruction in c.instructions, "instruction on the topic")
    # the previous episode was ended with reason "reset"
    assert any(s.episode_id == before and s.done and s.reason == "reset" for s in c.status)
    bad = c.reset("libero_spatial", 1, 999)
    assert not bad.success and "init_state_id" in bad.message
    assert not c.reset("libero_nowhere", 0, 0).success


def test_image_is_libero_frame_rotated_180(bridge):
    node, c = bridge
    c.reset(init_state_id=0)
    st = c.step([0, 0, 0, 0, 0, 0, OPEN])
    img = image_msg_to_rgb(c.latest_image(st.header.stamp))
    raw = node.observation.raw["agentview_image"]  # LIBERO's frame as rendered (upside down)
    assert img.shape == (SIZE, SIZE, 3)
    assert np.array_equal(img, raw[::-1, ::-1])
    assert np.array_equal(img, flip_image(raw, "rot180"))
    assert not np.array_equal(img, raw) and not np.array_equal(img, raw[::-1])  # the flip is not a no-op here
    msg = c.latest_image(st.header.stamp)
    assert msg.encoding == "rgb8" and msg.header.frame_id == "agentview_camera"


def test_actions_move_the_end_effector_and_the_step_counter(bridge):
    _node, c = bridge
    c.reset(init_state_id=0)
    start = c.last
    p0 = _pos(c, start.header.stamp)
    steps = []
    for _ in range(8):  # +x at half speed: 8 x 0.5 x 0.05 m = 0.2 m commanded
        steps.append(c.step([0.5, 0, 0, 0, 0, 0, OPEN]).step)
    assert steps == list(range(1, 9))
    p1 = _pos(c, c.last.header.stamp)
    assert p1[0] - p0[0] > 0.03 and abs(p1[1] - p0[1]) < 0.5 * (p1[0] - p0[0])
    for _ in range(6):  # then up
        c.step([0, 0, 0.5, 0, 0, 0, OPEN])
    p2 = _pos(c, c.last.header.stamp)
    assert p2[2] - p1[2] > 0.02
    # and close the gripper: the finger joints come together
    gap_open = _finger_gap(c, c.last.header.stamp)
    for _ in range(6):
        c.step([0, 0, 0, 0, 0, 0, CLOSE])
    assert _finger_gap(c, c.last.header.stamp) < gap_open - 0.02
    assert c.last.step == 20 and not c.last.done


def _finger_gap(c, stamp) -> float:
    c.spin_until(lambda: any(j.header.stamp == stamp for j in c.joints), "joint state of the observation")
    js = next(j for j in reversed(c.joints) if j.header.stamp == stamp)
    pos = dict(zip(js.name, js.position, strict=True))
    return pos["robot0_finger_joint1"] - pos["robot0_finger_joint2"]


def test_invalid_actions_are_rejected_without_stepping(bridge):
    node, c = bridge
    c.reset(init_state_id=0)
    stamp = c.last.header.stamp
    rejected, stale, holds = dict(node.stats.rejected), node.stats.stale, node.stats.holds
    nan = libero_to_msg([0.5, 0, 0, 0, 0, 0, OPEN], stamp)
    nan.twist.linear.x = math.nan
    c.send(nan)
    c.send(libero_to_msg([0.5, 0, 0, 0, 0, 0, OPEN], stamp, action_space="some_other_space"))
    c.send(libero_to_msg([0.5, 0, 0, 0, 0, 0, OPEN], stamp, raw_action=[0.5] * 8))
    c.send(libero_to_msg([0.5, 0, 0, 0, 0, 0, OPEN], stamp, hold=True))
    wrong = libero_to_msg([0.5, 0, 0, 0, 0, 0, OPEN], stamp)
    wrong.header.stamp.nanosec = (stamp.nanosec + 1) % 1_000_000_000  # not the current observation
    c.send(wrong)
    p0 = _pos(c, stamp)
    # A valid action sent after them (same publisher: delivered in order) is the only one that steps.
    st = c.step([0, 0, 0, 0, 0, 0, OPEN])
    assert st.step == 1
    assert np.linalg.norm(_pos(c, st.header.stamp) - p0) < 0.01  # the rejected +x never moved the arm
    for reason in ("non_finite", "action_space", "length"):
        assert node.stats.rejected[reason] == rejected.get(reason, 0) + 1, reason
    assert node.stats.stale == stale + 1 and node.stats.holds == holds + 1


def test_episode_ends_at_the_step_limit(bridge):
    node, c = bridge
    assert node.set_parameters([Parameter("max_steps", value=3)])[0].successful
    try:
        resp = c.reset(init_state_id=0)
        assert resp.max_steps == 3
        for _ in range(3):
            st = c.step([0, 0, 0, 0, 0, 0, OPEN])
        assert st.done and st.reason == "step_limit" and st.step == 3 and not st.success
        after = node.stats.after_end
        c.send(libero_to_msg([0, 0, 0, 0, 0, 0, OPEN], st.header.stamp))
        c.spin_until(lambda: node.stats.after_end == after + 1, "the late action to be refused")
        assert node.env.step_count == 3
    finally:
        node.set_parameters([Parameter("max_steps", value=0)])


@pytest.mark.slow
def test_scripted_expert_replayed_through_the_bridge_reaches_success(bridge):
    """Record the scripted expert's actions in-process (physics only), replay them through the bridge:
    deterministic physics gives the same success at the same step and the same final pose."""
    from vla_ros.sim.expert import ScriptedExpert
    from vla_ros.sim.libero_env import LiberoEpisodeEnv

    suite, task = "libero_object", 0
    env = LiberoEpisodeEnv(suite, task, cameras=())
    try:
        for init in range(3):  # the first init state the expert solves
            env.reset(init)
            expert = ScriptedExpert(env, seed=0)
            expert.reset()
            actions = []
            while not env.done:
                actions.append(expert.act())
                res = env.step(actions[-1])
            if env.reason == "success":
                break
        else:
            pytest.fail("the scripted expert solved none of init states 0..2 in-process")
        final_pos = res.obs.eef_pos
    finally:
        env.close()

    _node, c = bridge
    assert c.reset(suite, task, init).success
    for a in actions:
        st = c.step(a)
    assert st.done and st.success and st.reason == "success"
    assert st.step == len(actions)
    np.testing.assert_allclose(_pos(c, st.header.stamp), final_pos, atol=1e-6)


@pytest.mark.slow
def test_soft_reset_is_reproducible():
    """hard_reset=False (about 5x faster resets) still gives the same episode for the same init state."""
    from vla_ros.sim.libero_env import LiberoEpisodeEnv

    env = LiberoEpisodeEnv("libero_object", 2, cameras=(), hard_reset=False, max_steps=100)
    try:
        assert env.env.env.hard_reset is False
        actions = np.random.default_rng(0).uniform(-1, 1, (20, 7))
        ends = []
        for init in (1, 0, 0):  # the first reset of a fresh env is a full one anyway: compare the later two
            start = env.reset(init).eef_pos
            for a in actions:
                res = env.step(a)
            ends.append((start, res.obs.eef_pos, env.env.get_sim_state()))
        (_, other, _), (start, end, sim), (_, end_again, sim_again) = ends
        assert np.array_equal(end, end_again) and np.array_equal(sim, sim_again)
        assert not np.allclose(end, other, atol=1e-3)  # another init state, another episode
        assert np.linalg.norm(end - start) > 0.02  # and the actions did move the arm
    finally:
        env.close()
