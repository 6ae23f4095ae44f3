"""``hf`` backend: a checkpoint that ships its own modelling code (e.g. OpenVLA's HF release), through
transformers' remote-code loading (``trust_remote_code``) and the model's own ``predict_action``.

OpenVLA's README usage: ``AutoProcessor.from_pretrained(path, trust_remote_code=True)``,
``AutoModelForVision2Seq.from_pretrained(...)``, ``processor(prompt, image)`` then
``model.predict_action(**inputs, unnorm_key=..., do_sample=False)``. transformers 5 dropped the
``AutoModelForVision2Seq`` name, so the model class is taken from the checkpoint's ``auto_map`` entry
(``AutoModelForVision2Seq``, ``AutoModelForImageTextToText`` or ``AutoModelForCausalLM``) directly.
Checkpoints written for older transformers may need their own code updated to load under transformers 5.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vla_ros.conventions import ActionSpace
from vla_ros.models.prismatic.checkpoint import apply_adapter, load_pretrained
from vla_ros.models.prismatic.configuration_prismatic import PROMPT_TEMPLATE
from vla_ros.models.prismatic.processor_prismatic import check_image, resize_and_crop
from vla_ros.policy import Policy, PolicyMetadata, PolicyOutput

AUTO_MODEL_KEYS = ("AutoModelForVision2Seq", "AutoModelForImageTextToText", "AutoModelForCausalLM")


class HFRemoteCodePolicy(Policy):
    def __init__(self, model, processor, unnorm_key: str | None, metadata: PolicyMetadata, device: torch.device,
                 dtype: torch.dtype, prompt_template: str = PROMPT_TEMPLATE, center_crop: bool = False):
        self.model, self.processor = model, processor
        self.unnorm_key = unnorm_key
        self.metadata = metadata
        self.device, self.dtype = device, dtype
        self.prompt_template = prompt_template
        self.center_crop = center_crop

    def act_batch(self, images: list[np.ndarray], instructions: list[str], *, extra_images=None,
                  proprios=None) -> list[PolicyOutput]:
        if len(images) != len(instructions) or not images:
            raise ValueError(f"need as many images as instructions (>0), got {len(images)} and {len(instructions)}")
        outs = []
        for img, text in zip(images, instructions, strict=True):  # OpenVLA's predict_action is batch 1
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"instruction must be a non-empty string, got {text!r}")
            img = check_image(img)
            if self.center_crop:  # OpenVLA's evaluation crops before the processor (which resizes)
                img = np.asarray(resize_and_crop(img, self.metadata.image_size, center_crop=True))
            prompt = self.prompt_template.format(instruction=text.strip().lower())
            inputs = self.processor(prompt, Image.fromarray(img))
            inputs = {k: (v.to(self.device, dtype=self.dtype) if k == "pixel_values" else v.to(self.device))
                      for k, v in inputs.items()}
            with torch.inference_mode():
                action = self.model.predict_action(**inputs, unnorm_key=self.unnorm_key, do_sample=False)
            a = np.asarray(action, dtype=np.float64)
            outs.append(PolicyOutput(a.reshape(-1, a.shape[-1])[0].copy()))
        return outs

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _metadata(cfg: dict, name: str, unnorm_key: str | None, center_crop: bool) -> PolicyMetadata:
    """The checkpoint's recorded conventions; OpenVLA's own configs record none, so OpenVLA's apply."""
    openvla = cfg.get("model_type") in ("openvla", "prismatic")
    sizes = cfg.get("image_sizes") or [b.get("image_size", 224) for b in cfg.get("vision_backbones", [])] or [224]
    return PolicyMetadata(
        model_id=name,
        action_space=ActionSpace.from_dict(cfg["action_space"]) if cfg.get("action_space") else PolicyMetadata(
            name).action_space,
        gripper_convention=cfg.get("gripper_convention", "openvla_open01" if openvla else "libero_sign"),
        image_flip=cfg.get("image_flip", "rot180"),
        image_size=int(sizes[0]),
        predicts_done=False,  # predict_action returns the action only
        extra={"unnorm_key": unnorm_key, "backend": "hf", "center_crop": center_crop},
    )


def load(path: str | None = None, device: str | None = "auto", dtype: str | torch.dtype | None = None,
         quantization: str | None = "none", adapter: str | None = None, merge_adapter: bool = False,
         unnorm_key: str | None = None, center_crop: bool | None = None, **_ignored) -> HFRemoteCodePolicy:
    from transformers import AutoProcessor
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from vla_ros.backends.native import parse_dtype
    from vla_ros.normalization import select_unnorm_key

    if not path or not (Path(path) / "config.json").is_file():
        raise ValueError(f"the hf backend needs a checkpoint directory with config.json, got {path!r}")
    cfg = json.loads((Path(path) / "config.json").read_text())
    auto_map = cfg.get("auto_map") or {}
    key = next((k for k in AUTO_MODEL_KEYS if k in auto_map), None)
    if key is None:
        raise ValueError(f"{path}: config.json has no auto_map entry for any of {AUTO_MODEL_KEYS}; "
                         "this checkpoint ships no modelling code (try backend 'native')")
    model_cls = get_class_from_dynamic_module(auto_map[key], path)
    model, dev, torch_dtype = load_pretrained(model_cls, path, device, parse_dtype(dtype), quantization,
                                              trust_remote_code=True)
    if adapter:
        model = apply_adapter(model, adapter, merge=merge_adapter)
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    stats = getattr(model, "norm_stats", None) or getattr(model.config, "norm_stats", None)
    if stats:
        unnorm_key = select_unnorm_key(stats, unnorm_key)  # fail now, listing the keys
    crop = bool(center_crop) if center_crop is not None else bool(cfg.get("center_crop", False))
    meta = _metadata(cfg, Path(path).name, unnorm_key, crop)
    return HFRemoteCodePolicy(model, processor, unnorm_key, meta, dev, torch_dtype,
                              prompt_template=cfg.get("prompt_template", PROMPT_TEMPLATE), center_crop=crop)
