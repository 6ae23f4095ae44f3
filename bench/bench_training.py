"""Training benchmarks: one (Q)LoRA optimizer step of a preset with random weights; peak GPU memory, samples/s.

    python bench/bench_training.py lora --preset openvla-7b --quantization 4bit --json out/qlora4.json
    python bench/bench_training.py lora --preset test-fused --quantization none     (CPU smoke run)

The base is built by the core's ``random_model`` on the meta device and materialised (and quantized) layer by
layer on the GPU, so no 15 GB CPU copy is needed. The batch is what fine-tuning on LIBERO feeds: BOS + a
20-token prompt + 7 action tokens and a 224 px image (two towers for openvla-7b), batch 1 x accumulation 4 by
default, LoRA rank 32 on all linear layers, gradient checkpointing, AdamW on the LoRA weights.
Throughput of from-scratch training is measured with ``training/train.py --synthetic`` itself (see
docs/benchmarks.md for the exact commands).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla_ros.models.prismatic.checkpoint import random_model
from vla_ros.models.prismatic.modeling_prismatic import IGNORE_INDEX
from vla_ros.models.prismatic.presets import make_config
from vla_ros.training.finetune import attach_lora, lora_config

PROMPT_TOKENS = 20


def synthetic_batch(cfg, batch: int, device: torch.device, gen: torch.Generator) -> dict[str, torch.Tensor]:
    n_act = cfg.n_action_tokens
    prompt = torch.randint(3, cfg.action_vocab_size - cfg.n_action_bins, (batch, PROMPT_TOKENS), generator=gen)
    actions = torch.randint(cfg.action_vocab_size - cfg.n_action_bins, cfg.action_vocab_size, (batch, n_act),
                            generator=gen)
    ids = torch.cat([torch.ones(batch, 1, dtype=torch.long), prompt, actions], dim=1)  # 1 = BOS
    labels = ids.clone()
    labels[:, : 1 + PROMPT_TOKENS] = IGNORE_INDEX
    size = cfg.image_size
    pix = torch.randn(batch, 3 * len(cfg.vision_backbones), size, size, generator=gen)
    return {k: v.to(device) for k, v in {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                         "labels": labels, "pixel_values": pix}.items()}


def bench_lora(a: argparse.Namespace) -> dict:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = make_config(a.preset, prompt_suffix_token_id=None) if a.preset == "openvla-7b" else make_config(
        a.preset, action_vocab_size=1024)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model = random_model(cfg, device=dev, dtype=dtype, quantization=a.quantization, seed=0)
    build_s = time.perf_counter() - t0
    mem_base = torch.cuda.memory_allocated() / 2**30 if dev.type == "cuda" else 0.0
    model.train()
    peft_model = attach_lora(model, lora_config(a.rank, a.alpha, 0.0), quantized=a.quantization != "none",
                             gradient_checkpointing=not a.no_gradient_checkpointing)
    if a.quantization == "none" and dev.type == "cuda":
        # bf16 base without k-bit preparation: LoRA weights in fp32 for the optimizer (as k-bit prep does)
        for p in peft_model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    times, losses = [], []
    for step in range(a.warmup + a.steps):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(a.grad_accum):
            batch = synthetic_batch(cfg, a.batch_size, dev, gen)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                loss = peft_model(**batch).loss
            (loss / a.grad_accum).backward()
            losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if step >= a.warmup:
            times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    n_train = sum(p.numel() for p in params)
    res = {
        "bench": "lora_step", "preset": a.preset, "quantization": a.quantization, "lora_rank": a.rank,
        "batch_size": a.batch_size, "grad_accum": a.grad_accum, "image_size": cfg.image_size,
        "seq_tokens": 1 + PROMPT_TOKENS + cfg.n_action_tokens,
        "gradient_checkpointing": not a.no_gradient_checkpointing,
        "build_s": round(build_s, 1), "step_s_median": round(step_s, 4), "step_s_all": [round(x, 4) for x in times],
        "samples_per_s": round(a.batch_size * a.grad_accum / step_s, 3), "trainable_params": n_train,
        "losses_finite": all(map(lambda x: x == x and abs(x) != float("inf"), losses)),
        "torch": torch.__version__, "host": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if dev.type == "cuda":
        res.update(device=torch.cuda.get_device_name(0), base_weights_gib=round(mem_base, 2),
                   peak_allocated_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                   peak_reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 2))
    else:
        res["device"] = f"cpu ({torch.get_num_threads()} threads)"
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("lora", help="one (Q)LoRA optimizer step of a preset with random weights")
    b.add_argument("--preset", default="openvla-7b")
    b.add_argument("--quantization", default="4bit", choices=["none", "8bit", "4bit"])
    b.add_argument("--rank", type=int, default=32)
    b.add_argument("--alpha", type=float, default=16.0)
    b.add_argument("--batch-size", type=int, default=1)
    b.add_argument("--grad-accum", type=int, default=4)
    b.add_argument("--steps", type=int, default=3)
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--no-gradient-checkpointing", action="store_true")
    b.add_argument("--json", default="", help="also write the result here")
    a = p.parse_args(argv)
    res = bench_lora(a)
    text = json.dumps(res, indent=2)
    print(text)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
