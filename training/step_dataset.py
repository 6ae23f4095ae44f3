"""Training samples (one per kept step) from the episode datasets of ``training/data``.

``training/data`` reads LIBERO-format HDF5 files and the compact transport format into ``Episode`` objects with
the camera flip already applied; this module only indexes their steps for the training loop: no-op steps are
dropped with ``vla_ros.data.statistics.keep_indices`` (the same rule the statistics use, done steps kept), and a
model predicting K-action chunks gets ``actions[t : t + K]`` (the last action repeated past the episode's end,
as OpenVLA-OFT pads its chunks).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vla_ros.data.episode import Episode
from vla_ros.data.statistics import compute_statistics, keep_indices
from vla_ros.normalization import STATS_FILENAME, load_statistics

DEFAULT_CAMERA = "agentview_rgb"
WRIST_CAMERA = "eye_in_hand_rgb"


class StepDataset:
    """``{"image", "instruction", "action", "done"}`` per kept step of a list of episodes, plus ``wrist_image``
    (``eye_in_hand_rgb``) and ``proprio`` (``vla_ros.proprio``'s vector) where every episode has them."""

    def __init__(self, episodes: list[Episode], camera: str = DEFAULT_CAMERA, action_chunk: int = 1,
                 filter_noops: bool = True):
        if action_chunk < 1:
            raise ValueError("action_chunk must be >= 1")
        self.episodes = list(episodes)
        self.camera, self.chunk = camera, int(action_chunk)
        for k, ep in enumerate(self.episodes):
            if camera not in ep.obs:
                raise ValueError(f"episode {k} has no camera {camera!r} (has {sorted(ep.obs)})")
            if not ep.instruction:
                raise ValueError(f"episode {k} has no instruction")
        self.index = np.array([(k, t) for k, ep in enumerate(self.episodes) for t in keep_indices(ep, filter_noops)],
                              dtype=np.int64).reshape(-1, 2)
        if len(self.index) == 0:
            raise ValueError("no training steps (empty dataset, or all no-ops)")
        self.has_wrist = all(WRIST_CAMERA in ep.obs for ep in self.episodes)
        has_lowdim = all(ep.has_proprio for ep in self.episodes)
        self._proprio = [ep.model_proprio() for ep in self.episodes] if has_lowdim else None

    @property
    def has_proprio(self) -> bool:
        return self._proprio is not None

    def proprio_array(self) -> np.ndarray:
        """(N, D) proprio of every kept step (for its statistics)."""
        if self._proprio is None:
            raise ValueError("the episodes lack ee_states/gripper_states: no proprio")
        return np.stack([self._proprio[k][t] for k, t in self.index])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        k, t = (int(x) for x in self.index[i])
        ep = self.episodes[k]
        if self.chunk == 1:
            action = ep.actions[t]
        else:
            rows = np.minimum(np.arange(t, t + self.chunk), len(ep) - 1)
            action = ep.actions[rows]
        sample = {"image": ep.obs[self.camera][t], "instruction": ep.instruction, "action": action.copy(),
                  "done": bool(ep.dones[t])}
        if self.has_wrist:
            sample["wrist_image"] = ep.obs[WRIST_CAMERA][t]
        if self._proprio is not None:
            sample["proprio"] = self._proprio[k][t]
        return sample

    @property
    def instructions(self) -> list[str]:
        return sorted({ep.instruction for ep in self.episodes})


def _open_one(path: Path) -> tuple[list[Episode], dict]:
    """Episodes and statistics ``{key: ...}`` of one compact directory or LIBERO-format file/directory."""
    if (path / "meta.json").is_file():
        from vla_ros.training.data.compact import CompactDataset

        compact = CompactDataset(path)
        return list(compact), compact.statistics()
    from vla_ros.data.libero_hdf5 import LiberoHdf5Reader, dataset_files

    episodes, files = [], dataset_files(path)
    if not files:
        raise FileNotFoundError(f"no *.hdf5 files under {path}")
    for f in files:
        with LiberoHdf5Reader(f) as reader:
            episodes.extend(reader)
    stats_file = (path if path.is_dir() else path.parent) / STATS_FILENAME
    stats = load_statistics(stats_file) if stats_file.is_file() else {path.stem: compute_statistics(episodes)}
    return episodes, stats


def open_training_data(path: str | Path | Sequence[str | Path], action_chunk: int = 1,
                       camera: str = DEFAULT_CAMERA) -> tuple[StepDataset, dict, list[str]]:
    """(dataset, statistics ``{key: ...}``, instructions) of a compact dataset directory (``meta.json``), or of
    LIBERO-format HDF5 file(s); statistics from the dataset's ``dataset_statistics.json`` when it has one.

    Several paths train on their union: the statistics are then recomputed over all episodes (the bins must
    span every source's actions), under the key ``name1+name2+...``.
    """
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    if not paths:
        raise ValueError("no dataset path given")
    if len(paths) == 1:
        episodes, stats = _open_one(paths[0])
    else:
        episodes, conventions = [], set()
        for p in paths:
            eps, source_stats = _open_one(p)
            episodes.extend(eps)
            conventions |= {s.get("gripper_convention") for s in source_stats.values()}
        conventions.discard(None)  # statistics written before the field existed: the training default
        if len(conventions) > 1:
            raise ValueError(f"datasets {[str(p) for p in paths]} store different gripper conventions "
                             f"{sorted(map(str, conventions))}; convert them to one before training together")
        merged = compute_statistics(episodes)
        if conventions:
            merged["gripper_convention"] = conventions.pop()
        stats = {"+".join(p.name for p in paths): merged}
    ds = StepDataset(episodes, camera=camera, action_chunk=action_chunk)
    return ds, stats, ds.instructions
