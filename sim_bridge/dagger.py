"""DAgger rollouts: a trained policy drives LIBERO, the scripted expert labels every state it visits.

A policy trained on expert demonstrations only ever saw the expert's states; once its own small errors take
it elsewhere (a bowl carried a few centimetres off the plate, a hand hovering at the wrong height) it has no
data for getting back. DAgger (Ross, Gordon and Bagnell 2011) collects exactly those states: roll out the
policy, ask the expert what it would do in each visited state, add the pairs to the data and retrain. The
expert in :mod:`vla_ros.sim.expert` is a function of the simulator state (plus its phase, which it advances
from that state), so it can label states it did not produce.

Each step executes the expert's action with probability ``beta`` and the policy's otherwise (the mixture
policy of the paper's round ``i``, ``beta_i``); ``vla_ros.sim.generate_demos`` stores the expert's label either
way and keeps the episodes that end with the goal holding, in the usual demonstration files. Use it as
``vla-ros generate-demos --policy CKPT --beta 0.5 ...``; the scenes are fresh random resets, as for
demonstrations, never the suites' fixed evaluation init states.
"""

from __future__ import annotations

import numpy as np

from vla_ros.controller import ControllerConfig
from vla_ros.policy import Policy
from vla_ros.sim.libero_env import Observation
from vla_ros.sim.rollout import policy_inputs, policy_step


class PolicyDriver:
    """Proposes the policy's LIBERO action for an observation, shaped exactly as the evaluation shapes it."""

    def __init__(self, policy: Policy, controller: ControllerConfig | None = None):
        self.policy = policy
        self.controller = controller or ControllerConfig()
        self.controller.validate()
        self.instruction = ""

    @classmethod
    def load(cls, checkpoint: str, backend: str = "native", options: dict | None = None) -> PolicyDriver:
        from vla_ros.backends import load_policy

        return cls(load_policy(backend, checkpoint, **(options or {})))

    @property
    def cameras(self) -> tuple[str, ...]:
        """The cameras the env must render for this policy (the agentview first)."""
        return ("agentview", *self.policy.metadata.extra_images)

    def reset(self) -> None:
        self.policy.reset()

    def act(self, obs: Observation) -> np.ndarray | None:
        """The policy's LIBERO action, or None for an output the node would hold on (the node's decision step,
        :func:`vla_ros.sim.rollout.policy_step`). Its ``done`` is ignored (also None): the episode's end is
        labelled from the simulator's success check, as in demonstrations."""
        if not self.instruction:
            raise RuntimeError("set PolicyDriver.instruction to the task's instruction first")
        action, _done = policy_step(self.policy, obs.images["agentview"], self.instruction, self.controller,
                                    policy_inputs(self.policy, obs))
        return action

    def close(self) -> None:
        self.policy.close()
