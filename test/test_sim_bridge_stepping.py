"""The sim bridge's stepping logic without ROS and without LIBERO (``vla_ros.sim.bridge.Bridge`` on a stand-in
env, time given as plain numbers): episode start and end, lockstep stepping, re-publish and policy timeout,
realtime zero-order hold and action timeout, instruction re-sends, auto-reset, recording, counters. The node's
wiring of the same logic is in test_sim_bridge_unit.py."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
from bridge_fakes import FakeEnv

from vla_ros.conventions import LIBERO_ACTION_SPACE
from vla_ros.sim.bridge import (
    DT_NS,
    Bridge,
    Log,
    PublishClock,
    PublishInstruction,
    PublishObservation,
    PublishStatus,
    ScheduleReset,
)
from vla_ros.sim.bridge_params import BridgeConfig

CLOSE, OPEN = 1.0, -1.0


def action(x: float = 0.0, gripper: float = CLOSE, **kw):
    """A VlaAction-like answer: +x of ``x`` controller units (0.05 m each), gripper closed (1) or open (-1)."""
    twist = SimpleNamespace(linear=SimpleNamespace(x=0.05 * x, y=0.0, z=0.0),
                            angular=SimpleNamespace(x=0.0, y=0.0, z=0.0))
    fields = dict(action_space=LIBERO_ACTION_SPACE.name, raw_action=[], twist=twist, gripper=(gripper + 1) / 2,
                  dt=0.05, hold=False, hold_reason="", finished=False)
    return SimpleNamespace(**{**fields, **kw})


def of(outputs, kind):
    return [o for o in outputs if isinstance(o, kind)]


def started(now: float = 0.0, *, heard: bool = False, env_factory=FakeEnv, **params) -> tuple[Bridge, list]:
    bridge = Bridge(BridgeConfig.defaults(cameras=["agentview"], image_size=16, **params), env_factory)
    ok, message, outputs = bridge.start(now, instruction_subscribed=heard)
    assert ok, message
    return bridge, outputs


def test_start_publishes_the_first_observation_in_order():
    bridge, out = started()
    kinds = [type(o) for o in out if not isinstance(o, Log)]
    assert kinds == [PublishClock, PublishObservation, PublishStatus]  # the /clock tick first, the status last
    clock, obs, status = (o for o in out if not isinstance(o, Log))
    # the settle steps take simulated time: 10 of them at 0.05 s
    assert clock.stamp_ns == obs.stamp_ns == status.stamp_ns == 10 * DT_NS == bridge.stamp_ns
    assert (status.episode_id, status.suite, status.task_id, status.init_state_id) == (1, "libero_spatial", 0, 0)
    assert (status.step, status.max_steps, status.done, status.reason) == (0, 220, False, "")
    assert status.image_flip == "rot180" and status.action_space == LIBERO_ACTION_SPACE.name
    assert bridge.env.num_steps_wait == 10 and bridge.env.end_on_success


def test_without_reset_on_start_the_env_is_built_but_no_episode_runs():
    bridge, out = started(reset_on_start=False)
    assert bridge.env is not None and not bridge.running and not of(out, PublishObservation)
    assert bridge.on_action(action(), bridge.stamp_ns, 0.1) == [] and bridge.stats.after_end == 1


def test_lockstep_steps_once_per_answer_and_refuses_stale_hold_and_invalid():
    bridge, _ = started()
    first = bridge.stamp_ns
    out = bridge.on_action(action(0.5), first, 1.0)
    assert [type(o) for o in out] == [PublishClock, PublishObservation, PublishStatus]
    assert out[-1].step == 1 and bridge.stamp_ns == first + DT_NS
    np.testing.assert_allclose(bridge.env.actions[0], [0.5, 0, 0, 0, 0, 0, CLOSE])
    assert bridge.on_action(action(1.0), first, 1.1) == []  # answers the earlier observation: stale
    assert bridge.on_action(action(1.0, hold=True), bridge.stamp_ns, 1.2) == []  # a hold never steps
    rejected = bridge.on_action(action(1.0, dt=0.1), bridge.stamp_ns, 1.3)
    assert [(o.level, o.throttle_s) for o in rejected] == [("warning", 1.0)] and "dt" in rejected[0].text
    assert len(bridge.env.actions) == 1
    st = bridge.stats
    assert (st.received, st.stepped, st.stale, st.holds, st.rejected["dt"]) == (4, 1, 1, 1, 1)
    bridge.on_action(action(3.0), bridge.stamp_ns, 1.4)  # out of range: clipped and counted, then stepped
    assert bridge.env.actions[-1][0] == 1.0 and st.clipped == 1 and st.stepped == 2


def test_lockstep_republishes_the_same_observation_then_ends_with_policy_timeout():
    bridge, _ = started(0.0, republish_timeout_s=2.0, policy_timeout_s=5.0)
    stamp = bridge.stamp_ns
    assert bridge.watchdog(1.9, policy_connected=True, instruction_subscribed=False) == []
    out = bridge.watchdog(2.1, policy_connected=True, instruction_subscribed=False)
    assert [type(o) for o in out] == [PublishClock, PublishObservation, PublishStatus]
    assert {o.stamp_ns for o in out} == {stamp} and bridge.republished == 1
    assert bridge.watchdog(3.0, policy_connected=True, instruction_subscribed=False) == []  # 2 s since then
    out = bridge.watchdog(5.1, policy_connected=True, instruction_subscribed=False)
    status = of(out, PublishStatus)
    assert len(status) == 1 and status[0].done and status[0].reason == "policy_timeout"
    assert status[0].stamp_ns == stamp and bridge.env.actions == [] and bridge.last_end_reason == "policy_timeout"
    assert any(o.level == "warning" and "policy_timeout" in o.text for o in of(out, Log))
    assert bridge.watchdog(60.0, policy_connected=True, instruction_subscribed=False) == []  # ended: quiet


def test_policy_timeout_waits_while_no_policy_is_connected_and_restarts_on_each_observation():
    bridge, _ = started(0.0, republish_timeout_s=100.0, policy_timeout_s=5.0)
    assert bridge.watchdog(50.0, policy_connected=False, instruction_subscribed=False) == []  # nobody to wait for
    assert not of(bridge.watchdog(54.0, policy_connected=True, instruction_subscribed=False), PublishStatus)
    bridge.on_action(action(), bridge.stamp_ns, 54.5)  # an answer: a new observation, a new wait
    assert not of(bridge.watchdog(59.0, policy_connected=True, instruction_subscribed=False), PublishStatus)
    assert bridge.running
    ended = of(bridge.watchdog(59.6, policy_connected=True, instruction_subscribed=False), PublishStatus)
    assert ended[0].reason == "policy_timeout" and ended[0].step == 1


def test_policy_timeout_zero_never_ends_the_episode():
    bridge, _ = started(0.0, policy_timeout_s=0.0)
    out = bridge.watchdog(10_000.0, policy_connected=True, instruction_subscribed=False)
    assert of(out, PublishObservation) and not any(o.done for o in of(out, PublishStatus))  # a re-publish only
    assert bridge.running


def test_instruction_is_resent_until_the_first_real_answer_once_someone_listens():
    bridge, out = started(0.0, heard=False, instruction_resend_s=1.0)
    assert not of(out, PublishInstruction)  # nobody subscribed yet: nothing sent, nothing counted
    assert not of(bridge.watchdog(0.5, policy_connected=False, instruction_subscribed=False), PublishInstruction)
    sent = of(bridge.watchdog(0.6, policy_connected=False, instruction_subscribed=True), PublishInstruction)
    assert sent == [PublishInstruction(FakeEnv.instruction)]  # at once when a subscriber matched
    assert not of(bridge.watchdog(1.5, policy_connected=True, instruction_subscribed=True), PublishInstruction)
    assert of(bridge.watchdog(1.7, policy_connected=True, instruction_subscribed=True), PublishInstruction)
    bridge.on_action(action(hold=True), bridge.stamp_ns, 1.8)  # a hold is no answer: keep re-sending
    assert of(bridge.watchdog(2.8, policy_connected=True, instruction_subscribed=True), PublishInstruction)
    bridge.on_action(action(), bridge.stamp_ns, 2.9)
    assert not of(bridge.watchdog(9.0, policy_connected=True, instruction_subscribed=True), PublishInstruction)
    assert bridge.instructions_sent == 3
    assert of(bridge.reset_episode("libero_spatial", 0, 0, 10.0, instruction_subscribed=True).outputs, PublishInstruction)


def test_instruction_is_sent_right_after_the_reset_observation_and_not_at_all_when_off():
    _, out = started(heard=True)
    kinds = [type(o) for o in out if not isinstance(o, Log)]
    assert kinds == [PublishClock, PublishObservation, PublishStatus, PublishInstruction]
    bridge, out = started(heard=True, publish_instruction=False)
    assert not of(out, PublishInstruction)
    assert not of(bridge.watchdog(5.0, policy_connected=False, instruction_subscribed=True), PublishInstruction)


def test_finished_ends_with_policy_done_without_executing_and_auto_reset_schedules_the_next_init():
    bridge, _ = started(auto_reset=True)
    out = bridge.on_action(action(1.0, finished=True), bridge.stamp_ns, 1.0)
    status = of(out, PublishStatus)
    assert status[0].done and status[0].reason == "policy_done" and status[0].step == 0 and bridge.env.actions == []
    assert of(out, ScheduleReset) == [ScheduleReset("libero_spatial", 0, 1)]
    assert out.index(status[0]) < out.index(of(out, ScheduleReset)[0])  # the end status goes out first
    reply = bridge.reset_episode("libero_spatial", 0, 2, 2.0, instruction_subscribed=False)
    assert reply.ok and bridge.episode_id == 2
    bridge.end_episode("policy_done")
    assert bridge.reset_target("", -1, -1) == ("libero_spatial", 0, 2)
    out = bridge.on_action(action(finished=True), bridge.stamp_ns, 3.0)  # after the end: refused, counted
    assert out == [] and bridge.stats.after_end == 1


def test_auto_reset_wraps_the_init_states_and_skips_ends_by_reset():
    bridge, _ = started(auto_reset=True, init_state_id=2)  # FakeEnv has 3 init states
    assert of(bridge.end_episode("policy_done"), ScheduleReset) == [ScheduleReset("libero_spatial", 0, 0)]
    bridge.reset_episode("libero_spatial", 0, 1, 1.0, instruction_subscribed=False)
    out = bridge.reset_episode("libero_spatial", 0, 2, 2.0, instruction_subscribed=False).outputs
    ended = [o for o in of(out, PublishStatus) if o.done]
    assert [o.reason for o in ended] == ["reset"] and ended[0].episode_id == 2 and not of(out, ScheduleReset)


def test_reset_fills_blanks_refuses_bad_targets_and_keeps_sim_time_running():
    bridge, _ = started(task_id=4, init_state_id=1)
    assert bridge.reset_target("", -1, -1) == ("libero_spatial", 4, 1)  # blanks keep the current episode's
    stamps = [bridge.stamp_ns]
    assert bridge.reset_episode("libero_goal", 2, 0, 1.0, instruction_subscribed=False).ok
    assert bridge.env.suite_name == "libero_goal" and bridge.env.max_steps == 300
    assert bridge.reset_target("", 1, -1) == ("libero_goal", 1, 0)
    assert bridge.reset_target("libero_object", -1, 2) == ("libero_object", 4, 2)  # another suite: the param's task
    stamps.append(bridge.stamp_ns)
    bad_init = bridge.reset_episode("libero_goal", 2, 3, 2.0, instruction_subscribed=False)
    assert not bad_init.ok and "init_state_id 3 out of range 0..2" in bad_init.message
    bad_suite = bridge.reset_episode("libero_nowhere", 0, 0, 3.0, instruction_subscribed=False)
    assert not bad_suite.ok and "unknown suite" in bad_suite.message
    assert bridge.reset_episode("libero_goal", 2, 1, 4.0, instruction_subscribed=False).ok
    stamps.append(bridge.stamp_ns)
    assert stamps == sorted(stamps) and len(set(stamps)) == 3  # every observation stamp is new


def test_build_failures_are_replies_not_exceptions():
    def broken(suite, task_id, **_):
        if task_id == 99:
            raise ValueError("task_id 99 out of range")
        raise RuntimeError("no GPU context")

    bridge = Bridge(BridgeConfig.defaults(), broken)
    reply = bridge.reset_episode("libero_spatial", 99, 0, 0.0, instruction_subscribed=False)
    assert not reply.ok and reply.message == "task_id 99 out of range" and bridge.env is None
    reply = bridge.start(0.0, instruction_subscribed=False)
    assert not reply.ok and "RuntimeError: no GPU context" in reply.message
    assert [o.level for o in of(reply.outputs, Log)] == ["error"]


def test_live_settings_apply_at_the_next_reset():
    bridge, _ = started()
    bridge.config = replace(bridge.config, max_steps=3, num_steps_wait=0, end_on_success=False)
    assert bridge.env.max_steps == 220  # the running episode keeps its limit
    start = bridge.stamp_ns
    bridge.reset_episode("libero_spatial", 0, 0, 1.0, instruction_subscribed=False)
    assert (bridge.env.max_steps, bridge.env.num_steps_wait, bridge.env.end_on_success) == (3, 0, False)
    assert bridge.stamp_ns == start + DT_NS  # zero settle steps still take one step of sim time
    for _ in range(3):
        out = bridge.on_action(action(), bridge.stamp_ns, 2.0)
    assert of(out, PublishStatus)[0].reason == "step_limit" and not bridge.running


def test_a_failing_step_ends_the_episode_with_error():
    class Exploding(FakeEnv):
        def step(self, a):
            raise FloatingPointError("simulation unstable")

    bridge, _ = started(env_factory=Exploding)
    out = bridge.on_action(action(), bridge.stamp_ns, 1.0)
    assert of(out, Log)[0].level == "error" and of(out, PublishStatus)[0].reason == "error"
    assert not bridge.running and bridge.stats.stepped == 0


def test_realtime_holds_the_last_action_then_stands_still_with_the_gripper_kept():
    bridge, _ = started(0.0, stepping_mode="realtime", action_timeout_s=0.5)
    bridge.realtime_tick(0.05)
    bridge.realtime_tick(0.10)
    assert [list(a) for a in bridge.env.actions] == [[0, 0, 0, 0, 0, 0, OPEN]] * 2  # no action yet: still, open
    assert bridge.on_action(action(0.5), bridge.stamp_ns, 0.12) == []  # realtime never steps on an action
    for t in (0.15, 0.4, 0.6):  # fresh for action_timeout_s: the same action, zero-order hold
        out = bridge.realtime_tick(t)
    assert [a[0] for a in bridge.env.actions[2:]] == [0.5] * 3 and of(out, PublishStatus)[0].step == 5
    bridge.realtime_tick(0.63)  # 0.51 s since it arrived: stand still, the gripper as last commanded (closed)
    assert list(bridge.env.actions[-1]) == [0, 0, 0, 0, 0, 0, CLOSE]
    bridge.on_action(action(0.5, gripper=OPEN), bridge.stamp_ns, 0.7)
    bridge.on_action(action(0.5, hold=True), bridge.stamp_ns, 0.71)  # a hold: stand still at once
    bridge.realtime_tick(0.72)
    assert list(bridge.env.actions[-1]) == [0, 0, 0, 0, 0, 0, CLOSE]  # open was never stepped: still closed
    assert bridge.stats.holds == 1 and bridge.stats.stepped == 7
    # realtime has no re-publish and no policy timeout
    assert bridge.watchdog(100.0, policy_connected=True, instruction_subscribed=False) == []


def test_realtime_accepts_any_stamp_of_the_episode_but_not_an_earlier_one():
    bridge, _ = started(0.0, stepping_mode="realtime")
    first_episode = bridge.stamp_ns
    bridge.realtime_tick(0.05)
    bridge.reset_episode("libero_spatial", 0, 0, 1.0, instruction_subscribed=False)
    bridge.on_action(action(0.5), first_episode, 1.01)  # answers the previous episode
    bridge.on_action(action(0.25), bridge.stamp_ns - DT_NS, 1.02)  # during this episode's settle steps: stale too
    assert bridge.stats.stale == 2
    bridge.realtime_tick(1.05)
    assert bridge.env.actions[-1][0] == 0
    bridge.on_action(action(0.25), bridge.stamp_ns - DT_NS, 1.06)  # an older observation of this episode: fine
    bridge.realtime_tick(1.1)
    assert bridge.env.actions[-1][0] == 0.25 and bridge.stats.stale == 2


def test_recording_takes_each_new_observation_once_and_names_the_outcome(tmp_path):
    bridge, _ = started(0.0, record_dir=str(tmp_path), republish_timeout_s=1.0)
    bridge.watchdog(1.5, policy_connected=False, instruction_subscribed=False)  # a re-publish is no new frame
    assert bridge.republished == 1
    for t in (2.0, 3.0):
        bridge.on_action(action(), bridge.stamp_ns, t)
    out = bridge.on_action(action(finished=True), bridge.stamp_ns, 4.0)
    assert any("recorded" in o.text for o in of(out, Log))
    meta = json.loads((tmp_path / "libero_spatial_task00_init00_ep00001_failure.json").read_text())
    assert (meta["frames"], meta["steps"], meta["reason"], meta["camera"]) == (3, 2, "policy_done", "agentview")
    bridge.reset_episode("libero_spatial", 0, 0, 5.0, instruction_subscribed=False)
    bridge.on_action(action(), bridge.stamp_ns, 6.0)
    bridge.close()  # shutting down mid-episode keeps the recording, reason "shutdown"
    meta = json.loads((tmp_path / "libero_spatial_task00_init00_ep00002_failure.json").read_text())
    assert (meta["frames"], meta["reason"]) == (2, "shutdown") and bridge.env is None


def test_a_failing_recorder_stops_recording_but_not_the_episode(tmp_path, monkeypatch):
    from vla_ros.sim.recording import EpisodeRecorder

    bridge, _ = started(0.0, record_dir=str(tmp_path))

    def full_disk(self, frame):
        raise OSError("No space left on device")

    monkeypatch.setattr(EpisodeRecorder, "add", full_disk)
    out = bridge.on_action(action(), bridge.stamp_ns, 1.0)
    assert any(o.level == "error" and "No space" in o.text for o in of(out, Log)) and of(out, PublishObservation)
    assert bridge.running and bridge.close() == []  # nothing left to finish
    assert not list(tmp_path.glob("*.json"))


def test_viewer_frames_every_kth_step_and_a_plot_with_the_holds_and_done(tmp_path):
    import imageio.v2 as imageio

    bridge, _ = started(0.0, record_dir=str(tmp_path), record_viewer_size=64, record_viewer_every=2)
    assert bridge.render_viewer() == [] and bridge.env.viewer_size == 64  # the node calls it after each step
    for t in range(1, 6):
        bridge.on_action(action(x=0.2 * t), bridge.stamp_ns, float(t))
        bridge.render_viewer()
    bridge.on_action(action(hold=True, hold_reason="stale_image"), bridge.stamp_ns, 6.0)
    bridge.render_viewer()  # a lockstep hold does not step: the same state is not rendered again
    bridge.on_action(action(finished=True), bridge.stamp_ns, 7.0)
    # rendered at the reset (step 0), steps 2 and 4, and the final state (step 5, after the hold and the done)
    assert [r[2] for r in bridge.env.viewer_renders] == [0, 2, 4, 5]
    assert {(r[0], r[1]) for r in bridge.env.viewer_renders} == {("agentview", 64)}
    meta = json.loads((tmp_path / "libero_spatial_task00_init00_ep00001_failure.json").read_text())
    assert (meta["viewer_frames"], meta["decisions"], meta["holds"]) == (4, 7, {"stale_image": 1})
    viewer = imageio.mimread(tmp_path / meta["viewer_video"])
    assert len(viewer) == 4 and viewer[0].shape == (64, 64, 3)
    assert (tmp_path / meta["plot"]).stat().st_size > 0 and meta["plot"].endswith("_actions.png")


def test_viewer_and_plot_can_be_switched_off(tmp_path):
    bridge, _ = started(0.0, record_dir=str(tmp_path), record_viewer_size=0, record_plot=False)
    bridge.on_action(action(), bridge.stamp_ns, 1.0)
    bridge.render_viewer()
    bridge.on_action(action(finished=True), bridge.stamp_ns, 2.0)
    meta = json.loads((tmp_path / "libero_spatial_task00_init00_ep00001_failure.json").read_text())
    assert bridge.env.viewer_renders == [] and meta["viewer_video"] is None and meta["plot"] is None
    assert meta["video"] is not None  # the policy camera's recording is unaffected
