"""A stand-in for ``LiberoEpisodeEnv`` (no LIBERO): the bridge's tests drive the stepping logic with it."""

from __future__ import annotations

import numpy as np

from vla_ros.conventions import max_steps_for
from vla_ros.sim.libero_env import Observation, StepResult


class FakeEnv:
    """Quacks like LiberoEpisodeEnv: records the controller actions it is given; the end effector is
    the running sum of the x commands, so a test can see which actions were applied."""

    instruction = "put the fake thing somewhere"
    num_init_states = 3

    def __init__(self, suite, task_id, *, image_size, cameras, viewer_size=0, **_):
        self.suite_name, self.task_id, self.size, self.cameras = suite, task_id, image_size, cameras
        self.viewer_size = viewer_size
        self.viewer_renders: list[tuple[str, int, int]] = []  # (camera, size, step) of each viewer render
        self.max_steps, self.num_steps_wait, self.end_on_success = max_steps_for(suite), 10, True
        self.actions: list[np.ndarray] = []
        self.init_state_id, self.step_count, self.done, self.reason, self.success = -1, 0, True, "", False
        self.closed = False

    def _obs(self):
        img = np.zeros((self.size, self.size, 3), np.uint8)
        img[0, 0] = self.step_count % 256
        x = sum(a[0] for a in self.actions)
        return Observation(images={c: img for c in self.cameras}, eef_pos=np.array([x, 0.0, 1.0]),
                           eef_quat=np.array([0.0, 0.0, 0.0, 1.0]), gripper_qpos=np.zeros(2), joint_pos=np.zeros(7))

    def reset(self, init_state_id):
        self.init_state_id, self.step_count, self.done, self.reason, self.success = init_state_id, 0, False, "", False
        self.actions = []
        return self._obs()

    def step(self, a):
        self.actions.append(np.asarray(a, dtype=float))
        self.step_count += 1
        if self.step_count >= self.max_steps:
            self.finish("step_limit")
        return StepResult(self._obs(), False, self.done, self.reason)

    def render_viewer(self, camera="agentview", size=512):
        self.viewer_renders.append((camera, size, self.step_count))
        return np.full((size, size, 3), self.step_count % 256, np.uint8)

    def finish(self, reason):
        self.done, self.reason = True, reason

    def close(self):
        self.closed = True
