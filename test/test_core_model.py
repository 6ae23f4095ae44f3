"""Native Prismatic VLA: the openvla-7b layout, presets, save/load, preprocessing, decoding (fast == plain),
episode-end token and action chunks. CPU only, tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from core_fixtures import INSTRUCTIONS, save_tiny, tiny_model

from vla_ros.backends.native import PrismaticPolicy, load
from vla_ros.models.prismatic import PrismaticForActionPrediction, PrismaticProcessor, make_config
from vla_ros.models.prismatic.checkpoint import load_model
from vla_ros.models.prismatic.fast_decode import StaticGreedyDecoder
from vla_ros.models.prismatic.processor_prismatic import resize_and_crop
from vla_ros.normalization import UnnormKeyError

# Tensor names and shapes of the public openvla/openvla-7b checkpoint (a listing, no weights), kept in the repo
# so this check never depends on a file outside the checkout.
SHARED = Path(__file__).resolve().parent / "data" / "openvla-7b-state-dict.json"
RNG = np.random.default_rng(0)
IMG = RNG.integers(0, 256, (96, 96, 3), dtype=np.uint8)


def test_openvla_7b_preset_matches_the_checkpoint_layout_exactly():
    with torch.device("meta"):
        model = PrismaticForActionPrediction(make_config("openvla-7b"))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    ref = json.loads(SHARED.read_text())["tensors"]
    assert len(ref) == 982
    assert sorted(ours) == sorted(ref)
    assert {k: v for k, v in ours.items() if ref[k] != v} == {}
    assert sum(int(np.prod(s)) for s in ours.values()) == 7_541_237_184
    cfg = model.config
    assert cfg.action_vocab_size == 32000 and cfg.text_config.vocab_size == 32064  # tokenizer vs padded rows


def test_layerscale_is_named_scale_factor_and_features_come_from_second_to_last_block():
    model, _ = tiny_model()
    names = [n for n, _ in model.named_parameters()]
    assert any(n.endswith("ls1.scale_factor") for n in names) and not any(n.endswith(".gamma") for n in names)
    vit = model.vision_backbone.featurizer
    x = torch.randn(1, 3, 56, 56)
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append(m)) for b in vit.blocks]
    feats = model.vision_backbone(torch.cat([x, x], dim=1))
    for h in hooks:
        h.remove()
    assert vit.blocks[-1] not in seen and vit.blocks[-2] in seen  # the last block never runs
    n_patches = vit.patch_embed.num_patches
    assert feats.shape == (1, n_patches, model.vision_backbone.embed_dim)
    assert model.vision_backbone.embed_dim == 64  # fused: 32 + 32 channels


def test_save_load_round_trip_is_exact(tmp_path):
    model, _tok = tiny_model()
    ckpt = save_tiny(tmp_path / "ck")
    for f in ("config.json", "model.safetensors", "tokenizer.json", "dataset_statistics.json"):
        assert (ckpt / f).is_file(), f
    loaded, _proc = load_model(ckpt, device="cpu")
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.config.n_action_bins == 256 and loaded.config.norm_stats.keys() == {"libero_spatial",
                                                                                         "libero_object"}


def test_processor_prompt_resize_crop_and_normalisation():
    model, tok = tiny_model()
    proc = PrismaticProcessor(tok, model.config)
    assert proc.prompt("Pick Up The Bowl") == "In: What action should the robot take to pick up the bowl?\nOut:"
    with pytest.raises(ValueError, match="non-empty"):
        proc.prompt("  ")
    pix = proc.pixel_values([IMG])
    assert pix.shape == (1, 6, 56, 56) and pix.dtype == torch.float32
    # DINOv2 half: ImageNet statistics; SigLIP half: mean 0.5 / std 0.5
    resized = np.asarray(resize_and_crop(IMG, 56), dtype=np.float32) / 255.0
    np.testing.assert_allclose(pix[0, 3:].permute(1, 2, 0).numpy(), (resized - 0.5) / 0.5, atol=1e-6)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(pix[0, :3].permute(1, 2, 0).numpy(), (resized - mean) / std, atol=1e-5)
    # centre crop: 90% area, resized back; a centred marker grows, the border disappears
    img = np.zeros((56, 56, 3), np.uint8)
    img[:1] = 255  # top border row: inside the 5% margin that the crop removes
    cropped = np.asarray(resize_and_crop(img, 56, center_crop=True))
    assert cropped[:1].max() < 128 and np.asarray(resize_and_crop(img, 56))[:1].min() > 128
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        proc.pixel_values([IMG.astype(np.float32)])


def test_llama2_space_suffix_only_for_llama_tokenizers():
    model, tok = tiny_model(prompt_suffix_token_id=29871)
    proc = PrismaticProcessor(tok, model.config)
    assert proc.suffix_id is None  # our tokenizer has no id 29871 ("▁"): OpenVLA's hack must not apply
    ids, _ = proc.tokenize([proc.prompt("go")])
    assert ids[0, -1].item() != 29871 and ids[0, 0].item() == tok.bos_token_id


def test_fast_static_decoder_matches_plain_greedy_decoding():
    model, tok = tiny_model("tiny-128", text_overrides={"initializer_range": 0.2})  # peaked logits
    pol = PrismaticPolicy(model, PrismaticProcessor(tok, model.config), unnorm_key="libero_spatial")
    for i, text in enumerate(INSTRUCTIONS):
        img = np.random.default_rng(i).integers(0, 256, (128, 128, 3), dtype=np.uint8)
        plain = pol.decode_tokens([img], [text], fast=False)
        fast = pol.decode_tokens([img], [text], fast=True)
        assert plain.shape == (1, 7)
        np.testing.assert_array_equal(fast, plain)
    # the HF-layer decode step (no fused projections) gives the same tokens as the fused one
    unfused = StaticGreedyDecoder(model, fused=False)
    ids, _ = pol.processor.tokenize([pol.processor.prompt(INSTRUCTIONS[0])])
    img = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    np.testing.assert_array_equal(unfused.generate(ids, pol.processor.pixel_values([img])),
                                  pol.decode_tokens([img], [INSTRUCTIONS[0]], fast=False))


def test_batched_prompts_of_different_lengths_equal_single_calls():
    model, tok = tiny_model("tiny-128", text_overrides={"initializer_range": 0.2})
    pol = PrismaticPolicy(model, PrismaticProcessor(tok, model.config), unnorm_key="libero_spatial")
    imgs = [np.random.default_rng(i).integers(0, 256, (128, 128, 3), dtype=np.uint8) for i in range(3)]
    texts = ["go", INSTRUCTIONS[0], INSTRUCTIONS[1]]
    batched = pol.decode_tokens(imgs, texts, fast=False)
    singles = np.concatenate([pol.decode_tokens([i], [t], fast=False) for i, t in zip(imgs, texts, strict=True)])
    np.testing.assert_array_equal(batched, singles)
    outs = pol.act_batch(imgs, texts)
    assert len(outs) == 3 and all(o.action.shape == (7,) and o.action.dtype == np.float64 for o in outs)
    with pytest.raises(ValueError, match="as many images"):
        pol.act_batch(imgs, texts[:2])


def test_action_is_the_unnormalised_bin_centre_of_the_decoded_tokens():
    model, tok = tiny_model()
    pol = PrismaticPolicy(model, PrismaticProcessor(tok, model.config), unnorm_key="libero_object")
    tokens = pol.decode_tokens([IMG], ["go"])
    _norm_actions, done = model.tokens_to_actions(tokens)
    expected = pol.normalizer.unnormalize(model.action_tokenizer.decode(tokens[0]))
    np.testing.assert_allclose(pol.predict(IMG, "go"), expected)
    assert not done[0]
    # and through OpenVLA's predict_action signature
    batch = pol.processor(pol.processor.prompt("go"), IMG)
    np.testing.assert_allclose(model.predict_action(**batch, unnorm_key="libero_object", do_sample=False), expected)


def test_metadata_and_unnorm_key_errors(tmp_path):
    ckpt = save_tiny(tmp_path / "ck", gripper_convention="closure01", image_flip="vflip")
    with pytest.raises(UnnormKeyError, match=r"libero_object.*libero_spatial"):
        load(str(ckpt), device="cpu")  # two datasets, no key
    with pytest.raises(UnnormKeyError, match="'nope' not in"):
        load(str(ckpt), device="cpu", unnorm_key="nope")
    pol = load(str(ckpt), device="cpu", unnorm_key="libero_spatial")
    m = pol.metadata
    assert (m.gripper_convention, m.image_flip, m.image_size, m.predicts_done) == ("closure01", "vflip", 56, False)
    assert m.action_space.name == "libero_osc_pose_20hz" and m.extra["unnorm_key"] == "libero_spatial"


def _force_token(model, token_id: int, only_last: bool = False):
    """Make ``token_id`` the greedy choice by adding to its logit (hook on the LM head)."""
    def hook(mod, inp, out):
        out = out.clone()
        out[..., token_id] += 1e4
        return out
    return model.language_model.lm_head.register_forward_hook(hook)


@pytest.mark.parametrize("fast", [False, True])
def test_done_token_is_decoded_after_the_action(fast):
    model, tok = tiny_model()
    cont, done_id = model.config.done_token_ids if model.config.done_token_ids else (300, 301)
    model2, _ = tiny_model(predict_done=True, done_token_ids=[cont, done_id])
    pol = PrismaticPolicy(model2, PrismaticProcessor(tok, model2.config), unnorm_key="libero_spatial", fast=fast)
    assert pol.metadata.predicts_done and model2.config.n_action_tokens == 8
    h = _force_token(model2, done_id)
    out = pol.act(IMG, "go")
    tokens = pol.decode_tokens([IMG], ["go"])
    h.remove()
    assert out.done and tokens[0, -1] == done_id
    h = _force_token(model2, cont)
    assert not pol.act(IMG, "go").done
    h.remove()
    # forcing an action token for the action steps does not leak into the done step (restricted choice)
    h = _force_token(model2, model2.config.action_vocab_size - 10)
    tokens = pol.decode_tokens([IMG], ["go"])
    h.remove()
    assert tokens[0, -1] in (cont, done_id) and np.all(tokens[0, :7] == model2.config.action_vocab_size - 10)


def test_action_chunks_are_queued_one_per_call_and_reset_clears_them():
    model, tok = tiny_model(action_chunk=3)
    pol = PrismaticPolicy(model, PrismaticProcessor(tok, model.config), unnorm_key="libero_spatial")
    assert model.config.n_action_tokens == 21
    tokens = pol.decode_tokens([IMG], ["go"])
    chunk = pol.normalizer.unnormalize(model.tokens_to_actions(tokens)[0][0])
    calls = []
    orig = pol.decode_tokens
    pol.decode_tokens = lambda *a, **k: (calls.append(1), orig(*a, **k))[1]
    got = [pol.predict(IMG, "go") for _ in range(3)]
    assert len(calls) == 1  # one model call for three actions
    np.testing.assert_allclose(np.stack(got), chunk)
    pol.predict(IMG, "go")
    pol.reset()
    pol.predict(IMG, "go")
    assert len(calls) == 3  # reset dropped the queued actions


def test_training_forward_gives_a_loss_on_text_positions_only():
    model, tok = tiny_model()
    proc = PrismaticProcessor(tok, model.config)
    batch = proc(proc.prompt("go"), IMG)
    labels = batch["input_ids"].clone()
    labels[:, :-2] = -100
    out = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], labels=labels)
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    out.loss.backward()
    assert model.projector.fc1.weight.grad is not None  # gradients reach the projector through the patches


@pytest.mark.slow
def test_training_layout_matches_decoding_a_tiny_model_learns_its_actions():
    """Train a tiny model on two (image, instruction) -> action examples with training_batch; greedy decoding
    must then give back exactly those action tokens (catches any off-by-one between training and inference)."""
    model, tok = tiny_model(predict_done=True, done_token_ids=[300, 301])
    model.train()
    proc = PrismaticProcessor(tok, model.config)
    imgs = [np.random.default_rng(i).integers(0, 256, (56, 56, 3), dtype=np.uint8) for i in range(2)]
    texts = ["go", INSTRUCTIONS[0]]  # different lengths: exercises the right padding
    actions = np.array([[0.5, -0.2, 0.0, 0.1, 0.9, -0.9, 1.0], [-0.5, 0.3, 0.7, -0.1, 0.0, 0.2, -1.0]])
    targets = np.concatenate([model.action_tokenizer.encode(actions), [[301], [300]]], axis=1)  # done, continue
    batch = proc.training_batch(imgs, texts, targets)
    assert (batch["labels"] != -100).sum().item() == 2 * (7 + 1 + 1)  # actions + done + EOS
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(150):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 1e-2:  # every target token at p > 0.99: greedy reproduces it
            break
    model.eval()
    pol = PrismaticPolicy(model, proc, unnorm_key="libero_spatial")
    for fast in (False, True):
        np.testing.assert_array_equal(pol.decode_tokens(imgs[:1], texts[:1], fast=fast), targets[:1])
        np.testing.assert_array_equal(pol.decode_tokens(imgs[1:], texts[1:], fast=fast), targets[1:])
    assert pol.act(imgs[0], texts[0]).done and not pol.act(imgs[1], texts[1]).done
