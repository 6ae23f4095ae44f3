"""``vla-ros train``: train a native VLA from scratch on a LIBERO-format dataset.

Loss on the action tokens only, optional OpenVLA image augmentation, AdamW with warm-up and a schedule, bf16
autocast on GPU, gradient accumulation and clipping, checkpoints every few minutes with resume, a tqdm bar and
TensorBoard logs (loss, action-token accuracy, L1 of decoded actions). The same command runs data-parallel:

    python -m vla_ros.training.train --data data/libero_spatial --preset tiny-128 --out runs/tiny
    accelerate launch --num_processes 2 -m vla_ros.training.train ...      (or: torchrun --nproc_per_node 2 -m ...)

``--action-head l1`` / ``--parallel-decoding`` train OpenVLA-OFT's parallel decoding (docs/training.md).

The output directory is a policy directory (``load_policy("native", out)``, ``vla_policy_node checkpoint:=out``)
refreshed at every checkpoint, with ``checkpoints/step_*`` for resuming and ``tb/`` for TensorBoard.
Imports neither rclpy nor LIBERO: it runs on the GPU machine from the repository with ``PYTHONPATH=.``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from vla_ros.models.prismatic import PRESETS, PrismaticForActionPrediction, PrismaticProcessor
from vla_ros.models.prismatic.checkpoint import load_pretrained, load_tokenizer, read_config
from vla_ros.models.prismatic.configuration_prismatic import ACTION_HEADS
from vla_ros.normalization import ActionNormalizer, select_unnorm_key
from vla_ros.proprio import proprio_statistics
from vla_ros.training.batching import ActionBatchCollator, AugmentConfig
from vla_ros.training.checkpoint import build_model, load_trainable, save_policy
from vla_ros.training.loop import LoopConfig, Trainer, count_params, resume_path


def add_loop_args(p: argparse.ArgumentParser, *, batch_size: int, grad_accum: int, lr: float, steps: int,
                  schedule: str, warmup: int) -> None:
    """Optimisation flags shared with ``finetune`` (defaults differ per command)."""
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=steps, help="optimizer steps")
    g.add_argument("--batch-size", type=int, default=batch_size, help="samples per micro-batch and process")
    g.add_argument("--grad-accum", type=int, default=grad_accum, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float, default=lr)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--warmup-steps", type=int, default=warmup)
    g.add_argument("--schedule", default=schedule, choices=["constant", "linear", "cosine"],
                   help="learning-rate schedule after the warm-up")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: off)")
    g.add_argument("--mixed-precision", default="auto", choices=["auto", "bf16", "fp16", "no"],
                   help="auto: bf16 autocast on CUDA, fp32 on CPU")
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument("--augment", action="store_true",
                   help="OpenVLA's image augmentation (random resized crop 0.9, colour jitter)")
    g.add_argument("--seed", type=int, default=0)
    c = p.add_argument_group("checkpoints and logs")
    c.add_argument("--save-every-minutes", type=float, default=5.0)
    c.add_argument("--save-every-steps", type=int, default=0)
    c.add_argument("--keep-checkpoints", type=int, default=2)
    c.add_argument("--resume", default="auto", help="auto (newest checkpoint in --out), none, or a checkpoint dir")
    c.add_argument("--max-minutes", type=float, default=0.0, help="stop and save after this wall time (0: no limit)")
    c.add_argument("--log-every", type=int, default=10)
    c.add_argument("--num-workers", type=int, default=0, help="DataLoader processes building batches")
    c.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def loop_config(a: argparse.Namespace) -> LoopConfig:
    if a.steps < 1 or a.batch_size < 1 or a.grad_accum < 1:
        raise ValueError("--steps, --batch-size and --grad-accum must be >= 1")
    return LoopConfig(out=str(a.out), steps=a.steps, batch_size=a.batch_size, grad_accum=a.grad_accum, lr=a.lr,
                      weight_decay=a.weight_decay, warmup_steps=a.warmup_steps, schedule=a.schedule,
                      max_grad_norm=a.max_grad_norm, seed=a.seed, mixed_precision=a.mixed_precision,
                      save_every_steps=a.save_every_steps, save_every_minutes=a.save_every_minutes,
                      keep_checkpoints=a.keep_checkpoints, log_every=a.log_every, max_minutes=a.max_minutes,
                      num_workers=a.num_workers, gradient_checkpointing=a.gradient_checkpointing,
                      progress=not a.no_progress)


def open_dataset(data: str | list[str], synthetic: int, image_size: int, action_chunk: int, seed: int):
    """(dataset, statistics, instructions) from ``--data`` (training/data's readers) or ``--synthetic N``."""
    if synthetic:
        from vla_ros.training.synthetic import SyntheticActionDataset

        ds = SyntheticActionDataset(synthetic, image_size=image_size, action_chunk=action_chunk, seed=seed)
        return ds, ds.statistics(), ds.instructions
    if not data:
        raise ValueError("give --data DIR (a LIBERO-format or compact dataset) or --synthetic N")
    from vla_ros.training.step_dataset import open_training_data

    return open_training_data(data, action_chunk=action_chunk)


def add_decoding_args(p: argparse.ArgumentParser, keep: str) -> None:
    """OpenVLA-OFT's decoding options (shared with ``finetune``); ``keep``: what an unset option means."""
    g = p.add_argument_group("action decoding (OpenVLA-OFT)")
    g.add_argument("--action-head", default=None, choices=ACTION_HEADS,
                   help=f"tokens: OpenVLA's 256-bin tokens; l1: an MLP regressing the actions with an L1 loss "
                        f"(implies --parallel-decoding). Unset: {keep}")
    g.add_argument("--parallel-decoding", action="store_true",
                   help="decode all K x 7 action slots (+ the done slot) in one forward pass")
    g.add_argument("--action-chunk", type=int, default=None, help=f"actions predicted per call. Unset: {keep}")


def decoding_overrides(a: argparse.Namespace) -> dict:
    """The decoding options given on the command line (None: not given)."""
    return {"action_head": a.action_head, "parallel_decoding": True if a.parallel_decoding else None,
            "action_chunk": a.action_chunk}


def load_base(path: str | Path, *, quantization: str = "none", device: str = "auto", dtype: torch.dtype | None = None,
              decoding: dict | None = None, allow_resize: bool = False):
    """``load_trainable`` with the decoding options changed (``action_head``, ``parallel_decoding``,
    ``action_chunk``; None keeps the base's): the modules the change adds (slot embeddings, L1 head) start
    freshly initialised (transformers lists them as MISSING). ``allow_resize``: a parallel base's slot embeddings
    may be re-sized for a new chunk (re-initialised). -> (model in train mode, tokenizer, statistics)."""
    cfg = read_config(path)
    before = (cfg.action_head, cfg.parallel_decoding, cfg.action_chunk)
    cfg.set_action_decoding(**(decoding or {}))
    if (cfg.action_head, cfg.parallel_decoding, cfg.action_chunk) == before:
        return load_trainable(path, quantization=quantization, device=device, dtype=dtype)
    resized = before[1] and cfg.action_chunk != before[2]
    if resized and not allow_resize:
        raise ValueError(f"{path} decodes chunks of {before[2]} in parallel: its slot embeddings cannot take "
                         f"chunks of {cfg.action_chunk} here")
    print(f"action decoding of {path}: head/parallel/chunk {before} -> "
          f"{(cfg.action_head, cfg.parallel_decoding, cfg.action_chunk)}")
    model, _, _ = load_pretrained(PrismaticForActionPrediction, path, device, dtype, quantization, config=cfg,
                                  ignore_mismatched_sizes=resized)
    if not model.config.norm_stats:
        raise ValueError(f"{path} has no dataset statistics (dataset_statistics.json or norm_stats in config.json)")
    model.train()
    return model, load_tokenizer(path), model.config.norm_stats


def bin_edge_shift(old: dict, new: dict) -> float:
    """Largest move of an action dimension's q01 or q99 between two statistics entries, as a fraction of the
    old q01..q99 range (the span the 256 bins cut)."""
    import numpy as np

    o_lo, o_hi = np.asarray(old["action"]["q01"], float), np.asarray(old["action"]["q99"], float)
    n_lo, n_hi = np.asarray(new["action"]["q01"], float), np.asarray(new["action"]["q99"], float)
    span = np.maximum(o_hi - o_lo, 1e-8)
    return float(np.max(np.maximum(np.abs(n_lo - o_lo), np.abs(n_hi - o_hi)) / span))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vla-ros train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", nargs="+", default=[],
                   help="dataset directory/file (see docs/training.md); several train on their union, with "
                        "statistics recomputed over all of them")
    p.add_argument("--synthetic", type=int, default=0, help="use N synthetic samples instead of --data")
    p.add_argument("--out", required=True, type=Path, help="output (policy) directory")
    p.add_argument("--preset", default="tiny-128", choices=[x for x in PRESETS if x != "openvla-7b"])
    p.add_argument("--predict-done", action="store_true", help="learn the episode-end token")
    p.add_argument("--wrist", action="store_true", help="also feed the wrist camera (eye_in_hand_rgb)")
    p.add_argument("--proprio", action="store_true", help="also feed proprio (vla_ros.proprio's vector)")
    p.add_argument("--unnorm-key", default=None, help="statistics key when the dataset has several")
    p.add_argument("--text-vocab-size", type=int, default=512)
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from this policy directory's weights and tokenizer (fresh optimizer and schedule; "
                        "its inputs, chunk and done token are kept; the action statistics become the data's)")
    p.add_argument("--keep-statistics", action="store_true",
                   help="with --init-from: keep its action statistics (its 256 bins) instead of the data's; "
                        "actions outside its q01..q99 are clipped to the end bins")
    add_decoding_args(p, keep="tokens, sequential, chunk 1; with --init-from: its own")
    add_loop_args(p, batch_size=32, grad_accum=1, lr=3e-4, steps=2000, schedule="cosine", warmup=100)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.keep_statistics and a.init_from is None:
        print("vla-ros train: --keep-statistics needs --init-from", file=sys.stderr)
        return 2
    try:
        cfg = loop_config(a)
        from vla_ros.models.prismatic import make_config

        image_size = make_config(a.preset, action_vocab_size=1024).image_size
        decoding = decoding_overrides(a)
        if a.init_from is not None:  # the data must come in the chunks the (re-configured) model predicts
            base_cfg = read_config(a.init_from)
            base_cfg.set_action_decoding(**decoding)
            chunk = base_cfg.action_chunk
        else:
            chunk = a.action_chunk or 1
            make_config(a.preset, action_vocab_size=1024, action_chunk=chunk, action_head=a.action_head or "tokens",
                        parallel_decoding=decoding["parallel_decoding"])  # checks the options before data loads
        dataset, stats, instructions = open_dataset(a.data, a.synthetic, image_size, chunk, a.seed)
        key = select_unnorm_key(stats, a.unnorm_key)
        stats = {key: stats[key]}
    except (ValueError, FileNotFoundError) as exc:
        print(f"vla-ros train: {exc}", file=sys.stderr)
        return 2
    inputs = {}
    if a.wrist:
        if not getattr(dataset, "has_wrist", False):
            print("vla-ros train: --wrist needs a dataset with eye_in_hand_rgb images", file=sys.stderr)
            return 2
        inputs["extra_images"] = ["wrist"]
    if a.proprio:
        if not getattr(dataset, "has_proprio", False):
            print("vla-ros train: --proprio needs a dataset with ee_states/gripper_states", file=sys.stderr)
            return 2
        inputs["proprio_stats"] = proprio_statistics(dataset.proprio_array())
    if a.init_from is not None:
        # continue a finished run with a new schedule: the architecture and the tokenizer come from it
        model, tokenizer, old_stats = load_base(a.init_from, device="cpu", decoding=decoding, allow_resize=True)
        # the bins are re-cut on the new data's q01/q99; on more data of the same robot they barely move, and
        # the printed shift says when they do (fine-tuning on another robot's ranges relearns the tokens)
        shift = bin_edge_shift(next(iter(old_stats.values())), stats[key])
        if a.keep_statistics:
            # a fine-tune that should only add data: the tokens keep their meaning (no bin moves under it)
            key = next(iter(old_stats))  # the entry the shift above was measured against
            stats = {key: old_stats[key]}
            print(f"vla-ros train: keeping the statistics {key!r} of {a.init_from} (the data's would move the "
                  f"bins by up to {shift:.1%} of the action range)")
        else:
            print(f"vla-ros train: statistics {list(old_stats)} of {a.init_from} -> {key!r} of the data; "
                  f"largest q01/q99 shift {shift:.1%} of the action range")
        model.config.norm_stats = stats
    else:
        model, tokenizer = build_model(a.preset, instructions, stats, text_vocab_size=a.text_vocab_size,
                                       predict_done=a.predict_done, action_chunk=chunk, seed=a.seed,
                                       action_head=a.action_head or "tokens",
                                       parallel_decoding=decoding["parallel_decoding"], **inputs)
    processor = PrismaticProcessor(tokenizer, model.config)
    data_gripper = stats[key].get("gripper_convention", "libero_sign")
    model.config.gripper_convention = data_gripper  # a model trained from scratch emits what its data holds
    collator = ActionBatchCollator(processor, model.config, ActionNormalizer.from_statistics(stats),
                                   AugmentConfig() if a.augment else None, data_gripper_convention=data_gripper)
    # an augmented model is evaluated with OpenVLA's centre crop (its processor reads this from the config)
    model.config.center_crop = bool(a.augment)
    argv_used = sys.argv[1:] if argv is None else argv
    meta = {"command": "train", "command_line": "vla-ros train " + shlex.join(argv_used), "preset": a.preset,
            "data": " ".join(a.data) or f"synthetic:{a.synthetic}",
            "init_from": str(a.init_from) if a.init_from else None,
            "samples": len(dataset), "augment": bool(a.augment), "wrist": bool(a.wrist), "proprio": bool(a.proprio),
            "action_chunk": chunk, "predict_done": bool(a.predict_done),
            "action_head": model.config.action_head, "parallel_decoding": model.config.parallel_decoding,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}

    def export(m: torch.nn.Module, out: Path) -> None:
        save_policy(m, tokenizer, stats, out, meta={**meta, "loop": cfg.to_dict()})

    trainer = Trainer(model, dataset, collator, cfg, export=export, run_meta=meta)
    start = resume_path(trainer, a.resume)
    if start is not None:
        trainer.load_state(start)
        trainer.accelerator.print(f"resumed from {start} at step {trainer.step}")
    n_train, n_total = count_params(model)
    trainer.accelerator.print(f"{a.preset}: {n_total / 1e6:.1f}M parameters ({n_train / 1e6:.1f}M trainable), "
                              f"{len(dataset)} samples, {trainer.accelerator.num_processes} process(es), "
                              f"batch {cfg.batch_size} x accumulation {cfg.grad_accum}")
    result = trainer.train()
    if trainer.accelerator.is_main_process:
        (Path(a.out) / "train_result.json").write_text(json.dumps(
            {**result, "history": trainer.history[-50:]}, indent=2) + "\n")
        trainer.accelerator.print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
