"""vla_ros.controller, ROS-free: hold decisions, action shaping, input checks, the newest-frame slot."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vla_ros.controller import (
    ControllerConfig,
    LatestSlot,
    RateMeter,
    RejectionLog,
    check_image_size,
    hold_reason,
    shape_action,
    validate_instruction,
)
from vla_ros.conventions import LIBERO_ACTION_SPACE

SPACE = LIBERO_ACTION_SPACE


def _reason(**kw):
    base = dict(active=True, enabled=True, finished=False, instruction="go", frame_age_s=0.1, image_timeout_s=0.5)
    return hold_reason(**{**base, **kw})


def test_hold_reasons_and_their_order():
    assert _reason() == ""
    assert _reason(frame_age_s=0.6) == "stale_image"
    assert _reason(frame_age_s=None) == "stale_image"  # no frame yet
    assert _reason(instruction=None, frame_age_s=None) == "no_instruction"
    assert _reason(instruction="") == "no_instruction"
    assert _reason(finished=True, instruction=None) == "finished"
    assert _reason(enabled=False, finished=True) == "disabled"
    assert _reason(active=False, enabled=False) == "inactive"


def test_shape_action_converts_clamps_and_limits():
    cfg = ControllerConfig()
    cmd = shape_action(np.array([0.5, -0.2, 0, 0, 0, 0.4, 1.0]), SPACE, "libero_sign", cfg)
    np.testing.assert_allclose(cmd.linear, [0.025, -0.01, 0])
    np.testing.assert_allclose(cmd.angular, [0, 0, 0.2])
    assert cmd.gripper == 1.0 and cmd.dt == SPACE.dt
    # per-dimension clamp in controller units, before conversion
    cfg = ControllerConfig(clamp_low=(-1, -1, -0.1, -1, -1, -1), clamp_high=(0.2, 1, 1, 1, 1, 1))
    cmd = shape_action(np.array([3.0, 0, -3.0, 0, 0, 0, -1]), SPACE, "libero_sign", cfg)
    np.testing.assert_allclose(cmd.linear, [0.2 * 0.05, 0, -0.1 * 0.05])
    # the step norm limit keeps the direction
    cfg = ControllerConfig(max_linear_step_m=0.01, max_angular_step_rad=0.1)
    cmd = shape_action(np.array([1.0, 1.0, 0, 0, 0, -1.0, 0]), SPACE, "libero_sign", cfg)
    assert np.linalg.norm(cmd.linear) == pytest.approx(0.01)
    np.testing.assert_allclose(cmd.linear[0], cmd.linear[1])
    np.testing.assert_allclose(cmd.angular, [0, 0, -0.1])


def test_gripper_mapping_modes_and_override():
    raw = np.array([0, 0, 0, 0, 0, 0, 0.2])
    assert shape_action(raw, SPACE, "libero_sign", ControllerConfig()).gripper == pytest.approx(0.6)
    binary = ControllerConfig(gripper_mode="binary")
    assert shape_action(raw, SPACE, "libero_sign", binary).gripper == 1.0
    assert shape_action(raw, SPACE, "libero_sign", binary.with_updates(gripper_threshold=0.7)).gripper == 0.0
    # OpenVLA's LIBERO checkpoints emit 1 = open: the override inverts whatever the checkpoint says
    ovla = ControllerConfig(gripper_convention="openvla_open01", gripper_mode="binary")
    assert shape_action(np.array([0, 0, 0, 0, 0, 0, 1.0]), SPACE, "libero_sign", ovla).gripper == 0.0
    assert shape_action(np.array([0, 0, 0, 0, 0, 0, 0.0]), SPACE, "libero_sign", ovla).gripper == 1.0


@pytest.mark.parametrize("raw", [[0, 0, np.nan, 0, 0, 0, 0], [0, 0, 0, np.inf, 0, 0, 0], [0, 0, 0],
                                 [0, 0, 0, 0, 0, 0, np.nan]])
def test_shape_action_refuses_bad_output(raw):
    with pytest.raises(ValueError):
        shape_action(np.array(raw, dtype=float), SPACE, "libero_sign", ControllerConfig())


@pytest.mark.parametrize("changes", [dict(gripper_mode="sticky"), dict(gripper_threshold=1.0),
                                     dict(clamp_low=[-1] * 5), dict(clamp_low=[2] * 6),
                                     dict(max_linear_step_m=0.0), dict(gripper_convention="weird"),
                                     dict(min_image_side=100, max_image_side=50)])
def test_config_validation_rejects(changes):
    with pytest.raises(ValueError):
        ControllerConfig().with_updates(**changes)


def test_instruction_validation():
    assert validate_instruction("  put the  bowl\n on the plate ", 100) == "put the bowl on the plate"
    for bad in ["", "   \n", "x" * 101, "open\x00door"]:
        with pytest.raises(ValueError):
            validate_instruction(bad, 100)


def test_image_size_checks():
    cfg = ControllerConfig(min_image_side=16, max_image_side=64)
    check_image_size(np.zeros((16, 64, 3), np.uint8), cfg)
    for shape in [(8, 32, 3), (32, 65, 3)]:
        with pytest.raises(ValueError):
            check_image_size(np.zeros(shape, np.uint8), cfg)


def test_latest_slot_keeps_only_newest_and_counts_drops():
    slot: LatestSlot[int] = LatestSlot()
    assert slot.take() is None and slot.peek() is None
    slot.put(1)
    slot.put(2)  # 1 never taken: dropped
    slot.put(3)
    assert slot.dropped == 2
    assert slot.take() == 3 and slot.take() is None and slot.peek() == 3
    slot.put(4)  # 3 was taken: no drop
    assert slot.dropped == 2


def test_rejection_log_once_per_burst():
    now = [0.0]
    lines: list[str] = []
    log = RejectionLog(lines.append, quiet_s=1.0, clock=lambda: now[0])
    for _ in range(50):  # one burst at 100 Hz
        log.reject("image", "bad encoding")
        now[0] += 0.01
    assert len(lines) == 1 and log.total == 50
    now[0] += 5.0  # quiet, then a new burst: one line that reports the suppressed ones
    log.reject("instruction", "empty")
    assert len(lines) == 2 and "49 more" in lines[1]
    assert log.by_kind == {"image": 50, "instruction": 1}


def test_rate_meter():
    now = [0.0]
    meter = RateMeter(window_s=2.0, clock=lambda: now[0])
    for _ in range(21):
        meter.tick()
        now[0] += 0.05
    assert meter.rate() == pytest.approx(20.0)


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(raw=st.lists(finite, min_size=7, max_size=7),
       lin=st.floats(min_value=1e-4, max_value=1.0), ang=st.floats(min_value=1e-4, max_value=6.3),
       lo=st.floats(min_value=-1.0, max_value=0.0), hi=st.floats(min_value=0.0, max_value=1.0),
       binary=st.booleans())
def test_shaped_commands_always_respect_every_bound(raw, lin, ang, lo, hi, binary):
    cfg = ControllerConfig(clamp_low=(lo,) * 6, clamp_high=(hi,) * 6, max_linear_step_m=lin,
                           max_angular_step_rad=ang, gripper_mode="binary" if binary else "continuous")
    cmd = shape_action(np.array(raw), SPACE, "libero_sign", cfg)
    assert np.linalg.norm(cmd.linear) <= lin * (1 + 1e-9)
    assert np.linalg.norm(cmd.angular) <= ang * (1 + 1e-9)
    units = np.concatenate([cmd.linear / SPACE.linear_unit_m, cmd.angular / SPACE.angular_unit_rad])
    assert np.all(units >= lo - 1e-9) and np.all(units <= hi + 1e-9)  # norm limits only shrink toward 0
    assert 0.0 <= cmd.gripper <= 1.0 and (not binary or cmd.gripper in (0.0, 1.0))


# ---------------------------------------------------------------- issue #20: input edges, per-reason log


@pytest.mark.parametrize(("text", "reason"), [
    ("open\x00door", "nul"),  # ROS strings end at a NUL: the rest would be lost
    ("open\x7fdoor", "control_character"),  # DEL
    ("open\x85door", "control_character"),  # C1 (NEL)
    ("open\x9bdoor", "control_character"),  # C1 (CSI)
    ("go\x1b[2Jthere", "control_character"),  # C0 escape
    ("pick \u202eetalp eht\u202c up", "bidi_control"),  # right-to-left override + pop
    ("pick \u2066up\u2069", "bidi_control"),  # isolates
    ("pick \u202aup", "bidi_control"),  # embedding
    ("\u200b\u200c \u200d\u2060\ufeff", "zero_width_only"),
    ("bad\udc80decode", "invalid_utf8"),  # a lone surrogate, from decoding with surrogateescape
    ("bad\ud800", "invalid_utf8"),  # a lone surrogate, from JSON's "\ud800"
    ("op\ufffden", "invalid_utf8"),  # what rclpy makes of invalid UTF-8 bytes
    ("", "empty"),
    (" \t\n", "empty"),
    ("x" * 101, "too_long"),
])
def test_instruction_rejections_name_their_reason(text, reason):
    from vla_ros.controller import RejectedInputError, rejection_reason

    with pytest.raises(RejectedInputError) as caught:
        validate_instruction(text, 100)
    assert caught.value.reason == reason
    assert rejection_reason(str(caught.value)) == reason  # the reason survives str(exc), as the node logs it


def test_instructions_with_visible_text_and_ordinary_unicode_pass():
    assert validate_instruction("pick\tthe bowl\r\n", 100) == "pick the bowl"
    assert validate_instruction("lege die Schüssel auf den Teller", 100) == "lege die Schüssel auf den Teller"
    assert validate_instruction("\u200bput it down", 100) == "\u200bput it down"  # zero-width plus visible text
    assert validate_instruction("x" * 100, 100) == "x" * 100


def test_image_size_rejection_has_a_reason():
    from vla_ros.controller import RejectedInputError

    with pytest.raises(RejectedInputError) as caught:
        check_image_size(np.zeros((8, 32, 3), np.uint8), ControllerConfig())
    assert caught.value.reason == "image_size"


def test_rejection_log_names_every_reason_of_a_burst_and_counts_each():
    now = [0.0]
    lines: list[str] = []
    log = RejectionLog(lines.append, quiet_s=1.0, clock=lambda: now[0])

    def reject(text: str) -> None:
        try:
            validate_instruction(text, 10)
        except ValueError as exc:  # the node passes str(exc), as here
            log.reject("instruction", str(exc))
        now[0] += 0.01

    for _ in range(20):  # one burst, three reasons interleaved
        reject("open\x00door")
        reject("x" * 11)
        reject("\u202eabc")
    assert len(lines) == 3  # the first of each reason at once, the rest suppressed
    assert "NUL" in lines[0] and "too_long" in lines[1] and "bidi" in lines[2]
    assert log.by_reason == {"instruction.nul": 20, "instruction.too_long": 20, "instruction.bidi_control": 20}
    assert log.by_kind == {"instruction": 60}
    now[0] += 5.0  # quiet: the next burst's first line summarises the last one per reason
    log.reject("image", "unsupported encoding '16UC1'")
    assert len(lines) == 4
    assert all(f"19 more instruction ({r})" in lines[3] for r in ("nul", "too_long", "bidi_control")), lines[3]
    assert log.by_reason["image.other"] == 1  # a detail without a reason tag


def test_rejection_log_untagged_details_differ_by_text_not_by_numbers():
    now = [0.0]
    lines: list[str] = []
    log = RejectionLog(lines.append, quiet_s=1.0, clock=lambda: now[0])
    for k in range(10):  # sizes vary, the reason does not: one line
        log.reject("image", f"truncated data: {k} bytes for 4x4 rgb8 (step 12)")
        now[0] += 0.01
    for enc in ("16UC1", "32FC1", "yuv422"):  # attacker-chosen text in quotes does not make new reasons either
        log.reject("image", f"unsupported encoding {enc!r}")
        now[0] += 0.01
    assert len(lines) == 2, lines
    assert "truncated" in lines[0] and "unsupported encoding" in lines[1]


def test_rejection_log_flush_summarises_a_finished_burst_once():
    now = [0.0]
    lines: list[str] = []
    log = RejectionLog(lines.append, quiet_s=1.0, clock=lambda: now[0])
    for _ in range(5):
        log.reject("image", "bad [image_size]")
        now[0] += 0.1
    log.flush()  # the burst may still go on: nothing yet
    assert len(lines) == 1
    now[0] += 2.0
    log.flush()
    log.flush()
    assert len(lines) == 2 and "4 more image (image_size)" in lines[1]
    log.reject("image", "bad [image_size]")  # a new burst: logged at once, nothing left to summarise
    assert len(lines) == 3 and "more" not in lines[2]


def test_rejection_log_bounds_the_lines_of_one_burst():
    lines: list[str] = []
    log = RejectionLog(lines.append, quiet_s=1.0, clock=lambda: 0.0)
    for k in range(200):  # distinct texts: a bounded number of lines, the rest counted
        log.reject("image", f"reason{'abcdefghijklmnopqrstuvwxyz'[k % 26]}{'abcdefghij'[k // 26 % 10]}")
    assert len(lines) <= 20 and log.total == 200


def test_an_instruction_from_its_wire_form_keeps_what_rclpy_would_cut():
    """std_msgs/String as CDR (a raw subscription): a C++ publisher's NUL and invalid UTF-8 bytes are kept, so
    validate_instruction can refuse them; rclpy's own conversion cuts at the NUL and puts U+FFFD instead."""
    from vla_ros.controller import RejectedInputError, instruction_from_cdr

    def cdr(payload: bytes, little: bool = True) -> bytes:
        n = len(payload) + 1  # the length counts the terminating NUL
        return (b"\x00\x01\x00\x00" if little else b"\x00\x00\x00\x00") + n.to_bytes(4, "little" if little else
                                                                                    "big") + payload + b"\x00"

    assert instruction_from_cdr(cdr(b"put it down")) == "put it down"
    assert instruction_from_cdr(cdr("Schüssel".encode(), little=False)) == "Schüssel"
    for payload, reason in [(b"open\x00door", "nul"), (b"op\xffen", "invalid_utf8")]:
        with pytest.raises(RejectedInputError) as caught:
            validate_instruction(instruction_from_cdr(cdr(payload)), 100)
        assert caught.value.reason == reason
    for broken in [b"", b"\x00\x01\x00\x00", cdr(b"abc")[:-2], b"\x00\x01\x00\x00\xff\xff\xff\x7fabc"]:
        with pytest.raises(RejectedInputError) as caught:
            instruction_from_cdr(broken)
        assert caught.value.reason == "malformed"

