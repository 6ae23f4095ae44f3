"""``dataset_statistics.json`` for our datasets, with OpenVLA's LIBERO preprocessing.

Layout (OpenVLA's, written through ``vla_ros.normalization``, the one definition)::

    {dataset_key: {"action": {"mean", "std", "max", "min", "q01", "q99", "mask"},
                   "proprio": {"mean", "std", "max", "min", "q01", "q99"},
                   "num_transitions": N, "num_trajectories": M}}

Preprocessing, as OpenVLA did for its LIBERO fine-tuning sets (``experiments/robot/libero/
regenerate_libero_dataset.py``, the ``*_no_noops`` datasets): a step is a no-op when the arm part of its
action has norm < 1e-4 and the gripper command equals the previous step's; no-ops are dropped. Unlike
OpenVLA we never drop a step flagged done (the episode-end frames teach the model to say "done").

Gripper mapping for training, stated once: our models train on LIBERO's own sign convention, -1 open /
+1 close (``TRAINING_GRIPPER_CONVENTION`` = ``"libero_sign"`` of ``vla_ros.conventions``), so the
statistics are of the raw stored actions. (OpenVLA's LIBERO transform instead maps the gripper to
[0, 1] with 1 = open, ``"openvla_open01"``; its checkpoints record that.) The gripper is never
normalised (mask false).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from vla_ros.data.episode import Episode
from vla_ros.conventions import GRIPPER_CONVENTIONS
from vla_ros.normalization import STATS_FILENAME, compute_action_statistics, save_statistics

TRAINING_GRIPPER_CONVENTION = "libero_sign"
assert TRAINING_GRIPPER_CONVENTION in GRIPPER_CONVENTIONS
NOOP_THRESHOLD = 1e-4  # OpenVLA's is_noop threshold on the arm part of the action


def noop_mask(actions: np.ndarray, dones: np.ndarray | None = None, threshold: float = NOOP_THRESHOLD) -> np.ndarray:
    """Boolean (T,) mask, True where a step is a no-op to drop (never a step flagged done)."""
    a = np.asarray(actions, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] < 2:
        raise ValueError(f"expected (T, D) actions, got {a.shape}")
    small = np.linalg.norm(a[:, :-1], axis=1) < threshold
    same_gripper = np.empty(len(a), dtype=bool)
    same_gripper[0] = True  # the first step has no previous one: arm motion alone decides
    same_gripper[1:] = a[1:, -1] == a[:-1, -1]
    out = small & same_gripper
    if dones is not None:
        out &= ~(np.asarray(dones).reshape(-1).astype(bool))
    return out


def keep_indices(ep: Episode, filter_noops: bool = True) -> np.ndarray:
    """Indices of the steps of ``ep`` that training uses."""
    if not filter_noops:
        return np.arange(len(ep))
    return np.flatnonzero(~noop_mask(ep.actions, ep.dones))


def _vector_stats(x: np.ndarray) -> dict:
    return {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "max": x.max(0).tolist(),
            "min": x.min(0).tolist(), "q01": np.quantile(x, 0.01, axis=0).tolist(),
            "q99": np.quantile(x, 0.99, axis=0).tolist()}


def compute_statistics(episodes: Iterable[Episode], filter_noops: bool = True) -> dict:
    """Statistics of one dataset (the value under its key), in OpenVLA's layout."""
    actions, proprio, n_traj = [], [], 0
    for ep in episodes:
        idx = keep_indices(ep, filter_noops)
        if len(idx) == 0:
            continue
        n_traj += 1
        actions.append(ep.actions[idx])
        if "ee_states" in ep.obs and "gripper_states" in ep.obs:
            proprio.append(ep.proprio()[idx])
    if not actions:
        raise ValueError("no steps to compute statistics from (empty dataset, or all no-ops)")
    out = compute_action_statistics(np.concatenate(actions), gripper_dims=(-1,), num_trajectories=n_traj)
    if proprio:
        out["proprio"] = _vector_stats(np.concatenate(proprio))
    out["gripper_convention"] = TRAINING_GRIPPER_CONVENTION
    out["noops_filtered"] = bool(filter_noops)
    return out


def write_statistics(episodes: Iterable[Episode], out_dir: str | Path, key: str,
                     filter_noops: bool = True) -> Path:
    """Compute and write ``<out_dir>/dataset_statistics.json`` holding ``{key: stats}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return save_statistics({key: compute_statistics(episodes, filter_noops)}, out / STATS_FILENAME)


def main(argv: list[str] | None = None) -> int:
    """``vla-ros dataset-stats DIR --key KEY``: write DIR/dataset_statistics.json from its LIBERO-format files."""
    import argparse

    from vla_ros.data.libero_hdf5 import LiberoHdf5Reader, dataset_files

    p = argparse.ArgumentParser(prog="vla-ros dataset-stats", description=main.__doc__)
    p.add_argument("dir", help="directory of LIBERO-format .hdf5 files (searched recursively)")
    p.add_argument("--key", required=True, help="dataset key (the unnorm_key a checkpoint will use)")
    p.add_argument("--keep-noops", action="store_true", help="do not drop no-op steps")
    a = p.parse_args(argv)

    def episodes():
        for path in dataset_files(a.dir):
            with LiberoHdf5Reader(path, load_images=False) as r:
                yield from r

    path = write_statistics(episodes(), a.dir, a.key, filter_noops=not a.keep_noops)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
