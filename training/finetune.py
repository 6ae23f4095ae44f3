"""``vla-ros finetune``: LoRA fine-tuning of a local checkpoint (ours or OpenVLA-format), optionally QLoRA.

The base loads through the core's ``load_model`` (8-bit LLM.int8 or 4-bit NF4 through bitsandbytes on CUDA) and
is prepared for k-bit training (peft's ``prepare_model_for_kbit_training``: norms and the remaining bf16 tensors
in fp32, gradient checkpointing); LoRA adapters (rank 32, ``all-linear`` targets as in OpenVLA's
``vla-scripts/finetune.py``) are the only trainable weights. Defaults follow OpenVLA's LoRA recipe where this
project has no reason to differ: batch 1 x accumulation 4 here (one consumer GPU), lr 5e-4, constant schedule.

    python -m vla_ros.training.finetune --base runs/tiny --data data/libero_object --out runs/tiny-lora \
        --quantization 4bit
    python -m vla_ros.training.finetune --merge --base runs/tiny --adapter runs/tiny-lora --out runs/tiny-merged

``--action-head l1`` / ``--parallel-decoding`` / ``--action-chunk K`` turn the base into an OpenVLA-OFT model (its
recipe: LoRA on the backbone, the new slot embeddings and L1 head trained in full, as peft ``modules_to_save``);
the adapter directory then records the changed options (``action_decoding.json``), which the loader applies to
the base's config before the adapter.

The output directory is an adapter directory (``adapter_config.json``, ``adapter_model.safetensors``,
``dataset_statistics.json`` of the fine-tuning data) that ``vla_policy_node`` loads through its ``adapter``
parameter (``load_policy("native", base, adapter=dir)``); ``--merge`` folds it into a full checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from vla_ros.models.prismatic import PrismaticProcessor
from vla_ros.models.prismatic.checkpoint import read_config
from vla_ros.models.prismatic.parallel_decoding import decoding_options, write_decoding_options
from vla_ros.normalization import STATS_FILENAME, ActionNormalizer, load_statistics, save_statistics, select_unnorm_key
from vla_ros.training.batching import ActionBatchCollator, AugmentConfig
from vla_ros.training.checkpoint import TRAIN_META, write_json
from vla_ros.training.loop import Trainer, resume_path
from vla_ros.training.train import (
    add_decoding_args,
    add_loop_args,
    decoding_overrides,
    load_base,
    loop_config,
    open_dataset,
)

# Modules trained in full next to the LoRA adapters when the model has them (OpenVLA-OFT trains its action head
# in full): the parallel slots' embeddings and the L1 head.
FULLY_TRAINED = ("action_slots", "l1_head")


def lora_config(rank: int = 32, alpha: float = 16.0, dropout: float = 0.0, targets: str = "all-linear",
                modules_to_save: list[str] | None = None):
    """peft LoraConfig. ``all-linear`` takes every Linear of the vision towers, projector and decoder except the
    output head (peft skips it), as OpenVLA does; Gaussian init of A with B = 0 starts as the base model.
    ``modules_to_save`` are trained in full (and get no LoRA)."""
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must lie in [0, 1), got {dropout}")
    target = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target,
                      init_lora_weights="gaussian", modules_to_save=list(modules_to_save) if modules_to_save else None)


def attach_lora(model: torch.nn.Module, cfg, quantized: bool, gradient_checkpointing: bool = True):
    """Prepare ``model`` (k-bit preparation when quantized) and wrap it in a peft model; prints the
    ``trainable params: … || all params: … || trainable%: …`` line."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model = get_peft_model(model, cfg)
    peft_model.print_trainable_parameters()
    return peft_model


def save_adapter(peft_model, stats: dict, out: Path, meta: dict) -> Path:
    """Adapter weights + config (peft), the fine-tuning data's statistics and where the base lives."""
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out)
    save_statistics(stats, out / STATS_FILENAME)
    write_json(out / TRAIN_META, meta)
    return out


def merge_adapter(base: str | Path, adapter: str | Path, out: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Fold a LoRA adapter into its (unquantized) base and save a full checkpoint with the adapter's statistics."""
    from vla_ros.models.prismatic.checkpoint import load_model, save_checkpoint

    # load_model builds the base with the decoding options the adapter recorded (action_decoding.json), if any
    merged, processor = load_model(base, device="cpu", dtype=dtype or torch.float32, adapter=adapter,
                                   merge_adapter=True)
    stats_file = Path(adapter) / STATS_FILENAME
    stats = load_statistics(stats_file) if stats_file.is_file() else merged.config.norm_stats
    return save_checkpoint(merged, processor.tokenizer, out, norm_stats=stats)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vla-ros finetune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--base", required=True, help="checkpoint directory to fine-tune (ours or OpenVLA-format)")
    p.add_argument("--out", required=True, type=Path, help="adapter directory (with --merge: the merged checkpoint)")
    p.add_argument("--data", nargs="+", default=[],
                   help="dataset directory/file (see docs/training.md); several fine-tune on their union")
    p.add_argument("--synthetic", type=int, default=0, help="use N synthetic samples instead of --data")
    p.add_argument("--unnorm-key", default=None, help="statistics key when the dataset has several")
    p.add_argument("--quantization", default="none", choices=["none", "8bit", "4bit"],
                   help="load the base in 8-bit or 4-bit (bitsandbytes, CUDA only)")
    p.add_argument("--lora-rank", type=int, default=32)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--lora-targets", default="all-linear", help="all-linear, or comma-separated module names")
    p.add_argument("--no-gradient-checkpointing", action="store_true")
    p.add_argument("--merge", action="store_true", help="merge --adapter into --base and save to --out, then exit")
    p.add_argument("--adapter", default="", help="adapter directory for --merge")
    p.add_argument("--merge-to", default="", help="after training, also write a merged full checkpoint here")
    add_decoding_args(p, keep="the base's")
    add_loop_args(p, batch_size=1, grad_accum=4, lr=5e-4, steps=1000, schedule="constant", warmup=0)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.merge:
        if not a.adapter:
            print("vla-ros finetune: --merge needs --adapter", file=sys.stderr)
            return 2
        print(f"merged checkpoint written to {merge_adapter(a.base, a.adapter, a.out)}")
        return 0
    try:
        cfg = loop_config(a)
        base_decoding = decoding_options(read_config(a.base))
        model, tokenizer, base_stats = load_base(a.base, quantization=a.quantization, decoding=decoding_overrides(a))
        dataset, stats, _ = open_dataset(a.data, a.synthetic, model.config.image_size, model.config.action_chunk,
                                         a.seed)
        key = select_unnorm_key(stats, a.unnorm_key)
        stats = {key: stats[key]}
        lcfg = lora_config(a.lora_rank, a.lora_alpha, a.lora_dropout, a.lora_targets,
                           [m for m in FULLY_TRAINED if getattr(model, m, None) is not None])
    except (ValueError, FileNotFoundError, RuntimeError) as exc:  # RuntimeError: quantization unavailable here
        print(f"vla-ros finetune: {exc}", file=sys.stderr)
        return 2
    processor = PrismaticProcessor(tokenizer, model.config, center_crop=False)
    collator = ActionBatchCollator(processor, model.config, ActionNormalizer.from_statistics(stats),
                                   AugmentConfig() if a.augment else None,
                                   data_gripper_convention=stats[key].get("gripper_convention", "libero_sign"))
    peft_model = attach_lora(model, lcfg, quantized=a.quantization != "none",
                             gradient_checkpointing=not a.no_gradient_checkpointing)
    meta = {"command": "finetune", "base": str(Path(a.base).resolve()), "quantization": a.quantization,
            "lora": {"rank": a.lora_rank, "alpha": a.lora_alpha, "dropout": a.lora_dropout,
                     "targets": a.lora_targets}, "data": " ".join(a.data) or f"synthetic:{a.synthetic}",
            "base_statistics_keys": sorted(base_stats), "decoding": decoding_options(model.config)}

    changed = decoding_options(model.config) != base_decoding

    def export(m: torch.nn.Module, out: Path) -> None:
        save_adapter(m, stats, out, {**meta, "loop": cfg.to_dict()})
        if changed:
            write_decoding_options(model.config, out)

    trainer = Trainer(peft_model, dataset, collator, cfg, export=export, run_meta=meta)
    start = resume_path(trainer, a.resume)
    if start is not None:
        trainer.load_state(start)
        trainer.accelerator.print(f"resumed from {start} at step {trainer.step}")
    result = trainer.train()
    if trainer.accelerator.is_main_process:
        write_json(Path(a.out) / "train_result.json", {**result, "history": trainer.history[-50:]})
        trainer.accelerator.print(json.dumps(result))
        if a.merge_to:
            print(f"merged checkpoint written to {merge_adapter(a.base, a.out, a.merge_to)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
