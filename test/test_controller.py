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
