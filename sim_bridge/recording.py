"""Episode recordings (ROS-free): per episode an mp4 of the policy's camera and a JSON sidecar, and, when given,
an upright viewer mp4 with overlays and a plot of the actions.

Frames are streamed to temporary files while the episode runs (no episode's frames held in memory); at the
end the files are renamed so the outcome shows in their names and the sidecar records everything needed to
find the episode again (suite, task, init state, instruction, steps, reason, image flip) and lists the files:

- ``<stem>_<outcome>.mp4``: the policy camera (``add``), frames as the policy saw them (flipped, small);
- ``<stem>_<outcome>_viewer.mp4``: viewer frames (``add_viewer``, e.g. ``LiberoEpisodeEnv.render_viewer``)
  with the overlay of ``vla_ros.sim.viewer``; drawn and encoded on a thread of its own;
- ``<stem>_<outcome>_actions.png``: the plot of the step records (``add_step``), ``vla_ros.sim.plots``;
- ``<stem>_<outcome>.json``: the sidecar (keys ``video``, ``viewer_video``, ``plot``).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np

from vla_ros.sim.viewer import OverlayState, StepRecord, ViewerVideoWriter, check_rgb_frame, open_mp4

# A viewer frame every 10th step. Measured on this 2-core CPU (Mesa llvmpipe, fast render), interleaved with the
# steps: one 512 px render costs 0.6 of a two-camera 128 px LIBERO step, 256 px still 0.5 (geometry-bound: 726k
# vertices). Other jobs loaded the CPU (absolute times ~8x), the ratio held; at the 50-65 ms step that is ~30-40 ms.
# So every step would add ~60 % to the env's time, every 5th ~12 %, every 10th ~6 %.
VIEWER_EVERY = 10


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


class RecordingError(RuntimeError):
    """A part of the recording (viewer video, plot) failed; the sidecar was written and names the error."""


class EpisodeRecorder:
    """Writes one episode's recording; call :meth:`add` per observation and :meth:`finish` once.

    Optional, for people watching: :meth:`add_step` per decision of the policy (the plot, and the overlay's
    state) and :meth:`add_viewer` for a viewer frame whenever :meth:`wants_viewer` says so: every
    ``viewer_every``-th simulator step and the last, so that a render costing more than a step need not be
    paid at every step. The viewer video plays at ``fps / viewer_every``, i.e. in simulated real time.
    ``meta["instruction"]`` and ``meta["max_steps"]`` are written on the viewer frames.
    """

    def __init__(self, directory: str | os.PathLike, *, suite: str, task_id: int, init_state_id: int,
                 episode_id: int, fps: float = 20.0, meta: dict | None = None, viewer_every: int = VIEWER_EVERY):
        if int(viewer_every) < 1:
            raise ValueError(f"viewer_every must be >= 1, got {viewer_every!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.stem = f"{_slug(suite)}_task{task_id:02d}_init{init_state_id:02d}_ep{episode_id:05d}"
        self._tmp = self.directory / f".{self.stem}.partial.mp4"
        self._viewer_tmp = self.directory / f".{self.stem}.viewer.partial.mp4"
        self.meta = {"suite": suite, "task_id": task_id, "init_state_id": init_state_id,
                     "episode_id": episode_id, "fps": fps, **(meta or {})}
        self.fps = float(fps)
        self.viewer_every = int(viewer_every)
        self.frames = 0
        self.records: list[StepRecord] = []
        self._writer = None
        self._viewer: ViewerVideoWriter | None = None
        self.viewer_frames = 0
        self._viewer_step: int | None = None  # simulator step of the last viewer frame
        self._viewer_records = 0  # decisions recorded when the last viewer frame was added
        self.video_path: Path | None = None
        self.viewer_path: Path | None = None
        self.plot_path: Path | None = None
        self.sidecar_path: Path | None = None

    # ------------------------------------------------------------------ policy camera
    def add(self, frame: np.ndarray) -> None:
        frame = check_rgb_frame(frame)
        if self._writer is None:
            self._writer = open_mp4(self._tmp, self.fps)
        self._writer.append_data(frame)
        self.frames += 1

    # ------------------------------------------------------------------ decisions and viewer
    def add_step(self, record: StepRecord) -> None:
        """One decision of the policy (an executed action, a hold with its reason, or done)."""
        if not isinstance(record, StepRecord):
            raise TypeError(f"expected a StepRecord, got {type(record).__name__}")
        self.records.append(record)

    def wants_viewer(self, step: int, *, final: bool = False) -> bool:
        """Whether to render a viewer frame at simulator step ``step``: every ``viewer_every``-th step, once (a
        lockstep hold does not step: the same state is not rendered again); with ``final`` (the episode has
        ended) whenever the frame would differ from the last one (a new step, or decisions since, e.g. done)."""
        step = int(step)
        if final:
            return step != self._viewer_step or len(self.records) != self._viewer_records
        return step % self.viewer_every == 0 and step != self._viewer_step

    def overlay_state(self) -> OverlayState:
        max_steps = self.meta.get("max_steps")
        return OverlayState.from_records(self.records, instruction=str(self.meta.get("instruction", "")),
                                         max_steps=int(max_steps) if max_steps else None)

    def add_viewer(self, frame: np.ndarray) -> None:
        """A viewer frame (HxWx3 uint8 RGB, upright) of the state after the last :meth:`add_step`; the overlay is
        drawn and the frame encoded on the writer's thread, so this returns at once (it blocks only when
        frames queue up). Raises the writer thread's error, if it had one."""
        if self._viewer is None:
            self._viewer = ViewerVideoWriter(self._viewer_tmp, self.fps / self.viewer_every)
        state = self.overlay_state()
        self._viewer.put(frame, state)
        self._viewer_step, self._viewer_records = state.step, len(self.records)
        self.viewer_frames += 1

    # ------------------------------------------------------------------ end
    def finish(self, *, success: bool, reason: str, steps: int, extra: dict | None = None) -> Path:
        """Close the videos, name them after the outcome, write the plot and the sidecar; returns the sidecar's
        path. Raises :class:`RecordingError` after writing the sidecar when the viewer video or the plot failed."""
        outcome = "success" if success else "failure"
        base = self.directory / f"{self.stem}_{outcome}"
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self.video_path = base.with_suffix(".mp4")
            os.replace(self._tmp, self.video_path)
        errors: dict[str, Exception] = {}
        if self._viewer is not None:
            viewer, self._viewer = self._viewer, None
            try:
                viewer.close()
                self.viewer_path = base.with_name(base.name + "_viewer.mp4")
                os.replace(self._viewer_tmp, self.viewer_path)
            except Exception as exc:  # the policy video and the sidecar still count
                errors["viewer_video"] = exc
                self._viewer_tmp.unlink(missing_ok=True)
        if self.records:
            from vla_ros.sim.plots import plot_episode  # matplotlib: paid for only by episodes that plot

            try:
                self.plot_path = plot_episode(self.records, base.with_name(base.name + "_actions.png"),
                                              title=self._plot_title(success, reason, steps))
            except Exception as exc:
                errors["plot"] = exc
        meta = {**self.meta, "success": bool(success), "reason": reason, "steps": int(steps),
                "frames": self.frames, "video": self.video_path.name if self.video_path else None,
                "viewer_video": self.viewer_path.name if self.viewer_path else None,
                "viewer_frames": self.viewer_frames, "viewer_every": self.viewer_every,
                "plot": self.plot_path.name if self.plot_path else None,
                "decisions": len(self.records),
                "holds": dict(Counter(r.hold_reason for r in self.records if r.is_hold)),
                **{f"{key}_error": repr(exc) for key, exc in errors.items()}, **(extra or {})}
        self.sidecar_path = base.with_suffix(".json")
        tmp = self.sidecar_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, self.sidecar_path)  # readers never see a half-written sidecar
        if errors:
            first = next(iter(errors.values()))
            raise RecordingError(f"{self.sidecar_path.name}: " + "; ".join(f"{k} failed: {e!r}"
                                                                           for k, e in errors.items())) from first
        return self.sidecar_path

    def _plot_title(self, success: bool, reason: str, steps: int) -> str:
        m = self.meta
        head = f"{m['suite']} task {m['task_id']} init {m['init_state_id']} episode {m['episode_id']}"
        outcome = f"{'success' if success else 'failure'} ({reason}, {steps} steps)"
        instruction = m.get("instruction")
        return f"{head}: {outcome}" + (f"\n{instruction!r}" if instruction else "")

    def abort(self) -> None:
        """Drop an unfinished recording (node shutting down mid-episode)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._tmp.unlink(missing_ok=True)
        if self._viewer is not None:
            viewer, self._viewer = self._viewer, None
            viewer.abort()
        self._viewer_tmp.unlink(missing_ok=True)
