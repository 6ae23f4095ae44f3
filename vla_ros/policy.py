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
    extra_images: tuple[str, ...] = ()  # further cameras the model needs besides the main one, e.g. ("wrist",)
    proprio_layout: str = ""  # "" (no proprio input) or a layout of vla_ros.proprio
    extra: dict = field(default_factory=dict)


@dataclass
class PolicyOutput:
    """One decision: the un-normalised action and whether the policy declared the episode done."""

    action: np.ndarray  # (action_dim,) float64, in metadata.action_space units
    done: bool = False
    # Chunked models (K actions per model call): the whole chunk this action belongs to, (K, action_dim) float64
    # in the same units, and this action's index in it (action == actions[chunk_index]); None for one action a call
    actions: np.ndarray | None = None
    chunk_index: int = 0


class Policy(abc.ABC):
    """A VLA policy: image + instruction in, one un-normalised action out.

    Implementations keep all model logic (preprocessing, prompting, decoding, un-normalising);
    callers only hand over an HxWx3 uint8 RGB image as the camera delivers it *after* the
    camera-flip convention has been applied by the source (sim bridge or dataset reader).

    Models with more inputs (``metadata.extra_images``, ``metadata.proprio_layout``) take them as keyword
    arguments: ``extra_images={"wrist": [...]}`` (one image per sample, same convention as the main camera)
    and ``proprios=[...]`` (one ``vla_ros.proprio`` vector per sample); backends that need none ignore them.
    """

    metadata: PolicyMetadata

    @abc.abstractmethod
    def act_batch(self, images: list[np.ndarray], instructions: list[str], *,
                  extra_images: dict[str, list[np.ndarray]] | None = None,
                  proprios: list[np.ndarray] | None = None) -> list[PolicyOutput]:
        """Batched decision; each image HxWx3 uint8 RGB."""

    def act(self, image: np.ndarray, instruction: str, *, extra_images: dict[str, np.ndarray] | None = None,
            proprio: np.ndarray | None = None) -> PolicyOutput:
        return self.act_batch([image], [instruction],
                              extra_images={k: [v] for k, v in (extra_images or {}).items()} or None,
                              proprios=None if proprio is None else [proprio])[0]

    def predict(self, image: np.ndarray, instruction: str, **inputs) -> np.ndarray:
        """Un-normalised 7-D action for one image and instruction (plus the model's further inputs)."""
        return self.act(image, instruction, **inputs).action

    def predict_batch(self, images: list[np.ndarray], instructions: list[str], **inputs) -> np.ndarray:
        return np.stack([o.action for o in self.act_batch(images, instructions, **inputs)])

    @property
    def needs_extra_inputs(self) -> bool:
        return bool(self.metadata.extra_images or self.metadata.proprio_layout)

    def reset(self) -> None:
        """Forget per-episode state (action chunks, caches); called on a new instruction/episode."""
        return None

    def close(self) -> None:
        """Release the model (GPU memory included)."""
        return None
