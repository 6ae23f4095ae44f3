"""Building a native VLA for training and writing/reading the directories the rest of vla_ros loads.

A *policy directory* is what ``load_policy("native", dir)`` and ``vla_policy_node`` load as is: the model's
``config.json`` + ``model.safetensors`` (``save_pretrained``; the config records action space, gripper
convention, image flip and ``norm_stats``), the tokenizer files and ``dataset_statistics.json``.
Training *state* (trainable weights, optimizer, scheduler, RNG, step) lives separately under
``<out>/checkpoints/step_<n>/`` so that resuming never depends on the exported policy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from vla_ros.models.prismatic import PrismaticForActionPrediction, make_config
from vla_ros.models.prismatic.checkpoint import load_model, save_checkpoint
from vla_ros.models.tokenization import build_tokenizer
from vla_ros.normalization import STATS_FILENAME

TRAIN_META = "training_meta.json"


def build_model(preset: str, instructions: Iterable[str], stats: dict, *, text_vocab_size: int = 512,
                predict_done: bool = False, action_chunk: int = 1, seed: int = 0, **overrides
                ) -> tuple[PrismaticForActionPrediction, PreTrainedTokenizerBase]:
    """A freshly initialised model of a small preset with a tokenizer trained on ``instructions``.

    ``stats`` (OpenVLA's ``dataset_statistics.json`` layout) go into the config's ``norm_stats`` so the saved
    checkpoint un-normalises on its own. The seed fixes the initial weights.
    """
    if preset == "openvla-7b":
        raise ValueError("openvla-7b needs Llama-2's tokenizer, which cannot be built here; fine-tune an existing "
                         "checkpoint with training/finetune.py instead")
    tokenizer, info = build_tokenizer(list(instructions), text_vocab_size=text_vocab_size)
    kw = dict(norm_stats=stats, action_chunk=action_chunk, predict_done=predict_done)
    if predict_done:
        kw["done_token_ids"] = info.done_token_ids
    kw.update(overrides)
    config = make_config(preset, action_vocab_size=info.action_vocab_size, **kw)
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    return PrismaticForActionPrediction(config), tokenizer


def save_policy(model: PrismaticForActionPrediction, tokenizer: PreTrainedTokenizerBase, stats: dict,
                out_dir: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write a policy directory through the core's ``save_checkpoint`` plus this run's training record."""
    out = save_checkpoint(model, tokenizer, out_dir, norm_stats=stats)
    if meta is not None:
        write_json(out / TRAIN_META, meta)
    return out


def load_trainable(path: str | os.PathLike, *, quantization: str = "none", device: str = "auto",
                   dtype: torch.dtype | None = None) -> tuple[PrismaticForActionPrediction, PreTrainedTokenizerBase,
                                                              dict]:
    """Load a policy directory (ours or OpenVLA-format, through the core's ``load_model``) for further training:
    model in train mode, tokenizer, statistics. ``quantization`` 8bit/4bit loads the base through bitsandbytes."""
    model, processor = load_model(path, device=device, dtype=dtype, quantization=quantization)
    stats = model.config.norm_stats
    if not stats:
        raise ValueError(f"{path} has no dataset statistics ({STATS_FILENAME} or norm_stats in config.json)")
    model.train()
    return model, processor.tokenizer, stats


def write_json(path: str | os.PathLike, obj: dict) -> None:
    p = Path(path)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, p)
