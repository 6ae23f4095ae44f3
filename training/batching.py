"""Turning (image, instruction, action) samples into teacher-forced VLA batches, and OpenVLA's augmentation.

A sample is a mapping with ``image`` (HxWx3 uint8 RGB, camera flip already applied by the dataset reader),
``instruction`` (str), ``action`` (un-normalised, ``(action_dim,)`` or ``(chunk, action_dim)``) and optionally
``done`` (bool, for models that predict the episode end). The batch is the core processor's ``training_batch``:

    input_ids = [BOS, prompt..., action tokens..., (done token), EOS]      right-padded
    labels    = [-100 ... -100,  action tokens..., (done token), EOS]

and the model inserts the image patches after BOS with ignored labels (``PrismaticForActionPrediction.forward``),
so prompt and image positions never contribute to the loss (OpenVLA, ``prismatic/vla/datasets``, which also
supervises the closing EOS). Actions are normalised with the checkpoint's q01/q99 statistics and tokenised by
the model's own ``ActionTokenizer``; this module adds the targets and OpenVLA's augmentation.

Parallel-decoding models (OpenVLA-OFT, ``config.parallel_decoding``) get the layout they act with
(``parallel_decoding.parallel_training_batch``): the left-padded prompt, ``labels`` = the slots' target ids
``(B, n_slots)`` (action tokens, then the continue/done id; no EOS: nothing is generated after the slots) and, for
the ``l1`` head, ``action_targets`` = the normalised actions ``(B, K, action_dim)`` clipped to [-1, 1].
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vla_ros.action_tokenizer import ActionTokenizer
from vla_ros.conventions import closure_to_gripper, gripper_to_closure
from vla_ros.models.prismatic.action_heads import ParallelActionOutput
from vla_ros.models.prismatic.configuration_prismatic import PrismaticConfig
from vla_ros.models.prismatic.modeling_prismatic import IGNORE_INDEX
from vla_ros.models.prismatic.parallel_decoding import parallel_training_batch
from vla_ros.models.prismatic.processor_prismatic import PrismaticProcessor, check_image
from vla_ros.normalization import ActionNormalizer


@dataclass(frozen=True)
class AugmentConfig:
    """OpenVLA's image augmentation (``image_aug`` in its training config): a random resized crop keeping
    ``crop_scale`` of the area at aspect ratio 1, then brightness/contrast/saturation/hue jitter."""

    crop_scale: float = 0.9
    brightness: float = 0.2
    contrast: tuple[float, float] = (0.8, 1.2)
    saturation: tuple[float, float] = (0.8, 1.2)
    hue: float = 0.05


def sample_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (run seed, epoch, position): augmentation stays identical when a
    run is resumed, whatever happened to the global RNGs in between."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def augment_image(img: np.ndarray, cfg: AugmentConfig, seed: int) -> np.ndarray:
    """One seeded augmentation of an HxWx3 uint8 image (same size out).

    torchvision's RandomResizedCrop and ColorJitter, with their parameters drawn as those transforms draw them
    (a crop of ``crop_scale`` of the area at aspect ratio 1 at a uniform position; brightness, contrast and
    saturation factors and a hue shift, uniform in their ranges, applied in a random order) but from a numpy
    generator of ``seed``: reseeding torch's global RNG per image cost as much as the crop and jitter together,
    and these run on the CPU for every training sample.
    """
    from torchvision.transforms.v2 import functional as F  # lazy: only training with augmentation needs it

    rng = np.random.default_rng(seed)
    h, w = img.shape[:2]
    side = math.sqrt(cfg.crop_scale * h * w)
    ch, cw = min(h, round(side)), min(w, round(side))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
    t = F.resized_crop(t, top, left, ch, cw, [h, w], antialias=True)
    jitter = (
        lambda x: F.adjust_brightness(x, rng.uniform(max(0.0, 1.0 - cfg.brightness), 1.0 + cfg.brightness)),
        lambda x: F.adjust_contrast(x, rng.uniform(*cfg.contrast)),
        lambda x: F.adjust_saturation(x, rng.uniform(*cfg.saturation)),
        lambda x: F.adjust_hue(x, rng.uniform(-cfg.hue, cfg.hue)),
    )
    for k in rng.permutation(len(jitter)):
        t = jitter[k](t)
    return t.permute(1, 2, 0).contiguous().numpy()


class ActionBatchCollator:
    """Collate function for training and validation (see the module doc for the layout)."""

    def __init__(self, processor: PrismaticProcessor, config: PrismaticConfig, normalizer: ActionNormalizer,
                 augment: AugmentConfig | None = None, data_gripper_convention: str = "libero_sign"):
        self.processor = processor
        # Data and model may encode the gripper differently (our LIBERO data: libero_sign; an OpenVLA base:
        # openvla_open01). The targets follow the model's recorded convention, so the node's conversion holds.
        gripper_to_closure(0.0, data_gripper_convention)  # validates the name
        self.gripper_map = ((data_gripper_convention, config.gripper_convention)
                            if data_gripper_convention != config.gripper_convention else None)
        self.config = config
        self.normalizer = normalizer
        self.action_tokenizer = ActionTokenizer(config.action_vocab_size, config.n_action_bins)
        self.augment = augment
        if normalizer.dim != config.action_dim:
            raise ValueError(f"statistics have {normalizer.dim} action dims, the model {config.action_dim}")

    def normalized_action(self, action: np.ndarray) -> np.ndarray:
        """(chunk, action_dim) normalised action in the model's gripper convention (not clipped)."""
        c = self.config
        a = np.asarray(action, dtype=np.float64).reshape(-1, c.action_dim)
        if a.shape[0] != c.action_chunk:
            raise ValueError(f"sample has {a.shape[0]} action(s), the model predicts chunks of {c.action_chunk}")
        if not np.all(np.isfinite(a)):
            raise ValueError("sample action has NaN/inf values")
        if self.gripper_map is not None:
            a = a.copy()
            a[:, -1] = closure_to_gripper(gripper_to_closure(a[:, -1], self.gripper_map[0]), self.gripper_map[1])
        return self.normalizer.normalize(a)

    def action_token_ids(self, action: np.ndarray, done: bool = False) -> list[int]:
        """Normalise, tokenise and (if the model predicts it) append the continue/done token."""
        c = self.config
        ids = self.action_tokenizer.encode(self.normalized_action(action)).reshape(-1).tolist()
        if c.predict_done:
            ids.append(int(c.done_token_ids[1] if done else c.done_token_ids[0]))
        return ids

    def __call__(self, samples: Sequence[Mapping], seeds: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        if not samples:
            raise ValueError("empty batch")
        c = self.config
        images, instructions, targets = [], [], []
        extra: dict[str, list[np.ndarray]] = {name: [] for name in c.extra_images}
        proprios = [] if c.proprio_stats else None
        for i, s in enumerate(samples):
            seed = seeds[i] if seeds is not None else i
            img = check_image(s["image"])
            if self.augment is not None:
                img = augment_image(img, self.augment, seed)
            images.append(img)
            for name in c.extra_images:
                key = f"{name}_image"
                if key not in s:
                    raise ValueError(f"the model needs {key!r}; the sample has {sorted(s)}")
                view = check_image(s[key])
                if self.augment is not None:
                    view = augment_image(view, self.augment, sample_seed(seed, 7919))  # its own crop/jitter
                extra[name].append(view)
            if proprios is not None:
                if "proprio" not in s:
                    raise ValueError(f"the model needs 'proprio'; the sample has {sorted(s)}")
                proprios.append(np.asarray(s["proprio"], dtype=np.float64))
            instructions.append(s["instruction"])
            targets.append(self.action_token_ids(s["action"], bool(s.get("done", False))))
        if c.parallel_decoding:  # the layout of the parallel forward (core), the one acting uses
            targets_l1 = None
            if c.action_head == "l1":  # the range the tokens' bins span (ActionTokenizer clips the same way)
                targets_l1 = np.stack([np.clip(self.normalized_action(s["action"]), -1.0, 1.0) for s in samples])
            return dict(parallel_training_batch(self.processor, images, instructions, np.asarray(targets),
                                                targets_l1, extra_images=extra or None, proprios=proprios))
        # the layout itself (prompt + targets + EOS, right padded, -100 on the prompt) is the core processor's,
        # the one that decoding is tested against
        return dict(self.processor.training_batch(images, instructions, np.asarray(targets, dtype=np.int64),
                                                  extra_images=extra or None, proprios=proprios))


@torch.no_grad()
def action_metrics(logits: torch.Tensor, labels: torch.Tensor, action_tokenizer: ActionTokenizer
                   ) -> dict[str, torch.Tensor]:
    """Action-token accuracy and L1 error of the decoded (normalised) actions, as OpenVLA logs them.

    ``logits`` cover the full multimodal sequence (image patches inserted after BOS); ``labels`` align with
    ``input_ids``. Returns summed counts (``correct``, ``l1_sum``, ``n``) so callers can reduce across steps and
    processes before dividing.
    """
    n_patches = logits.shape[1] - labels.shape[1]
    full = torch.cat([labels[:, :1], torch.full((labels.shape[0], n_patches), IGNORE_INDEX, dtype=labels.dtype,
                                                device=labels.device), labels[:, 1:]], dim=1)
    pred = logits[:, :-1].argmax(-1)
    gt = full[:, 1:]
    first = action_tokenizer.first_token_id
    is_act = (gt >= first) & (gt < action_tokenizer.vocab_size)  # the done token is not an action
    correct = ((pred == gt) & is_act).sum()
    centers = torch.as_tensor(action_tokenizer.bin_centers, dtype=torch.float32, device=logits.device)
    n_c = centers.shape[0]

    def decode(ids: torch.Tensor) -> torch.Tensor:
        return centers[(action_tokenizer.vocab_size - ids - 1).clamp(0, n_c - 1)]

    l1 = (decode(pred[is_act]) - decode(gt[is_act])).abs().sum()
    return {"correct": correct.float(), "l1_sum": l1.float(), "n": is_act.sum().float()}


@torch.no_grad()
def slot_metrics(out: ParallelActionOutput, batch: Mapping[str, torch.Tensor], action_tokenizer: ActionTokenizer,
                 n_action_slots: int) -> dict[str, torch.Tensor]:
    """:func:`action_metrics` for parallel-decoding outputs: a slot is correct when its predicted action falls in
    the target's bin (the ``tokens`` head: its argmax token; ``l1``: its regressed value, binned as the tokens
    are); ``l1_sum``: |predicted - target| of the normalised actions (bin centres for ``tokens``)."""
    gt = batch["labels"][:, :n_action_slots].to(out.slot_hidden_states.device)
    centers = torch.as_tensor(action_tokenizer.bin_centers, dtype=torch.float32, device=gt.device)

    def decode(ids: torch.Tensor) -> torch.Tensor:
        return centers[(action_tokenizer.vocab_size - ids - 1).clamp(0, centers.shape[0] - 1)]

    if out.actions is None:
        pred = out.logits[:, :n_action_slots].argmax(-1)
        l1 = (decode(pred) - decode(gt)).abs().sum()
    else:
        a = out.actions.float().clamp(action_tokenizer.min_action, action_tokenizer.max_action).flatten(1)
        bins = torch.as_tensor(action_tokenizer.bins, dtype=torch.float32, device=gt.device)
        pred = action_tokenizer.vocab_size - torch.bucketize(a, bins, right=True)  # np.digitize, as encode() does
        l1 = (out.actions.float().flatten(1) - batch["action_targets"].to(gt.device).flatten(1)).abs().sum()
    return {"correct": (pred == gt).sum().float(), "l1_sum": l1.float(), "n": torch.tensor(float(gt.numel()),
                                                                                          device=gt.device)}


def step_metrics(out, batch: Mapping[str, torch.Tensor], action_tokenizer: ActionTokenizer, config: PrismaticConfig
                 ) -> dict[str, torch.Tensor]:
    """The logged action metrics of one forward, for either output layout."""
    if isinstance(out, ParallelActionOutput):
        return slot_metrics(out, batch, action_tokenizer, config.action_dim * config.action_chunk)
    return action_metrics(out.logits.detach(), batch["labels"], action_tokenizer)
