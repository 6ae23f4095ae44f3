"""The viewer recording: a large, upright camera view with the episode's state written on it (ROS-free).

The policy-camera recording (``EpisodeRecorder.add``) is what the model saw: small, and flipped by the camera
convention. People watching an episode want the scene large and the right way up, with what the policy was
doing written on it. This module holds the pieces ``EpisodeRecorder`` assembles:

- :class:`StepRecord`: one decision of the policy, as the recorder collects it (``vla_ros.sim.plots`` plots them);
- :class:`OverlayState` and :func:`draw_overlay`: the text drawn on a viewer frame;
- :class:`ViewerVideoWriter`: draws and encodes viewer frames on a thread of its own, so that the control
  loop pays only for the render (``LiberoEpisodeEnv.render_viewer``), not for drawing or H.264 encoding.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import imageio.v2 as imageio
import numpy as np

from vla_ros.conventions import ACTION_DIM


def open_mp4(path: str | os.PathLike, fps: float):
    """An imageio H.264 writer with the project's settings (shared by both recordings)."""
    # macro_block_size=2: keep even sizes exact (the default 16 would rescale 100px frames);
    # yuv420p needs even sizes, odd ones get resized by one pixel.
    return imageio.get_writer(path, format="FFMPEG", fps=fps, codec="libx264", quality=8, macro_block_size=2)


def check_rgb_frame(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected HxWx3 uint8 RGB, got {frame.shape} {frame.dtype}")
    return frame


# ---------------------------------------------------------------- per-step record
@dataclass(frozen=True)
class StepRecord:
    """One decision of the policy in an episode.

    ``step`` is the simulator's step count after the decision (a lockstep hold does not advance it).
    ``action`` is the LIBERO controller action the simulator executed (7 values in [-1, 1]; the gripper -1 open,
    +1 close), None when it did not step: a lockstep hold or the policy's ``done`` (its action is not executed).
    ``hold_reason`` marks a hold and says why (every hold has a reason); a hold that stepped the simulator
    (realtime's stand-still: zero motion, gripper unchanged) has both. ``done_prob`` is the model's probability
    of done at this decision, for models that have one.
    """

    step: int
    action: np.ndarray | None
    hold_reason: str = ""
    done_prob: float | None = None
    done: bool = False

    def __post_init__(self) -> None:
        if self.action is not None:
            action = np.array(self.action, dtype=np.float64).reshape(-1)
            if action.shape != (ACTION_DIM,) or not np.all(np.isfinite(action)):
                raise ValueError(f"a step record's action must be {ACTION_DIM} finite values, got {self.action!r}")
            object.__setattr__(self, "action", action)
        elif not self.done and not self.hold_reason:
            raise ValueError("a hold (action None) needs a hold_reason")
        if self.done and self.hold_reason:
            raise ValueError("a decision is either done or a hold, not both")
        if self.done_prob is not None:
            p = float(self.done_prob)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"done_prob must be in [0, 1], got {self.done_prob!r}")
            object.__setattr__(self, "done_prob", p)
        object.__setattr__(self, "step", int(self.step))
        object.__setattr__(self, "done", bool(self.done))

    @property
    def is_hold(self) -> bool:
        return bool(self.hold_reason)


# ---------------------------------------------------------------- overlay
@dataclass(frozen=True)
class OverlayState:
    """What the overlay of one viewer frame says."""

    step: int
    max_steps: int | None
    instruction: str
    gripper_closed: bool | None  # None: not known
    done: bool = False
    hold_reason: str = ""

    @classmethod
    def from_records(cls, records: Sequence[StepRecord], *, instruction: str,
                     max_steps: int | None) -> OverlayState:
        """The state after the last record: its step, the last executed gripper command, done, a current hold.

        Before the first executed action the gripper is open: the settle steps after a reset open it.
        """
        closed = False
        for rec in reversed(records):
            if rec.action is not None:
                closed = bool(rec.action[6] > 0.0)
                break
        last = records[-1] if records else None
        return cls(step=last.step if last else 0, max_steps=max_steps, instruction=instruction,
                   gripper_closed=closed, done=any(r.done for r in records),
                   hold_reason=last.hold_reason if last is not None and last.is_hold else "")


_FONT = cv2.FONT_HERSHEY_SIMPLEX
_WHITE = (255, 255, 255)
_DONE_RGB = (40, 170, 60)
_HOLD_RGB = (230, 150, 20)
_CLOSED_RGB = (220, 70, 60)
_OPEN_RGB = (90, 160, 230)


def _wrap(text: str, width_px: int, scale: float, thickness: int, max_lines: int = 4) -> list[str]:
    """Greedy word wrap to ``width_px`` as cv2 measures the text; the last line ends in '...' when cut."""
    lines: list[str] = []
    for word in text.split():
        trial = f"{lines[-1]} {word}" if lines else word
        if lines and cv2.getTextSize(trial, _FONT, scale, thickness)[0][0] <= width_px:
            lines[-1] = trial
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = [*lines[:max_lines - 1], lines[max_lines - 1] + " ..."]
    return lines


def _darken(frame: np.ndarray, y0: int, y1: int) -> None:
    # A translucent band keeps the scene visible behind the text and the text legible on any scene.
    frame[y0:y1] = (frame[y0:y1].astype(np.uint16) * 2 // 5).astype(np.uint8)


def _badge(frame: np.ndarray, text: str, x_right: int, y_base: int, scale: float, thickness: int,
           rgb: tuple[int, int, int]) -> int:
    """A filled box with ``text``, right-aligned at ``x_right``; returns the box's left edge."""
    (w, h), base = cv2.getTextSize(text, _FONT, scale, thickness)
    pad = max(2, h // 3)
    x0 = x_right - w - 2 * pad
    cv2.rectangle(frame, (x0, y_base - h - pad), (x_right, y_base + base), rgb, thickness=cv2.FILLED)
    cv2.putText(frame, text, (x0 + pad, y_base), _FONT, scale, _WHITE, thickness, cv2.LINE_AA)
    return x0


def draw_overlay(frame: np.ndarray, state: OverlayState) -> np.ndarray:
    """A copy of ``frame`` (HxWx3 uint8 RGB, upright) with the instruction on a band at the top and
    ``step n/limit``, the gripper, ``DONE`` or ``HOLD: reason`` on a band at the bottom; the rows between
    the bands are left as they are. Sizes scale with the frame's width (legible at 512 px)."""
    out = check_rgb_frame(frame).copy()
    h, w = out.shape[:2]
    scale = 0.6 * w / 512
    thickness = max(1, round(1.4 * w / 512))
    (_, text_h), base = cv2.getTextSize("Ag", _FONT, scale, thickness)
    line_h = text_h + base + max(2, text_h // 2)
    margin = max(2, w // 64)

    lines = _wrap(state.instruction, w - 2 * margin, scale, thickness)
    if lines:
        top = 2 * margin + line_h * len(lines)
        _darken(out, 0, top)
        for i, line in enumerate(lines):
            cv2.putText(out, line, (margin, margin + text_h + i * line_h), _FONT, scale, _WHITE, thickness,
                        cv2.LINE_AA)

    band = 2 * margin + line_h
    _darken(out, h - band, h)
    y_base = h - margin - base
    limit = f"/{state.max_steps}" if state.max_steps else ""
    cv2.putText(out, f"step {state.step}{limit}", (margin, y_base), _FONT, scale, _WHITE, thickness, cv2.LINE_AA)
    x = w - margin
    if state.done:
        x = _badge(out, "DONE", x, y_base, scale, thickness, _DONE_RGB) - margin
    elif state.hold_reason:
        x = _badge(out, f"HOLD: {state.hold_reason}", x, y_base, scale, thickness, _HOLD_RGB) - margin
    if state.gripper_closed is not None:
        label, rgb = ("gripper closed", _CLOSED_RGB) if state.gripper_closed else ("gripper open", _OPEN_RGB)
        _badge(out, label, x, y_base, scale, thickness, rgb)
    return out


# ---------------------------------------------------------------- background writer
class ViewerVideoWriter:
    """Draws the overlay on each frame and appends it to an mp4, on a thread of its own.

    :meth:`put` only queues (it blocks when ``queue_size`` frames wait, so memory stays bounded and no frame is
    dropped); an error of the thread is raised by the next :meth:`put` or by :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike, fps: float, *, queue_size: int = 32):
        self.path = Path(path)
        self.fps = float(fps)
        self.frames = 0  # frames written so far (by the thread)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._error: BaseException | None = None
        self._discard = False
        self._closed = False
        # A daemon: a process that exits without close()/abort() must not hang on this thread.
        self._thread = threading.Thread(target=self._run, name=f"viewer-{self.path.stem}", daemon=True)
        self._thread.start()

    def put(self, frame: np.ndarray, state: OverlayState) -> None:
        if self._closed:
            raise RuntimeError("the viewer video is closed")
        if self._error is not None:
            raise RuntimeError(f"writing the viewer video failed: {self._error!r}") from self._error
        self._queue.put((check_rgb_frame(frame).copy(), state))  # the caller may reuse its buffer

    def close(self) -> int:
        """Write what is queued, close the file; returns the number of frames written."""
        self._stop()
        if self._error is not None:
            raise RuntimeError(f"writing the viewer video failed: {self._error!r}") from self._error
        return self.frames

    def abort(self) -> None:
        """Stop without writing what is queued and delete the file."""
        self._discard = True
        self._stop()
        self.path.unlink(missing_ok=True)

    def _stop(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        writer = None
        try:
            while (item := self._queue.get()) is not None:
                if self._error is not None or self._discard:
                    continue  # keep draining so that put() never blocks on a dead writer
                try:
                    if writer is None:
                        writer = open_mp4(self.path, self.fps)
                    writer.append_data(draw_overlay(*item))
                    self.frames += 1
                except Exception as exc:
                    self._error = exc
        finally:
            if writer is not None:
                try:
                    writer.close()
                except Exception as exc:
                    self._error = self._error or exc
