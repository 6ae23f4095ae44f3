"""A plot per episode: the executed actions over the policy's decisions, holds and done (ROS-free).

matplotlib is a dependency of the ``sim`` group only (setup.py), so this lives in ``vla_ros.sim``, beside the
recorder that calls it. It draws with matplotlib's Agg canvas directly (no pyplot): no global backend is set
and nothing is shown, whatever else the process does with matplotlib.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vla_ros.conventions import ACTION_DIM
from vla_ros.sim.viewer import StepRecord

# Panels of the figure: (title, action indices, labels). LIBERO's units: [-1, 1] controller units
# (x 0.05 m, x 0.5 rad per step), gripper -1 open / +1 close.
ACTION_PANELS = (
    ("translation (controller units)", (0, 1, 2), ("dx", "dy", "dz")),
    ("rotation (controller units)", (3, 4, 5), ("dax", "day", "daz")),
    ("gripper (-1 open, +1 close)", (6,), ("gripper",)),
)
_HOLD_COLOURS = ("#f0a020", "#a070d0", "#20a0a0", "#d06080", "#808080")


def hold_spans(records: Sequence[StepRecord]) -> list[tuple[int, int, str]]:
    """Runs of consecutive holds with one reason: (first decision, last decision, reason)."""
    spans: list[tuple[int, int, str]] = []
    for i, rec in enumerate(records):
        if not rec.is_hold:
            continue
        if spans and spans[-1][1] == i - 1 and spans[-1][2] == rec.hold_reason:
            spans[-1] = (spans[-1][0], i, rec.hold_reason)
        else:
            spans.append((i, i, rec.hold_reason))
    return spans


def plot_episode(records: Sequence[StepRecord], path: str | os.PathLike, *, title: str = "",
                 dpi: int = 100) -> Path:
    """Write a PNG of ``records``: one panel per action group, then the done probability (where the model
    has one) and the decisions where the policy said done; holds are shaded in every panel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if not records:
        raise ValueError("no step records to plot")
    path = Path(path)
    n = len(records)
    x = np.arange(n)
    actions = np.full((n, ACTION_DIM), np.nan)  # holds and done stay NaN: gaps in the lines
    for i, rec in enumerate(records):
        if rec.action is not None:
            actions[i] = rec.action
    done_at = [i for i, rec in enumerate(records) if rec.done]
    probs = np.array([np.nan if r.done_prob is None else r.done_prob for r in records])
    reasons = sorted({r.hold_reason for r in records if r.is_hold})
    colour = {r: _HOLD_COLOURS[i % len(_HOLD_COLOURS)] for i, r in enumerate(reasons)}

    fig = Figure(figsize=(10, 9), dpi=dpi)
    FigureCanvasAgg(fig)
    # A fixed layout: matplotlib's constrained layout measured at half of the plot's time (a second draw pass).
    axes = fig.subplots(len(ACTION_PANELS) + 1, 1, sharex=True, height_ratios=[3, 3, 2, 2],
                        gridspec_kw={"left": 0.07, "right": 0.98, "top": 0.9, "bottom": 0.1, "hspace": 0.3})
    for ax, (name, idx, labels) in zip(axes, ACTION_PANELS, strict=False):
        for j, label in zip(idx, labels, strict=True):
            style = {"drawstyle": "steps-mid"} if j == 6 else {}
            ax.plot(x, actions[:, j], label=label, linewidth=1.2, **style)
        ax.set_ylim(-1.1, 1.1)
        ax.set_title(name, fontsize=9, loc="left")
        ax.axhline(0.0, color="0.7", linewidth=0.6)
        ax.legend(loc="upper right", fontsize=8, ncol=len(labels))

    ax_done = axes[-1]
    if np.isfinite(probs).any():
        ax_done.plot(x, probs, color="tab:red", linewidth=1.2, label="P(done)")
        ax_done.legend(loc="upper left", fontsize=8)
        ax_done.set_title("done probability", fontsize=9, loc="left")
    else:
        ax_done.set_title("done (this model gives no done probability)", fontsize=9, loc="left")
    ax_done.set_ylim(-0.05, 1.05)
    ax_done.set_xlabel(f"decision (policy answers: {n}, simulator steps: {records[-1].step})")

    for ax in axes:
        for first, last, reason in hold_spans(records):
            ax.axvspan(first - 0.5, last + 0.5, color=colour[reason], alpha=0.3, linewidth=0)
        for i in done_at:
            ax.axvline(i, color="tab:red", linestyle="--", linewidth=1.2)
        ax.set_xlim(-0.5, n - 0.5)
        ax.grid(alpha=0.3)
    handles = [Patch(color=colour[r], alpha=0.3, label=f"hold: {r}") for r in reasons]
    if done_at:
        handles.append(Patch(color="tab:red", label=f"policy done at decision {done_at[0]}"))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)

    tmp = path.with_name(f".{path.name}.partial")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)  # readers never see a half-written plot
    return path
