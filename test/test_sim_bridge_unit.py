"""sim_bridge without LIBERO: parameters vs config/sim_bridge.yaml, action checks, recording, and the node's
wiring of the stepping logic (lockstep re-publish / policy timeout, realtime zero-order hold, policy_done,
auto-reset) on a stand-in env. The stepping logic alone (no ROS) is test_sim_bridge_stepping.py; the
LIBERO-backed behaviour is in test_sim_bridge.py."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from bridge_fakes import FakeEnv

from vla_ros.config import load_yaml
from vla_ros.conventions import DEFAULT_IMAGE_FLIP, LIBERO_ACTION_SPACE, NUM_STEPS_WAIT, SIM_IMAGE_SIZE
from vla_ros.params import check_table
from vla_ros.sim import bridge_params
from vla_ros.sim.actions import REJECT_REASONS, ActionRejectedError, check_action
from vla_ros.sim.bridge_params import BridgeConfig
from vla_ros.sim.recording import EpisodeRecorder


# ---------------------------------------------------------------- parameters
def test_yaml_defaults_agree_with_the_parameter_specs():
    yaml_params = load_yaml(bridge_params.PARAMS_FILE)[bridge_params.NODE_NAME]["ros__parameters"]
    assert yaml_params == bridge_params.yaml_defaults()
    assert set(yaml_params) == set(bridge_params.SPECS)
    for name, value in yaml_params.items():  # same type too: a 20 for a 20.0 would be declared as int
        assert bridge_params.SPECS[name].is_of_type(value), name
    check_table(bridge_params.SPECS, yaml_params, bridge_params.PARAMS_FILE)  # ranges and choices hold


def test_defaults_follow_the_conventions():
    d = bridge_params.yaml_defaults()
    assert d["image_size"] == SIM_IMAGE_SIZE == 256 and d["num_steps_wait"] == NUM_STEPS_WAIT == 10
    assert d["image_flip"] == DEFAULT_IMAGE_FLIP == "rot180"
    assert d["stepping_mode"] == "lockstep" and d["end_on_success"] is True


def test_bridge_config_from_the_yaml_with_overrides():
    cfg = BridgeConfig.defaults(max_steps=7, cameras=["wrist"])
    assert cfg.max_steps == 7 and cfg.cameras == ("wrist",) and cfg.stepping_mode == "lockstep"
    with pytest.raises(ValueError, match="stepping_mode"):
        BridgeConfig.defaults(stepping_mode="turbo")
    with pytest.raises(ValueError, match="cameras"):
        BridgeConfig.defaults(cameras=["agentview", "top"])
    with pytest.raises(ValueError, match="record_camera"):
        BridgeConfig.defaults(cameras=["wrist"], record_dir="/tmp/x")
    with pytest.raises(ValueError, match="unknown parameter"):
        BridgeConfig.defaults(no_such_thing=1)


# ---------------------------------------------------------------- action checks
def _msg(**kw):
    twist = SimpleNamespace(linear=SimpleNamespace(x=0.0, y=0.0, z=0.0), angular=SimpleNamespace(x=0.0, y=0.0, z=0.0))
    base = dict(action_space=LIBERO_ACTION_SPACE.name, raw_action=[0.0] * 7, twist=twist, gripper=0.0, dt=0.05)
    base.update(kw)
    return SimpleNamespace(**base)


def test_valid_action_converts_to_controller_units():
    m = _msg()
    m.twist.linear.x, m.twist.angular.z, m.gripper = 0.025, -0.25, 0.9  # half a unit each, close
    out = check_action(m)
    np.testing.assert_allclose(out.libero, [0.5, 0, 0, 0, 0, -0.5, 1.0])
    assert not out.clipped


def test_out_of_range_values_are_clipped_and_flagged():
    m = _msg(gripper=0.2)
    m.twist.linear.y = 0.2  # 4 units
    out = check_action(m)
    assert out.libero[1] == 1.0 and out.libero[6] == -1.0 and out.clipped


@pytest.mark.parametrize(("change", "reason"), [
    (dict(action_space="ur5_joint_velocity"), "action_space"),
    (dict(raw_action=[0.0] * 6), "length"),
    (dict(gripper=math.nan), "non_finite"),
    (dict(raw_action=[0.0] * 6 + [math.inf]), "non_finite"),
    (dict(dt=0.1), "dt"),
])
def test_bad_actions_are_rejected_with_a_reason(change, reason):
    with pytest.raises(ActionRejectedError) as err:
        check_action(_msg(**change))
    assert err.value.reason == reason and reason in REJECT_REASONS


def test_nan_in_twist_is_rejected():
    m = _msg()
    m.twist.angular.y = math.nan
    with pytest.raises(ActionRejectedError, match="non_finite"):
        check_action(m)


def test_empty_raw_action_and_unset_dt_are_accepted():
    assert check_action(_msg(raw_action=[], dt=0.0)).libero.shape == (7,)


# ---------------------------------------------------------------- recording
def test_recording_names_outcome_and_writes_sidecar(tmp_path):
    import imageio.v2 as imageio

    rec = EpisodeRecorder(tmp_path, suite="libero_object", task_id=3, init_state_id=7, episode_id=12,
                          fps=10, meta={"instruction": "pick it"})
    frames = [np.full((64, 64, 3), 40 * i, np.uint8) for i in range(5)]
    for f in frames:
        rec.add(f)
    sidecar = rec.finish(success=True, reason="success", steps=4)
    assert rec.video_path.name == "libero_object_task03_init07_ep00012_success.mp4"
    meta = json.loads(sidecar.read_text())
    assert meta["success"] is True and meta["frames"] == 5 and meta["instruction"] == "pick it"
    assert meta["video"] == rec.video_path.name and meta["reason"] == "success"
    back = imageio.mimread(rec.video_path)
    assert len(back) == 5 and back[0].shape == (64, 64, 3)
    assert abs(int(back[4].mean()) - 160) < 8  # the frames, in order
    assert not list(tmp_path.glob(".*partial*"))


def test_recording_failure_and_abort(tmp_path):
    rec = EpisodeRecorder(tmp_path, suite="s", task_id=0, init_state_id=0, episode_id=1)
    rec.add(np.zeros((32, 32, 3), np.uint8))
    rec.finish(success=False, reason="step_limit", steps=9)
    assert rec.video_path.name.endswith("_failure.mp4")
    rec2 = EpisodeRecorder(tmp_path, suite="s", task_id=0, init_state_id=1, episode_id=2)
    rec2.add(np.zeros((32, 32, 3), np.uint8))
    rec2.abort()
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".mp4"]
    with pytest.raises(ValueError, match="HxWx3"):
        rec2.add(np.zeros((32, 32), np.uint8))


# ---------------------------------------------------------------- node logic on a stand-in env
rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")


@pytest.fixture
def make_bridge():
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from vla_ros.nodes.sim_bridge_node import SimBridgeNode
    from vla_ros.nodes.sim_client import BridgeClient

    made = []

    def make(**params):
        ctx = rclpy.context.Context()
        rclpy.init(context=ctx)
        overrides = [Parameter(k, value=v) for k, v in {"image_size": 16, "cameras": ["agentview"], **params}.items()]
        node = SimBridgeNode(context=ctx, env_factory=FakeEnv, parameter_overrides=overrides)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        client = BridgeClient(ctx, ex)
        made.append((ctx, ex, node, client))
        node.start()
        client.wait_connected()
        client.spin_until(lambda: client.status, "first status")
        return node, client

    yield make
    for ctx, ex, node, client in made:
        client.close()
        ex.shutdown()
        node.close()
        node.destroy_node()
        rclpy.shutdown(context=ctx)


@pytest.mark.ros
def test_parameters_have_descriptors_ranges_and_read_only(make_bridge):
    from rclpy.parameter import Parameter

    node, _ = make_bridge()
    defaults = bridge_params.yaml_defaults()
    for name, spec in bridge_params.SPECS.items():
        if name not in ("image_size", "cameras"):  # the fixture's overrides
            assert node.get_parameter(name).value == defaults[name], name
        d = node.describe_parameter(name)
        assert d.read_only == spec.read_only and d.description == spec.description, name
        if spec.range is not None:
            r = (d.floating_point_range or d.integer_range)[0]
            assert (r.from_value, r.to_value) == spec.range, name
    assert not node.set_parameters([Parameter("image_size", value=128)])[0].successful  # read-only
    assert not node.set_parameters([Parameter("max_steps", value=-1)])[0].successful  # out of range
    assert node.set_parameters([Parameter("max_steps", value=7)])[0].successful


@pytest.mark.ros
def test_bad_parameter_values_fail_at_start():
    from rclpy.parameter import Parameter

    from vla_ros.nodes.sim_bridge_node import SimBridgeNode

    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    try:
        for bad in ([Parameter("stepping_mode", value="turbo")], [Parameter("cameras", value=["agentview", "top"])],
                    [Parameter("cameras", value=["wrist"]), Parameter("record_dir", value="/tmp/x")]):
            with pytest.raises(ValueError, match=r"stepping_mode|camera"):
                SimBridgeNode(context=ctx, env_factory=FakeEnv, parameter_overrides=bad)
    finally:
        rclpy.shutdown(context=ctx)


@pytest.mark.ros
def test_lockstep_republishes_then_ends_with_policy_timeout(make_bridge):
    node, c = make_bridge(republish_timeout_s=0.2, policy_timeout_s=2.0)
    stamp = c.last.header.stamp
    # The client's action publisher counts as a connected policy that never answers.
    c.spin_until(lambda: sum(m.header.stamp == stamp for m in c.images) >= 3, "re-published observation")
    assert node.republished >= 2 and node.env.step_count == 0
    c.spin_until(lambda: c.last.done, "policy_timeout")
    assert c.last.reason == "policy_timeout" and c.last.header.stamp == stamp and node.env.actions == []


@pytest.mark.ros
def test_lockstep_steps_once_per_answer_and_ignores_stale_and_hold(make_bridge):
    from vla_ros.nodes.sim_client import libero_to_msg

    node, c = make_bridge()
    first = c.last.header.stamp
    st = c.step([0.5, 0, 0, 0, 0, 0, 1])
    assert st.step == 1 and (st.header.stamp.sec, st.header.stamp.nanosec) > (first.sec, first.nanosec)
    c.send(libero_to_msg([1, 0, 0, 0, 0, 0, 1], first))  # answers the old observation: stale
    c.send(libero_to_msg([1, 0, 0, 0, 0, 0, 1], st.header.stamp, hold=True))  # a hold never steps
    bad = libero_to_msg([1, 0, 0, 0, 0, 0, 1], st.header.stamp)
    bad.twist.linear.z = math.inf
    c.send(bad)
    st2 = c.step([-0.25, 0, 0, 0, 0, 0, -1])
    assert st2.step == 2 and len(node.env.actions) == 2
    np.testing.assert_allclose(node.env.actions[1], [-0.25, 0, 0, 0, 0, 0, -1])
    assert node.stats.stale == 1 and node.stats.holds == 1 and node.stats.rejected["non_finite"] == 1
    c.spin_until(lambda: c.poses and c.poses[-1].header.stamp == st2.header.stamp, "pose")
    assert c.poses[-1].pose.position.x == pytest.approx(0.25)


@pytest.mark.ros
def test_policy_done_ends_episode_and_auto_reset_starts_the_next_init_state(make_bridge):
    node, c = make_bridge(auto_reset=True)
    ep = c.last.episode_id
    c.step([0, 0, 0, 0, 0, 0, -1], finished=True)
    c.spin_until(lambda: any(s.done and s.episode_id == ep for s in c.status), "end of the episode")
    end = next(s for s in c.status if s.done and s.episode_id == ep)
    assert end.reason == "policy_done" and end.step == 0 and node.env.actions == []
    c.spin_until(lambda: c.last.episode_id == ep + 1 and not c.last.done, "auto-reset")
    assert c.last.init_state_id == 1
    new, old = c.last.header.stamp, end.header.stamp
    assert (new.sec, new.nanosec) > (old.sec, old.nanosec)  # sim time keeps running across resets
    assert node.stats.after_end == 0


@pytest.mark.ros
def test_realtime_holds_last_action_then_stands_still(make_bridge):
    from vla_ros.nodes.sim_client import libero_to_msg

    node, c = make_bridge(stepping_mode="realtime", control_rate_hz=50.0, action_timeout_s=0.3)
    c.spin_until(lambda: len(node.env.actions) >= 3, "steps without any action")
    assert all(a[0] == 0 and a[6] == -1 for a in node.env.actions)  # no action yet: stand still, open
    n0 = len(node.env.actions)
    c.send(libero_to_msg([0.5, 0, 0, 0, 0, 0, 1], c.last.header.stamp))
    c.spin_until(lambda: any(a[0] == 0.5 for a in node.env.actions[n0:]), "the action applied")
    first = n0 + next(i for i, a in enumerate(node.env.actions[n0:]) if a[0] == 0.5)
    # zero-order hold, then (after action_timeout_s) stand still with the gripper as it was: closed
    c.spin_until(lambda: any(a[0] == 0 for a in node.env.actions[first:]), "hold timeout")
    held = node.env.actions[first:]
    k = next(i for i, a in enumerate(held) if a[0] == 0)
    assert all(a[0] == 0.5 for a in held[:k])
    assert all(a[0] == 0 and a[6] == 1.0 for a in held[k:])
    stamps = [(s.header.stamp.sec, s.header.stamp.nanosec) for s in c.status]
    assert stamps == sorted(stamps)  # sim time only moves forward
