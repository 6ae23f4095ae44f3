"""Optional model inputs (wrist camera, proprio) and the done threshold, in the ROS-free core."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from core_fixtures import save_tiny, tiny_model

from vla_ros.backends import load_policy
from vla_ros.models.prismatic import PrismaticProcessor
from vla_ros.proprio import (
    PROPRIO_DIM,
    axis_angle_to_quat_xyzw,
    normalize_proprio,
    proprio_from_axis_angle,
    proprio_statistics,
    proprio_vector,
    quat_xyzw_to_axis_angle,
)

INSTR = "pick up the black bowl and place it on the plate"
PROPRIO_STATS = proprio_statistics(np.random.default_rng(0).normal(size=(50, PROPRIO_DIM)))


def _rot_x(angle: float) -> np.ndarray:
    return np.array([np.sin(angle / 2), 0.0, 0.0, np.cos(angle / 2)])


def test_proprio_vector_layout_and_continuity_through_pi() -> None:
    # a gripper pointing down is a rotation of ~pi about x: axis-angle jumps there, the 6-D form does not
    a, b = _rot_x(np.pi - 1e-3), -_rot_x(np.pi + 1e-3)  # nearly equal poses, quaternions of opposite sign
    aa_a, aa_b = quat_xyzw_to_axis_angle(a), quat_xyzw_to_axis_angle(b)
    assert np.linalg.norm(aa_a - aa_b) > 6.0  # the discontinuity the layout avoids
    va = proprio_vector([0.1, 0.2, 1.0], a, [0.04, -0.04])
    vb = proprio_vector([0.1, 0.2, 1.0], b, [0.04, -0.04])
    assert va.shape == (PROPRIO_DIM,)
    np.testing.assert_allclose(va, vb, atol=3e-3)
    np.testing.assert_allclose(va[:3], [0.1, 0.2, 1.0])
    np.testing.assert_allclose(va[3:9], [1, 0, 0, 0, -1, 0], atol=3e-3)  # R e_x = e_x, R e_y ~ -e_y
    np.testing.assert_allclose(va[9:], [0.04, -0.04])


def test_proprio_from_dataset_keys_equals_the_live_vector() -> None:
    rng = np.random.default_rng(1)
    q = rng.normal(size=(20, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    pos, fingers = rng.normal(size=(20, 3)), rng.normal(size=(20, 2))
    live = proprio_vector(pos, q, fingers)
    stored = proprio_from_axis_angle(pos, quat_xyzw_to_axis_angle(q), fingers)  # LIBERO stores axis-angle
    np.testing.assert_allclose(stored, live, atol=1e-9)
    np.testing.assert_allclose(quat_xyzw_to_axis_angle(axis_angle_to_quat_xyzw([0.3, -0.2, 0.1])), [0.3, -0.2, 0.1])


def test_proprio_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        proprio_vector([0, 0, 0], [0, 0, 0, 0], [0, 0])  # zero quaternion
    with pytest.raises(ValueError):
        proprio_vector([0, 0], [0, 0, 0, 1], [0, 0])
    with pytest.raises(ValueError):
        proprio_vector([np.nan, 0, 0], [0, 0, 0, 1], [0, 0])
    with pytest.raises(ValueError, match="expects 11"):
        normalize_proprio(np.zeros(8), PROPRIO_STATS)
    assert np.abs(normalize_proprio(np.full(11, 1e6), PROPRIO_STATS)).max() <= 5.0  # clipped


def _wrist_proprio_model():
    return tiny_model("tiny-128", extra_images=["wrist"], proprio_stats=PROPRIO_STATS)


def test_extra_views_and_proprio_reach_the_decoder() -> None:
    model, tok = _wrist_proprio_model()
    proc = PrismaticProcessor(tok, model.config)
    rng = np.random.default_rng(0)
    img, wrist = (rng.integers(0, 255, (128, 128, 3), dtype=np.uint8) for _ in range(2))
    prop = rng.normal(size=PROPRIO_DIM)
    pix = proc.model_pixel_values([img], {"wrist": [wrist]})
    assert pix.shape == (1, 6, 128, 128)
    p = proc.proprio_values([prop], 1)
    prefix = model.embed_prefix(pix, p)
    n_patches = model.vision_backbone.num_patches
    assert prefix.shape[1] == 2 * n_patches + 1  # main patches, wrist patches, one proprio token
    # each view goes through the same backbone: the wrist half equals the main camera's encoding of it
    swapped = model.embed_images(proc.model_pixel_values([wrist], {"wrist": [img]}))
    torch.testing.assert_close(prefix[:, n_patches:2 * n_patches], swapped[:, :n_patches])
    torch.testing.assert_close(prefix[:, :n_patches], swapped[:, n_patches:])
    # the wrist image and the proprio change the prefix (they are inputs, not ignored)
    other = model.embed_prefix(proc.model_pixel_values([img], {"wrist": [img]}), p)
    assert not torch.allclose(other[:, n_patches:2 * n_patches], prefix[:, n_patches:2 * n_patches])
    moved = model.embed_prefix(pix, proc.proprio_values([prop + 1.0], 1))
    assert not torch.allclose(moved[:, -1], prefix[:, -1])
    torch.testing.assert_close(moved[:, :-1], prefix[:, :-1])


def test_policy_with_extra_inputs_requires_them(tmp_path) -> None:
    model, tok = _wrist_proprio_model()
    from vla_ros.models.prismatic.checkpoint import save_checkpoint

    path = save_checkpoint(model, tok, tmp_path / "ckpt", model.config.norm_stats)
    policy = load_policy("native", str(path), device="cpu", unnorm_key="libero_spatial")
    assert policy.metadata.extra_images == ("wrist",)
    assert policy.metadata.proprio_layout == "eef_rot6d_gripper"
    assert policy.needs_extra_inputs
    img = np.zeros((128, 128, 3), np.uint8)
    prop = proprio_vector([0.0, 0.0, 1.0], [1.0, 0, 0, 0], [0.04, -0.04])
    a = policy.predict(img, INSTR, extra_images={"wrist": img}, proprio=prop)
    assert a.shape == (7,) and np.all(np.isfinite(a))
    with pytest.raises(ValueError, match="wrist"):
        policy.predict(img, INSTR, proprio=prop)
    with pytest.raises(ValueError, match="proprio"):
        policy.predict(img, INSTR, extra_images={"wrist": img})
    # the same decision as the model's own plain decode (no hidden preprocessing differences)
    proc = policy.processor
    ids, mask = proc.tokenize([proc.prompt(INSTR)])
    tokens = model.generate_action_tokens(ids, proc.model_pixel_values([img], {"wrist": [img]}), mask,
                                          proc.proprio_values([prop], 1)).numpy()
    actions, _ = model.tokens_to_actions(tokens)
    np.testing.assert_allclose(policy.normalizer.unnormalize(actions)[0, 0], a)


def test_plain_checkpoints_need_no_extra_inputs(tmp_path) -> None:
    policy = load_policy("native", str(save_tiny(tmp_path / "plain", "tiny-128")), device="cpu",
                         unnorm_key="libero_spatial")
    assert not policy.needs_extra_inputs
    assert policy.predict(np.zeros((128, 128, 3), np.uint8), INSTR).shape == (7,)


def test_done_threshold_gates_the_end_token() -> None:
    model, _ = tiny_model("tiny-128", predict_done=True, done_token_ids=[5, 6])
    logits = torch.full((3, model.config.text_config.vocab_size), -10.0)
    # P(done) against continue: 0.27, 0.73, 0.95
    logits[0, 5], logits[0, 6] = 1.0, 0.0
    logits[1, 5], logits[1, 6] = 0.0, 1.0
    logits[2, 5], logits[2, 6] = 0.0, 3.0
    last = model.config.n_action_tokens - 1
    assert model.select_token(logits, last).tolist() == [5, 6, 6]  # 0.5: the better of the two
    model.config.done_threshold = 0.9
    assert model.select_token(logits, last).tolist() == [5, 5, 6]
    assert model.select_token(logits, 0).tolist() == [5, 6, 6]  # action tokens: plain argmax


def test_done_threshold_backend_option(tmp_path) -> None:
    path = save_tiny(tmp_path / "done", "tiny-128", predict_done=True, done_token_ids=[5, 6])
    policy = load_policy("native", str(path), device="cpu", unnorm_key="libero_spatial", done_threshold=0.95)
    assert policy.model.config.done_threshold == 0.95
    with pytest.raises(ValueError, match="done_threshold"):
        load_policy("native", str(path), device="cpu", unnorm_key="libero_spatial", done_threshold=1.5)


def test_remote_backend_carries_wrist_and_proprio(tmp_path) -> None:
    import threading

    from vla_ros.models.prismatic.checkpoint import save_checkpoint
    from vla_ros.serving import PolicyServer

    model, tok = _wrist_proprio_model()
    path = save_checkpoint(model, tok, tmp_path / "ckpt", model.config.norm_stats)
    local = load_policy("native", str(path), device="cpu", unnorm_key="libero_spatial")
    server = PolicyServer(load_policy("native", str(path), device="cpu", unnorm_key="libero_spatial"),
                          "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = load_policy("remote", server.url)
        assert client.metadata.extra_images == ("wrist",) and client.metadata.proprio_layout == "eef_rot6d_gripper"
        rng = np.random.default_rng(3)
        img, wrist = (rng.integers(0, 255, (128, 128, 3), dtype=np.uint8) for _ in range(2))
        prop = proprio_vector([0.1, 0.0, 1.0], [1.0, 0, 0, 0], [0.04, -0.04])
        np.testing.assert_allclose(client.predict(img, INSTR, extra_images={"wrist": wrist}, proprio=prop),
                                   local.predict(img, INSTR, extra_images={"wrist": wrist}, proprio=prop))
        from vla_ros.backends.remote import RemotePolicyError

        with pytest.raises(RemotePolicyError, match=r"400.*proprio"):  # the server names what is missing
            client.predict(img, INSTR, extra_images={"wrist": wrist})
        assert server.counters["rejected"] == 1
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_done_confirmations_need_consecutive_done_decisions(tmp_path) -> None:
    path = save_tiny(tmp_path / "done", "tiny-128", predict_done=True, done_token_ids=[5, 6])
    policy = load_policy("native", str(path), device="cpu", unnorm_key="libero_spatial", done_confirmations=3)
    said = iter([True, False, True, True, True, True])

    def fake_tokens(images, instructions, **_):
        ids = policy.model.config.done_token_ids
        row = np.full(policy.model.config.n_action_tokens, policy.model.action_tokenizer.vocab_size - 128)
        row[-1] = ids[1] if next(said) else ids[0]
        return row[None]

    policy.decode_tokens = fake_tokens
    img = np.zeros((128, 128, 3), np.uint8)
    assert [policy.act(img, INSTR).done for _ in range(5)] == [False, False, False, False, True]
    policy.reset()  # a new episode starts a new streak
    assert policy.act(img, INSTR).done is False
    with pytest.raises(ValueError, match="done_confirmations"):
        load_policy("native", str(path), device="cpu", unnorm_key="libero_spatial", done_confirmations=0)
