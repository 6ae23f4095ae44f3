"""vla_policy_node's status: the PolicyStatus state machine in one function, and its diagnostics form."""

from __future__ import annotations

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from vla_ros.policy_control import PolicyControl
from vla_ros_msgs.msg import PolicyStatus

STATE_NAMES = {PolicyStatus.STATE_UNCONFIGURED: "unconfigured", PolicyStatus.STATE_INACTIVE: "inactive",
               PolicyStatus.STATE_ACTIVE: "active", PolicyStatus.STATE_HOLDING: "holding",
               PolicyStatus.STATE_FINISHED: "finished", PolicyStatus.STATE_ERROR: "error"}
ERROR_REASONS = ("inference_error", "invalid_output", "inference_timeout")  # the model, not the world, failed


def state_of(configured: bool, active: bool, finished: bool, last_reason: str) -> tuple[int, str]:
    """(PolicyStatus state, hold reason) from the node's flags and the reason of its last message."""
    if not configured:
        return PolicyStatus.STATE_UNCONFIGURED, "unconfigured"
    if not active:
        return PolicyStatus.STATE_INACTIVE, "inactive"
    if finished:
        return PolicyStatus.STATE_FINISHED, "finished"
    if last_reason in ERROR_REASONS:
        return PolicyStatus.STATE_ERROR, last_reason
    if last_reason:
        return PolicyStatus.STATE_HOLDING, last_reason
    return PolicyStatus.STATE_ACTIVE, ""


def status_msg(control: PolicyControl, rejected_inputs: int, control_rate_hz: float, stamp: Time) -> PolicyStatus:
    """The node's PolicyStatus from its control's state: what it is doing now, whatever it published last."""
    st = PolicyStatus()
    st.header.stamp = stamp
    overdue = control.inference_overdue()  # the model is not answering
    with control.lock:
        stats, policy = control.stats, control.policy
        st.state, st.hold_reason = state_of(policy is not None, control.active, control.finished,
                                            "inference_timeout" if overdue and control.active else stats.last_reason)
        st.state_name = STATE_NAMES[st.state]
        st.model_id = policy.metadata.model_id if policy is not None else ""
        st.instruction = control.instruction or ""
        st.last_inference_ms, st.mean_inference_ms = float(stats.last_ms), float(stats.mean_ms)
        st.actions_published, st.holds_published = stats.actions, stats.holds
        st.rejected_inputs, st.last_error = rejected_inputs, stats.last_error
    st.control_rate_hz = float(control_rate_hz)
    st.dropped_frames = control.frames.dropped
    return st


def diagnostics(st: PolicyStatus, name: str, rejected_by_kind: dict[str, int] | None = None,
                rejected_by_reason: dict[str, int] | None = None) -> DiagnosticArray:
    """The status as one DiagnosticStatus: OK while acting, ERROR on model failures, WARN otherwise.

    ``rejected_by_kind`` adds one ``rejected_<kind>`` value per kind of rejected input (image, instruction,
    wrist_image, joint_states, ee_pose, inputs = an observation whose further inputs never paired);
    ``rejected_by_reason`` (``RejectionLog.by_reason``) one ``rejected_<kind>.<reason>`` per reason, e.g.
    ``rejected_instruction.nul``."""
    level = {PolicyStatus.STATE_ACTIVE: DiagnosticStatus.OK, PolicyStatus.STATE_ERROR: DiagnosticStatus.ERROR}
    diag = DiagnosticArray()
    diag.header.stamp = st.header.stamp
    diag.status = [DiagnosticStatus(
        level=level.get(st.state, DiagnosticStatus.WARN), name=name,
        message=st.state_name + (f" ({st.hold_reason})" if st.hold_reason else ""), hardware_id=st.model_id,
        values=[KeyValue(key=k, value=str(v)) for k, v in (
            ("instruction", st.instruction), ("mean_inference_ms", f"{st.mean_inference_ms:.2f}"),
            ("control_rate_hz", f"{st.control_rate_hz:.2f}"), ("actions_published", st.actions_published),
            ("holds_published", st.holds_published), ("dropped_frames", st.dropped_frames),
            ("rejected_inputs", st.rejected_inputs),
            *((f"rejected_{k}", n) for k, n in sorted((rejected_by_kind or {}).items())),
            *((f"rejected_{k}", n) for k, n in sorted((rejected_by_reason or {}).items())),
            ("last_error", st.last_error))])]
    return diag
