"""A deterministic, instant policy for tests, benchmarks of the plumbing and dry runs.

``mode='constant'`` always returns ``action``; ``mode='image_mean'`` derives the action from the
image (so a test can tell which frame was used); ``done_after`` declares the episode finished after
that many calls. It stands in for a model wherever the model's own output does not matter.
"""

from __future__ import annotations

import numpy as np

from vla_ros.policy import Policy, PolicyMetadata, PolicyOutput


class DebugPolicy(Policy):
    def __init__(self, action=None, mode: str = "constant", done_after: int = 0, image_size: int = 224,
                 gripper_convention: str = "libero_sign", image_flip: str = "rot180", fail_with: str = ""):
        if mode not in ("constant", "image_mean", "nan"):
            raise ValueError(f"unknown debug mode {mode!r}")
        self.action = np.asarray(action if action is not None else [0, 0, 0, 0, 0, 0, -1], dtype=np.float64)
        if self.action.shape != (7,):
            raise ValueError(f"debug action must have 7 values, got {self.action.shape}")
        self.mode = mode
        self.done_after = int(done_after)
        self.fail_with = fail_with
        self.calls = 0
        self.metadata = PolicyMetadata(model_id=f"debug:{mode}", image_size=image_size,
                                       gripper_convention=gripper_convention, image_flip=image_flip,
                                       predicts_done=self.done_after > 0)

    def act_batch(self, images, instructions, *, extra_images=None, proprios=None):
        outs = []
        for img, _ in zip(images, instructions, strict=True):
            self.calls += 1
            if self.fail_with:
                raise RuntimeError(self.fail_with)
            if self.mode == "constant":
                a = self.action.copy()
            elif self.mode == "image_mean":
                m = float(np.asarray(img, dtype=np.float64).mean()) / 255.0  # 0..1
                a = np.array([m * 2 - 1, 0, 0, 0, 0, 0, -1], dtype=np.float64)
            else:
                a = np.full(7, np.nan)
            outs.append(PolicyOutput(a, done=self.done_after > 0 and self.calls >= self.done_after))
        return outs

    def reset(self) -> None:
        self.calls = 0


def load(path: str | None = None, **options) -> DebugPolicy:
    options = {k: v for k, v in options.items() if k not in ("device", "quantization", "adapter", "unnorm_key")}
    return DebugPolicy(**options)
