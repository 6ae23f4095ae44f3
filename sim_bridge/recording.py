"""Episode recordings: one mp4 per episode (imageio + ffmpeg) with a JSON sidecar (ROS-free).

Frames are streamed to a temporary file while the episode runs (no episode held in memory); at the
end the file is renamed so the outcome shows in its name (``..._success.mp4`` / ``..._failure.mp4``)
and the sidecar records everything needed to find the episode again (suite, task, init state,
instruction, steps, reason, image flip).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import imageio.v2 as imageio
import numpy as np


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


class EpisodeRecorder:
    """Writes one episode's frames; call :meth:`add` per observation and :meth:`finish` once."""

    def __init__(self, directory: str | os.PathLike, *, suite: str, task_id: int, init_state_id: int,
                 episode_id: int, fps: float = 20.0, meta: dict | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.stem = f"{_slug(suite)}_task{task_id:02d}_init{init_state_id:02d}_ep{episode_id:05d}"
        self._tmp = self.directory / f".{self.stem}.partial.mp4"
        self.meta = {"suite": suite, "task_id": task_id, "init_state_id": init_state_id,
                     "episode_id": episode_id, "fps": fps, **(meta or {})}
        self.fps = float(fps)
        self.frames = 0
        self._writer = None
        self.video_path: Path | None = None
        self.sidecar_path: Path | None = None

    def add(self, frame: np.ndarray) -> None:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected HxWx3 uint8 RGB, got {frame.shape} {frame.dtype}")
        if self._writer is None:
            # macro_block_size=2: keep even sizes exact (the default 16 would rescale 100px frames);
            # yuv420p needs even sizes, odd ones get resized by one pixel.
            self._writer = imageio.get_writer(self._tmp, format="FFMPEG", fps=self.fps, codec="libx264",
                                              quality=8, macro_block_size=2)
        self._writer.append_data(frame)
        self.frames += 1

    def finish(self, *, success: bool, reason: str, steps: int, extra: dict | None = None) -> Path:
        """Close the video, name it after the outcome, write the sidecar; returns the sidecar's path."""
        outcome = "success" if success else "failure"
        base = self.directory / f"{self.stem}_{outcome}"
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self.video_path = base.with_suffix(".mp4")
            os.replace(self._tmp, self.video_path)
        meta = {**self.meta, "success": bool(success), "reason": reason, "steps": int(steps),
                "frames": self.frames, "video": self.video_path.name if self.video_path else None, **(extra or {})}
        self.sidecar_path = base.with_suffix(".json")
        tmp = self.sidecar_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, self.sidecar_path)  # readers never see a half-written sidecar
        return self.sidecar_path

    def abort(self) -> None:
        """Drop an unfinished recording (node shutting down mid-episode)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._tmp.unlink(missing_ok=True)
