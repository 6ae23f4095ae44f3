"""``EpisodeResult``: what one evaluated episode produced, the same record on both routes (ROS-free).

The in-process rollout (:func:`vla_ros.sim.rollout.run_episode`) and the ROS graph's evaluation client
(:mod:`vla_ros.nodes.eval_client`) both return it; the evaluation report (:mod:`vla_ros.training.eval_report`)
reads its dictionaries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class EpisodeResult:
    suite: str
    task_id: int
    init_state_id: int
    instruction: str
    success: bool
    steps: int
    reason: str  # success, step_limit, policy_done, invalid_output, policy_timeout, ...
    wall_s: float = 0.0
    episode_id: int = 0
    invalid_outputs: int = 0
    video: str | None = None
    actions: list[list[float]] = field(default_factory=list)  # LIBERO controller actions sent, one per step

    def to_dict(self, with_actions: bool = False) -> dict:
        d = asdict(self)
        if not with_actions:
            d.pop("actions")
        return d
