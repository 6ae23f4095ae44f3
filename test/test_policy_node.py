"""vla_policy_node in-process with the deterministic debug policy: acting, holding, rejecting.

Free-running tests run the node on sim time (/clock from the test), so the control rate and the
image timeout are checked by counting ticks of a clock the test owns, never by wall-time races.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")

from diagnostic_msgs.msg import DiagnosticStatus
from policy_node_harness import DEADLINE, BlockingPolicy, Harness
from rclpy.lifecycle import TransitionCallbackReturn
from sensor_msgs.msg import Image

from helpers import wait_for
from vla_ros.image_codec import fill_image_msg
from vla_ros_msgs.msg import EpisodeStatus, PolicyStatus

pytestmark = pytest.mark.ros


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.close()


def _mean_action(value: int) -> float:
    """What the debug policy's image_mean mode puts in raw_action[0] for a uniform image."""
    return value / 255.0 * 2 - 1


def _advance(h: Harness, t0: float, t1: float, dt: float = 0.01) -> None:
    for i in range(1, round((t1 - t0) / dt) + 1):
        h.clock(t0 + i * dt)


def test_acts_at_the_configured_rate_on_the_newest_frame(h):
    node = h.start(backend_options="{mode: image_mean}", image_timeout_s=100.0)
    h.clock(1.0)
    h.instruct("put the black bowl on the plate")
    wait_for(lambda: node._control.instruction is not None, DEADLINE, what="instruction")
    h.send_image(value=40, stamp=0.5)
    wait_for(lambda: node._control.frames.peek() is not None, DEADLINE, what="frame")
    n0 = node.status().actions_published
    _advance(h, 1.0, 2.0)  # one second of sim time at 20 Hz
    wait_for(lambda: not node._busy, DEADLINE, what="worker idle")
    n20 = node.status().actions_published - n0
    assert 19 <= n20 <= 21, n20
    last = h.wait_action(lambda a: not a.hold, "an action")
    assert last.header.stamp.sec == 0 and last.header.stamp.nanosec == 500_000_000  # the image's stamp
    assert last.raw_action[0] == pytest.approx(_mean_action(40), abs=1e-6)
    assert last.action_space == "libero_osc_pose_20hz" and last.dt == pytest.approx(0.05)
    assert last.twist.linear.x == pytest.approx(_mean_action(40) * 0.05, abs=1e-6)
    assert last.gripper == 0.0  # debug gripper -1 = LIBERO open = closure 0
    # the rate is a live parameter
    assert node.set_parameters([rclpy.parameter.Parameter("control_rate_hz", value=10.0)])[0].successful
    n0 = node.status().actions_published
    _advance(h, 2.0, 3.0)
    wait_for(lambda: not node._busy, DEADLINE, what="worker idle")
    n10 = node.status().actions_published - n0
    assert 9 <= n10 <= 11, n10
    # only the newest frame is used; frames replaced before use are counted as dropped
    dropped = node.status().dropped_frames
    for v in (10, 20, 30):
        h.send_image(value=v, stamp=3.0 + v / 100)
        wait_for(lambda v=v: node._control.frames.peek().rgb[0, 0, 0] == v, DEADLINE, what="frame stored")
    assert node.status().dropped_frames == dropped + 2
    mark = len(h.snapshot())
    h.clock(3.1)
    a = h.wait_action(lambda a: not a.hold, "action on the newest frame", start=mark)
    assert a.raw_action[0] == pytest.approx(_mean_action(30), abs=1e-6)


def test_holds_without_instruction_and_on_stale_images(h):
    node = h.start(backend_options="{action: [1, 0, 0, 0, 0, 0, 1]}", image_timeout_s=0.5)
    h.clock(1.0)
    h.send_image(stamp=1.0)
    wait_for(lambda: node._control.frames.peek() is not None, DEADLINE, what="frame")
    mark = len(h.snapshot())
    h.clock(1.05)
    hold = h.wait_action(lambda a: True, "a hold", start=mark)
    assert hold.hold and hold.hold_reason == "no_instruction"
    assert (hold.twist.linear.x, hold.twist.angular.z) == (0.0, 0.0) and len(hold.raw_action) == 0
    h.instruct("pick up the bowl")
    wait_for(lambda: node._control.instruction is not None, DEADLINE, what="instruction")
    mark = len(h.snapshot())
    h.clock(1.10)
    # (a hold sent before the instruction may still be on its way: wait for the action itself)
    act = h.wait_action(lambda a: not a.hold, "an action", start=mark)
    assert act.gripper == 1.0 and act.twist.linear.x == pytest.approx(0.05)
    # no new image for longer than image_timeout_s (sim time): hold, gripper unchanged (closed)
    _advance(h, 1.10, 1.60, dt=0.05)
    mark = len(h.snapshot())
    h.clock(1.65)
    stale = h.wait_action(lambda a: a.hold, "a stale hold", start=mark)
    assert stale.hold and stale.hold_reason == "stale_image" and stale.gripper == 1.0
    assert stale.twist.linear.x == 0.0
    wait_for(lambda: h.status().state == PolicyStatus.STATE_HOLDING, DEADLINE, what="status holding")
    assert h.status().hold_reason == "stale_image"
    h.send_image(stamp=1.7)
    wait_for(lambda: node._control.frames.peek().key == (1, 700_000_000), DEADLINE, what="new frame")
    mark = len(h.snapshot())
    h.clock(1.70)
    h.wait_action(lambda a: not a.hold, "acting again", start=mark)


def test_enable_switch_dry_run_and_twist_mirror(h):
    node = h.start(backend_options="{action: [0.5, 0, 0, 0, 0, -0.2, 1]}", twist_scale=2.0)
    h.clock(1.0)
    h.instruct("open the drawer")
    h.send_image(stamp=1.0)
    wait_for(lambda: node._control.instruction is not None and node._control.frames.peek() is not None, DEADLINE, what="inputs")
    h.clock(1.05)
    act = h.wait_action(lambda a: not a.hold, "an action")
    tw = h.twists[-1]
    # mirror: per-step delta / dt * twist_scale -> m/s, rad/s
    assert tw.twist.linear.x == pytest.approx(0.5 * 0.05 / 0.05 * 2.0, rel=1e-6)
    assert tw.twist.angular.z == pytest.approx(-0.2 * 0.5 / 0.05 * 2.0, rel=1e-6)
    assert tw.header.frame_id == act.header.frame_id == "base_link"

    assert h.enable(False).success
    mark = len(h.snapshot())
    h.clock(1.10)
    held = h.wait_action(lambda a: a.hold, "disabled hold", start=mark)
    assert held.hold and held.hold_reason == "disabled" and held.gripper == 1.0
    wait_for(lambda: h.twists[-1].twist.linear.x == 0.0, DEADLINE, what="zero twist mirror")
    assert h.enable(True).success

    assert node.set_parameters([rclpy.parameter.Parameter("dry_run", value=True)])[0].successful
    mark = len(h.snapshot())
    h.clock(1.15)
    dry = h.wait_action(lambda a: a.hold_reason == "dry_run", "dry-run hold", start=mark)
    assert dry.hold and dry.hold_reason == "dry_run"
    assert dry.raw_action[0] == pytest.approx(0.5) and dry.twist.linear.x == 0.0  # computed, not commanded


@pytest.mark.parametrize(("options", "reason", "error"), [
    ("{mode: nan}", "invalid_output", "NaN"),
    ("{fail_with: 'model exploded'}", "inference_error", "model exploded"),
])
def test_bad_policy_output_holds_and_node_keeps_running(h, options, reason, error):
    node = h.start(backend_options=options)
    h.clock(1.0)
    h.instruct("stack the blocks")
    h.send_image(stamp=1.0)
    wait_for(lambda: node._control.instruction is not None and node._control.frames.peek() is not None, DEADLINE, what="inputs")
    for k in range(1, 4):  # several cycles: every one holds, none crashes
        mark = len(h.snapshot())
        h.clock(1.0 + 0.05 * k)
        held = h.wait_action(lambda a: True, f"hold {k}", start=mark)
        assert held.hold and held.hold_reason == reason and held.twist.linear.x == 0.0
    if reason == "invalid_output":
        assert all(math.isnan(v) for v in held.raw_action)  # reported as the policy gave it
    st = h.status()
    assert st.state == PolicyStatus.STATE_ERROR and error in st.last_error
    assert node._worker.is_alive()
    wait_for(lambda: any(s.state == PolicyStatus.STATE_ERROR for s in list(h.statuses)), DEADLINE,
             what="published error status")
    wait_for(lambda: any(d.status and d.status[0].level == DiagnosticStatus.ERROR and reason in d.status[0].message
                         for d in list(h.diagnostics)), DEADLINE, what="an ERROR diagnostic")


def test_bad_inputs_are_rejected_counted_and_harmless(h):
    node = h.start(backend_options="{mode: image_mean}", max_instruction_chars=200)
    h.clock(1.0)
    h.instruct("wipe the table")
    h.send_image(value=100, stamp=1.0)
    wait_for(lambda: node._control.instruction == "wipe the table" and node._control.frames.peek() is not None, DEADLINE,
             what="good inputs")
    base = h.status().rejected_inputs
    bad_images = []
    m = h.make_image()
    m.encoding = "16UC1"  # unsupported encoding
    bad_images.append(m)
    m = h.make_image()
    m.data = bytes(m.data)[:100]  # truncated
    bad_images.append(m)
    bad_images.append(h.make_image(size=8))  # smaller than min_image_side
    m = h.make_image()
    m.step = 10  # rows shorter than width * channels
    bad_images.append(m)
    m = h.make_image()
    m.height, m.width = 0, 0  # empty
    bad_images.append(m)
    for k, msg in enumerate(bad_images, 1):
        h.publish_until(h.pub_image, msg, lambda k=k: h.status().rejected_inputs == base + k, f"bad image {k} rejected")
    # ROS strings end at a NUL, so control characters are tested with ESC
    for k, text in enumerate(["", "   ", "x" * 201, "go\x1b[2Jthere"], 1):
        h.instruct(text)
        wait_for(lambda k=k: h.status().rejected_inputs == base + len(bad_images) + k, DEADLINE,
                 what=f"bad instruction {k} rejected")
    assert node._rejections.by_kind == {"image": 5, "instruction": 4}
    assert node._control.frames.peek().rgb[0, 0, 0] == 100  # bad frames did not replace the good one
    assert node._control.instruction == "wipe the table"  # bad instructions did not replace the good one
    # the other supported encodings arrive as RGB
    bgr = fill_image_msg(Image(), np.tile(np.array([10, 20, 30], np.uint8), (32, 32, 1)), "bgr8")
    bgr.header.stamp.sec = 3
    h.publish_until(h.pub_image, bgr, lambda: node._control.frames.peek().key == (3, 0), "bgr8 frame")
    assert node._control.frames.peek().rgb[5, 5].tolist() == [10, 20, 30]
    mono = Image(height=32, width=32, encoding="mono8", step=32, data=bytes([77]) * 1024)
    mono.header.stamp.sec = 4
    h.publish_until(h.pub_image, mono, lambda: node._control.frames.peek().key == (4, 0), "mono8 frame")
    assert node._control.frames.peek().rgb.shape == (32, 32, 3) and node._control.frames.peek().rgb[0, 0].tolist() == [77] * 3
    assert h.status().rejected_inputs == base + len(bad_images) + 4
    h.send_image(value=100, stamp=2.0)
    mark = len(h.snapshot())
    h.clock(1.05)
    act = h.wait_action(lambda a: a.header.stamp.sec == 2, "action after bad inputs", start=mark)
    assert not act.hold and act.raw_action[0] == pytest.approx(_mean_action(100), abs=1e-6)
    wait_for(lambda: any(s.rejected_inputs >= base + 9 for s in list(h.statuses)), DEADLINE,
             what="rejections in the published status")


def test_finished_holds_until_a_new_instruction(h):
    node = h.start(backend_options="{done_after: 3}")
    h.clock(1.0)
    h.instruct("close the microwave")
    h.send_image(stamp=1.0)
    wait_for(lambda: node._control.instruction is not None and node._control.frames.peek() is not None, DEADLINE, what="inputs")
    mark = len(h.snapshot())
    t = 1.0
    while not any(a.finished for a in h.snapshot()[mark:]):
        t += 0.05
        h.clock(t)
        assert t < 2.0, "the policy's done was never reported"
    seq = h.snapshot()  # from the start: the jump to t=1 may already have ticked once
    fin = next(a for a in seq if a.finished)
    assert fin.hold and fin.hold_reason == "finished" and len(fin.raw_action) == 7
    assert sum(not a.hold for a in seq[:seq.index(fin)]) == 2  # calls 1 and 2 act, call 3 says done
    mark = len(h.snapshot())
    h.clock(t + 0.05)
    after = h.wait_action(lambda a: not a.finished, "hold after finishing", start=mark)
    assert after.hold and after.hold_reason == "finished"
    assert h.status().state == PolicyStatus.STATE_FINISHED
    h.instruct("close the microwave")  # same text again = a new episode after finishing
    wait_for(lambda: not node._control.finished, DEADLINE, what="finished cleared")
    mark = len(h.snapshot())
    h.clock(t + 0.10)
    h.wait_action(lambda a: not a.hold, "acting again", start=mark)
    # a new instruction while the node holds (stale frame) still resets the policy before its next use
    t += 0.10
    _advance(h, t, t + 1.0, dt=0.05)
    t += 1.0
    h.instruct("open the microwave")
    wait_for(lambda: node._control.instruction == "open the microwave", DEADLINE, what="new instruction")
    mark = len(h.snapshot())
    h.clock(t + 0.05)
    h.wait_action(lambda a: a.hold_reason == "stale_image", "stale hold", start=mark)
    h.send_image(stamp=9.0)
    mark = len(h.snapshot())
    while not any(a.finished for a in h.snapshot()[mark:]):
        t += 0.05
        h.clock(t)
        assert t < 10.0, "the policy's done was never reported"
    seq = h.snapshot()[mark:]
    assert sum(not a.hold for a in seq[:[a.finished for a in seq].index(True)]) == 2  # reset: 2 actions again


def test_lockstep_answers_each_observation_exactly_once(h):
    node = h.start(sim_time=False, lockstep=True, backend_options="{mode: image_mean}")
    policy = node._control.policy
    # an observation before any instruction: exactly one hold for it, then the answer once instructed
    h.send_image(value=10, stamp=5.0)
    first = h.wait_action(lambda a: True, "hold for the first observation")
    assert first.hold and first.hold_reason == "no_instruction" and first.header.stamp.sec == 5
    wait_for(lambda: h.pub_episode.get_subscription_count() > 0, DEADLINE, what="episode status match")
    h.pub_episode.publish(EpisodeStatus(episode_id=7, step=0, image_flip="vflip", action_space="libero_osc_pose_20hz"))
    wait_for(lambda: node._control.episodes.latest == (7, 0), DEADLINE, what="episode status")
    assert node._flip_warned  # the debug checkpoint says rot180
    h.instruct("put the bowl on the plate")
    a = h.wait_action(lambda a: not a.hold, "answer to the waiting observation")
    assert a.header.stamp.sec == 5 and a.raw_action[0] == pytest.approx(_mean_action(10), abs=1e-6)
    for step, value in enumerate((50, 90, 130, 170), start=1):
        # as the bridge does: the observation, then its EpisodeStatus stamped with the observation's stamp
        h.image(value=value, stamp=5.0 + step)
        status = EpisodeStatus(episode_id=7, step=step)
        status.header.stamp.sec = 5 + step
        h.pub_episode.publish(status)
        ans = h.wait_action(lambda a, s=step: a.header.stamp.sec == 5 + s, f"answer {step}")
        assert not ans.hold and (ans.episode_id, ans.step) == (7, step)
        assert ans.raw_action[0] == pytest.approx(_mean_action(value), abs=1e-6)
    calls = policy.calls
    stamps = [a.header.stamp.sec for a in h.snapshot() if not a.hold]
    assert stamps == [5, 6, 7, 8, 9]  # one answer per observation, in order
    # the bridge re-publishes an observation it got no answer for: same answer, no second inference
    h.image(value=170, stamp=9.0)  # a plain publish: the node already holds this stamp
    wait_for(lambda: [a.header.stamp.sec for a in h.snapshot() if not a.hold].count(9) == 2, DEADLINE,
             what="re-sent answer")
    assert policy.calls == calls
    assert h.snapshot()[-1].raw_action == h.snapshot()[-2].raw_action
    # a repeated instruction (the bridge re-sends it) does not reset the policy or re-answer
    h.instruct("put the bowl on the plate")
    h.send_image(value=200, stamp=10.0)
    h.wait_action(lambda a: a.header.stamp.sec == 10, "answer 10")
    assert policy.calls == calls + 1 and len([a for a in h.snapshot() if a.header.stamp.sec == 10]) == 1


def test_inference_never_blocks_callbacks_and_runs_one_at_a_time(h):
    node = h.start(sim_time=False, auto_start=False, image_timeout_s=1000.0)
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    policy = node._control.policy = BlockingPolicy(node._control.policy)
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    h.wait_matched()
    h.instruct("push the plate to the front of the stove")
    h.send_image(value=10, stamp=1.0)
    assert policy.entered.wait(DEADLINE)  # the worker is now stuck inside the model
    # every callback still runs: frames are stored (the unused one counted as dropped), the
    # enable service answers, the status is published; the timer keeps ticking meanwhile
    for v in (20, 30):
        h.send_image(value=v, stamp=1.0 + v / 100)
    assert node.status().dropped_frames >= 1
    assert h.enable(False).success
    n = len(h.statuses)
    wait_for(lambda: len(h.statuses) > n + 1, DEADLINE, what="status while inference runs")
    assert policy.calls == 1 and policy.running == 1
    mark = len(h.snapshot())
    policy.release.set()
    # the result of the blocked inference is not commanded: the switch went off meanwhile
    held = h.wait_action(lambda a: len(a.raw_action) == 7, "the result of the released inference", start=mark)
    assert held.hold and held.hold_reason == "disabled"
    assert h.enable(True).success
    act = h.wait_action(lambda a: not a.hold, "acting on the newest frame", start=mark)
    assert list(act.raw_action) == [0, 0, 0, 0, 0, 0, -1]  # the debug constant action
    assert policy.max_running == 1
