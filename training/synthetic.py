"""A deterministic synthetic action dataset: for smoke runs, tests and throughput benchmarks without data.

Sample ``i`` is an image whose colour encodes the action and one of a few instructions; the action is a fixed
function of (i mod ``n_distinct``), so a model can fit it and a falling loss means the pipeline works.
"""

from __future__ import annotations

import numpy as np

from vla_ros.conventions import ACTION_DIM
from vla_ros.normalization import compute_action_statistics

INSTRUCTIONS = ("pick up the black bowl and place it on the plate", "open the top drawer of the cabinet",
                "put the cream cheese in the bowl")


class SyntheticActionDataset:
    """``len`` samples of ``{"image", "instruction", "action", "done"}`` (a plain sequence of dicts)."""

    def __init__(self, length: int = 64, image_size: int = 64, n_distinct: int = 8, action_chunk: int = 1,
                 seed: int = 0):
        if length < 1 or n_distinct < 1:
            raise ValueError("length and n_distinct must be >= 1")
        rng = np.random.default_rng(seed)
        self.length, self.image_size, self.chunk = int(length), int(image_size), int(action_chunk)
        self.actions = rng.uniform(-0.8, 0.8, size=(n_distinct, self.chunk, ACTION_DIM))
        self.actions[..., -1] = np.where(rng.random((n_distinct, self.chunk)) > 0.5, 1.0, -1.0)  # LIBERO gripper
        self.noise = rng.integers(0, 20, size=(n_distinct, self.image_size, self.image_size, 3), dtype=np.uint8)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.length:
            raise IndexError(i)
        k = i % len(self.actions)
        colour = ((self.actions[k, 0, :3] + 1.0) * 110).astype(np.uint8)
        img = (np.broadcast_to(colour, (self.image_size, self.image_size, 3)) + self.noise[k]).astype(np.uint8)
        action = self.actions[k] if self.chunk > 1 else self.actions[k, 0]
        return {"image": img, "instruction": INSTRUCTIONS[k % len(INSTRUCTIONS)], "action": action.copy(),
                "done": k == len(self.actions) - 1}

    @property
    def instructions(self) -> list[str]:
        return list(INSTRUCTIONS)

    def statistics(self, key: str = "synthetic") -> dict:
        a = self.actions.reshape(-1, ACTION_DIM)
        return {key: compute_action_statistics(np.repeat(a, 4, axis=0), num_trajectories=len(self.actions))}
