"""Compact transport of a dataset to the lent GPU machine (64 MiB a call) and the loader training uses there.

A compact dataset is a directory::

    meta.json                      format, version, episodes (name, shard, frame offset, length, instruction)
    lowdim.npz                     actions, dones, rewards, ee_states, gripper_states, joint_states
                                   (all episodes concatenated; float32 / uint8)
    <shard>.<camera>.mp4           one H.264 video per source file and camera, episodes back to back
    dataset_statistics.json        copied from / computed for the source (OpenVLA layout)

Frames are video-encoded (libx264, 4:4:4 chroma, CRF ``DEFAULT_CRF``): consecutive frames of a demo
differ little, so a few hundred 128 px demos fit in a few MiB where JPEG per frame would need
hundreds. The frames stay raw (upside down, like LIBERO's files); :class:`CompactDataset` applies
the camera flip with the project's one function. MuJoCo states are left out (training does not use
them; they would double the size).

The loader needs numpy plus either ``imageio-ffmpeg`` or OpenCV to decode; not h5py, not LIBERO.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from vla_ros.data.episode import Episode
from vla_ros.conventions import DEFAULT_IMAGE_FLIP, flip_image

log = logging.getLogger(__name__)

FORMAT = "vla_ros_compact"
VERSION = 1
DEFAULT_CRF = 23  # ~120 KiB per LIBERO demo (2 cameras), mean pixel error ~2.5/255: docs/data.md
CAMERAS = ("agentview_rgb", "eye_in_hand_rgb")
LOWDIM = ("ee_states", "gripper_states", "joint_states")
FPS = 20


# ---------------------------------------------------------------------- video I/O
def write_video(path: Path, frames: np.ndarray, crf: int = DEFAULT_CRF, fps: int = FPS) -> None:
    """Encode (N, H, W, 3) uint8 RGB frames to H.264 (4:4:4, so colours are not subsampled)."""
    import imageio_ffmpeg

    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    _, h, w, _ = frames.shape
    writer = imageio_ffmpeg.write_frames(
        str(path), (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv444p",
        quality=None, bitrate=None, macro_block_size=1, output_params=["-crf", str(int(crf)), "-preset", "slow"],
        ffmpeg_log_level="error",
    )
    writer.send(None)  # start the generator
    for f in frames:
        writer.send(f)
    writer.close()


def read_video(path: Path) -> np.ndarray:
    """Decode a video to (N, H, W, 3) uint8 RGB with imageio-ffmpeg, or OpenCV where that is missing."""
    try:
        import imageio_ffmpeg
    except ImportError:
        imageio_ffmpeg = None
    if imageio_ffmpeg is not None:
        gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(gen)
        w, h = meta["size"]
        frames = [np.frombuffer(b, dtype=np.uint8).reshape(h, w, 3) for b in gen]
        return np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8)
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise OSError(f"cannot open video {path} (no imageio-ffmpeg, and OpenCV cannot read it)")
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(bgr[..., ::-1])
    cap.release()
    if not frames:
        raise OSError(f"no frames decoded from {path}")
    return np.ascontiguousarray(np.stack(frames))


# ---------------------------------------------------------------------- export
def export_compact(sources: Iterable[tuple[str, Iterable[Episode]]], out_dir: str | Path, *,
                   crf: int = DEFAULT_CRF, statistics: dict | None = None,
                   cameras: tuple[str, ...] = CAMERAS) -> Path:
    """Write a compact dataset from ``(shard_name, episodes)`` pairs (episodes with raw images).

    ``statistics`` (a full ``dataset_statistics.json`` mapping) is stored beside the data; without it
    the statistics are computed here with the no-op filter.
    """
    from vla_ros.data.statistics import compute_statistics  # light: numpy only

    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    episodes_meta: list[dict] = []
    low: dict[str, list[np.ndarray]] = {k: [] for k in ("actions", "dones", "rewards", *LOWDIM)}
    all_eps_for_stats: list[Episode] = []
    offset_total = 0
    for shard, eps in sources:
        frames: dict[str, list[np.ndarray]] = {c: [] for c in cameras}
        offset = 0
        for i, ep in enumerate(eps):
            for c in cameras:
                if c not in ep.obs:
                    raise ValueError(f"{shard} episode {i} lacks camera {c}")
                frames[c].append(np.asarray(ep.obs[c], dtype=np.uint8))
            low["actions"].append(ep.actions.astype(np.float32))
            low["dones"].append(ep.dones.astype(np.uint8))
            low["rewards"].append(ep.rewards.astype(np.uint8))
            for k in LOWDIM:
                low[k].append(np.asarray(ep.obs[k], dtype=np.float32))
            episodes_meta.append({"name": f"{shard}/{i}", "shard": shard, "frame_offset": offset,
                                  "step_offset": offset_total, "length": len(ep), "instruction": ep.instruction})
            offset += len(ep)
            offset_total += len(ep)
            if statistics is None:
                # keep only what statistics need (no images) to bound memory
                all_eps_for_stats.append(Episode(actions=ep.actions, dones=ep.dones, states=None,
                                                 obs={k: ep.obs[k] for k in ("ee_states", "gripper_states")}))
        for c in cameras:
            if frames[c]:
                write_video(out / f"{shard}.{c}.mp4", np.concatenate(frames[c]), crf=crf)
    if not episodes_meta:
        raise ValueError("no episodes to export")
    np.savez_compressed(out / "lowdim.npz", **{k: np.concatenate(v) for k, v in low.items()})
    if statistics is None:
        statistics = {out.name: compute_statistics(all_eps_for_stats)}
    with open(out / "dataset_statistics.json", "w") as f:
        json.dump(statistics, f, indent=2)
    meta = {"format": FORMAT, "version": VERSION, "fps": FPS, "cameras": list(cameras), "crf": crf,
            "images": "raw LIBERO render (apply vla_ros.conventions.flip_image)", "episodes": episodes_meta}
    with open(out / "meta.json", "w") as f:
        json.dump(meta, f, indent=1)
    return out


def export_hdf5_dir(src: str | Path, out_dir: str | Path, *, crf: int = DEFAULT_CRF,
                    max_demos_per_file: int | None = None) -> Path:
    """Export every LIBERO-format file under ``src`` (statistics taken from ``src`` if present)."""
    from vla_ros.data.libero_hdf5 import LiberoHdf5Reader, dataset_files

    files = dataset_files(src)
    stats_file = (Path(src) if Path(src).is_dir() else Path(src).parent) / "dataset_statistics.json"
    stats = json.loads(stats_file.read_text()) if stats_file.is_file() else None

    def episodes(path: Path) -> Iterator[Episode]:
        with LiberoHdf5Reader(path, image_flip="none") as r:  # keep the frames raw
            n = len(r) if max_demos_per_file is None else min(len(r), max_demos_per_file)
            for i in range(n):
                yield r[i]

    return export_compact(((p.stem, episodes(p)) for p in files), out_dir, crf=crf, statistics=stats)


# ---------------------------------------------------------------------- loader
class CompactDataset:
    """All episodes of a compact dataset in memory, images flipped per the project's convention."""

    def __init__(self, path: str | Path, image_flip: str = DEFAULT_IMAGE_FLIP, load_images: bool = True):
        flip_image(np.zeros((1, 1, 3), np.uint8), image_flip)  # validate early
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{self.path} is not a compact dataset (no meta.json)")
        self.meta = json.loads(meta_file.read_text())
        if self.meta.get("format") != FORMAT or int(self.meta.get("version", 0)) > VERSION:
            raise ValueError(f"{self.path}: unsupported format {self.meta.get('format')} v{self.meta.get('version')}")
        with np.load(self.path / "lowdim.npz") as z:
            self.low = {k: z[k] for k in z.files}
        self.image_flip = image_flip
        self.cameras = tuple(self.meta["cameras"])
        self._frames: dict[tuple[str, str], np.ndarray] = {}
        if load_images:
            for shard in dict.fromkeys(e["shard"] for e in self.meta["episodes"]):
                for c in self.cameras:
                    video = read_video(self.path / f"{shard}.{c}.mp4")
                    self._frames[(shard, c)] = flip_image(video, image_flip)
        self.load_images = load_images

    def __len__(self) -> int:
        return len(self.meta["episodes"])

    def __iter__(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, i: int) -> Episode:
        e = self.meta["episodes"][i]
        s, n = e["step_offset"], e["length"]
        obs = {k: self.low[k][s:s + n].astype(np.float64) for k in LOWDIM}
        if self.load_images:
            for c in self.cameras:
                frames = self._frames[(e["shard"], c)]
                seg = frames[e["frame_offset"]:e["frame_offset"] + n]
                if len(seg) != n:
                    raise ValueError(f"{e['shard']}.{c}.mp4 has too few frames for episode {e['name']}")
                obs[c] = seg
        return Episode(actions=self.low["actions"][s:s + n].astype(np.float64), obs=obs,
                       dones=self.low["dones"][s:s + n], rewards=self.low["rewards"][s:s + n],
                       instruction=e["instruction"], attrs={"name": e["name"]})

    @property
    def instructions(self) -> list[str]:
        return sorted({e["instruction"] for e in self.meta["episodes"]})

    def statistics(self) -> dict:
        return json.loads((self.path / "dataset_statistics.json").read_text())


def dir_size(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    """``vla-ros export-compact SRC OUT``: LIBERO-format files -> compact dataset for the GPU machine."""
    import argparse

    p = argparse.ArgumentParser(prog="vla-ros export-compact", description=main.__doc__)
    p.add_argument("src", help="a LIBERO-format .hdf5 file or a directory of them (searched recursively)")
    p.add_argument("out", help="output directory (replaced)")
    p.add_argument("--crf", type=int, default=DEFAULT_CRF, help="x264 quality: lower is better and larger")
    p.add_argument("--max-demos-per-file", type=int, default=None)
    p.add_argument("--check", action="store_true", help="decode again and report the pixel error")
    a = p.parse_args(argv)
    out = export_hdf5_dir(a.src, a.out, crf=a.crf, max_demos_per_file=a.max_demos_per_file)
    ds = CompactDataset(out, load_images=a.check, image_flip="none")
    n_steps = sum(e["length"] for e in ds.meta["episodes"])
    size = dir_size(out)
    print(f"{out}: {len(ds)} demos, {n_steps} steps, {size / 2**20:.2f} MiB "
          f"({size / max(len(ds), 1) / 1024:.0f} KiB per demo)")
    if a.check:
        from vla_ros.data.libero_hdf5 import LiberoHdf5Reader, dataset_files

        errs = []
        i = 0
        for path in dataset_files(a.src):
            with LiberoHdf5Reader(path, image_flip="none") as r:
                n = len(r) if a.max_demos_per_file is None else min(len(r), a.max_demos_per_file)
                for k in range(n):
                    src, back = r[k], ds[i]
                    i += 1
                    for c in CAMERAS:
                        errs.append(np.abs(src.obs[c].astype(np.int16) - back.obs[c].astype(np.int16)))
        e = np.concatenate([x.reshape(-1) for x in errs])
        print(f"pixel error: mean {e.mean():.2f}, p99 {np.percentile(e, 99):.0f}, max {e.max()} (of 255)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
