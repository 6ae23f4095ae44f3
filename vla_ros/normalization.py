"""Per-dataset action statistics in OpenVLA's ``dataset_statistics.json`` layout, and (un)normalisation.

Layout: ``{unnorm_key: {"action": {"mean", "std", "max", "min", "q01", "q99", "mask"}, ...}}``. Actions are
normalised to [-1, 1] between the 1st and 99th percentile where ``mask`` is true; the gripper (mask false) passes
through unchanged. Un-normalising is ``0.5 * (a + 1) * (q99 - q01) + q01`` (OpenVLA's ``predict_action``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STATS_FILENAME = "dataset_statistics.json"
_REQUIRED = ("q01", "q99")


class UnnormKeyError(KeyError):
    """The requested statistics key is missing or must be chosen among several."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


def load_statistics(path: str | Path) -> dict:
    """Read a ``dataset_statistics.json`` file (or the one inside a checkpoint directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / STATS_FILENAME
    with open(p) as f:
        stats = json.load(f)
    if not isinstance(stats, dict) or not stats:
        raise ValueError(f"{p}: expected a non-empty mapping of dataset keys to statistics")
    return stats


def save_statistics(stats: dict, path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / STATS_FILENAME
    with open(p, "w") as f:
        json.dump(_jsonable(stats), f, indent=2)
    return p


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def select_unnorm_key(stats: dict, unnorm_key: str | None) -> str:
    """Pick the statistics to un-normalise with; a clear error lists the keys when missing or ambiguous."""
    keys = sorted(stats)
    if unnorm_key is None:
        if len(keys) == 1:
            return keys[0]
        raise UnnormKeyError(
            f"this checkpoint has statistics for {len(keys)} datasets; pass unnorm_key, one of: {keys}"
        )
    if unnorm_key not in stats:
        raise UnnormKeyError(f"unnorm_key {unnorm_key!r} not in the checkpoint's dataset statistics; known: {keys}")
    return unnorm_key


@dataclass
class ActionNormalizer:
    """q01/q99 bounds normalisation of one dataset's actions (OpenVLA's BOUNDS_Q99)."""

    q01: np.ndarray
    q99: np.ndarray
    mask: np.ndarray

    @classmethod
    def from_statistics(cls, stats: dict, unnorm_key: str | None = None) -> ActionNormalizer:
        key = select_unnorm_key(stats, unnorm_key)
        action = stats[key].get("action") if isinstance(stats[key], dict) else None
        if not isinstance(action, dict) or any(k not in action for k in _REQUIRED):
            raise ValueError(f"statistics {key!r} lack action.q01/q99 (OpenVLA's dataset_statistics.json layout)")
        q01 = np.asarray(action["q01"], dtype=np.float64)
        q99 = np.asarray(action["q99"], dtype=np.float64)
        mask = np.asarray(action.get("mask", np.ones_like(q01, dtype=bool)), dtype=bool)
        if not (q01.shape == q99.shape == mask.shape) or q01.ndim != 1:
            raise ValueError(f"statistics {key!r}: q01/q99/mask shapes differ: {q01.shape} {q99.shape} {mask.shape}")
        return cls(q01, q99, mask)

    @property
    def dim(self) -> int:
        return int(self.q01.shape[0])

    def unnormalize(self, normalized: np.ndarray) -> np.ndarray:
        a = np.asarray(normalized, dtype=np.float64)
        un = 0.5 * (a + 1.0) * (self.q99 - self.q01) + self.q01
        return np.where(self.mask, un, a)

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`unnormalize` for training data; clipped to [-1, 1] where masked."""
        a = np.asarray(actions, dtype=np.float64)
        span = np.where(self.q99 - self.q01 == 0, 1.0, self.q99 - self.q01)  # constant dims map to -1
        n = np.clip(2.0 * (a - self.q01) / span - 1.0, -1.0, 1.0)
        return np.where(self.mask, n, a)


def compute_action_statistics(actions: np.ndarray, gripper_dims: tuple[int, ...] = (-1,),
                              num_trajectories: int | None = None) -> dict:
    """Statistics of an (N, D) action array in OpenVLA's layout (the gripper dims are not normalised)."""
    a = np.asarray(actions, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"expected a non-empty (N, D) action array, got {a.shape}")
    mask = np.ones(a.shape[1], dtype=bool)
    for d in gripper_dims:
        mask[d] = False
    out = {
        "action": {
            "mean": a.mean(0).tolist(), "std": a.std(0).tolist(), "max": a.max(0).tolist(),
            "min": a.min(0).tolist(), "q01": np.quantile(a, 0.01, axis=0).tolist(),
            "q99": np.quantile(a, 0.99, axis=0).tolist(), "mask": mask.tolist(),
        },
        "num_transitions": int(a.shape[0]),
    }
    if num_trajectories is not None:
        out["num_trajectories"] = int(num_trajectories)
    return out


def identity_statistics(dim: int = 7, key: str = "identity") -> dict:
    """Statistics under which un-normalising is the identity on [-1, 1] (random-weight models, tests)."""
    ones = [1.0] * dim
    return {key: {"action": {"mean": [0.0] * dim, "std": ones, "max": ones, "min": [-1.0] * dim,
                             "q01": [-1.0] * dim, "q99": ones, "mask": [True] * (dim - 1) + [False]}}}
