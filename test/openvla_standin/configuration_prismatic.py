"""Stand-in for the ``configuration_prismatic.py`` that OpenVLA's checkpoints carry, written here for the tests (it is
not OpenVLA's code): the same class names, model types and ``config.json`` fields, in the transformers-4.40 style.

Difference on purpose: OpenVLA derives ``timm_model_ids`` / ``image_sizes`` from registries of its backbone names; the
tiny test checkpoints name tiny timm models, so this stand-in reads them from ``config.json`` (where OpenVLA's
``save_pretrained`` writes them too)."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig
from transformers.models.auto import CONFIG_MAPPING


class PrismaticConfig(PretrainedConfig):
    model_type = "prismatic"
    is_composition = False

    def __init__(self, vision_backbone_id: str = "tiny-vit", llm_backbone_id: str = "llama2-7b-pure",
                 arch_specifier: str = "no-align+gelu-mlp", use_fused_vision_backbone: bool | None = None,
                 image_resize_strategy: str = "resize-naive", text_config: dict[str, Any] | None = None,
                 llm_max_length: int = 2048, pad_token_id: int = 32000, pad_to_multiple_of: int = 64,
                 output_projector_states: bool = False, timm_model_ids: list[str] | None = None,
                 timm_override_act_layers: list[str | None] | None = None, image_sizes: list[int] | None = None,
                 **kwargs: Any) -> None:
        self.vision_backbone_id, self.llm_backbone_id = vision_backbone_id, llm_backbone_id
        self.arch_specifier = arch_specifier
        self.output_projector_states = output_projector_states
        self.timm_model_ids = list(timm_model_ids or ["vit_tiny_patch16_224"])
        self.use_fused_vision_backbone = (len(self.timm_model_ids) == 2 if use_fused_vision_backbone is None
                                          else use_fused_vision_backbone)
        self.timm_override_act_layers = list(timm_override_act_layers or [None] * len(self.timm_model_ids))
        self.image_sizes = list(image_sizes or [224] * len(self.timm_model_ids))
        self.image_resize_strategy = image_resize_strategy
        self.llm_max_length = llm_max_length
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of
        # transformers looks for the decoder's config under this exact name
        self.text_config = CONFIG_MAPPING["llama"](**(text_config or {}))
        super().__init__(pad_token_id=pad_token_id, **kwargs)


class OpenVLAConfig(PrismaticConfig):
    model_type = "openvla"

    def __init__(self, norm_stats: dict | None = None, n_action_bins: int = 256, **kwargs: Any) -> None:
        self.norm_stats, self.n_action_bins = norm_stats, n_action_bins
        super().__init__(**kwargs)
