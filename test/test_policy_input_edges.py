"""The ROS side of the node's input edges (issue #20): diagnostics count rejections per kind and per reason;
what rclpy's string conversion does to a NUL, and the raw (CDR) form that keeps it."""

from __future__ import annotations

import pytest

pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")

from vla_ros.controller import RejectionLog, validate_instruction
from vla_ros.nodes import policy_status
from vla_ros_msgs.msg import PolicyStatus

pytestmark = pytest.mark.ros


def test_diagnostics_list_rejections_per_kind_and_reason():
    log = RejectionLog(lambda _line: None)
    for text in ("open\x00door", "\u202eabc", "\u202eabc", ""):
        try:
            validate_instruction(text, 100)
        except ValueError as exc:
            log.reject("instruction", str(exc))
    log.reject("image", "unsupported encoding '16UC1'")
    st = PolicyStatus(state=PolicyStatus.STATE_HOLDING, state_name="holding", hold_reason="no_instruction",
                      rejected_inputs=log.total)
    diag = policy_status.diagnostics(st, "vla_policy_node: control", dict(log.by_kind), dict(log.by_reason))
    values = {kv.key: kv.value for kv in diag.status[0].values}
    assert values["rejected_inputs"] == "5"
    assert values["rejected_instruction"] == "4" and values["rejected_image"] == "1"
    assert values["rejected_instruction.nul"] == "1" and values["rejected_instruction.bidi_control"] == "2"
    assert values["rejected_instruction.empty"] == "1" and values["rejected_image.other"] == "1"


def test_the_wire_form_matches_rclpys():
    from rclpy import serialization
    from std_msgs.msg import String

    from vla_ros.controller import instruction_from_cdr

    raw = serialization.serialize_message(String(data="pick up the black bowl"))
    assert instruction_from_cdr(raw) == "pick up the black bowl"
    assert serialization.serialize_message(String(data="open\x00door")) == serialization.serialize_message(
        String(data="open"))  # why the node cannot see a NUL from a Python publisher
