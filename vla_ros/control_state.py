"""What vla_policy_node remembers between decisions, ROS-free (the node keeps the threads and the locks).

- :class:`LockstepAnswers`: in lockstep each observation (key = its image stamp) is answered once; a re-published
  observation gets the same answer again without a second inference (a chunked policy would otherwise skip an
  action), and a hold is published at most once per observation and reason.
- :class:`InputWait`: a decision whose further inputs (wrist image, proprio) have not come yet waits until a
  deadline, then holds with ``missing_inputs`` and counts one rejection per observation.
- :class:`EpisodeMatch`: which episode and step an answer belongs to: the simulator bridge's ``EpisodeStatus``
  with the observation's stamp, else the node's own count (a real arm: one episode per instruction).
"""

from __future__ import annotations

import collections
import threading
from typing import Generic, TypeVar

ObservationKey = tuple[int, int]  # the image stamp (sec, nanosec)
Answer = TypeVar("Answer")

EPISODE_STAMPS_KEPT = 32


class LockstepAnswers(Generic[Answer]):
    """The answer to the current observation, and the last hold published (lockstep)."""

    def __init__(self) -> None:
        self._answered: tuple[ObservationKey, Answer] | None = None
        self._last_hold: tuple[ObservationKey | None, str] | None = None

    def clear(self) -> None:
        """Forget both: activation, or a change of what the answer was made under (dry_run, a live parameter, the
        enable switch, the instruction). The current observation is then answered anew."""
        self._answered, self._last_hold = None, None

    def forget_holds(self) -> None:
        """A new instruction or a flipped enable switch: the same observation may need its hold again."""
        self._last_hold = None

    def answer(self, key: ObservationKey) -> Answer | None:
        """The answer already given to the observation ``key`` (None: not answered yet)."""
        answered = self._answered
        return answered[1] if answered is not None and answered[0] == key else None

    def remember(self, key: ObservationKey, answer: Answer) -> None:
        self._answered = (key, answer)

    def first_hold(self, key: ObservationKey | None, reason: str) -> bool:
        """True the first time the observation ``key`` holds for ``reason`` (publish it), then False until another
        observation or reason held, or :meth:`forget_holds`."""
        if self._last_hold == (key, reason):
            return False
        self._last_hold = (key, reason)
        return True


class InputWait:
    """The deadline of a decision waiting for the further inputs of its observation, and its one rejection."""

    WAIT, REJECT, HOLD = "wait", "reject", "hold"

    def __init__(self) -> None:
        self._pending: tuple[ObservationKey, float] | None = None  # (observation, deadline on the caller's clock)
        self._rejected: ObservationKey | None = None

    @property
    def deadline(self) -> float | None:
        """When the waiting decision must be retried at the latest (None: none waits)."""
        pending = self._pending
        return None if pending is None else pending[1]

    def waiting(self, now: float) -> bool:
        """A decision still waits (an arriving input should wake it)."""
        pending = self._pending
        return pending is not None and now < pending[1]

    def done(self) -> None:
        """The inputs came, or the decision holds for another reason: nothing waits any more."""
        self._pending = None

    def missing(self, key: ObservationKey, received_at: float, wait_s: float, now: float) -> str:
        """The observation ``key`` (first received at ``received_at``) lacks its inputs at ``now``: ``WAIT`` until
        ``wait_s`` after its first receipt (a re-published observation keeps its deadline), then ``REJECT`` (hold and
        count one rejection) once per observation, ``HOLD`` after that."""
        if self._pending is None or self._pending[0] != key:
            self._pending = (key, received_at + wait_s)
        if now < self._pending[1]:
            return self.WAIT
        if self._rejected != key:
            self._rejected = key
            return self.REJECT
        return self.HOLD


class EpisodeMatch:
    """Episode and step of each answer. Thread-safe: statuses arrive on one thread, answers look them up on another.

    The bridge stamps its EpisodeStatus with the observation's stamp and sends it just AFTER the images, so an
    answer looks its episode up by stamp (the recent ``kept`` are kept) and may wait briefly for it.
    """

    def __init__(self, kept: int = EPISODE_STAMPS_KEPT) -> None:
        self._cv = threading.Condition()
        self._kept = kept
        self._by_stamp: collections.OrderedDict[ObservationKey, tuple[int, int]] = collections.OrderedDict()
        self.latest: tuple[int, int] | None = None  # (episode_id, step) of the bridge's latest status
        self.own_episode = 0  # without a bridge: one episode per instruction ...
        self.own_step = 0  # ... and its actions so far

    def record(self, key: ObservationKey, episode_id: int, step: int) -> bool:
        """Keep a status of the observation ``key``; True when it starts another episode than the previous status."""
        with self._cv:
            new_episode = self.latest is not None and self.latest[0] != episode_id
            self.latest = (int(episode_id), int(step))
            self._by_stamp[key] = self.latest
            while len(self._by_stamp) > self._kept:
                self._by_stamp.popitem(last=False)
            self._cv.notify_all()
        return new_episode

    def new_own_episode(self) -> None:
        self.own_episode, self.own_step = self.own_episode + 1, 0

    def count_own_step(self) -> None:
        self.own_step += 1

    def episode_of(self, key: ObservationKey | None, at_receipt: tuple[int, int] | None,
                   wait_s: float = 0.0) -> tuple[int, int]:
        """(episode_id, step) of the observation ``key``: the status with its stamp (waited for up to ``wait_s``),
        else ``at_receipt`` (the latest status when the observation came), else the own count. Without a key or
        any status (a real arm), the own count."""
        if key is None or self.latest is None:
            return self.own_episode, self.own_step
        with self._cv:
            self._cv.wait_for(lambda: key in self._by_stamp, timeout=wait_s)
            found = self._by_stamp.get(key)
        if found is not None:
            return found
        return at_receipt if at_receipt is not None else (self.own_episode, self.own_step)
