"""Inference benchmark of the native VLA: latency per action (median, p90), actions/s, peak memory.

Not a test. Random weights are fine (``--preset``), or a checkpoint directory (``--path``). On CUDA it also
compares the greedy tokens of each path with the unoptimised one (the plain dynamic-cache loop) on ``--check``
random inputs, and for every mismatch reports the reference's top-1/top-2 logit margin at the differing step
(random weights give near-tied bf16 logits: such a flip is rounding, not a wrong kernel). ``--planted-margin``
repeats the check after giving each of the reference's decisions a large margin in the lm_head rows alone.

    python bench/bench_inference.py --preset openvla-7b --device cuda --precision bf16 --modes fast,eager
    python bench/bench_inference.py --preset tiny-128 --device cpu --threads 2
"""

from __future__ import annotations

import argparse
import gc
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


MODES = {  # mode -> StaticGreedyDecoder keyword arguments (None: the plain dynamic-cache loop)
    "fast": {},  # what PrismaticPolicy(fast=True) builds: static cache + CUDA graphs, eager kernels
    "fast-compiled": {"compile": True},  # PrismaticPolicy(compile=True)
    "fast-compiled-nocdt": {"compile": "no-cdt"},  # as fast-compiled, cuBLAS matrix-vector products
    "static-eager": {"cuda_graph": False},  # the fast path's computation, eager, no graphs
    "eager": None,  # model.generate_action_tokens: dynamic KV cache, eager (the unoptimised path)
}


def make_decoder(policy, mode: str, **extra) -> StaticGreedyDecoder | None:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {sorted(MODES)}")
    kw = MODES[mode]
    return None if kw is None else StaticGreedyDecoder(policy.model, **kw, **extra)


def time_mode(policy, mode: str, images: list[np.ndarray], iters: int, warmup: int, device: str) -> dict:
    """Per-action latency of one decode path, end to end (preprocessing to un-normalised action)."""
    policy._decoder = None
    gc.collect()
    if device.startswith("cuda"):  # this path's own peak: the model plus what the path allocates
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    dec = make_decoder(policy, mode)
    policy.fast, policy._decoder = dec is not None, dec
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
            "actions_per_s": 1000.0 / statistics.fmean(ms), "peak_mem_mb": round(_peak_mb(device), 1)}


def tokens_and_logits(policy, mode: str, decoders: dict, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy tokens (n,) and every step's logits (n, vocab) float32 of one path on one input."""
    if MODES[mode] is None:  # the plain loop: record what it hands to select_token
        rec: list[torch.Tensor] = []
        model = policy.model
        orig = model.select_token

        def hook(logits, step):
            rec.append(logits[0].float().clone())
            return orig(logits, step)

        model.select_token = hook
        try:
            tok = policy.decode_tokens([img], [INSTRUCTION], fast=False)[0]
        finally:
            del model.select_token
        return tok, torch.stack(rec).cpu().numpy()
    if mode not in decoders:
        decoders[mode] = make_decoder(policy, mode, keep_logits=True)
    policy._decoder = decoders[mode]
    tok = policy.decode_tokens([img], [INSTRUCTION], fast=True)[0]
    return tok, decoders[mode].all_logits.cpu().numpy().copy()


def _margin(logits: np.ndarray) -> tuple[float, float]:
    """Top-1 minus top-2 logit, and that margin in units of the bf16 spacing (ulp) at the top-1 value."""
    top2 = np.partition(logits, -2)[-2:]
    hi = float(max(top2))
    ulp = 2.0 ** (np.floor(np.log2(max(abs(hi), 1e-30))) - 7)  # bf16: 8 significant bits
    m = float(abs(top2[1] - top2[0]))
    return m, m / ulp


def check_identical(policy, images: list[np.ndarray], modes: list[str], reference: str = "eager") -> dict:
    """Greedy tokens of each path vs the reference on the same inputs, with the numbers that say whether a
    mismatch is a bf16 near-tie: the reference's top-1/top-2 margin at the first differing step, and how far the
    two paths' logits are apart there (same inputs up to that step)."""
    decoders: dict = {}
    paths = [reference, *[m for m in modes if m != reference]]
    runs = {m: [tokens_and_logits(policy, m, decoders, img) for img in images] for m in paths}
    runs[reference + "-repeat"] = [tokens_and_logits(policy, reference, decoders, img) for img in images]
    policy._decoder = None
    del decoders
    ref = runs[reference]
    res: dict = {"n_inputs": len(images), "reference": reference, "steps": int(ref[0][0].shape[0]),
                 "distinct_reference_outputs": len({tuple(t.tolist()) for t, _ in ref})}
    margins = [[_margin(lg) for lg in ref[i][1]] for i in range(len(images))]
    res["ref_tokens"] = [t.tolist() for t, _ in ref]
    res["ref_min_margin"] = round(min(m for mm in margins for m, _ in mm), 6)
    res["ref_min_margin_per_input"] = [round(min(m for m, _ in mm), 6) for mm in margins]
    res["ref_min_margin_ulp_per_input"] = [round(min(u for _, u in mm), 1) for mm in margins]
    res["pairs"] = {}
    for m in runs:
        if m == reference:
            continue
        same, mism, d0, dmax = 0, [], [], 0.0
        for i, ((rt, rl), (ct, cl)) in enumerate(zip(ref, runs[m], strict=True)):
            d0.append(float(np.abs(rl[0] - cl[0]).max()))  # step 0: same inputs for every path
            diff = np.nonzero(rt != ct)[0]
            last = int(diff[0]) if diff.size else len(rt) - 1  # steps with the same inputs in both paths
            dmax = max(dmax, float(np.abs(rl[: last + 1] - cl[: last + 1]).max()))
            if diff.size == 0:
                same += 1
                continue
            t = int(diff[0])
            mg, mu = margins[i][t]
            mism.append({"input": i, "step": t, "ref_token": int(rt[t]), "token": int(ct[t]),
                         "ref_margin": round(mg, 6), "ref_margin_ulp": round(mu, 1),
                         "max_abs_logit_diff": round(float(np.abs(rl[t] - cl[t]).max()), 6)})
        res["pairs"][f"{m} vs {reference}"] = {
            "identical": same, "of": len(images), "step0_max_abs_logit_diff_median": round(statistics.median(d0), 6),
            "step0_max_abs_logit_diff_max": round(max(d0), 6), "max_abs_logit_diff": round(dmax, 6),
            "mismatches": mism}
    # The noise floor: how far two unoptimised implementations of the same model (dynamic vs static cache, eager)
    # are apart. An input is "decided" when every reference margin exceeds twice the floor: a path whose logits
    # are within the floor of the reference cannot flip a greedy choice there.
    if "static-eager" in runs and reference != "static-eager":
        floor = res["pairs"][f"static-eager vs {reference}"]["step0_max_abs_logit_diff_max"]
        decided = [i for i, mm in enumerate(margins) if min(x for x, _ in mm) > 2 * floor]
        res["noise_floor"] = floor
        res["decided_inputs"] = decided
        for p in res["pairs"].values():
            bad = {x["input"] for x in p["mismatches"]}
            p["identical_on_decided"] = sum(i not in bad for i in decided)
            p["decided"] = len(decided)
    return res


@torch.inference_mode()
def plant_margins(policy, images: list[np.ndarray], margin: float) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Give every greedy decision of the reference on ``images`` a logit margin of at least ``margin``.

    Runs the unoptimised loop (``eager``) once, recording each step's final hidden state h (the input of lm_head)
    and its chosen token t, then changes only the lm_head rows of the chosen tokens: the minimum-norm change
    (pseudo-inverse of the recorded h's) that raises row t's logit by ``margin`` at each h where t was chosen and
    leaves every changed row's logit at every other recorded h as it was (plain ``margin * h/|h|**2`` per
    decision would leak into the other decisions where h's are correlated). The rest of the model is untouched and
    lm_head does not feed back into h, so the reference sequences stay the same, each decision now ahead by
    >= ``margin``. Returns (tokens (N, n), changed rows, their old values) for :func:`unplant`."""
    w = policy.model.language_model.lm_head.weight
    hs: list[torch.Tensor] = []
    hook = policy.model.language_model.lm_head.register_forward_hook(
        lambda mod, inp, out: hs.append(inp[0][0, -1].double().clone()))
    try:
        toks = np.stack([tokens_and_logits(policy, "eager", {}, img)[0] for img in images])
    finally:
        hook.remove()
    H = torch.stack(hs)  # (N * n, d), in decision order
    if H.shape[0] != toks.size:
        raise RuntimeError(f"recorded {H.shape[0]} hidden states for {toks.size} decisions")
    rows, which = torch.unique(torch.as_tensor(toks.reshape(-1), device=w.device), return_inverse=True)
    target = torch.zeros((rows.numel(), H.shape[0]), dtype=torch.float64, device=w.device)
    target[which, torch.arange(H.shape[0], device=w.device)] = margin
    delta = target @ torch.linalg.pinv(H.T)  # (rows, d): delta @ H.T == target
    old = w.data[rows].clone()
    w.data[rows] = (old.double() + delta).to(w.dtype)
    return toks, rows, old


@torch.inference_mode()
def unplant(policy, rows: torch.Tensor, old: torch.Tensor) -> None:
    policy.model.language_model.lm_head.weight.data[rows] = old


@torch.inference_mode()
def profile_fast(policy, image: np.ndarray, device: str, mode: str = "fast", iters: int = 10) -> dict:
    """Where the fast path's time goes (CUDA): preprocessing on the CPU, prefill graph, decode graphs, and the
    vision part of the prefill (pixel normalisation, both towers, projector) in a graph of its own."""
    policy.fast = True
    policy._decoder = make_decoder(policy, mode)
    policy.predict(image, INSTRUCTION)  # captures
    dec = policy._decoder
    parts: dict[str, list[float]] = {"preprocess_ms": [], "prefill_ms": [], "decode_ms": [], "vision_ms": []}
    vis = torch.cuda.CUDAGraph()
    fn = dec.pixel_fn or (lambda x: x)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            dec._embed_images(fn(dec.pix))
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(vis):
        dec._embed_images(fn(dec.pix))
    for _ in range(iters):
        t0 = time.perf_counter()
        proc = policy.processor  # as PrismaticPolicy.decode_tokens does it
        ids = proc.tokenize([proc.prompt(INSTRUCTION)])[0].to(policy.device)
        pix = proc.resized_uint8([image]).to(policy.device)
        _sync(device)
        parts["preprocess_ms"].append(1000 * (time.perf_counter() - t0))
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(5)]
        entry = dec._entry(ids)
        dec.pix.copy_(pix)
        ev[0].record()
        entry.graph.replay()
        ev[1].record()
        for _ in range(dec.n - 1):
            dec._decode_graph.replay()
        ev[2].record()
        ev[3].record()
        vis.replay()
        ev[4].record()
        torch.cuda.synchronize()
        parts["prefill_ms"].append(ev[0].elapsed_time(ev[1]))
        parts["decode_ms"].append(ev[1].elapsed_time(ev[2]))
        parts["vision_ms"].append(ev[3].elapsed_time(ev[4]))
    out = {k: round(statistics.median(v), 3) for k, v in parts.items()}
    out["decode_step_ms"] = round(out["decode_ms"] / max(1, dec.n - 1), 3)
    policy._decoder = None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny-128", help="random weights of a preset (ignored with --path)")
    ap.add_argument("--path", help="checkpoint directory instead of a preset")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", help="bf16 | fp32 | 4bit | 8bit | auto (bf16 on CUDA)")
    ap.add_argument("--modes", default="fast", help="comma list of " + ", ".join(MODES))
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--check", type=int, default=0, help="inputs for the token-identity check")
    ap.add_argument("--profile", action="store_true", help="CUDA: time preprocessing, prefill and decode apart")
    ap.add_argument("--deterministic", action="store_true",
                    help="deterministic kernels (CUBLAS_WORKSPACE_CONFIG, torch.use_deterministic_algorithms)")
    ap.add_argument("--trace", action="store_true", help="CUDA: print the top kernels of the fast path (profiler)")
    ap.add_argument("--peaked", action="store_true",
                    help="repeat the identity check with peaked logits: lm_head row scaled by 2**-floor(log2(rank+1)) "
                         "for a random rank (exact in bf16, undone after). Random weights give ~Gaussian logits whose "
                         "top-2 gap is a few bf16 ulps of the top value, so any kernel change flips greedy picks "
                         "(scaling all logits does not help: the rounding scales with them); heavy-tailed logits, "
                         "like a trained model's, put most margins far above the rounding")
    ap.add_argument("--planted-margin", type=float, default=0.0, metavar="LOGITS",
                    help="repeat the identity check with planted margins: record the eager reference's hidden "
                         "state and token at every step on the --check images, then change only the chosen tokens' "
                         "lm_head rows so each of those decisions leads by >= LOGITS (the sequences stay the same; "
                         "undone after). Makes identity well-posed on random weights, as on a trained model whose "
                         "decisions are far above bf16 noise; replaces the plain check. --unseen M also checks M "
                         "images not planted (their margins stay near the random weights' ones)")
    ap.add_argument("--unseen", type=int, default=0, help="with --planted-margin: images checked but not planted")
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
    n_img = max(4, args.check + (args.unseen if args.planted_margin else 0))
    images = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(n_img)]
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
    modes = [m for m in args.modes.split(",") if m]
    if args.check:
        check_modes = ["static-eager", *[m for m in modes if m not in ("eager", "static-eager")]]
        if not device.startswith("cuda"):
            check_modes = [m for m in check_modes if "compiled" not in m]
        if not args.planted_margin:  # with it, the unseen images are the plain check
            try:
                result["identity"] = check_identical(policy, images[: args.check], check_modes)
            except Exception as exc:
                result["identity"] = {"error": repr(exc)}
            print(json.dumps(result["identity"]), flush=True)
        if args.peaked:
            w = policy.model.language_model.lm_head.weight
            rank = torch.randperm(w.shape[0], generator=torch.Generator().manual_seed(0)).to(w.device)
            scale = torch.exp2(-torch.floor(torch.log2(rank.float() + 1))).to(w.dtype)[:, None]
            w.data.mul_(scale)
            try:
                result["identity_peaked"] = check_identical(policy, images[: args.check], check_modes)
            except Exception as exc:
                result["identity_peaked"] = {"error": repr(exc)}
            finally:
                w.data.div_(scale)
            print(json.dumps({"identity_peaked": result["identity_peaked"]}), flush=True)
        if args.planted_margin:
            pl: dict = {"margin": args.planted_margin}
            rows = None
            try:
                toks, rows, old = plant_margins(policy, images[: args.check], args.planted_margin)
                pl["planted_rows"] = int(rows.numel())
                pl["planted"] = check_identical(policy, images[: args.check], check_modes)
                pl["reference_unchanged"] = pl["planted"]["ref_tokens"] == toks.tolist()
                if args.unseen:
                    pl["unseen"] = check_identical(policy, images[args.check: args.check + args.unseen],
                                                   check_modes)
            except Exception as exc:
                pl["error"] = repr(exc)
            finally:
                if rows is not None:
                    unplant(policy, rows, old)
            result["identity_planted"] = pl
            print(json.dumps({"identity_planted": pl}), flush=True)
        gc.collect()  # the check's decoders (reference cycles) must not count toward the policy's peak
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    result["timings"] = []
    for m in modes:
        try:
            result["timings"].append(time_mode(policy, m, images, args.iters, args.warmup, device))
        except Exception as exc:  # record and go on: one failing path must not lose the others' numbers
            result["timings"].append({"mode": m, "error": repr(exc)})
        print(json.dumps(result["timings"][-1]), flush=True)
    policy._decoder = None
    result["peak_mem_mb"] = round(max(peak_load, _peak_mb(device)), 1)
    result["peak_load_mb"] = round(peak_load, 1)
    if args.profile and device.startswith("cuda"):
        for m in modes:
            if m.startswith("fast"):
                try:
                    result[f"profile_{m}"] = profile_fast(policy, images[0], device, m)
                except Exception as exc:
                    result[f"profile_{m}"] = {"error": repr(exc)}
    try:
        from torch._dynamo.utils import counters

        result["dynamo_unique_graphs"] = int(counters["stats"]["unique_graphs"])
    except Exception:
        pass
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
