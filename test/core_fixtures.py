"""Tiny checkpoints for the VLA-core tests (built here: nothing can be downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from vla_ros.models.prismatic import PrismaticConfig, PrismaticForActionPrediction, make_config
from vla_ros.models.prismatic.checkpoint import save_checkpoint
from vla_ros.models.tokenization import build_tokenizer
from vla_ros.normalization import compute_action_statistics

INSTRUCTIONS = ["pick up the black bowl and place it on the plate", "open the top drawer of the cabinet",
                "put the cream cheese in the bowl"]


def tiny_tokenizer():
    return build_tokenizer(INSTRUCTIONS, text_vocab_size=300)


def two_dataset_stats() -> dict:
    rng = np.random.default_rng(0)
    a = rng.uniform(-0.8, 0.9, size=(400, 7))
    a[:, 6] = np.sign(a[:, 6])
    return {"libero_spatial": compute_action_statistics(a), "libero_object": compute_action_statistics(a * 0.3)}


def tiny_model(preset: str = "test-fused", seed: int = 0, **overrides) -> tuple[PrismaticForActionPrediction, object]:
    tok, info = tiny_tokenizer()
    cfg = make_config(preset, action_vocab_size=info.action_vocab_size, **overrides)
    cfg.norm_stats = two_dataset_stats()
    torch.manual_seed(seed)
    return PrismaticForActionPrediction(cfg).eval(), tok


def save_tiny(out: Path, preset: str = "test-fused", **overrides) -> Path:
    model, tok = tiny_model(preset, **overrides)
    return save_checkpoint(model, tok, out, model.config.norm_stats)


def save_openvla_layout(out: Path) -> tuple[Path, PrismaticForActionPrediction]:
    """A tiny checkpoint in OpenVLA's HF layout: OpenVLA's config.json keys (model_type openvla, timm_model_ids,
    image_sizes, arch_specifier, text_config, pad_to_multiple_of, norm_stats), model.safetensors with OpenVLA's
    parameter names, tokenizer files, and no dataset_statistics.json (OpenVLA ships the stats in the config)."""
    tok, info = tiny_tokenizer()
    raw = {
        "model_type": "openvla", "architectures": ["OpenVLAForActionPrediction"],
        "vision_backbone_id": "tiny-vit", "llm_backbone_id": "tiny-llama", "arch_specifier": "no-align+gelu-mlp",
        "use_fused_vision_backbone": False, "image_resize_strategy": "resize-naive",
        "timm_model_ids": ["vit_tiny_patch16_224"], "timm_override_act_layers": [None], "image_sizes": [64],
        "text_config": {"model_type": "llama", "vocab_size": info.action_vocab_size + 64, "hidden_size": 64,
                        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                        "num_key_value_heads": 4, "pad_token_id": 3},
        "pad_to_multiple_of": 64, "n_action_bins": 256, "pad_token_id": 3, "llm_max_length": 2048,
        "norm_stats": two_dataset_stats(), "torch_dtype": "float32",
    }
    out.mkdir(parents=True, exist_ok=True)
    cfg = PrismaticConfig.from_openvla_dict(raw)
    torch.manual_seed(1)
    model = PrismaticForActionPrediction(cfg).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(raw))
    tok.save_pretrained(out)
    return out, model


def save_wrist_proprio(out: Path, seed: int = 3) -> Path:
    """A tiny random native policy directory that takes the wrist camera and the eef_rot6d_gripper proprio
    (``extra_images=["wrist"]``, proprio statistics of random poses), one dataset's statistics."""
    from vla_ros.proprio import proprio_statistics, proprio_vector
    from vla_ros.training.checkpoint import build_model, save_policy

    rng = np.random.default_rng(0)
    samples = proprio_vector(rng.normal(0, 0.2, (64, 3)), rng.normal(size=(64, 4)), rng.uniform(0, 0.04, (64, 2)))
    stats = {"libero_spatial": two_dataset_stats()["libero_spatial"]}
    model, tok = build_model("test-fused", INSTRUCTIONS, stats, text_vocab_size=300, seed=seed,
                             extra_images=["wrist"], proprio_stats=proprio_statistics(samples))
    return save_policy(model, tok, stats, out)
