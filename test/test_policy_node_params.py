"""vla_policy_node's parameters (YAML defaults = declared, descriptors enforced) and its console script."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")

from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from policy_node_harness import DEADLINE, Harness
from rcl_interfaces.msg import ParameterType
from rclpy.parameter import Parameter

from helpers import REPO, ManagedProcess, wait_for
from vla_ros.nodes import policy_params
from vla_ros.nodes.policy_params import SPECS
from vla_ros_msgs.msg import PolicyStatus

pytestmark = pytest.mark.ros
_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
          list: ParameterType.PARAMETER_DOUBLE_ARRAY}


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.close()


def test_yaml_is_a_ros_params_file_with_every_parameter():
    doc = yaml.safe_load((REPO / "config" / "policy_node.yaml").read_text())
    assert list(doc) == ["vla_policy_node"] and list(doc["vla_policy_node"]) == ["ros__parameters"]
    values = doc["vla_policy_node"]["ros__parameters"]
    assert set(values) == set(SPECS)
    for name, spec in SPECS.items():  # YAML's own types must already be the declared ones
        v = values[name]
        assert isinstance(v, spec.type) and not (spec.type is int and isinstance(v, bool)), name
        if spec.range is not None:
            assert spec.range[0] <= v <= spec.range[1], name
        if spec.choices is not None:
            assert v in spec.choices, name
    documented = (REPO / "docs" / "policy_node.md").read_text()
    assert all(f"`{name}`" in documented for name in SPECS), "docs/policy_node.md misses a parameter"
    readme = (REPO / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in SPECS), "README.md misses a parameter"


def test_declared_defaults_and_descriptors_agree_with_the_yaml(h):
    node = h.start(sim_time=False)  # no overrides at all
    defaults = policy_params.yaml_defaults()
    for name, spec in SPECS.items():
        assert node.get_parameter(name).value == pytest.approx(defaults[name]), name
        d = node.describe_parameter(name)
        want = ParameterType.PARAMETER_STRING_ARRAY if spec.type is list and spec.item is str else _TYPES[spec.type]
        assert d.type == want, name
        assert d.read_only == spec.read_only and d.description, name
        if spec.range is not None and spec.type is float:
            r = d.floating_point_range[0]
            assert (r.from_value, r.to_value) == spec.range, name
    assert node.describe_parameter("backend").read_only and not node.describe_parameter("dry_run").read_only


def test_parameter_updates_are_validated(h):
    node = h.start(sim_time=False)

    def ok(name, value) -> bool:
        return node.set_parameters([Parameter(name, value=value)])[0].successful

    assert not ok("backend", "hf")  # read-only: the model changes only through cleanup + configure
    assert not ok("lockstep", True)
    assert not ok("control_rate_hz", 0.0)  # out of the descriptor's range
    assert not ok("gripper_threshold", 1.5)
    assert not ok("max_instruction_chars", 0)
    assert not ok("clamp_low", [-1.0] * 5)  # cross-checks of the controller config
    assert not ok("clamp_low", [2.0] * 6)
    assert not ok("gripper_mode", "sticky")
    assert not ok("gripper_convention", "flipped")
    assert not ok("gripper_joint_names", ["a", "b"])  # read-only
    assert not ok("input_sync_tolerance_s", -0.1)
    assert ok("input_sync_tolerance_s", 0.01) and node._control.sync_tolerance_s == 0.01
    assert node._control.cfg.gripper_mode == "continuous" and node._control.cfg.clamp_low == (-1.0,) * 6
    assert ok("gripper_mode", "binary") and node._control.cfg.gripper_mode == "binary"
    assert ok("clamp_high", [0.5] * 6) and node._control.cfg.clamp_high == (0.5,) * 6
    assert ok("control_rate_hz", 5.0) and node._ctl_timer.timer_period_ns == 200_000_000
    assert ok("gripper_convention", "openvla_open01") and node._control.cfg.gripper_convention == "openvla_open01"


@pytest.mark.slow
def test_console_script_starts_from_the_params_file_and_stops_on_sigint(h, tmp_path):
    exe = Path(sys.executable).parent / "vla_policy_node"
    assert exe.is_file(), "console script not installed (pip install -e .)"
    mark = 0
    proc = ManagedProcess([str(exe), "--ros-args", "--params-file", str(REPO / "config" / "policy_node.yaml"),
                           "-p", "backend:=debug", "-p", "lockstep:=true",
                           "-p", 'backend_options:="{mode: image_mean}"'], tmp_path / "node.log")
    try:
        wait_for(lambda: h.pub_image.get_subscription_count() > 0 and h.pub_instr.get_subscription_count() > 0
                 and len(h.t.get_publishers_info_by_topic("/vla/action")) > 0 and h.statuses,
                 DEADLINE, what="node endpoints and status")
        assert proc.proc.poll() is None
        wait_for(lambda: any(i.node_name == "policy_node_test" for i in h.t.get_subscriptions_info_by_topic(
            "/vla/action")), DEADLINE, what="our subscription")
        wait_for(lambda: h.statuses[-1].state != PolicyStatus.STATE_INACTIVE, DEADLINE, what="active node")
        h.instruct("lift the pan")
        h.publish_until(h.pub_image, h.make_image(value=51, stamp=12.0),
                        lambda: any(not a.hold and a.header.stamp.sec == 12 for a in h.snapshot()), "answer")
        a = h.wait_action(lambda a: not a.hold and a.header.stamp.sec == 12, "answer")
        assert a.raw_action[0] == pytest.approx(51 / 255 * 2 - 1, abs=1e-6)
        # the standard lifecycle services drive it (what `ros2 lifecycle set` calls)
        change = h.t.create_client(ChangeState, "/vla_policy_node/change_state")
        assert change.wait_for_service(timeout_sec=DEADLINE)
        for transition in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_ACTIVATE):
            fut = change.call_async(ChangeState.Request(transition=Transition(id=transition)))
            wait_for(fut.done, DEADLINE, what=f"transition {transition}")
            assert fut.result().success
        h.wait_action(lambda a: a.hold_reason == "inactive", "the hold commanded on deactivate")
        mark = len(h.snapshot())
        h.publish_until(h.pub_image, h.make_image(value=52, stamp=13.0),
                        lambda: any(not a.hold and a.header.stamp.sec == 13 for a in h.snapshot()), "answer again")
    finally:
        rc = proc.stop()
        log = proc.log_path.read_text(errors="replace")
        print(log)  # shown by pytest if the test fails
    assert rc == 0, log
    assert not proc.group_alive()
    assert "Traceback" not in log
    h.wait_action(lambda a: a.hold_reason == "inactive", "the final hold on SIGINT", start=mark)


@pytest.mark.parametrize(("override", "code", "says"), [
    ("gripper_mode:=sticky", 2, "gripper_mode"),
    ("control_rate_hz:=0.0", 2, "control_rate_hz"),
    ("sensor_reliability:=fast", 2, "sensor_reliability"),
    ("gripper_joint_names:=[only_one]", 2, "gripper_joint_names"),
    ("backend:=no_such_backend", 1, "no_such_backend"),
])
def test_console_script_refuses_bad_start_parameters(tmp_path, override, code, says):
    exe = Path(sys.executable).parent / "vla_policy_node"
    proc = ManagedProcess([str(exe), "--ros-args", "-p", override], tmp_path / "node.log")
    try:
        proc.proc.wait(DEADLINE)
    finally:
        rc = proc.stop()
    log = proc.log_path.read_text(errors="replace")
    assert rc == code and says in log and "Traceback" not in log, log
    assert not proc.group_alive()
