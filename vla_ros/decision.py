"""The policy's decision step, ROS-free: the one that vla_policy_node, the in-process rollout and DAgger all run.

One step: unless the controller's state already holds (the reason from :func:`vla_ros.controller.hold_reason`), run
``policy.act`` on the main image, the instruction and the model's further inputs (:mod:`vla_ros.inputs`), time it,
shape its raw output with :func:`vla_ros.controller.shape_action` and say what the step is: an action, a hold with its
reason (``inference_error`` when the policy raised, ``invalid_output`` for NaN/inf or a wrong length), or the
policy's end of the episode. Because the node and the evaluation call the same function on the same inputs, the
graph and the in-process route agree by construction, not by promise.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla_ros.action_conversion import ArmCommand
from vla_ros.controller import ControllerConfig, shape_action
from vla_ros.policy import Policy


@dataclass
class Decision:
    """What one decision step gave."""

    command: ArmCommand | None = None  # the shaped command; None when the step holds
    hold_reason: str = ""  # "" = act; the state's reason before inference, inference_error or invalid_output
    done: bool = False  # the policy declared the episode finished (only ever with a valid output)
    raw: np.ndarray | None = None  # the policy's raw action as it gave it (None: no output)
    inferred: bool = False  # the policy ran and returned an output (valid or not): its time counts
    inference_ms: float = 0.0  # the policy's reset (when asked) and act, in milliseconds
    error: str = ""  # what went wrong, for the log (inference_error, invalid_output)
    exception: Exception | None = None  # inference_error: what the policy raised
    was_reset: bool = False  # the policy's reset ran (it was asked for and did not raise)

    def outcome(self, state_reason: str = "", dry_run: bool = False) -> str:
        """The hold reason of the answer ("" = execute ``command``), given the controller's state after the
        inference (a switch-off while the model ran turns its result into a hold) and ``dry_run``."""
        if self.hold_reason:
            return self.hold_reason
        if state_reason:
            return state_reason
        if self.done:
            return "finished"
        return "dry_run" if dry_run else ""


def decide(policy: Policy, image: np.ndarray | None, instruction: str | None, inputs: Mapping[str, Any],
           cfg: ControllerConfig, hold_reason: str = "", reset: bool = False) -> Decision:
    """One decision: ``policy.act(image, instruction, **inputs)`` shaped by ``cfg``, or a hold with its reason.

    ``hold_reason`` is the controller's reason to hold before inference ("" = it may act): the policy is not run
    (``image`` and ``instruction`` may then be None: no frame or no instruction yet).
    ``reset`` first resets the policy (a new episode: forget action chunks and caches); an exception there or in
    ``act`` is an ``inference_error`` hold, never raised. A done with an invalid output is an ``invalid_output``
    hold, not an end: the node publishes no ``finished`` for an output it cannot execute.
    """
    if hold_reason:
        return Decision(hold_reason=hold_reason)
    was_reset = False
    t0 = time.perf_counter()
    try:
        if reset:
            policy.reset()
            was_reset = True
        out = policy.act(image, instruction, **inputs)
    except Exception as exc:  # a failing model holds the arm; the caller logs and counts it
        return Decision(hold_reason="inference_error", error=f"inference failed: {exc!r}", exception=exc,
                        was_reset=was_reset)
    ms = (time.perf_counter() - t0) * 1e3
    meta = policy.metadata
    try:
        raw = np.asarray(out.action, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        return Decision(hold_reason="invalid_output", error=f"invalid policy output: {exc}", inferred=True,
                        inference_ms=ms, was_reset=was_reset)
    try:
        cmd = shape_action(raw, meta.action_space, meta.gripper_convention, cfg)
    except ValueError as exc:
        return Decision(hold_reason="invalid_output", raw=raw, error=f"invalid policy output: {exc}", inferred=True,
                        inference_ms=ms, was_reset=was_reset)
    return Decision(command=cmd, done=bool(out.done), raw=raw, inferred=True, inference_ms=ms, was_reset=was_reset)
