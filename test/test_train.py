"""training/train.py and its loop on a tiny model (CPU): the loss falls on a fixed batch, the labels cover the
action tokens only, augmentation is seeded, resuming from a checkpoint gives exactly the next step of the
uninterrupted run, and the output directory loads as a policy."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from vla_ros.models.prismatic import PrismaticProcessor
from vla_ros.models.prismatic.modeling_prismatic import IGNORE_INDEX
from vla_ros.normalization import ActionNormalizer
from vla_ros.training.batching import ActionBatchCollator, AugmentConfig, action_metrics, augment_image
from vla_ros.training.checkpoint import build_model
from vla_ros.training.loop import LoopConfig, MicroBatches, Trainer
from vla_ros.training.synthetic import SyntheticActionDataset

PRESET = "test-fused"  # 56 px, two 2-block ViTs, a 2-layer Llama: a few ms per step


def _setup(n: int = 8, augment: bool = False, model_seed: int = 0):
    ds = SyntheticActionDataset(n, image_size=56, n_distinct=4, seed=0)
    stats = ds.statistics()
    model, tok = build_model(PRESET, ds.instructions, stats, text_vocab_size=300, seed=model_seed)
    collator = ActionBatchCollator(PrismaticProcessor(tok, model.config), model.config,
                                   ActionNormalizer.from_statistics(stats), AugmentConfig() if augment else None)
    return ds, model, collator


def _loss(model, batch) -> float:
    model.eval()
    with torch.no_grad():
        loss = model(**batch).loss.item()
    model.train()
    return loss


def test_batch_labels_cover_only_the_action_tokens_and_eos():
    ds, model, collator = _setup()
    batch = collator([ds[0], ds[1]])
    labels, ids = batch["labels"], batch["input_ids"]
    n_act = model.config.n_action_tokens
    eos = collator.processor.tokenizer.eos_token_id
    for r in range(2):
        real = int(batch["attention_mask"][r].sum())
        supervised = (labels[r] != IGNORE_INDEX).nonzero().flatten().tolist()
        # the 7 action tokens and OpenVLA's closing EOS: nothing of the prompt, nothing of the padding
        assert supervised == list(range(real - n_act - 1, real))
        assert torch.equal(labels[r, supervised], ids[r, supervised])
        assert model.action_tokenizer.is_action_token(ids[r, supervised[:-1]].numpy()).all()
        assert ids[r, supervised[-1]].item() == eos
    # decoding the supervised tokens gives back the normalised actions (to within one bin)
    norm = collator.normalizer.normalize(ds[0]["action"])
    decoded = model.action_tokenizer.decode(labels[0][labels[0] != IGNORE_INDEX].numpy()[:-1])
    assert np.abs(decoded[:6] - norm[:6]).max() <= model.action_tokenizer.bin_width


def test_action_metrics_count_correct_tokens_and_l1():
    ds, model, collator = _setup()
    batch = collator([ds[0]])
    with torch.no_grad():
        out = model(**batch)
    logits = out.logits.clone()
    n_p = logits.shape[1] - batch["labels"].shape[1]
    # make the logits predict exactly the labels: accuracy 1, L1 0
    full = torch.cat([batch["labels"][:, :1], torch.full((1, n_p), IGNORE_INDEX), batch["labels"][:, 1:]], 1)
    for t in range(full.shape[1] - 1):
        if full[0, t + 1] != IGNORE_INDEX:
            logits[0, t, full[0, t + 1]] = 1e4
    m = action_metrics(logits, batch["labels"], model.action_tokenizer)
    assert m["n"].item() == 7 and m["correct"].item() == 7 and m["l1_sum"].item() == 0.0


def test_augmentation_is_seeded_and_keeps_the_size():
    img = SyntheticActionDataset(1, image_size=56)[0]["image"]
    a, b = augment_image(img, AugmentConfig(), 1), augment_image(img, AugmentConfig(), 1)
    c = augment_image(img, AugmentConfig(), 2)
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_micro_batches_partition_the_data_across_ranks():
    ds, _, collator = _setup(n=16)
    r0 = MicroBatches(ds, collator, 4, seed=3, rank=0, world=2, total=4)
    r1 = MicroBatches(ds, collator, 4, seed=3, rank=1, world=2, total=4)
    idx0 = [r0.index_of(p) for k in range(2) for p in r0.positions(k)]
    idx1 = [r1.index_of(p) for k in range(2) for p in r1.positions(k)]
    assert sorted(idx0 + idx1) == list(range(16))  # one epoch: every sample once, no overlap


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(tmp_path):
    ds, model, collator = _setup(n=8)
    fixed = collator([ds[i] for i in range(8)])
    before = _loss(model, fixed)
    cfg = LoopConfig(out=str(tmp_path / "run"), steps=25, batch_size=8, lr=3e-3, schedule="constant",
                     log_every=5, progress=False)
    trainer = Trainer(model, ds, collator, cfg)
    result = trainer.train()
    after = _loss(model, fixed)
    assert after < 0.5 * before, (before, after)
    assert result["step"] == 25 and result["action_accuracy"] > trainer.history[0]["action_accuracy"]
    assert list((tmp_path / "run" / "tb").rglob("events.out.tfevents.*")), "no TensorBoard log written"


def test_resume_from_a_checkpoint_gives_the_same_next_step(tmp_path):
    def trainer_for(out, model, ds, collator):
        cfg = LoopConfig(out=str(out), steps=3, batch_size=2, grad_accum=2, lr=1e-3, warmup_steps=1,
                         save_every_steps=2, keep_checkpoints=5, log_every=1, progress=False)
        return Trainer(model, ds, collator, cfg)

    ds, model, collator = _setup(n=6, augment=True)
    full = trainer_for(tmp_path / "a", model, ds, collator)
    full.train()
    ckpt = tmp_path / "a" / "checkpoints" / "step_0000002"
    assert ckpt.is_dir()
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}

    # a fresh process would start from another initialisation: the checkpoint alone must restore the state
    ds2, model2, collator2 = _setup(n=6, augment=True, model_seed=1)
    shutil.copytree(ckpt, tmp_path / "b" / "checkpoints" / ckpt.name)
    resumed = trainer_for(tmp_path / "b", model2, ds2, collator2)
    from vla_ros.training.loop import resume_path

    resumed.load_state(resume_path(resumed, "auto"))
    assert resumed.step == 2
    resumed.train()
    assert resumed.step == 3
    assert resumed.history[-1]["loss"] == pytest.approx(full.history[-1]["loss"], rel=1e-6)
    for n, p in model2.named_parameters():
        torch.testing.assert_close(p, expected[n], rtol=1e-6, atol=1e-7, msg=n)


def test_cli_writes_a_policy_directory_that_load_policy_reads(tmp_path):
    from vla_ros.backends import load_policy
    from vla_ros.training.train import main

    out = tmp_path / "policy"
    assert main(["--synthetic", "16", "--preset", PRESET, "--out", str(out), "--steps", "4", "--batch-size", "4",
                 "--no-progress", "--log-every", "2", "--text-vocab-size", "300"]) == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "dataset_statistics.json"):
        assert (out / name).is_file(), name
    result = json.loads((out / "train_result.json").read_text())
    assert result["step"] == 4 and np.isfinite(result["loss"])
    policy = load_policy("native", str(out), device="cpu")
    sample = SyntheticActionDataset(1, image_size=56)[0]
    action = policy.predict(sample["image"], sample["instruction"])
    assert action.shape == (7,) and np.all(np.isfinite(action))
    assert policy.metadata.image_size == 56 and policy.metadata.gripper_convention == "libero_sign"


def test_cli_rejects_a_missing_dataset(tmp_path, capsys):
    from vla_ros.training.train import main

    assert main(["--out", str(tmp_path / "x"), "--preset", PRESET]) == 2
    assert "--data" in capsys.readouterr().err


def test_gripper_targets_follow_the_models_convention():
    """LIBERO data (-1 open / +1 close) fine-tuning an OpenVLA-convention model (1 = open): targets are mapped."""
    ds, model, _ = _setup()
    model.config.gripper_convention = "openvla_open01"
    collator = ActionBatchCollator(PrismaticProcessor(_setup()[2].processor.tokenizer, model.config), model.config,
                                   ActionNormalizer.from_statistics(ds.statistics()), None, "libero_sign")
    for g, want in ((-1.0, 1.0), (1.0, 0.0)):
        action = np.array([0, 0, 0, 0, 0, 0, g])
        got = model.action_tokenizer.decode(collator.action_token_ids(action)[-1:])[0]
        assert got == pytest.approx(want, abs=model.action_tokenizer.bin_width)


def test_training_imports_neither_rclpy_nor_libero():
    import subprocess
    import sys

    code = ("import sys, vla_ros.training.train, vla_ros.training.finetune, vla_ros.training.eval, vla_ros.training.step_dataset; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'rclpy', 'libero', 'robosuite', 'mujoco'}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]", res.stdout
