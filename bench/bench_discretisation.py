"""How much precision OpenVLA's action tokenisation costs on a dataset, per dimension, in metres/radians.

Round-trips every (no-op filtered) action of LIBERO-format HDF5 files through the q01/q99 normalisation,
the ``ActionTokenizer`` (n bins over [-1, 1]) and back, and reports the error, also separately for the
actions that q01/q99 clip (outside the 1st..99th percentile), for several bin counts.

    python bench/bench_discretisation.py data/demos/libero_spatial/*.hdf5 --bins 256 512 1024
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vla_ros.action_tokenizer import ActionTokenizer
from vla_ros.conventions import LIBERO_ACTION_SPACE
from vla_ros.data.libero_hdf5 import LiberoHdf5Reader
from vla_ros.data.statistics import keep_indices
from vla_ros.normalization import ActionNormalizer, compute_action_statistics

DIMS = ("dx", "dy", "dz", "dax", "day", "daz")


def load_actions(paths: list[Path]) -> np.ndarray:
    rows = []
    for p in paths:
        with LiberoHdf5Reader(p, load_images=False) as reader:
            for ep in reader:
                rows.append(np.asarray(ep.actions, dtype=np.float64)[keep_indices(ep)])
    return np.concatenate(rows)


def round_trip_error(actions: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """|a - decode(encode(a))| per action and dimension (controller units), and the clipped mask."""
    stats = {"data": compute_action_statistics(actions)}
    norm = ActionNormalizer.from_statistics(stats)
    tok = ActionTokenizer(vocab_size=n_bins + 1000, n_bins=n_bins)
    back = norm.unnormalize(tok.decode(tok.encode(norm.normalize(actions))))
    clipped = (actions < norm.q01) | (actions > norm.q99)
    return np.abs(actions - back)[:, :6], clipped[:, :6], (norm.q99 - norm.q01)[:6]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--bins", nargs="+", type=int, default=[256, 512, 1024])
    opts = ap.parse_args(argv)
    actions = load_actions(opts.files)
    units = np.array([LIBERO_ACTION_SPACE.linear_unit_m] * 3 + [LIBERO_ACTION_SPACE.angular_unit_rad] * 3)
    print(f"{len(actions)} actions from {len(opts.files)} files")
    for n in opts.bins:
        err, clipped, span = round_trip_error(actions, n)
        inside = np.where(clipped, np.nan, err)
        print(f"\n{n} bins | dim | q01..q99 span | bin width | mean err (in range) | max err (in range) | "
              f"clipped | max err (clipped)")
        for d, name in enumerate(DIMS):
            unit = "mm" if d < 3 else "mrad"
            scale = units[d] * 1000.0
            clipped_err = err[clipped[:, d], d]
            print(f"  {name} | {span[d] * scale:.1f} {unit} | {span[d] / (n - 1) * scale:.3f} {unit} | "
                  f"{np.nanmean(inside[:, d]) * scale:.3f} {unit} | {np.nanmax(inside[:, d]) * scale:.3f} {unit} | "
                  f"{clipped[:, d].mean() * 100:.1f}% | "
                  f"{(clipped_err.max() * scale if clipped_err.size else 0.0):.3f} {unit}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
