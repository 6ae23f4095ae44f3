"""The recording for people: overlays on upright viewer frames, the viewer mp4, the plot per episode, and one
LIBERO env that renders a 512 px viewer frame beside its 128 px policy camera."""

from __future__ import annotations

import json

import imageio.v2 as imageio
import numpy as np
import pytest

from vla_ros.sim.plots import hold_spans, plot_episode
from vla_ros.sim.recording import EpisodeRecorder, RecordingError
from vla_ros.sim.viewer import _DONE_RGB, _HOLD_RGB, OverlayState, StepRecord, ViewerVideoWriter, draw_overlay


def _act(gripper: float = -1.0, dx: float = 0.2) -> np.ndarray:
    return np.array([dx, -0.1, 0.05, 0.0, 0.01, -0.02, gripper])


def _episode_records() -> list[StepRecord]:
    """12 decisions: moves, a gripper close, two holds for different reasons, then the policy's done."""
    recs = [StepRecord(step=i + 1, action=_act(-1.0 if i < 5 else 1.0), done_prob=0.01 * i) for i in range(8)]
    recs += [StepRecord(step=8, action=None, hold_reason="invalid_output", done_prob=0.3),
             StepRecord(step=8, action=None, hold_reason="invalid_output", done_prob=0.4),
             StepRecord(step=9, action=None, hold_reason="stale", done_prob=0.5),
             StepRecord(step=9, action=None, done=True, done_prob=0.9)]
    return recs


def _gradient(h: int = 512, w: int = 512) -> np.ndarray:
    """Rows get brighter downwards: any flip of the frame shows."""
    col = np.linspace(20, 230, h).astype(np.uint8)
    frame = np.repeat(np.repeat(col[:, None, None], w, axis=1), 3, axis=2)
    frame[h // 2 - 20:h // 2, 30:60] = (255, 0, 0)  # a red mark left of centre, just above the middle
    return frame


def _has_colour(region: np.ndarray, rgb: tuple[int, int, int], tol: int = 10) -> bool:
    return bool((np.abs(region.astype(int) - np.array(rgb)).max(axis=-1) <= tol).sum() > 20)


# ---------------------------------------------------------------- step records
def test_step_record_rejects_what_the_plot_cannot_mean():
    with pytest.raises(ValueError, match="hold_reason"):
        StepRecord(step=3, action=None)  # every hold has a reason
    with pytest.raises(ValueError, match="7 finite"):
        StepRecord(step=3, action=np.zeros(6))
    with pytest.raises(ValueError, match="7 finite"):
        StepRecord(step=3, action=np.full(7, np.nan))
    with pytest.raises(ValueError, match="either done or a hold"):
        StepRecord(step=3, action=None, hold_reason="stale", done=True)
    with pytest.raises(ValueError, match="done_prob"):
        StepRecord(step=3, action=_act(), done_prob=1.5)
    done = StepRecord(step=3, action=None, done=True)  # done's action is not executed: no hold reason needed
    assert done.done and not done.is_hold
    assert StepRecord(step=1, action=None, hold_reason="stale").is_hold
    stand_still = StepRecord(step=4, action=np.r_[np.zeros(6), 1.0], hold_reason="action_timeout")
    assert stand_still.is_hold and stand_still.action[6] == 1.0  # realtime: a hold that stepped the simulator


def test_overlay_state_follows_the_records():
    instr = "pick up the bowl"
    start = OverlayState.from_records([], instruction=instr, max_steps=220)
    assert (start.step, start.gripper_closed, start.done, start.hold_reason) == (0, False, False, "")
    recs = _episode_records()
    closed = OverlayState.from_records(recs[:6], instruction=instr, max_steps=220)
    assert closed.step == 6 and closed.gripper_closed and not closed.hold_reason
    holding = OverlayState.from_records(recs[:9], instruction=instr, max_steps=220)
    assert holding.hold_reason == "invalid_output" and holding.gripper_closed  # a hold keeps the gripper
    moving_again = OverlayState.from_records([*recs[:9], StepRecord(step=9, action=_act(-1.0))],
                                             instruction=instr, max_steps=220)
    assert moving_again.hold_reason == "" and moving_again.gripper_closed is False
    end = OverlayState.from_records(recs, instruction=instr, max_steps=220)
    assert end.done and end.step == 9


# ---------------------------------------------------------------- overlay
def test_overlay_writes_on_bands_and_keeps_the_frame_upright():
    frame = _gradient()
    state = OverlayState(step=37, max_steps=220, instruction="put the black bowl on the plate",
                         gripper_closed=True)
    out = draw_overlay(frame, state)
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert np.array_equal(frame, _gradient())  # the caller's frame is untouched
    changed_rows = np.flatnonzero((out != frame).any(axis=(1, 2)))
    top = changed_rows[changed_rows < 256]
    bottom = changed_rows[changed_rows >= 256]
    assert len(top) > 15 and len(bottom) > 15  # an instruction band and a status band
    assert top.max() < 80 and bottom.min() > 512 - 80  # ... and nothing in between
    middle = slice(top.max() + 1, bottom.min())
    assert np.array_equal(out[middle], frame[middle])  # same rows, same place: neither flipped nor mirrored
    # text is drawn where the bands are: bright strokes on the darkened band
    assert (out[: top.max() + 1].max(axis=-1) > 240).sum() > 200
    assert (out[bottom.min():, : 200].max(axis=-1) > 240).sum() > 100  # "step 37/220" bottom left
    assert _has_colour(out[bottom.min():], (220, 70, 60))  # the "gripper closed" badge


def test_overlay_says_done_and_hold_only_when_so():
    frame = _gradient()
    base = dict(step=5, max_steps=220, instruction="open the drawer", gripper_closed=False)
    plain = draw_overlay(frame, OverlayState(**base))
    done = draw_overlay(frame, OverlayState(**base, done=True))
    hold = draw_overlay(frame, OverlayState(**base, hold_reason="stale"))
    band = slice(512 - 60, 512)
    assert not _has_colour(plain[band], _DONE_RGB) and not _has_colour(plain[band], _HOLD_RGB)
    assert _has_colour(done[band], _DONE_RGB) and not _has_colour(done[band], _HOLD_RGB)
    assert _has_colour(hold[band], _HOLD_RGB) and not _has_colour(hold[band], _DONE_RGB)
    assert np.array_equal(plain[:400], done[:400])  # only the status band differs


def test_overlay_wraps_a_long_instruction_inside_the_frame():
    frame = np.full((512, 512, 3), 128, np.uint8)
    short = draw_overlay(frame, OverlayState(step=0, max_steps=None, instruction="stack", gripper_closed=None))
    long_text = "pick up the alphabet soup and the cream cheese box and put both of them in the basket on the left"
    long = draw_overlay(frame, OverlayState(step=0, max_steps=None, instruction=long_text, gripper_closed=None))

    def band_rows(img):
        return int((img[:256] != frame[:256]).any(axis=(1, 2)).sum())

    assert band_rows(long) > band_rows(short) + 20  # more lines, not one line running off the frame
    text_cols = np.flatnonzero((long[:band_rows(long)].max(axis=-1) > 200).any(axis=0))
    assert text_cols.max() < 512 - 4  # wrapped before the right edge


# ---------------------------------------------------------------- recorder
def _recorder(tmp_path, **kw) -> EpisodeRecorder:
    return EpisodeRecorder(tmp_path, suite="libero_spatial", task_id=2, init_state_id=5, episode_id=7, fps=20,
                           meta={"instruction": "pick up the black bowl", "max_steps": 220}, **kw)


def test_recorder_writes_viewer_video_plot_and_sidecar(tmp_path):
    rec = _recorder(tmp_path, viewer_every=2)
    rec.add(np.zeros((128, 128, 3), np.uint8))
    assert rec.wants_viewer(0)
    rec.add_viewer(_gradient())
    for r in _episode_records():
        rec.add(np.zeros((128, 128, 3), np.uint8))
        rec.add_step(r)
        if rec.wants_viewer(r.step, final=r.done):
            rec.add_viewer(_gradient())
    sidecar = rec.finish(success=False, reason="policy_done", steps=9)

    meta = json.loads(sidecar.read_text())
    assert rec.viewer_path.name == "libero_spatial_task02_init05_ep00007_failure_viewer.mp4"
    assert rec.plot_path.name == "libero_spatial_task02_init05_ep00007_failure_actions.png"
    assert meta["viewer_video"] == rec.viewer_path.name and meta["plot"] == rec.plot_path.name
    assert meta["video"] == "libero_spatial_task02_init05_ep00007_failure.mp4"  # the policy video as before
    # frames: the start, steps 2, 4, 6, 8 (not again for the lockstep holds at 8: same state) and the final
    assert meta["viewer_frames"] == rec.viewer_frames == 6 and meta["viewer_every"] == 2
    assert meta["decisions"] == 12 and meta["holds"] == {"invalid_output": 2, "stale": 1}

    with imageio.get_reader(rec.viewer_path) as reader:
        assert reader.get_meta_data()["fps"] == pytest.approx(10.0)  # fps / viewer_every: simulated real time
    frames = imageio.mimread(rec.viewer_path)
    assert len(frames) == 6 and frames[0].shape == (512, 512, 3)
    middle = slice(150, 350)
    assert np.abs(frames[0][middle].astype(int) - _gradient()[middle]).mean() < 4  # upright, as given
    assert frames[0][:20].mean() < _gradient()[:20].mean() - 5  # the instruction band is in the video
    png = imageio.imread(rec.plot_path)
    assert rec.plot_path.stat().st_size > 0 and png.ndim == 3 and min(png.shape[:2]) > 300
    assert not list(tmp_path.glob(".*"))  # no partial files left


def test_viewer_rate_every_kth_step_once_and_the_last(tmp_path):
    rec = _recorder(tmp_path, viewer_every=5)
    assert [s for s in range(12) if rec.wants_viewer(s)] == [0, 5, 10]
    assert rec.wants_viewer(7, final=True)
    rec.add_step(StepRecord(step=5, action=_act()))
    rec.add_viewer(_gradient(64, 64))
    assert not rec.wants_viewer(5, final=True)  # e.g. success at a step just rendered: no second frame
    rec.add_step(StepRecord(step=5, action=None, hold_reason="stale"))
    assert not rec.wants_viewer(5)  # a lockstep hold: the state of step 5 is in the video already
    rec.add_step(StepRecord(step=5, action=None, done=True))
    assert rec.wants_viewer(5, final=True)  # ... but the frame saying DONE is new
    rec.abort()


def test_recorder_without_viewer_or_steps_is_unchanged(tmp_path):
    rec = _recorder(tmp_path)
    rec.add(np.zeros((64, 64, 3), np.uint8))
    meta = json.loads(rec.finish(success=True, reason="success", steps=1).read_text())
    assert meta["viewer_video"] is None and meta["plot"] is None and meta["decisions"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["libero_spatial_task02_init05_ep00007_success.json",
                                                          "libero_spatial_task02_init05_ep00007_success.mp4"]


def test_recorder_abort_drops_the_viewer_video(tmp_path):
    rec = _recorder(tmp_path)
    rec.add(np.zeros((64, 64, 3), np.uint8))
    rec.add_step(StepRecord(step=1, action=_act()))
    rec.add_viewer(_gradient(256, 256))
    rec.abort()
    assert list(tmp_path.iterdir()) == []


def test_a_failed_viewer_video_still_leaves_the_sidecar(tmp_path):
    rec = _recorder(tmp_path)
    rec.add(np.zeros((64, 64, 3), np.uint8))
    rec.add_step(StepRecord(step=1, action=_act()))
    rec.add_viewer(_gradient(256, 256))
    rec.add_viewer(_gradient(128, 128))  # ffmpeg takes one frame size per movie: the writer thread fails
    with pytest.raises(RecordingError, match="viewer_video"):
        rec.finish(success=False, reason="step_limit", steps=1)
    meta = json.loads(rec.sidecar_path.read_text())
    assert meta["viewer_video"] is None and "same size" in meta["viewer_video_error"]
    assert meta["video"] and meta["plot"]  # the rest of the recording is there
    assert not list(tmp_path.glob(".*"))


def test_viewer_writer_reports_its_thread_error_on_put(tmp_path):
    writer = ViewerVideoWriter(tmp_path / "v.mp4", fps=5, queue_size=2)
    state = OverlayState(step=0, max_steps=None, instruction="x", gripper_closed=None)
    writer.put(_gradient(64, 64), state)
    writer.put(_gradient(32, 32), state)
    with pytest.raises(RuntimeError, match="viewer video failed"):
        for _ in range(50):  # the thread keeps draining after its error: put never blocks for good
            writer.put(_gradient(64, 64), state)
            writer._thread.join(0.05)
    with pytest.raises(RuntimeError):
        writer.close()
    with pytest.raises(ValueError, match="HxWx3"):
        ViewerVideoWriter(tmp_path / "w.mp4", fps=5).put(np.zeros((8, 8), np.uint8), state)


def test_recorder_checks_its_inputs(tmp_path):
    with pytest.raises(ValueError, match="viewer_every"):
        _recorder(tmp_path, viewer_every=0)
    rec = _recorder(tmp_path)
    with pytest.raises(TypeError, match="StepRecord"):
        rec.add_step({"step": 1})
    with pytest.raises(ValueError, match="HxWx3"):
        rec.add_viewer(np.zeros((8, 8, 3), np.float32))
    rec.abort()


# ---------------------------------------------------------------- plot
def test_plot_of_a_hold_and_done_episode(tmp_path):
    recs = _episode_records()
    assert hold_spans(recs) == [(8, 9, "invalid_output"), (10, 10, "stale")]
    with_prob = plot_episode(recs, tmp_path / "a.png", title="t")
    no_prob = plot_episode([StepRecord(step=r.step, action=r.action, hold_reason=r.hold_reason, done=r.done)
                            for r in recs], tmp_path / "b.png")
    for path in (with_prob, no_prob):
        img = imageio.imread(path)
        assert img.shape[0] == 900 and img.shape[1] == 1000  # 10 x 9 in at 100 dpi
        assert img[..., :3].std() > 10  # something drawn
    assert not np.array_equal(imageio.imread(with_prob), imageio.imread(no_prob))  # the P(done) curve
    with pytest.raises(ValueError, match="no step records"):
        plot_episode([], tmp_path / "c.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]


# ---------------------------------------------------------------- LIBERO
def _mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


@pytest.mark.sim
@pytest.mark.slow
def test_libero_viewer_frame_is_upright_and_leaves_the_policy_camera_alone():
    pytest.importorskip("robosuite", reason="LIBERO's simulation stack is not installed")
    import cv2

    from vla_ros.conventions import flip_image
    from vla_ros.sim.libero_env import LiberoEpisodeEnv

    env = LiberoEpisodeEnv("libero_spatial", 0, image_size=128, cameras=("agentview",), viewer_size=512)
    try:
        obs = env.reset(0)
        # the buffer is large enough from the start: no render context rebuilt (seconds) by the first viewer frame
        assert env.env.sim._render_context_offscreen.con.offHeight >= 512
        policy = obs.images["agentview"]
        raw_before = env.raw_frame()
        viewer = env.render_viewer("agentview", 512)
        assert viewer.shape == (512, 512, 3) and viewer.dtype == np.uint8 and viewer.std() > 5
        assert np.array_equal(env.raw_frame(), raw_before)  # the policy camera renders exactly as before
        # LIBERO's observation and a re-render of the same state differ in a few pixels (seen: robosuite renders the
        # observation before its last visual update), so the policy frame is compared loosely
        assert _mean_abs(flip_image(raw_before, env.image_flip), policy) < 1.0

        small = cv2.resize(viewer, (128, 128), interpolation=cv2.INTER_AREA)
        raw = flip_image(policy, "rot180")  # the policy's frame rotated back: as LIBERO renders it

        def err(img):
            return _mean_abs(small, img)

        upright = err(raw[::-1])  # the true view: LIBERO's frame turned right side up
        for other in (policy, raw, policy[::-1]):  # the policy's (mirrored), LIBERO's (upside down), rot180 of it
            assert upright < 0.5 * err(other), (upright, err(other))
        assert upright < 8  # measured 2.3 (the others: 40 and more)

        res = env.step(np.array([0.5, 0, 0, 0, 0, 0, -1.0]))  # stepping after a viewer render is unaffected
        assert _mean_abs(res.obs.images["agentview"], flip_image(env.raw_frame(), env.image_flip)) < 1.0
        env.reset(1)  # a hard reset makes a new render context: the reservation holds for it too
        assert env.env.sim._render_context_offscreen.con.offHeight >= 512
    finally:
        env.close()
