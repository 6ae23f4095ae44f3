"""What vla_policy_node remembers between decisions (vla_ros.control_state), without rclpy."""

from __future__ import annotations

import threading

from vla_ros.control_state import EpisodeMatch, InputWait, LockstepAnswers


def test_lockstep_answers_one_answer_per_observation_and_one_hold_per_reason():
    answers: LockstepAnswers[str] = LockstepAnswers()
    assert answers.answer((5, 0)) is None
    answers.remember((5, 0), "act 5")
    assert answers.answer((5, 0)) == "act 5"  # a re-published observation: the same answer
    assert answers.answer((6, 0)) is None  # another observation: not answered yet
    # holds: once per observation and reason
    assert answers.first_hold((6, 0), "no_instruction")
    assert not answers.first_hold((6, 0), "no_instruction")
    assert answers.first_hold((6, 0), "disabled")  # another reason for the same observation
    assert answers.first_hold((7, 0), "disabled")  # the same reason for another observation
    assert answers.first_hold(None, "disabled")  # no frame at all is an observation of its own
    answers.forget_holds()  # a new instruction / the enable switch: the same hold may be needed again
    assert answers.first_hold(None, "disabled")
    assert answers.answer((5, 0)) == "act 5"  # forgetting holds keeps the answer
    answers.clear()  # activation
    assert answers.answer((5, 0)) is None and answers.first_hold(None, "disabled")


def test_input_wait_waits_until_the_deadline_then_rejects_once_per_observation():
    wait = InputWait()
    assert wait.deadline is None and not wait.waiting(0.0)
    assert wait.missing((1, 0), received_at=10.0, wait_s=0.5, now=10.1) == InputWait.WAIT
    assert wait.deadline == 10.5 and wait.waiting(10.2) and not wait.waiting(10.5)
    # a re-published observation keeps its first deadline
    assert wait.missing((1, 0), received_at=10.4, wait_s=0.5, now=10.45) == InputWait.WAIT
    assert wait.deadline == 10.5
    assert wait.missing((1, 0), 10.4, 0.5, now=10.6) == InputWait.REJECT  # counted once ...
    assert wait.missing((1, 0), 10.4, 0.5, now=10.7) == InputWait.HOLD  # ... every later try only holds
    # the next observation gets its own deadline and its own rejection
    assert wait.missing((2, 0), 11.0, 0.5, now=11.0) == InputWait.WAIT and wait.deadline == 11.5
    assert wait.missing((2, 0), 11.0, 0.5, now=11.6) == InputWait.REJECT
    wait.done()  # the inputs came (or the decision holds for another reason)
    assert wait.deadline is None and not wait.waiting(11.0)
    assert wait.missing((2, 0), 11.0, 0.5, now=11.7) == InputWait.HOLD  # still one rejection per observation


def test_episode_match_by_stamp_then_at_receipt_then_the_own_count():
    match = EpisodeMatch(kept=2)
    assert match.episode_of((1, 0), None) == (0, 0)  # a real arm: no status ever, the own count
    match.new_own_episode()
    match.count_own_step()
    match.count_own_step()
    assert match.episode_of(None, None) == (1, 2)
    assert not match.record((1, 0), 7, 0)  # the first status starts nothing
    assert not match.record((2, 0), 7, 1)
    assert match.episode_of((2, 0), (7, 0)) == (7, 1)  # the status with the observation's stamp wins
    assert match.episode_of((9, 0), (7, 0)) == (7, 0)  # none with its stamp: the latest at its receipt
    assert match.episode_of((9, 0), None) == (1, 2)  # ... else the own count
    assert match.record((3, 0), 8, 0)  # another episode id: a new episode
    assert match.latest == (8, 0)
    assert match.episode_of((1, 0), None) == (1, 2)  # only the last `kept` stamps are kept
    assert match.episode_of(None, None) == (1, 2)  # an answer without a frame


def test_episode_match_waits_for_the_status_that_follows_the_images():
    match = EpisodeMatch()
    match.record((1, 0), 3, 0)
    got: list[tuple[int, int]] = []
    waiter = threading.Thread(target=lambda: got.append(match.episode_of((2, 0), (3, 0), wait_s=30.0)))
    waiter.start()
    match.record((2, 0), 3, 1)  # the bridge's status of observation (2, 0), sent after its images
    waiter.join(timeout=30.0)
    assert got == [(3, 1)]
