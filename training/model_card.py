"""``vla-ros model-card``: a checkpoint's README from its own records, so the card cannot drift from the artefacts.

Reads ``training_meta.json`` and ``train_result.json`` (written by ``vla-ros train``), ``config.json``, the
generation report of the demonstrations, and one ``report.json`` per evaluation (``vla-ros eval``); writes
``<checkpoint>/README.md`` with the data, the commands, the training cost and per-task success tables.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def success_table(report: Mapping) -> str:
    """Markdown table of one evaluation report: per task, then the suite mean, with Wilson 95% intervals."""
    rows = ["| task | instruction | success | Wilson 95% | mean steps | ended by the policy's `done` (successes) |",
            "|---|---|---|---|---|---|"]
    for t in report["per_task"]:
        lo, hi = t["wilson95"]
        by_done = t["successes_ended_by"].get("policy_done", 0)
        rows.append(f"| {t['task_id']} | {t['instruction']} | {t['successes']}/{t['episodes']} | "
                    f"[{lo:.2f}, {hi:.2f}] | {t['mean_steps']:.0f} | {by_done}/{t['successes']} |")
    o = report["overall"]
    lo, hi = o["wilson95"]
    by_done = o["successes_ended_by"].get("policy_done", 0)
    rows.append(f"| **all** | | **{o['successes']}/{o['episodes']} ({o['success_rate']:.1%})** | "
                f"[{lo:.2f}, {hi:.2f}] | {o['mean_steps']:.0f} | {by_done}/{o['successes']} |")
    return "\n".join(rows)


def _ends_on_success(cfg: Mapping) -> bool:
    """The eval's ending rule, as ``vla-ros eval`` records its flags (``no_end_on_success``)."""
    return not cfg.get("no_end_on_success", False)


def eval_command(cfg: Mapping) -> str:
    """The ``vla-ros eval`` command line that reproduces a report (from its recorded configuration)."""
    parts = ["vla-ros eval", f"--checkpoint {cfg.get('checkpoint')}", f"--suite {cfg.get('suite')}",
             f"--episodes-per-task {cfg.get('episodes_per_task')}", f"--seed {cfg.get('seed')}",
             f"--route {cfg.get('route')}", f"--image-size {cfg.get('image_size')}"]
    if not _ends_on_success(cfg):
        parts.append("--no-end-on-success")
    opts = cfg.get("backend_options")
    if opts:
        parts.append(f'--backend-options "{opts if isinstance(opts, str) else json.dumps(opts)}"')
    if cfg.get("workers", 1) != 1:
        parts.append(f"--workers {cfg['workers']}")
    return " ".join(parts)


def data_bullets(gen: dict) -> list[str]:
    """Two bullets on one ``vla-ros generate-demos`` run, from its generation_report.json."""
    gc = gen.get("config", {})
    kept = sum(t["kept"] for t in gen.get("tasks", []))
    steps = sum(sum(t["lengths"]) for t in gen.get("tasks", []))
    suites = sorted({t["suite"] for t in gen.get("tasks", [])})
    ids = sorted({t["task_id"] for t in gen.get("tasks", [])})
    # LIBERO's suites hold 10 tasks each; a run over fewer named them with --tasks
    tasks = "" if ids == list(range(10)) else f" --tasks {','.join(map(str, ids))}"
    return [f"- {kept} successful scripted-expert demonstrations ({steps} steps) of {', '.join(suites)}, "
            f"{gc.get('demos_per_task')} per task, generated from **fresh random scenes** (seed "
            f"{gc.get('seed')}; never the suites' fixed init states, which are the evaluation set), "
            f"DART noise {gc.get('noise_std')} (executed, the clean expert action is the label), "
            f"{gc.get('image_size')} px images, demos longer than {gc.get('max_len_frac')} x the step "
            "limit dropped, success step + "
            f"{gc.get('done_steps')} steps labelled done.",
            f"- command: `vla-ros generate-demos --suites {' '.join(suites)}{tasks} --demos-per-task "
            f"{gc.get('demos_per_task')} --seed {gc.get('seed')} --noise {gc.get('noise_std')} "
            f"--max-len-frac {gc.get('max_len_frac')} --workers 2 --out {gc.get('out')}`"]


def training_section(meta: dict, result: dict, loop: dict, minutes: float) -> list[str]:
    """The Training section of a ``vla-ros train`` run, from its records."""
    return ["## Training", "",
            f"- command: `{meta.get('command_line', 'vla-ros train')}`",
            f"- {result.get('step', '?')} optimizer steps of batch {loop.get('batch_size')} x "
            f"{loop.get('grad_accum')}, lr {loop.get('lr')} ({loop.get('schedule')}, warm-up "
            f"{loop.get('warmup_steps')}), {meta.get('samples')} training samples, augmentation "
            f"{meta.get('augment')}",
            f"- cost: {minutes:.1f} GPU-minutes ({meta.get('device', 'one GPU')}); final "
            f"action-token accuracy {result.get('action_accuracy', float('nan')):.3f}, "
            f"L1 {result.get('action_l1', float('nan')):.4f}", ""]


def merge_section(meta: dict, minutes: float) -> list[str]:
    """The Training section of a weight average (``vla-ros merge-policies``): how, and from what."""
    lines = ["## Training", "",
             f"- a weight average (WiSE-FT): `{meta.get('command_line') or 'vla-ros merge-policies'}`"]
    for src in meta.get("sources", []):
        sm = src.get("training_meta", {})
        lines.append(f"- {src.get('weight'):g} x `{src.get('path')}` (sha256 {str(src.get('sha256'))[:12]}...), "
                     f"trained with `{sm.get('command_line', '?')}`")
    lines += [f"- cost: {minutes:.1f} GPU-minutes in all (the sources' lineage; averaging is free)", ""]
    return lines


def build_card(checkpoint: Path, reports: list[Path], generation_reports: list[Path], title: str,
               notes: str = "", train_minutes: float | None = None) -> str:
    cfg = _read(checkpoint / "config.json")
    meta = _read(checkpoint / "training_meta.json")
    result = _read(checkpoint / "train_result.json")
    loop = meta.get("loop", {})
    lines = [f"# {title}", "",
             "A small Prismatic VLA (OpenVLA's architecture: ViT -> MLP projector -> Llama decoder, actions as the "
             "last 256 tokens of the vocabulary) trained from scratch by vla_ros on its own scripted "
             "demonstrations of LIBERO. Load it with `load_policy(\"native\", \"<this directory>\")` or run it "
             "with `make demo` / `vla-ros launch libero_sim model:=<this directory>`.", ""]
    lines += ["## Model", "",
              f"- preset `{meta.get('preset')}`, "
              f"inputs: main camera ({cfg.get('vision_backbones', [{}])[0].get('image_size')} px)"
              + "".join(f" + {c} camera" for c in cfg.get("extra_images", []))
              + (" + proprio (`" + cfg["proprio_stats"]["layout"] + "`)" if cfg.get("proprio_stats") else "")
              + " + instruction",
              f"- action chunk {cfg.get('action_chunk', 1)} (7-D LIBERO delta actions, gripper -1 open / +1 close), "
              f"episode-end token: {'yes' if cfg.get('predict_done') else 'no'} "
              f"(threshold {cfg.get('done_threshold', 0.5)})",
              f"- image flip `{cfg.get('image_flip')}` (LIBERO's camera is upside down), centre crop at inference: "
              f"{cfg.get('center_crop')}",
              f"- statistics key `{next(iter(cfg.get('norm_stats') or {'?': 0}))}` (`dataset_statistics.json`)", ""]
    data_lines = [line for path in generation_reports if path.is_file() for line in data_bullets(_read(path))]
    if data_lines:
        lines += ["## Data", "", *data_lines, ""]
    minutes = train_minutes if train_minutes is not None else result.get("wall_s", 0) / 60
    if meta.get("command") == "merge":
        lines += merge_section(meta, minutes)
    else:
        lines += training_section(meta, result, loop, minutes)
    for path in reports:
        rep = _read(path)
        if not rep:
            continue
        c = rep["config"]
        ending = ("episodes end only by the policy's `done` or the step limit (`--no-end-on-success`): success "
                  "is the goal holding when the policy stops" if not _ends_on_success(c)
                  else "episodes end at the simulator's success check (the literature's protocol)")
        lines += [f"## Success: {c.get('suite')} ({c.get('route')} route)", "",
                  f"Fixed init states 0..{c.get('episodes_per_task', 0) - 1} of every task, seed {c.get('seed')}, "
                  f"{ending}.", "", f"`{eval_command(c)}`", "", success_table(rep), ""]
    if notes:
        lines += ["## Notes", "", notes.strip(), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vla-ros model-card", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--eval", nargs="*", default=[], type=Path, help="report.json files of vla-ros eval")
    p.add_argument("--generation-report", nargs="*", default=[], type=Path,
                   help="generation_report.json of each vla-ros generate-demos run the weights learned from")
    p.add_argument("--title", default="vla_ros_libero_small")
    p.add_argument("--notes", type=Path, default=None, help="a markdown file appended as Notes")
    p.add_argument("--out", type=Path, default=None, help="default: <checkpoint>/README.md")
    p.add_argument("--train-minutes", type=float, default=None,
                   help="training GPU-minutes of a resumed or continued run (train_result.json has the last part)")
    a = p.parse_args(argv)
    notes = a.notes.read_text() if a.notes else ""
    card = build_card(a.checkpoint, list(a.eval), a.generation_report, a.title, notes, a.train_minutes)
    out = a.out or a.checkpoint / "README.md"
    out.write_text(card)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
