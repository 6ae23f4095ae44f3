"""``vla-ros merge-policies A B --weight-b W --out DIR``: the weight average ``(1-W)*A + W*B`` of two policies.

Made for a fine-tuned policy and the one it was fine-tuned from (WiSE-FT, Wortsman et al. 2022: interpolating
the weights keeps what the original knew and what the fine-tuning added). Both must share the architecture
and tokenizer; the result takes B's config, tokenizer and action statistics (the newer bin edges) and records
both sources in ``training_meta.json``, so the model card can say how it was made.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import shutil
import sys
from pathlib import Path

WEIGHTS = "model.safetensors"
# B's files the merged policy carries as they are (the weights are the only thing averaged)
COPIED = ("config.json", "dataset_statistics.json", "tokenizer.json", "tokenizer_config.json")
# config entries that may differ: the statistics (B's are kept) and run-time decoding settings
# (a save after a load also writes the dtype into the nested configs)
MAY_DIFFER = {"norm_stats", "done_confirmations", "done_threshold", "transformers_version", "_name_or_path",
              "dtype", "torch_dtype"}


def _architecture(cfg: dict) -> dict:
    return {k: _architecture(v) if isinstance(v, dict) else v for k, v in cfg.items() if k not in MAY_DIFFER}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def merge_policies(a: Path, b: Path, weight_b: float, out: Path, command_line: str = "") -> Path:
    """Write ``(1 - weight_b) * a + weight_b * b`` to ``out``; raises ValueError when the two cannot be merged."""
    from safetensors.torch import load_file, save_file

    if not 0.0 <= weight_b <= 1.0:
        raise ValueError(f"--weight-b must be in [0, 1], got {weight_b}")
    for d in (a, b):
        if not (d / WEIGHTS).is_file():
            raise ValueError(f"{d} has no {WEIGHTS}")
    ca, cb = _architecture(_read_json(a / "config.json")), _architecture(_read_json(b / "config.json"))
    differ = sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))
    if differ:
        raise ValueError(f"{a} and {b} have different configs ({', '.join(differ)}): not one architecture")
    if (a / "tokenizer.json").read_bytes() != (b / "tokenizer.json").read_bytes():
        raise ValueError(f"{a} and {b} have different tokenizers: their token ids do not mean the same")
    wa, wb = load_file(a / WEIGHTS), load_file(b / WEIGHTS)
    if wa.keys() != wb.keys():
        raise ValueError(f"{a} and {b} have different parameters: {sorted(set(wa) ^ set(wb))[:5]}")
    bad = [k for k in wa if wa[k].shape != wb[k].shape]
    if bad:
        raise ValueError(f"{a} and {b} differ in shape at {bad[:5]}")
    merged = {}
    for k, ta in wa.items():
        tb = wb[k]
        if ta.is_floating_point():
            merged[k] = (ta.double() * (1.0 - weight_b) + tb.double() * weight_b).to(ta.dtype).contiguous()
        elif not (ta == tb).all():
            raise ValueError(f"{k} is an integer tensor that differs between {a} and {b}")
        else:
            merged[k] = ta
    if out.resolve() in (a.resolve(), b.resolve()):
        raise ValueError("--out must be a new directory, not one of the sources")
    out.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (b / name).is_file():
            shutil.copy2(b / name, out / name)
    save_file(merged, out / WEIGHTS, metadata={"format": "pt"})
    meta_b = _read_json(b / "training_meta.json")
    meta = {"command": "merge", "command_line": command_line, "weight_b": weight_b,
            "preset": meta_b.get("preset"), "samples": meta_b.get("samples"), "augment": meta_b.get("augment"),
            "sources": [{"path": str(p), "weight": w, "sha256": sha256(p / WEIGHTS),
                         "training_meta": _read_json(p / "training_meta.json")}
                        for p, w in ((a, 1.0 - weight_b), (b, weight_b))]}
    (out / "training_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vla-ros merge-policies", description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path, help="the first policy directory (e.g. the one fine-tuned from)")
    p.add_argument("b", type=Path, help="the second (e.g. the fine-tuned one); its config and statistics are kept")
    p.add_argument("--weight-b", type=float, default=0.5, help="B's share of every weight")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        out = merge_policies(args.a, args.b, args.weight_b, args.out,
                             command_line=shlex.join(["vla-ros", "merge-policies", *(argv or sys.argv[1:])]))
    except ValueError as exc:
        print(f"vla-ros merge-policies: {exc}", file=sys.stderr)
        return 2
    print(f"vla-ros merge-policies: {out} = {1 - args.weight_b:g} x {args.a} + {args.weight_b:g} x {args.b}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
