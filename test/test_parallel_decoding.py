"""OpenVLA-OFT's parallel decoding and L1 head on tiny models (CPU): the one-pass forward against an independent
reference, the attention pattern, the training layout and losses, checkpoints of both heads through
``load_policy("native", dir)`` and the policy node, LoRA fine-tunes that change the head, and the config."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from core_fixtures import INSTRUCTIONS, save_tiny, tiny_model

from vla_ros.backends import load_policy
from vla_ros.models.prismatic import PrismaticConfig, PrismaticProcessor
from vla_ros.models.prismatic.checkpoint import load_model
from vla_ros.models.prismatic.parallel_decoding import DECODING_FILE, slot_inputs
from vla_ros.normalization import ActionNormalizer
from vla_ros.training.batching import ActionBatchCollator
from vla_ros.training.checkpoint import build_model, save_policy
from vla_ros.training.loop import LoopConfig, Trainer
from vla_ros.training.synthetic import SyntheticActionDataset

DONE_IDS = [300, 301]
IMG = np.random.default_rng(0).integers(0, 256, (56, 56, 3), dtype=np.uint8)


def _parallel_model(head: str = "tokens", chunk: int = 2, **kw):
    model, tok = tiny_model(parallel_decoding=True, action_head=head, action_chunk=chunk, predict_done=True,
                            done_token_ids=DONE_IDS, text_overrides={"initializer_range": 0.2}, **kw)
    return model, PrismaticProcessor(tok, model.config)


def _inputs(proc, texts):
    ids, mask = proc.tokenize([proc.prompt(t) for t in texts])
    imgs = [np.random.default_rng(i).integers(0, 256, (56, 56, 3), dtype=np.uint8) for i in range(len(texts))]
    return ids, mask, proc.pixel_values(imgs)


# ---------------------------------------------------------------- an independent reference of the decoder
def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rotate(x, pos, theta):
    """Llama's rotary embedding (GPT-NeoX layout: halves rotated), written out from the formula."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = pos.float()[:, None] * inv[None]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def _reference_slots(model, embeds: torch.Tensor, n_slots: int) -> torch.Tensor:
    """One unpadded row (T, H) whose last ``n_slots`` rows are slots, through the Llama layers by hand: positions
    0..T-1, an explicit mask (causal, plus every slot sees every slot) -> final normed slot states."""
    tc = model.config.text_config
    nh, hd, eps = tc.num_attention_heads, tc.hidden_size // tc.num_attention_heads, tc.rms_norm_eps
    t = embeds.shape[0]
    allowed = torch.tril(torch.ones(t, t, dtype=torch.bool))
    allowed[t - n_slots:, t - n_slots:] = True
    pos = torch.arange(t)
    h = embeds
    for layer in model.language_model.model.layers:
        a = layer.self_attn
        x = _rms(h, layer.input_layernorm.weight, eps)
        q, k, v = (p(x).view(t, nh, hd).transpose(0, 1) for p in (a.q_proj, a.k_proj, a.v_proj))
        q, k = _rotate(q, pos, tc.rope_parameters["rope_theta"]), _rotate(k, pos, tc.rope_parameters["rope_theta"])
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        attn = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ v
        h = h + a.o_proj(attn.transpose(0, 1).reshape(t, nh * hd))
        x = _rms(h, layer.post_attention_layernorm.weight, eps)
        m = layer.mlp
        h = h + m.down_proj(torch.nn.functional.silu(m.gate_proj(x)) * m.up_proj(x))
    return _rms(h, model.language_model.model.norm.weight, eps)[t - n_slots:]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_parallel_forward_equals_a_per_row_masked_reference(attn):
    model, proc = _parallel_model("tokens")
    model.set_attn_implementation(attn)
    texts = ["go", INSTRUCTIONS[0]]  # different lengths: the short prompt is left padded
    ids, mask, pix = _inputs(proc, texts)
    assert mask[0].sum() < mask[1].sum()
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pix, attention_mask=mask)
        n = model.config.n_action_tokens
        assert n == 2 * 7 + 1 and out.slot_hidden_states.shape == (2, n, 32) and out.logits.shape[:2] == (2, n)
        for r in range(2):
            # the row alone, without any padding: BOS, patches, prompt, then the learned slot embeddings
            real = ids[r][mask[r].bool()][None]
            emb, _ = model.build_inputs(real, pix[r:r + 1])
            row = torch.cat([emb[0], model.action_slots.embedding.weight], 0)
            ref = _reference_slots(model, row, n)
            torch.testing.assert_close(out.slot_hidden_states[r], ref, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(out.logits[r], model.language_model.lm_head(ref), rtol=1e-4, atol=1e-4)


def test_slots_see_each_other_and_the_prompt_stays_causal():
    model, proc = _parallel_model("tokens")
    ids, mask, pix = _inputs(proc, [INSTRUCTIONS[1]])
    with torch.no_grad():
        embeds, mask4d, pos = slot_inputs(model, ids, pix, mask, None)
        n = model.config.n_action_tokens
        lm = model.language_model.model
        h = lm(inputs_embeds=embeds, attention_mask=mask4d, position_ids=pos).last_hidden_state
        # the prompt's states are the sequential (OpenVLA) model's: plain causal attention over the prompt alone
        plain = lm(inputs_embeds=embeds[:, :-n]).last_hidden_state
        torch.testing.assert_close(h[:, :-n], plain, rtol=1e-5, atol=1e-5)
        # the first slot sees the last one (bidirectional), and the slots' positions continue the prompt's
        changed = embeds.clone()
        changed[:, -1] += 1.0
        h2 = lm(inputs_embeds=changed, attention_mask=mask4d, position_ids=pos).last_hidden_state
        assert not torch.allclose(h2[:, -n], h[:, -n]) and torch.equal(h2[:, :-n], h[:, :-n])
    assert pos[0, -n:].tolist() == list(range(embeds.shape[1] - n, embeds.shape[1]))


def test_the_batch_layout_carries_slot_labels_and_clipped_l1_targets():
    ds = SyntheticActionDataset(4, image_size=56, n_distinct=4, action_chunk=2, seed=0)
    stats = ds.statistics()
    model, tok = build_model("test-fused", ds.instructions, stats, text_vocab_size=300, predict_done=True,
                             action_chunk=2, action_head="l1")
    norm = ActionNormalizer.from_statistics(stats)
    collator = ActionBatchCollator(PrismaticProcessor(tok, model.config), model.config, norm)
    batch = collator([ds[0], ds[3]])  # ds[3] is the synthetic set's done sample
    assert batch["labels"].shape == (2, 15) and batch["action_targets"].shape == (2, 2, 7)
    want = np.clip(norm.normalize(ds[0]["action"]), -1, 1)
    np.testing.assert_allclose(batch["action_targets"][0].numpy(), want, atol=1e-6)
    assert batch["labels"][:, -1].tolist() == model.config.done_token_ids  # continue, then done
    decoded = model.action_tokenizer.decode(batch["labels"][0, :14].numpy()).reshape(2, 7)
    assert np.abs(decoded - want).max() <= model.action_tokenizer.bin_width
    ids, mask = collator.processor.tokenize([collator.processor.prompt(s["instruction"]) for s in (ds[0], ds[3])])
    assert torch.equal(batch["input_ids"], ids) and torch.equal(batch["attention_mask"], mask)  # as when acting


@pytest.mark.parametrize("head", ["l1", "tokens"])
def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(tmp_path, head):
    ds = SyntheticActionDataset(8, image_size=56, n_distinct=4, action_chunk=2, seed=0)
    stats = ds.statistics()
    model, tok = build_model("test-fused", ds.instructions, stats, text_vocab_size=300, predict_done=True,
                             action_chunk=2, action_head=head, parallel_decoding=True)
    collator = ActionBatchCollator(PrismaticProcessor(tok, model.config), model.config,
                                   ActionNormalizer.from_statistics(stats))
    fixed = collator([ds[i] for i in range(8)])

    def loss() -> float:
        model.eval()
        with torch.no_grad():
            value = model(**fixed).loss.item()
        model.train()
        return value

    before = loss()
    cfg = LoopConfig(out=str(tmp_path / "run"), steps=30, batch_size=8, lr=3e-3, schedule="constant", log_every=5,
                     progress=False)
    trainer = Trainer(model, ds, collator, cfg)
    trainer.train()
    after = loss()
    assert after < 0.5 * before, (before, after)
    first, last = trainer.history[0], trainer.history[-1]
    assert last["action_l1"] < first["action_l1"] and last["action_accuracy"] >= first["action_accuracy"]


def _train_cli(out, head: str, chunk: int = 4, predict_done: bool = True) -> None:
    from vla_ros.training.train import main

    assert main(["--synthetic", "16", "--preset", "test-fused", "--out", str(out), "--steps", "3", "--batch-size",
                 "4", "--no-progress", "--log-every", "1", "--text-vocab-size", "300",
                 *(["--predict-done"] if predict_done else []),
                 "--action-chunk", str(chunk), "--action-head", head, "--parallel-decoding"]) == 0


def _force(model, token_id: int):
    def hook(mod, inp, out):
        out = out.clone()
        out[..., token_id] += 1e4
        return out
    return model.language_model.lm_head.register_forward_hook(hook)


@pytest.mark.parametrize("head", ["l1", "tokens"])
def test_checkpoints_of_both_heads_save_load_and_act_a_chunk(tmp_path, head, caplog):
    out = tmp_path / head
    _train_cli(out, head)
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["action_head"], cfg["parallel_decoding"], cfg["action_chunk"]) == (head, True, 4)
    assert json.loads((out / "training_meta.json").read_text())["action_head"] == head
    with caplog.at_level(logging.INFO, logger="vla_ros.backends.native"):
        policy = load_policy("native", str(out), device="cpu")  # fast=True asked: falls back, saying so
    assert "parallel decoding" in caplog.text and not policy.fast
    assert policy.metadata.extra["action_head"] == head and policy.metadata.predicts_done
    sample = SyntheticActionDataset(1, image_size=56)[0]
    calls = []
    orig = policy.model.predict_parallel
    policy.model.predict_parallel = lambda *a, **k: (calls.append(1), orig(*a, **k))[1]
    outs = [policy.act(sample["image"], sample["instruction"]) for _ in range(4)]
    assert len(calls) == 1  # one forward pass for the chunk of four
    chunk = outs[0].actions
    assert chunk.shape == (4, 7) and np.all(np.isfinite(chunk))
    for k, o in enumerate(outs):
        assert o.action.shape == (7,) and o.chunk_index == k and np.array_equal(o.action, chunk[k])
    # the actions are the un-normalised normalised ones of one pass, also through OpenVLA's predict_action
    proc = policy.processor
    batch = proc(proc.prompt(sample["instruction"]), sample["image"])
    norm, _ = policy.model.predict_parallel(batch["input_ids"], batch["pixel_values"], batch["attention_mask"])
    assert np.abs(norm).max() <= 1.0
    np.testing.assert_allclose(chunk, policy.normalizer.unnormalize(norm[0]), atol=1e-6)
    np.testing.assert_allclose(policy.model.predict_action(**batch), chunk, atol=1e-6)
    # the done slot: reported with the chunk's last action; batched calls give each row's first action
    policy.reset()
    h = _force(policy.model, policy.model.config.done_token_ids[1])
    done = [policy.act(sample["image"], sample["instruction"]).done for _ in range(4)]
    h.remove()
    assert done == [False, False, False, True]
    rows = policy.act_batch([sample["image"], IMG], [sample["instruction"], "go"])
    assert len(rows) == 2 and rows[0].chunk_index == 0 and np.allclose(rows[0].action, chunk[0], atol=1e-6)


def test_a_checkpoint_without_the_new_keys_decodes_as_before(tmp_path):
    ckpt = save_tiny(tmp_path / "old", text_overrides={"initializer_range": 0.2})
    new = load_policy("native", str(ckpt), device="cpu", unnorm_key="libero_spatial", fast=False)
    raw = json.loads((ckpt / "config.json").read_text())
    for key in ("action_head", "parallel_decoding"):
        raw.pop(key)  # as a checkpoint written before the options existed
    (ckpt / "config.json").write_text(json.dumps(raw))
    old = load_policy("native", str(ckpt), device="cpu", unnorm_key="libero_spatial", fast=False)
    cfg = old.model.config
    assert (cfg.action_head, cfg.parallel_decoding) == ("tokens", False) and old.model.action_slots is None
    assert old.model.l1_head is None and not any("action_slots" in n for n in old.model.state_dict())
    for text in INSTRUCTIONS:
        np.testing.assert_array_equal(old.decode_tokens([IMG], [text]), new.decode_tokens([IMG], [text]))
        out = old.act(IMG, text)
        assert out.actions is None and out.chunk_index == 0


def test_config_options_are_checked_and_openvla_stays_token_by_token(tmp_path):
    assert PrismaticConfig(action_head="l1").parallel_decoding  # l1 implies parallel
    assert not PrismaticConfig().parallel_decoding and PrismaticConfig().action_head == "tokens"
    with pytest.raises(ValueError, match="unknown action_head"):
        PrismaticConfig(action_head="diffusion")
    with pytest.raises(ValueError, match="needs parallel_decoding"):
        PrismaticConfig(action_head="l1", parallel_decoding=False)
    with pytest.raises(ValueError, match="action_chunk"):
        PrismaticConfig(action_chunk=0)
    from core_fixtures import save_openvla_layout

    openvla = load_model(save_openvla_layout(tmp_path / "openvla")[0], device="cpu")[0].config
    assert (openvla.action_head, openvla.parallel_decoding) == ("tokens", False)


@pytest.mark.slow
def test_lora_finetune_turns_a_token_base_into_an_l1_model(tmp_path):
    from vla_ros.training.finetune import main

    ds = SyntheticActionDataset(8, image_size=56)
    model, tok = build_model("test-fused", ds.instructions, ds.statistics(), text_vocab_size=300, seed=0)
    base = save_policy(model, tok, ds.statistics(), tmp_path / "base")
    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    assert main(["--base", str(base), "--synthetic", "8", "--out", str(adapter), "--steps", "4", "--lr", "1e-2",
                 "--lora-rank", "4", "--batch-size", "4", "--grad-accum", "1", "--no-progress", "--log-every", "2",
                 "--action-head", "l1", "--action-chunk", "2", "--merge-to", str(merged)]) == 0
    assert json.loads((adapter / DECODING_FILE).read_text()) == {"action_head": "l1", "parallel_decoding": True,
                                                                 "action_chunk": 2}
    saved = json.loads((adapter / "adapter_config.json").read_text())["modules_to_save"]
    assert set(saved) == {"action_slots", "l1_head"}  # trained in full, as OpenVLA-OFT trains its head
    tuned = load_policy("native", str(base), device="cpu", adapter=str(adapter))
    full = load_policy("native", str(merged), device="cpu")
    assert tuned.model.config.action_head == "l1" and full.model.config.action_head == "l1"
    sample = ds[0]
    a, b = tuned.act(sample["image"], sample["instruction"]), full.act(sample["image"], sample["instruction"])
    assert a.actions.shape == (2, 7)
    np.testing.assert_allclose(a.actions, b.actions, atol=1e-5)
    assert load_policy("native", str(base), device="cpu").model.config.action_head == "tokens"  # base untouched


@pytest.mark.ros
@pytest.mark.slow
def test_the_policy_node_acts_with_an_l1_chunk_model(tmp_path):
    pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")
    from policy_node_harness import Harness
    from rclpy.lifecycle import TransitionCallbackReturn

    out = tmp_path / "l1"
    _train_cli(out, "l1", chunk=2, predict_done=False)  # a random done decision would end the episode early
    ref = load_policy("native", str(out), device="cpu")
    h = Harness()
    try:
        node = h.start(sim_time=False, auto_start=False, lockstep=True, backend="native", checkpoint=str(out),
                       device="cpu")
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, h.status().last_error
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        h.wait_matched()
        h.instruct(INSTRUCTIONS[0])
        answers = []
        for k, t in enumerate((31.0, 32.0)):  # the chunk's two actions, one per frame
            img = h.make_image(value=90, stamp=t, size=64)
            h.publish_until(h.pub_image, img, lambda t=t: any(a.header.stamp.sec == int(t) and not a.hold
                                                              for a in h.snapshot()), f"an action at {t}")
            answers.append(h.wait_action(lambda a, t=t: a.header.stamp.sec == int(t) and not a.hold, "action"))
            assert len(answers[k].raw_action) == 7
        frame = np.full((64, 64, 3), 90, np.uint8)
        want = ref.act(frame, INSTRUCTIONS[0]).actions
        np.testing.assert_allclose(np.array([a.raw_action for a in answers]), want, atol=1e-6)
    finally:
        h.close()
