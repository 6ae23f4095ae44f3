"""vla_policy_node feeding a model's further inputs (wrist camera, proprio) from the ROS graph.

A tiny random native checkpoint with ``extra_images=["wrist"]`` and proprio statistics stands in for a wrist+proprio
VLA: the node's action must equal ``policy.act`` with the same wrist image and proprio vector; without those
messages, or with stamps that do not pair, it holds (``missing_inputs``) and counts a rejection.
"""

from __future__ import annotations

import numpy as np
import pytest

from vla_ros.inputs import ExtraInputs, StampedHistory, finger_positions, pose_arrays
from vla_ros.proprio import PROPRIO_LAYOUT, proprio_vector

INSTR = "pick up the black bowl and place it on the plate"
FINGERS = ("robot0_finger_joint1", "robot0_finger_joint2")
ARM = tuple(f"robot0_joint{i}" for i in range(1, 8))


# ------------------------------------------------------------------ ROS-free pairing rules

def test_stamped_history_prefers_equal_stamps_then_the_newest_within_tolerance():
    h = StampedHistory(maxlen=4)
    for s in (100, 200, 300):
        h.put(s, f"v{s}")
    assert h.match(200, 0) == "v200" and h.match(250, 0) is None  # tolerance 0: equal stamps only
    assert h.match(250, 60) == "v300"  # both within: the newest
    assert h.match(140, 50) == "v100" and h.match(290, 100) == "v300"
    assert h.match(200, 1000) == "v200"  # an equal stamp wins over newer ones
    assert h.match(500, 100) is None and h.newest_stamp() == 300
    for s in (400, 500):
        h.put(s, s)
    assert h.match(100, 0) is None  # only the last maxlen are kept


def test_proprio_sources_are_checked_and_form_the_core_vector():
    assert finger_positions([*ARM, *FINGERS], list(range(9)), FINGERS).tolist() == [7.0, 8.0]
    with pytest.raises(ValueError, match="robot0_finger_joint2"):
        finger_positions(["robot0_finger_joint1"], [0.01], FINGERS)
    with pytest.raises(ValueError, match="positions"):
        finger_positions(list(FINGERS), [0.01], FINGERS)
    with pytest.raises(ValueError):
        pose_arrays((0, 0, 0), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="camera"):
        ExtraInputs(("belly",), "", {"wrist_image": "/w"})
    with pytest.raises(ValueError, match="layout"):
        ExtraInputs((), "axis_angle8", {})
    assert not ExtraInputs((), "", {})  # a plain image model needs nothing
    inp = ExtraInputs(("wrist",), PROPRIO_LAYOUT, {"wrist_image": "/w"})
    assert inp.keys == ("wrist_image", "joint_states", "ee_pose")
    wrist = np.zeros((8, 8, 3), np.uint8)
    pos, quat = pose_arrays((0.1, 0.2, 0.3), (0.0, 1.0, 0.0, 0.0))
    inp.put("wrist_image", 1000, wrist)
    inp.put("joint_states", 1000, np.array([0.02, -0.02]))
    inp.put("ee_pose", 990, (pos, quat))
    assert inp.gather(1000, 0)[1] == ["ee_pose"]  # lockstep: 990 is another instant
    kw, missing = inp.gather(1000, 20)
    assert not missing and kw["extra_images"]["wrist"] is wrist
    np.testing.assert_array_equal(kw["proprio"], proprio_vector(pos, quat, [0.02, -0.02]))
    assert "ee_pose" in inp.describe_missing(["ee_pose"], 1000, 0)


# ------------------------------------------------------------------ the node

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")

from geometry_msgs.msg import PoseStamped
from policy_node_harness import DEADLINE, Harness
from rclpy.lifecycle import TransitionCallbackReturn
from sensor_msgs.msg import Image, JointState

from helpers import wait_for
from vla_ros.image_codec import fill_image_msg
from vla_ros_msgs.msg import PolicyStatus

OK = TransitionCallbackReturn.SUCCESS


@pytest.fixture(scope="module")
def wrist_proprio_checkpoint(tmp_path_factory):
    """A tiny random native VLA that takes the wrist camera and the eef_rot6d_gripper proprio."""
    pytest.importorskip("timm", reason="the native backend needs torch + timm")
    from core_fixtures import save_wrist_proprio

    return save_wrist_proprio(tmp_path_factory.mktemp("wrist_proprio") / "policy")


class _Recording:
    """Wraps the node's policy and records the inputs of every act()."""

    def __init__(self, inner) -> None:
        self.inner, self.metadata, self.calls = inner, inner.metadata, []

    def act(self, image, instruction, **inputs):
        self.calls.append((image, instruction, inputs))
        return self.inner.act(image, instruction, **inputs)

    def reset(self) -> None:
        self.inner.reset()

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.close()


def _start(h: Harness, ckpt, **params):
    node = h.start(auto_start=False, backend="native", checkpoint=str(ckpt), device="cpu",
                   backend_options="{fast: false}", **params)
    assert node.trigger_configure() == OK, h.status().last_error
    policy = node._control.policy = _Recording(node._control.policy)
    assert node.trigger_activate() == OK
    h.wait_matched()
    wait_for(lambda: all(p.get_subscription_count() > 0 for p in (h.pub_wrist, h.pub_joints, h.pub_pose)),
             DEADLINE, what="the further inputs' subscriptions")
    return node, policy


def _stamp(msg, t: float):
    msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), round((t - int(t)) * 1e9)
    return msg


class Obs:
    """One observation as the bridge publishes it: main image, wrist image, joint states, eef pose."""

    def __init__(self, seed: int, fingers=FINGERS) -> None:
        rng = np.random.default_rng(seed)
        self.main = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        self.wrist = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        self.pos, self.quat = rng.normal(0, 0.2, 3), rng.normal(size=4)
        self.quat /= np.linalg.norm(self.quat)
        self.joints = np.concatenate([rng.normal(size=7), rng.uniform(0, 0.04, 2)])
        self.fingers = fingers

    @property
    def proprio(self) -> np.ndarray:
        return proprio_vector(self.pos, self.quat, self.joints[7:])

    def main_msg(self, t: float) -> Image:
        return _stamp(fill_image_msg(Image(), self.main), t)

    def extra_msgs(self, t: float) -> list:
        js = _stamp(JointState(name=[*ARM, *self.fingers], position=[float(v) for v in self.joints]), t)
        pose = _stamp(PoseStamped(), t)
        p, q = pose.pose.position, pose.pose.orientation
        p.x, p.y, p.z = (float(v) for v in self.pos)
        q.x, q.y, q.z, q.w = (float(v) for v in self.quat)
        return [_stamp(fill_image_msg(Image(), self.wrist), t), js, pose]

    def publish(self, h: Harness, t: float, extras_at: float | None = None, main: bool = True,
                extras: bool = True) -> None:
        """Main image first, then the others (the order the bridge uses: the node must wait for them)."""
        if main:
            h.pub_image.publish(self.main_msg(t))
        if extras:
            for pub, msg in zip((h.pub_wrist, h.pub_joints, h.pub_pose),
                                self.extra_msgs(t if extras_at is None else extras_at), strict=True):
                pub.publish(msg)


def _answer(h: Harness, sec: int, start: int = 0, hold: bool | None = None):
    return h.wait_action(lambda a: a.header.stamp.sec == sec and (hold is None or a.hold == hold),
                         f"answer to {sec}", start=start)


def _publish_until_answer(h: Harness, obs: Obs, t: float, **kw):
    """Best-effort images can be lost right after discovery: re-publish the observation (as the bridge does)
    until the node acts on it."""
    def done() -> bool:
        return any(not a.hold and a.header.stamp.sec == int(t) for a in h.snapshot())

    class _Publisher:  # publish_until's interface, for the whole observation
        @staticmethod
        def publish(_msg) -> None:
            obs.publish(h, t, **kw)
    h.publish_until(_Publisher, None, done, f"an action for the observation at {t}")
    return _answer(h, int(t), hold=False)


@pytest.mark.slow
def test_node_action_equals_policy_act_with_the_same_wrist_image_and_proprio(h, wrist_proprio_checkpoint):
    from vla_ros.backends import load_policy

    node, policy = _start(h, wrist_proprio_checkpoint, sim_time=False, lockstep=True)
    assert set(node._extra_subs) == {"wrist_image", "joint_states", "ee_pose"}
    h.instruct(INSTR)
    wait_for(lambda: node._control.instruction == INSTR, DEADLINE, what="instruction")
    ref = load_policy("native", str(wrist_proprio_checkpoint), device="cpu", fast=False)
    for k, t in enumerate((11.0, 12.0, 13.0)):
        obs = Obs(seed=k)
        ans = _publish_until_answer(h, obs, t)
        image, _, inputs = policy.calls[-1]
        np.testing.assert_array_equal(image, obs.main)
        np.testing.assert_array_equal(inputs["extra_images"]["wrist"], obs.wrist)
        np.testing.assert_array_equal(inputs["proprio"], obs.proprio)
        want = ref.act(obs.main, INSTR, extra_images={"wrist": obs.wrist}, proprio=obs.proprio).action
        np.testing.assert_allclose(np.array(ans.raw_action), want, rtol=0, atol=1e-6)
    assert h.status().rejected_inputs == 0
    ref.close()


@pytest.mark.slow
def test_missing_inputs_hold_count_a_rejection_and_are_waited_for(h, wrist_proprio_checkpoint):
    node, policy = _start(h, wrist_proprio_checkpoint, sim_time=False, lockstep=True, image_timeout_s=0.3)
    h.instruct(INSTR)
    wait_for(lambda: node._control.instruction == INSTR, DEADLINE, what="instruction")
    obs = Obs(seed=5)
    # the main image alone: after image_timeout_s one hold (missing_inputs), one counted rejection, no inference
    h.publish_until(h.pub_image, obs.main_msg(21.0), lambda: node._control.frames.peek() is not None, "the image")
    held = _answer(h, 21, hold=True)
    assert held.hold_reason == "missing_inputs" and held.twist.linear.x == 0.0 and held.gripper == 0.0
    assert not policy.calls
    wait_for(lambda: node._rejections.by_kind.get("inputs") == 1, DEADLINE, what="a counted rejection")
    st = h.status()
    assert st.state == PolicyStatus.STATE_HOLDING and st.hold_reason == "missing_inputs" and st.rejected_inputs == 1
    wait_for(lambda: any(d.status and "missing_inputs" in d.status[0].message
                         and any(kv.key == "rejected_inputs" and kv.value == "1" for kv in d.status[0].values)
                         for d in list(h.diagnostics)), DEADLINE, what="the hold in the diagnostics")
    # the observation's own inputs come late: the same observation then gets its action
    ans = _publish_until_answer(h, obs, 21.0, main=False)
    assert len(ans.raw_action) == 7 and len(policy.calls) == 1
    np.testing.assert_array_equal(policy.calls[0][2]["proprio"], obs.proprio)
    # a JointState without the gripper joints is a counted rejection too (and never feeds a decision)
    bad = JointState(name=list(ARM), position=[0.0] * 7)
    h.pub_joints.publish(_stamp(bad, 22.0))
    wait_for(lambda: node._rejections.by_kind.get("joint_states") == 1, DEADLINE, what="joint_states rejected")
    assert node._worker.is_alive()


@pytest.mark.slow
def test_mismatched_stamps_are_not_paired(h, wrist_proprio_checkpoint):
    # lockstep: equal stamps only; the previous step's inputs are never used for the next image
    node, policy = _start(h, wrist_proprio_checkpoint, sim_time=False, lockstep=True, image_timeout_s=0.3)
    h.instruct(INSTR)
    wait_for(lambda: node._control.instruction == INSTR, DEADLINE, what="instruction")
    first, second = Obs(seed=1), Obs(seed=2)
    _publish_until_answer(h, first, 31.0)
    n = len(policy.calls)
    second.publish(h, 32.0, main=False, extras_at=32.01)  # close, but not the same instant
    wait_for(lambda: all(node._control.inputs.history[k].newest_stamp() == 32_010_000_000 for k in node._control.inputs.keys),
             DEADLINE, what="the inputs at 32.01 stored")
    h.publish_until(h.pub_image, second.main_msg(32.0), lambda: node._control.frames.peek().key == (32, 0), "image 32")
    held = _answer(h, 32)
    assert held.hold and held.hold_reason == "missing_inputs" and len(policy.calls) == n
    _publish_until_answer(h, second, 32.0, main=False)  # its own inputs: now it acts, with them
    np.testing.assert_array_equal(policy.calls[-1][2]["extra_images"]["wrist"], second.wrist)
    np.testing.assert_array_equal(policy.calls[-1][2]["proprio"], second.proprio)


@pytest.mark.slow
def test_free_running_pairs_within_the_tolerance_and_maps_gripper_joint_names(h, wrist_proprio_checkpoint):
    fingers = ("left_finger", "right_finger")  # a real arm's names
    node, policy = _start(h, wrist_proprio_checkpoint, image_timeout_s=100.0, input_sync_tolerance_s=0.02,
                          gripper_joint_names=list(fingers))
    h.clock(1.0)
    h.instruct(INSTR)
    wait_for(lambda: node._control.instruction == INSTR, DEADLINE, what="instruction")
    near, far = Obs(seed=3, fingers=fingers), Obs(seed=4, fingers=fingers)
    h.send_image(stamp=5.0, size=64)
    far.publish(h, 5.0, main=False, extras_at=5.05)  # 50 ms off: not paired
    wait_for(lambda: all(node._control.inputs.history[k].newest_stamp() for k in node._control.inputs.keys), DEADLINE,
             what="the far inputs stored")
    mark = len(h.snapshot())
    h.clock(1.05)
    held = h.wait_action(lambda a: True, "a tick", start=mark)
    assert held.hold and held.hold_reason == "missing_inputs" and not policy.calls
    wait_for(lambda: node._rejections.by_kind.get("inputs") == 1, DEADLINE, what="a counted rejection")
    near.publish(h, 5.0, main=False, extras_at=4.99)  # 10 ms off: paired
    wait_for(lambda: all(node._control.inputs.history[k].match(5_000_000_000, 20_000_000) is not None
                         for k in node._control.inputs.keys), DEADLINE, what="the near inputs stored")
    mark = len(h.snapshot())
    h.clock(1.10)
    act = h.wait_action(lambda a: True, "a tick", start=mark)
    assert not act.hold, act.hold_reason
    np.testing.assert_array_equal(policy.calls[-1][2]["extra_images"]["wrist"], near.wrist)
    np.testing.assert_array_equal(policy.calls[-1][2]["proprio"], near.proprio)  # fingers found by their names
    assert node._rejections.by_kind.get("inputs") == 1  # one per observation, not one per tick


def test_plain_models_subscribe_to_nothing_more_and_unknown_cameras_fail_configure(h, monkeypatch):
    node = h.start(sim_time=False, lockstep=True)  # the debug policy: a camera and an instruction only
    assert node._control.inputs is not None and not node._control.inputs and node._extra_subs == {}
    assert h.pub_joints.get_subscription_count() == 0 and h.pub_wrist.get_subscription_count() == 0
    assert node.trigger_deactivate() == OK and node.trigger_cleanup() == OK

    import vla_ros.nodes.policy_io as policy_io
    from vla_ros.backends.debug import DebugPolicy

    def belly_camera_policy(*args, **kwargs):
        policy = DebugPolicy()
        policy.metadata.extra_images = ("belly",)
        return policy
    monkeypatch.setattr(policy_io, "load_policy", belly_camera_policy)
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "belly" in h.status().last_error and node._control.policy is None
    assert h.status().state == PolicyStatus.STATE_UNCONFIGURED


@pytest.mark.slow
@pytest.mark.parametrize("reliability", ["best_effort", "reliable"])
def test_sensor_reliability_sets_the_camera_and_robot_state_subscriptions(h, wrist_proprio_checkpoint, reliability):
    from rclpy.qos import QoSReliabilityPolicy

    from vla_ros.config import topics

    want = {"best_effort": QoSReliabilityPolicy.BEST_EFFORT, "reliable": QoSReliabilityPolicy.RELIABLE}[reliability]
    node, _ = _start(h, wrist_proprio_checkpoint, sim_time=False, lockstep=True, sensor_reliability=reliability)
    names = topics()
    for topic in (names[k] for k in ("camera_image", "wrist_image", "joint_states", "ee_pose")):
        subs = [i for i in node.get_subscriptions_info_by_topic(topic) if i.node_name == node.get_name()]
        assert subs and all(i.qos_profile.reliability == want for i in subs), (topic, subs)
