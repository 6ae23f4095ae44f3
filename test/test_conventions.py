import numpy as np
import pytest

from vla_ros import conventions as cv


def test_flip_rot180_and_vflip():
    img = np.arange(2 * 3 * 3).reshape(2, 3, 3).astype(np.uint8)
    assert np.array_equal(cv.flip_image(img, "rot180"), img[::-1, ::-1])
    assert np.array_equal(cv.flip_image(img, "vflip"), img[::-1])
    assert np.array_equal(cv.flip_image(img, "none"), img)
    # batch form flips each frame the same way
    batch = np.stack([img, img + 1])
    assert np.array_equal(cv.flip_image(batch, "rot180")[1], (img + 1)[::-1, ::-1])
    assert cv.flip_image(img, "rot180").flags["C_CONTIGUOUS"]
    with pytest.raises(ValueError, match="unknown image flip"):
        cv.flip_image(img, "rot90")


@pytest.mark.parametrize("conv", cv.GRIPPER_CONVENTIONS)
def test_gripper_round_trip(conv):
    for closure in (0.0, 0.25, 1.0):
        raw = cv.closure_to_gripper(closure, conv)
        assert cv.gripper_to_closure(raw, conv) == pytest.approx(closure)


def test_gripper_meanings():
    assert cv.gripper_to_closure(-1.0, "libero_sign") == 0.0  # LIBERO -1 = open
    assert cv.gripper_to_closure(1.0, "libero_sign") == 1.0
    assert cv.gripper_to_closure(1.0, "openvla_open01") == 0.0  # OpenVLA 1 = open
    assert cv.closure_to_libero_binary(0.9) == 1.0
    assert cv.closure_to_libero_binary(0.1) == -1.0
    assert cv.closure_to_libero_binary(0.5) == -1.0


def test_suite_constants():
    assert cv.max_steps_for("libero_spatial") == 220
    assert cv.max_steps_for("libero_10") == 520
    with pytest.raises(ValueError, match="known"):
        cv.max_steps_for("libero_nope")
    a = cv.settle_action()
    assert a.shape == (7,) and a[-1] == -1 and not a[:6].any()
