"""Inference benchmark of the native VLA: latency per action (median, p90), actions/s, peak memory.

Not a test. Random weights are fine (``--preset``), or a checkpoint directory (``--path``). On CUDA it also
checks that the fast path (static cache + CUDA graphs) gives the same greedy tokens as the unoptimised paths
(static cache eager, and the plain dynamic-cache loop) on ``--check`` random inputs.

    python bench/bench_inference.py --preset openvla-7b --device cuda --precision bf16 --modes fast,eager
    python bench/bench_inference.py --preset tiny-128 --device cpu --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla_ros.backends import load_policy
from vla_ros.models.prismatic.fast_decode import StaticGreedyDecoder

# A short LIBERO-style instruction: about 20 prompt tokens, as in the OpenVLA reference measurement.
INSTRUCTION = "pick up the black bowl"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def time_mode(policy, mode: str, images: list[np.ndarray], iters: int, warmup: int, device: str) -> dict:
    """Per-action latency of one decode path, end to end (preprocessing to un-normalised action)."""
    if mode == "fast":
        policy.fast, policy._decoder = True, None
    elif mode == "fast-compiled":
        policy.fast, policy._decoder = True, StaticGreedyDecoder(policy.model, compile=True)
    elif mode == "fast-autotune":
        policy.fast, policy._decoder = True, StaticGreedyDecoder(policy.model, compile="max-autotune")
    elif mode == "static-eager":
        policy.fast = True
        policy._decoder = StaticGreedyDecoder(policy.model, cuda_graph=False)
    elif mode == "eager":
        policy.fast = False
    else:
        raise ValueError(mode)
    t0 = time.perf_counter()
    policy.predict(images[0], INSTRUCTION)  # first call: capture (and compilation)
    first_s = time.perf_counter() - t0
    for i in range(warmup):
        policy.predict(images[i % len(images)], INSTRUCTION)
    _sync(device)
    times = []
    for i in range(iters):
        t0 = time.perf_counter()
        policy.predict(images[i % len(images)], INSTRUCTION)  # returns numpy: includes the device sync
        times.append(time.perf_counter() - t0)
    ms = sorted(1000 * t for t in times)
    return {"mode": mode, "iters": iters, "first_call_s": round(first_s, 1), "median_ms": statistics.median(ms),
            "p90_ms": float(np.percentile(ms, 90)), "mean_ms": statistics.fmean(ms),
            "actions_per_s": 1000.0 / statistics.fmean(ms)}


def check_identical(policy, images: list[np.ndarray], device: str, compiled: bool | str = False) -> dict:
    """Greedy tokens of fast vs static-eager vs dynamic-eager on the same inputs."""
    graph = StaticGreedyDecoder(policy.model, compile=compiled) if device.startswith("cuda") else None
    static = StaticGreedyDecoder(policy.model, cuda_graph=False)
    res = {"n": len(images), "fast_vs_static_eager": 0, "fast_vs_dynamic_eager": 0, "static_vs_dynamic": 0,
           "static_repeat": 0, "fast_repeat": 0}
    for img in images:
        policy._decoder = static
        s = policy.decode_tokens([img], [INSTRUCTION], fast=True)
        d = policy.decode_tokens([img], [INSTRUCTION], fast=False)
        policy._decoder = graph or static
        f = policy.decode_tokens([img], [INSTRUCTION], fast=True)
        res["fast_repeat"] += int(np.array_equal(f, policy.decode_tokens([img], [INSTRUCTION], fast=True)))
        policy._decoder = static
        res["static_repeat"] += int(np.array_equal(s, policy.decode_tokens([img], [INSTRUCTION], fast=True)))
        res["fast_vs_static_eager"] += int(np.array_equal(f, s))
        res["fast_vs_dynamic_eager"] += int(np.array_equal(f, d))
        res["static_vs_dynamic"] += int(np.array_equal(s, d))
    policy._decoder = None
    return res


@torch.inference_mode()
def profile_fast(policy, image: np.ndarray, device: str, iters: int = 10, compile: bool | str = False) -> dict:
    """Where the fast path's time goes (CUDA): preprocessing on the CPU, prefill graph, decode graphs."""
    policy.fast = True
    policy._decoder = StaticGreedyDecoder(policy.model, compile=compile)
    policy.predict(image, INSTRUCTION)  # captures
    dec = policy._decoder
    parts: dict[str, list[float]] = {"preprocess_ms": [], "prefill_ms": [], "decode_ms": []}
    for _ in range(iters):
        t0 = time.perf_counter()
        proc = policy.processor  # as PrismaticPolicy.decode_tokens does it
        ids = proc.tokenize([proc.prompt(INSTRUCTION)])[0].to(policy.device)
        pix = proc.resized_uint8([image]).to(policy.device)
        _sync(device)
        parts["preprocess_ms"].append(1000 * (time.perf_counter() - t0))
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        entry = dec._entry(ids)
        dec.pix.copy_(pix)
        ev[0].record()
        entry.graph.replay()
        ev[1].record()
        for _ in range(dec.n - 1):
            dec._decode_graph.replay()
        ev[2].record()
        torch.cuda.synchronize()
        parts["prefill_ms"].append(ev[0].elapsed_time(ev[1]))
        parts["decode_ms"].append(ev[1].elapsed_time(ev[2]))
    return {k: statistics.median(v) for k, v in parts.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny-128", help="random weights of a preset (ignored with --path)")
    ap.add_argument("--path", help="checkpoint directory instead of a preset")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", help="bf16 | fp32 | 4bit | 8bit | auto (bf16 on CUDA)")
    ap.add_argument("--modes", default="fast", help="comma list of fast, static-eager, eager")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--check", type=int, default=0, help="inputs for the token-identity check")
    ap.add_argument("--profile", action="store_true", help="CUDA: time preprocessing, prefill and decode apart")
    ap.add_argument("--deterministic", action="store_true",
                    help="deterministic kernels (CUBLAS_WORKSPACE_CONFIG, torch.use_deterministic_algorithms)")
    ap.add_argument("--trace", action="store_true", help="CUDA: print the top kernels of the fast path (profiler)")
    ap.add_argument("--peaked", type=float, default=0.0,
                    help="also run the identity check with the final norm scaled by this factor: random weights give "
                         "near-tied logits where any rounding flips a greedy choice; a trained model's are peaked")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--json", help="append the result as one JSON line to this file")
    args = ap.parse_args(argv)

    if args.deterministic:  # before CUDA initialises
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    quant = args.precision if args.precision in ("4bit", "8bit") else "none"
    dtype = None if args.precision in ("auto", "4bit", "8bit") else args.precision
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    policy = load_policy("native", args.path or f"preset:{args.preset}", device=device, dtype=dtype,
                         quantization=quant)
    _sync(device)
    load_s = time.perf_counter() - t0
    peak_load = _peak_mb(device)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(max(4, args.check))]
    n_prompt = int(policy.processor.tokenize([policy.processor.prompt(INSTRUCTION)])[0].shape[1])
    result = {
        "model": args.path or f"preset:{args.preset} (random weights)", "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu",
        "precision": args.precision, "deterministic": args.deterministic, "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "prompt_tokens": n_prompt, "action_tokens": policy.model.config.n_action_tokens,
        "load_s": round(load_s, 1), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python bench/bench_inference.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    import transformers
    result["transformers"] = transformers.__version__
    if args.check:
        try:
            result["identical"] = check_identical(policy, images[: args.check], device)
            if args.peaked:
                w = policy.model.language_model.model.norm.weight
                w.data.mul_(args.peaked)
                result["identical_peaked"] = check_identical(policy, images[: args.check], device)
                if "fast-compiled" in args.modes:
                    result["identical_peaked_compiled"] = check_identical(policy, images[: args.check], device,
                                                                          compiled=True)
                w.data.div_(args.peaked)
            if "fast-compiled" in args.modes:
                result["identical_compiled"] = check_identical(policy, images[: args.check], device, compiled=True)
            if "fast-autotune" in args.modes:
                result["identical_autotune"] = check_identical(policy, images[: args.check], device,
                                                               compiled="max-autotune")
        except Exception as exc:
            result["identical"] = {"error": repr(exc)}
        if device.startswith("cuda"):  # the check's extra decoders must not count toward the policy's peak
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    result["timings"] = []
    for m in filter(None, args.modes.split(",")):
        try:
            result["timings"].append(time_mode(policy, m, images, args.iters, args.warmup, device))
        except Exception as exc:  # record and go on: one failing path must not lose the others' numbers
            result["timings"].append({"mode": m, "error": repr(exc)})
    result["peak_mem_mb"] = round(max(peak_load, _peak_mb(device)), 1)
    result["peak_load_mb"] = round(peak_load, 1)
    if args.profile and device.startswith("cuda"):
        result["profile_fast"] = profile_fast(policy, images[0], device)
        if "fast-compiled" in args.modes:
            result["profile_fast_compiled"] = profile_fast(policy, images[0], device, compile=True)
        if "fast-autotune" in args.modes:
            result["profile_fast_autotune"] = profile_fast(policy, images[0], device, compile="max-autotune")
    if args.trace and device.startswith("cuda"):
        from torch.profiler import ProfilerActivity, profile

        policy.fast, policy._decoder = True, None
        policy.predict(images[0], INSTRUCTION)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                policy.predict(images[0], INSTRUCTION)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=60))
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
