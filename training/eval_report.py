"""Aggregating evaluation episodes into the report: per-task and mean success with Wilson 95% intervals,
mean steps, and how episodes (and successes) ended. Pure Python: no LIBERO, no ROS."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (better than the normal one at small n or p near 0/1)."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} outside 0..{n}")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _summary(episodes: list[Mapping]) -> dict:
    n = len(episodes)
    k = sum(bool(e["success"]) for e in episodes)
    lo, hi = wilson_interval(k, n)
    return {
        "episodes": n,
        "successes": k,
        "success_rate": k / n if n else 0.0,
        "wilson95": [lo, hi],
        "mean_steps": sum(e["steps"] for e in episodes) / n if n else 0.0,
        # why episodes ended (success check, policy's own done, step limit, ...) and, among the successes,
        # which of them ended by the policy's done vs the success check vs the step limit
        "ended_by": dict(Counter(e["reason"] for e in episodes)),
        "successes_ended_by": dict(Counter(e["reason"] for e in episodes if e["success"])),
    }


def build_report(episodes: Iterable[Mapping], config: Mapping) -> dict:
    """The JSON report: ``config``, ``per_task`` (sorted by task id), ``overall`` and every episode."""
    eps = sorted((dict(e) for e in episodes), key=lambda e: (e["task_id"], e["init_state_id"]))
    tasks: dict[int, list[dict]] = {}
    for e in eps:
        tasks.setdefault(int(e["task_id"]), []).append(e)
    per_task = [{"task_id": t, "instruction": es[0]["instruction"], **_summary(es)} for t, es in sorted(tasks.items())]
    overall = _summary(eps)
    overall["mean_task_success_rate"] = (sum(t["success_rate"] for t in per_task) / len(per_task)) if per_task else 0.0
    return {"config": dict(config), "per_task": per_task, "overall": overall, "episodes": eps}


def format_report(report: Mapping) -> str:
    """A short human-readable table of a report."""
    lines = [f"{'task':>4}  {'success':>9}  {'wilson95':>13}  {'steps':>6}  instruction"]
    for t in report["per_task"]:
        lo, hi = t["wilson95"]
        lines.append(f"{t['task_id']:>4}  {t['successes']:>3}/{t['episodes']:<3}    [{lo:.2f}, {hi:.2f}]  "
                     f"{t['mean_steps']:>6.1f}  {t['instruction']}")
    o = report["overall"]
    lo, hi = o["wilson95"]
    lines.append(f"mean success {o['success_rate']:.3f} over {o['episodes']} episodes (Wilson 95% [{lo:.3f}, "
                 f"{hi:.3f}]), mean steps {o['mean_steps']:.1f}; ended by {o['ended_by']}; "
                 f"successes ended by {o['successes_ended_by']}")
    return "\n".join(lines)
