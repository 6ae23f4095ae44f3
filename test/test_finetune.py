"""training/finetune.py on a tiny model (CPU): LoRA (peft, all-linear) prints the trainable-parameter line,
writes an adapter directory that load_policy (the node's loader) applies and that changes the actions, and
merges into a full checkpoint that acts like base + adapter. Quantized bases need CUDA (GPU numbers:
docs/benchmarks.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vla_ros.backends import load_policy
from vla_ros.training.checkpoint import build_model, save_policy
from vla_ros.training.finetune import main, parser
from vla_ros.training.synthetic import SyntheticActionDataset


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    ds = SyntheticActionDataset(8, image_size=56)
    model, tok = build_model("test-fused", ds.instructions, ds.statistics(), text_vocab_size=300, seed=0)
    return save_policy(model, tok, ds.statistics(), tmp_path_factory.mktemp("base") / "policy")


def _actions(policy, n: int = 8) -> np.ndarray:
    ds = SyntheticActionDataset(n, image_size=56)
    return np.stack([policy.predict(ds[i]["image"], ds[i]["instruction"]) for i in range(n)])


def test_defaults_follow_the_issue():
    a = parser().parse_args(["--base", "b", "--out", "o"])
    assert (a.batch_size, a.grad_accum, a.lora_rank, a.lora_targets, a.quantization) == (1, 4, 32, "all-linear", "none")


def test_lora_adapter_loads_changes_actions_and_merges(base_dir, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    assert main(["--base", str(base_dir), "--synthetic", "8", "--out", str(adapter), "--steps", "8", "--lr", "3e-2",
                 "--lora-rank", "8", "--lora-alpha", "16", "--batch-size", "4", "--grad-accum", "1",
                 "--no-progress", "--log-every", "4"]) == 0
    printed = capsys.readouterr().out
    assert "trainable params: " in printed and " || all params: " in printed and " || trainable%: " in printed
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16 and cfg["peft_type"] == "LORA"
    assert "lm_head" not in cfg["target_modules"]  # all-linear skips the output head
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "dataset_statistics.json").is_file()
    # the base on disk is untouched by fine-tuning (only adapter weights were trained)
    base_policy = load_policy("native", str(base_dir), device="cpu")
    tuned = load_policy("native", str(base_dir), device="cpu", adapter=str(adapter))
    a_base, a_tuned = _actions(base_policy), _actions(tuned)
    assert not np.allclose(a_base, a_tuned), "the adapter did not change any action"
    merged = tmp_path / "merged"
    assert main(["--merge", "--base", str(base_dir), "--adapter", str(adapter), "--out", str(merged)]) == 0
    np.testing.assert_allclose(_actions(load_policy("native", str(merged), device="cpu")), a_tuned, atol=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error path")
def test_quantized_base_without_cuda_is_a_clear_error(base_dir, tmp_path, capsys):
    assert main(["--base", str(base_dir), "--synthetic", "4", "--out", str(tmp_path / "a"), "--quantization", "4bit",
                 "--steps", "1"]) == 2
    assert "CUDA" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="bitsandbytes 8/4-bit training needs a CUDA GPU")
@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantized_lora_finetune_on_cuda(base_dir, tmp_path, capsys, quantization):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")
    adapter = tmp_path / f"adapter_{quantization}"
    assert main(["--base", str(base_dir), "--synthetic", "8", "--out", str(adapter), "--quantization", quantization,
                 "--steps", "4", "--batch-size", "2", "--grad-accum", "2", "--lr", "3e-2", "--lora-rank", "8",
                 "--no-progress", "--log-every", "2"]) == 0
    assert "trainable params: " in capsys.readouterr().out
    result = json.loads((adapter / "train_result.json").read_text())
    assert result["step"] == 4 and np.isfinite(result["loss"])
    policy = load_policy("native", str(base_dir), device="cuda", quantization=quantization, adapter=str(adapter))
    action = _actions(policy, 2)
    assert action.shape == (2, 7) and np.all(np.isfinite(action))
