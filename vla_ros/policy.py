"""The one policy API every backend implements and every consumer (node, eval, bench) uses."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np

from vla_ros.conventions import ACTION_DIM, DEFAULT_IMAGE_FLIP, LIBERO_ACTION_SPACE, ActionSpace


@dataclass
class PolicyMetadata:
    """What a consumer must know about a loaded policy; filled from the checkpoint's record."""

    model_id: str
    action_space: ActionSpace = LIBERO_ACTION_SPACE
    gripper_convention: str = "libero_sign"  # see vla_ros.conventions.GRIPPER_CONVENTIONS
    image_flip: str = DEFAULT_IMAGE_FLIP  # the flip the training images had
    image_size: int = 224  # the resolution the model consumes
    action_dim: int = ACTION_DIM
    predicts_done: bool = False  # True when the model can declare the episode finished
    extra: dict = field(default_factory=dict)


@dataclass
class PolicyOutput:
    """One decision: the un-normalised action and whether the policy declared the episode done."""

    action: np.ndarray  # (action_dim,) float64, in metadata.action_space units
    done: bool = False


class Policy(abc.ABC):
    """A VLA policy: image + instruction in, one un-normalised action out.

    Implementations keep all model logic (preprocessing, prompting, decoding, un-normalising);
    callers only hand over an HxWx3 uint8 RGB image as the camera delivers it *after* the
    camera-flip convention has been applied by the source (sim bridge or dataset reader).
    """

    metadata: PolicyMetadata

    @abc.abstractmethod
    def act_batch(self, images: list[np.ndarray], instructions: list[str]) -> list[PolicyOutput]:
        """Batched decision; each image HxWx3 uint8 RGB."""

    def act(self, image: np.ndarray, instruction: str) -> PolicyOutput:
        return self.act_batch([image], [instruction])[0]

    def predict(self, image: np.ndarray, instruction: str) -> np.ndarray:
        """Un-normalised 7-D action for one image and instruction."""
        return self.act(image, instruction).action

    def predict_batch(self, images: list[np.ndarray], instructions: list[str]) -> np.ndarray:
        return np.stack([o.action for o in self.act_batch(images, instructions)])

    def reset(self) -> None:
        """Forget per-episode state (action chunks, caches); called on a new instruction/episode."""
        return None

    def close(self) -> None:
        """Release the model (GPU memory included)."""
        return None
