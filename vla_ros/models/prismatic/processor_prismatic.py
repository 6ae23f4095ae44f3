"""Prompting and image preprocessing of the Prismatic VLA, as OpenVLA does them.

Images: resize to the backbone resolution (bicubic, as timm's data config for DINOv2/SigLIP), optional centre
crop of 90% area resized back (for models trained with random-crop augmentation, OpenVLA's ``center_crop``),
per-backbone mean/std normalisation; a fused backbone gets a 6-channel stack of its two preprocessings.
Prompt: ``In: What action should the robot take to {instruction.lower()}?\\nOut:`` (``vla_ros.prompt.build_prompt``);
for Llama-2 tokenizers OpenVLA appends the ``"▁"`` token (id 29871) when the prompt does not end with it.

A checkpoint's ``preprocessor_config.json`` in the layout of OpenVLA's ``PrismaticImageProcessor`` overrides the
per-backbone mean/std and interpolation (:func:`preprocessing_from_file`): OpenVLA's processor applies the stored
``tvf_normalize_params``, and OpenVLA's conversion stored them rounded to bf16 (DINOv2's mean 0.485 as 0.484375, ...),
so the released pixel values differ from the exact constants by up to 0.008.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature, PreTrainedTokenizerBase

from vla_ros.models.prismatic.configuration_prismatic import PrismaticConfig
from vla_ros.prompt import build_prompt
from vla_ros.proprio import normalize_proprio

log = logging.getLogger(__name__)
_INTERP = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
_INTERP_BY_PIL_CODE = {int(code): name for name, code in _INTERP.items()}  # torchvision stores PIL's codes
CENTER_CROP_AREA = 0.9
PREPROCESSOR_FILE = "preprocessor_config.json"


def check_image(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8 or min(a.shape[:2]) < 1:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {a.shape} dtype {a.dtype}")
    return a


def resize_and_crop(img: np.ndarray, size: int, interpolation: str = "bicubic",
                    center_crop: bool = False) -> Image.Image:
    """Resize to ``size``x``size``; with ``center_crop`` take the central 90%-area crop and resize it back."""
    pil = Image.fromarray(check_image(img)).resize((size, size), _INTERP[interpolation])
    if center_crop:
        side = size * math.sqrt(CENTER_CROP_AREA)
        off = (size - side) / 2.0
        pil = pil.resize((size, size), Image.BILINEAR, box=(off, off, off + side, off + side))
    return pil


def _interpolation_name(value, where: Path) -> str:
    name = _INTERP_BY_PIL_CODE.get(value) if isinstance(value, int) else str(value).lower()
    if name not in _INTERP:
        raise ValueError(f"{where}: interpolation {value!r} is not implemented by the native processor "
                         f"({list(_INTERP)})")
    return name


def _stored_sides(size, resize: dict | None, crop: dict | None, where: Path) -> set[tuple[int, int]]:
    """(H, W) sizes the stored transform produces; a plain int resize (shorter side, then crop) is not naive."""
    sides = set()
    if size:
        sides.add(tuple(int(v) for v in size[-2:]))
    if resize:
        if not isinstance(resize.get("size"), (list, tuple)):
            raise ValueError(f"{where}: resize to the shorter side ({resize.get('size')!r}) is not implemented by the "
                             "native processor (resize-naive only)")
        sides.add(tuple(int(v) for v in resize["size"]))
    if crop and crop.get("output_size") is not None:
        out = crop["output_size"]
        sides.add(tuple(int(v) for v in out) if isinstance(out, (list, tuple)) else (int(out), int(out)))
    return sides


def preprocessing_from_file(path: str | Path, backbones: list[dict]) -> list[dict]:
    """``backbones`` (``PrismaticConfig.vision_backbones``) with the normalisation and resize parameters of the
    checkpoint directory's ``preprocessor_config.json`` in OpenVLA's layout; unchanged where there is no such file.

    The stored torchvision parameters (``tvf_normalize_params``, ``tvf_resize_params``) are what OpenVLA's processor
    applies, so they take precedence over ``means``/``stds``/``interpolations``. Strategies other than
    ``resize-naive`` (letterbox, resize-crop) and image sizes other than the model's are refused clearly."""
    where = Path(path) / PREPROCESSOR_FILE
    if not where.is_file():
        return backbones
    raw = json.loads(where.read_text())
    if "tvf_normalize_params" not in raw and "means" not in raw:
        log.info("%s is not in the layout of OpenVLA's image processor; the config's preprocessing stands", where)
        return backbones
    strategy = raw.get("image_resize_strategy", "resize-naive")
    if strategy != "resize-naive" or raw.get("tvf_do_letterbox"):
        raise ValueError(f"{where}: image_resize_strategy {strategy!r} (letterbox: {bool(raw.get('tvf_do_letterbox'))})"
                         " is not implemented by the native processor (resize-naive only)")
    n = len(backbones)
    norms = raw.get("tvf_normalize_params") or [{"mean": m, "std": s}
                                                for m, s in zip(raw["means"], raw.get("stds") or [], strict=True)]
    per_backbone = [norms] + [raw.get(k) or [None] * n
                              for k in ("input_sizes", "tvf_resize_params", "tvf_crop_params", "interpolations")]
    if any(len(v) != n for v in per_backbone):
        raise ValueError(f"{where}: describes {[len(v) for v in per_backbone]} image transforms, the model has {n} "
                         "vision backbone(s)")
    out = []
    for spec, norm, size, resize, crop, interp in zip(backbones, *per_backbone, strict=True):
        side = int(spec["image_size"])
        sides = _stored_sides(size, resize, crop, where)
        if sides - {(side, side)}:
            raise ValueError(f"{where}: image size(s) {sorted(sides)} differ from the model's {side}x{side}")
        if resize and resize.get("interpolation") is not None:
            interp = resize["interpolation"]
        new = copy.deepcopy(spec)
        new.update(mean=[float(v) for v in norm["mean"]], std=[float(v) for v in norm["std"]],
                   interpolation=_interpolation_name(interp or spec.get("interpolation", "bicubic"), where))
        if len(new["mean"]) != 3 or len(new["std"]) != 3 or min(new["std"]) <= 0:
            raise ValueError(f"{where}: mean/std must be 3 values each (std > 0), got {norm}")
        out.append(new)
    return out


class PrismaticProcessor:
    """Turns (image, instruction) pairs into ``input_ids``, ``attention_mask`` and ``pixel_values``."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: PrismaticConfig, center_crop: bool | None = None):
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"  # generation: prompts right-aligned
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.unk_token or self.tokenizer.eos_token
        self.backbones = config.vision_backbones
        self.prompt_template = config.prompt_template
        self.center_crop = config.center_crop if center_crop is None else bool(center_crop)
        self.suffix_id = config.prompt_suffix_token_id
        self.extra_images = list(config.extra_images)
        self.proprio_stats = config.proprio_stats
        self._norm_consts: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        # OpenVLA's "▁" suffix only makes sense for the Llama-2 tokenizer it was written for
        if self.suffix_id is not None and (self.suffix_id >= len(tokenizer)
                                           or tokenizer.convert_ids_to_tokens(self.suffix_id) != "▁"):
            self.suffix_id = None

    def prompt(self, instruction: str) -> str:
        return build_prompt(instruction, self.prompt_template)

    @property
    def shared_resize(self) -> bool:
        """All backbones take the same resized image (openvla-7b: both towers at 224 bicubic)."""
        return len({(b["image_size"], b.get("interpolation", "bicubic")) for b in self.backbones}) == 1

    def resized_uint8(self, images: list[np.ndarray]) -> torch.Tensor:
        """(B, S, S, 3) uint8: resized (and centre-cropped) images, before normalisation (needs shared_resize)."""
        spec = self.backbones[0]
        return torch.from_numpy(np.stack([
            np.asarray(resize_and_crop(img, spec["image_size"], spec.get("interpolation", "bicubic"),
                                       self.center_crop)) for img in images]))

    def normalize(self, resized: torch.Tensor) -> torch.Tensor:
        """(B, S, S, 3) uint8 -> (B, 3 * n_backbones, S, S) float32, on the tensor's device (the fast path does
        this on the GPU inside its graph; same operations as on the CPU)."""
        return torch.cat([self.normalize_one(resized, spec) for spec in self.backbones], dim=1)

    def pixel_values(self, images: list[np.ndarray]) -> torch.Tensor:
        """(B, 3 * n_backbones, S, S) float32."""
        images = [check_image(i) for i in images]
        if self.shared_resize:
            return self.normalize(self.resized_uint8(images))
        out = []
        for img in images:
            chans = []
            for spec in self.backbones:
                pil = resize_and_crop(img, spec["image_size"], spec.get("interpolation", "bicubic"), self.center_crop)
                x = torch.from_numpy(np.asarray(pil)).unsqueeze(0)
                chans.append(self.normalize_one(x, spec))
            out.append(torch.cat(chans, dim=1)[0])
        return torch.stack(out)

    def model_pixel_values(self, images: list[np.ndarray], extra_images: dict[str, list[np.ndarray]] | None = None,
                           ) -> torch.Tensor:
        """(B, V * 3k, S, S): the main camera's pixel values, then each of the model's ``extra_images`` cameras."""
        views = [self.pixel_values(images)]
        for name in self.extra_images:
            imgs = (extra_images or {}).get(name)
            if imgs is None or len(imgs) != len(images):
                raise ValueError(f"this model needs a {name!r} image for every sample (config.extra_images)")
            views.append(self.pixel_values(list(imgs)))
        return torch.cat(views, dim=1) if len(views) > 1 else views[0]

    def proprio_values(self, proprios: list[np.ndarray] | None, batch: int) -> torch.Tensor | None:
        """(B, D) float32 standardised proprio, or None for models without proprio input."""
        if not self.proprio_stats:
            return None
        if proprios is None or len(proprios) != batch:
            raise ValueError("this model needs a proprio vector for every sample (config.proprio_stats; "
                             "layout in vla_ros.proprio)")
        return torch.from_numpy(normalize_proprio(np.stack(proprios), self.proprio_stats).astype(np.float32))

    def normalize_one(self, resized: torch.Tensor, spec: dict) -> torch.Tensor:
        x = resized.permute(0, 3, 1, 2).float() / 255.0
        key = (str(x.device), tuple(spec["mean"]), tuple(spec["std"]))
        if key not in self._norm_consts:  # made once per device: no host->device copy inside a CUDA graph
            self._norm_consts[key] = tuple(torch.tensor(spec[k], dtype=torch.float32, device=x.device)[:, None, None]
                                           for k in ("mean", "std"))
        mean, std = self._norm_consts[key]
        return (x - mean) / std

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = [self.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
        if self.suffix_id is not None:
            enc = [ids if ids[-1] == self.suffix_id else [*ids, self.suffix_id] for ids in enc]
        n = max(len(e) for e in enc)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (n - len(e)) + e for e in enc], dtype=torch.long)
        mask = torch.tensor([[0] * (n - len(e)) + [1] * len(e) for e in enc], dtype=torch.long)
        return ids, mask

    def training_batch(self, images: list[np.ndarray], instructions: list[str], action_token_ids: np.ndarray,
                       extra_images: dict[str, list[np.ndarray]] | None = None,
                       proprios: list[np.ndarray] | None = None) -> BatchFeature:
        """Teacher-forcing batch in the layout decoding expects (OpenVLA's): ``prompt + target ids + EOS``, right
        padded, ``labels`` = -100 on the prompt and the padding. ``action_token_ids`` (B, n) are the ids the model
        must produce after the prompt: the action tokens (``ActionTokenizer.encode`` of the normalised actions,
        a chunk flattened) and, for ``predict_done`` models, the continue/done id last."""
        targets = np.asarray(action_token_ids, dtype=np.int64)
        if targets.ndim != 2 or targets.shape[0] != len(instructions):
            raise ValueError(f"action_token_ids must be (batch, n_tokens), got {targets.shape}")
        prompt_ids, prompt_mask = self.tokenize([self.prompt(t) for t in instructions])
        eos = self.tokenizer.eos_token_id
        rows, labels = [], []
        for b in range(len(instructions)):
            p = prompt_ids[b][prompt_mask[b].bool()].tolist()  # strip the left padding
            t = [*targets[b].tolist(), eos]
            rows.append(p + t)
            labels.append([-100] * len(p) + t)
        n = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([r + [pad] * (n - len(r)) for r in rows], dtype=torch.long)
        lab = torch.tensor([r + [-100] * (n - len(r)) for r in labels], dtype=torch.long)
        mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows], dtype=torch.long)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": lab,
                 "pixel_values": self.model_pixel_values(images, extra_images)}
        proprio = self.proprio_values(proprios, len(images))
        if proprio is not None:
            batch["proprio"] = proprio
        return BatchFeature(batch)

    def __call__(self, text: str | list[str] | None = None, images=None, instructions: list[str] | None = None,
                 return_tensors: str = "pt", **_) -> BatchFeature:
        """OpenVLA's processor call: ``processor(prompt, image)``; ``instructions=`` builds the prompts here."""
        if instructions is not None:
            prompts = [self.prompt(i) for i in instructions]
        else:
            prompts = [text] if isinstance(text, str) else list(text or [])
        imgs = images if isinstance(images, (list, tuple)) else [images]
        imgs = [np.asarray(i.convert("RGB")) if isinstance(i, Image.Image) else i for i in imgs]
        if len(imgs) != len(prompts):
            raise ValueError(f"{len(imgs)} images for {len(prompts)} prompts")
        ids, mask = self.tokenize(prompts)
        return BatchFeature({"input_ids": ids, "attention_mask": mask, "pixel_values": self.pixel_values(imgs)})
