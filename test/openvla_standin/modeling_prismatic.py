"""Stand-in for the ``modeling_prismatic.py`` that OpenVLA's checkpoints carry, written here for the tests (it is not
OpenVLA's code). It keeps the class names, parameter names and the transformers-4.40-era patterns that matter when
transformers 5 loads such code:

- ``_supports_sdpa`` is a *property* reading ``self.language_model`` (transformers 5 evaluates it inside
  ``PreTrainedModel.__init__``, before the submodule exists);
- ``tie_weights(self)`` takes no keyword arguments (transformers 5 passes ``recompute_mapping=``/``missing_keys=``);
- the classes do not inherit ``GenerationMixin`` (transformers 4.40's ``PreTrainedModel`` did);
- ``prepare_inputs_for_generation`` treats any ``past_key_values`` as "prefill done" (transformers 4.40 passed None on
  the first step; transformers 5 passes an empty cache);
- ``predict_action`` appends the Llama-2 "▁" token (29871) without extending ``attention_mask``.

``ACCEPTED_TIMM_VERSIONS``: None accepts any timm; a test sets OpenVLA's own list (0.9.x) to check the refusal.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import timm
import torch
from timm.layers import LayerScale
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ModelOutput

from .configuration_prismatic import OpenVLAConfig, PrismaticConfig

ACCEPTED_TIMM_VERSIONS: set[str] | None = None
SPACE_TOKEN_ID = 29871
IGNORE_INDEX = -100


def _first_of_tuple(fn):
    def call(*args, **kwargs):
        out = fn(*args, **kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out
    return call


def _layerscale_forward(self, x: torch.Tensor) -> torch.Tensor:
    return x * self.scale_factor


def _rename_layerscale(module: LayerScale) -> None:
    """timm names the LayerScale parameter ``gamma``; OpenVLA's checkpoints call it ``scale_factor``."""
    module.scale_factor = nn.Parameter(module.gamma.detach().clone())
    del module.gamma
    module.forward = _layerscale_forward.__get__(module, LayerScale)


def _make_featurizer(timm_id: str, size: int, act_layer: str | None) -> nn.Module:
    vit = timm.create_model(timm_id, pretrained=False, num_classes=0, img_size=size, act_layer=act_layer)
    # patch tokens of the second-to-last block
    vit.forward = _first_of_tuple(partial(vit.get_intermediate_layers, n={len(vit.blocks) - 2}))
    for m in vit.modules():
        if isinstance(m, LayerScale):
            _rename_layerscale(m)
    return vit


class PrismaticVisionBackbone(nn.Module):
    def __init__(self, use_fused_vision_backbone: bool, image_sizes: list[int], timm_model_ids: list[str],
                 timm_override_act_layers: list[str | None]) -> None:
        super().__init__()
        self.use_fused_vision_backbone = use_fused_vision_backbone
        self.featurizer = _make_featurizer(timm_model_ids[0], image_sizes[0], timm_override_act_layers[0])
        self.embed_dim = self.featurizer.embed_dim
        if use_fused_vision_backbone:
            self.fused_featurizer = _make_featurizer(timm_model_ids[1], image_sizes[1], timm_override_act_layers[1])
            self.embed_dim += self.fused_featurizer.embed_dim

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if not self.use_fused_vision_backbone:
            return self.featurizer(pixel_values)
        a, b = torch.split(pixel_values, [3, 3], dim=1)
        return torch.cat([self.featurizer(a), self.fused_featurizer(b)], dim=2)


class PrismaticProjector(nn.Module):
    def __init__(self, use_fused_vision_backbone: bool, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.use_fused_vision_backbone = use_fused_vision_backbone
        if use_fused_vision_backbone:
            self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
            self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
            self.fc3 = nn.Linear(llm_dim, llm_dim)
        else:
            self.fc1 = nn.Linear(vision_dim, llm_dim)
            self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act_fn1, self.act_fn2 = nn.GELU(), nn.GELU()

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = self.fc2(self.act_fn1(self.fc1(patches)))
        return self.fc3(self.act_fn2(x)) if self.use_fused_vision_backbone else x


@dataclass
class PrismaticCausalLMOutputWithPast(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: object | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    projector_features: torch.FloatTensor | None = None


class PrismaticPreTrainedModel(PreTrainedModel):
    config_class: PretrainedConfig = PrismaticConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PrismaticProjector"]  # noqa: RUF012 - transformers API
    _skip_keys_device_placement = "past_key_values"
    _supports_flash_attn_2 = True

    def _init_weights(self, module: nn.Module) -> None:
        std = getattr(self.config, "initializer_range", None) or self.config.text_config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.weight.data.normal_(0.0, std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(0.0, std)

    @property
    def _supports_sdpa(self) -> bool:
        """SDPA if the decoder supports it (the 4.40-era pattern: reads the submodule)."""
        return self.language_model._supports_sdpa


class PrismaticForConditionalGeneration(PrismaticPreTrainedModel):
    def __init__(self, config: PrismaticConfig) -> None:
        super().__init__(config)
        if ACCEPTED_TIMM_VERSIONS is not None and timm.__version__ not in ACCEPTED_TIMM_VERSIONS:
            raise NotImplementedError(f"timm {timm.__version__} is not supported; use one of "
                                      f"{sorted(ACCEPTED_TIMM_VERSIONS)}")
        self.vision_backbone = PrismaticVisionBackbone(config.use_fused_vision_backbone, config.image_sizes,
                                                       config.timm_model_ids, config.timm_override_act_layers)
        self.projector = PrismaticProjector(config.use_fused_vision_backbone, self.vision_backbone.embed_dim,
                                            config.text_config.hidden_size)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config,
                                                               attn_implementation=config._attn_implementation)
        self.vocab_size = config.text_config.vocab_size
        self.pad_token_id = config.pad_token_id
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def tie_weights(self) -> None:  # the 4.40-era signature
        self.language_model.tie_weights()

    def forward(self, input_ids=None, attention_mask=None, pixel_values=None, labels=None, inputs_embeds=None,
                past_key_values=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                output_projector_features=None, return_dict=None):
        use_cache = use_cache and not self.training
        projected = None
        lm_kwargs = dict(use_cache=use_cache, output_attentions=output_attentions,
                         output_hidden_states=output_hidden_states, return_dict=True)
        if input_ids.shape[1] == 1:  # cached generation step
            assert past_key_values is not None, "cached generation needs past_key_values"
            out = self.language_model(input_ids=input_ids, attention_mask=None, position_ids=None,
                                      past_key_values=past_key_values, **lm_kwargs)
        elif pixel_values is None:
            out = self.language_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **lm_kwargs)
        else:  # multimodal prefill: the patches go right after BOS
            assert past_key_values is None, "a multimodal forward takes no past_key_values"
            projected = self.projector(self.vision_backbone(pixel_values))
            emb = self.get_input_embeddings()(input_ids)
            embeds = torch.cat([emb[:, :1], projected, emb[:, 1:]], dim=1)
            mask = None
            if attention_mask is not None:
                ones = torch.ones(projected.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
                mask = torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)
            full_labels = None
            if labels is not None:
                ign = torch.full(projected.shape[:2], IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
                full_labels = torch.cat([labels[:, :1], ign, labels[:, 1:]], dim=1)
            out = self.language_model(inputs_embeds=embeds, attention_mask=mask, past_key_values=None,
                                      labels=full_labels, **lm_kwargs)
        return PrismaticCausalLMOutputWithPast(loss=out.loss, logits=out.logits, past_key_values=out.past_key_values,
                                               hidden_states=out.hidden_states, attentions=out.attentions,
                                               projector_features=projected)

    def prepare_inputs_for_generation(self, input_ids=None, past_key_values=None, inputs_embeds=None,
                                      pixel_values=None, attention_mask=None, **kwargs):
        if input_ids is not None and input_ids.shape[0] > 1:
            raise ValueError("batch size 1 only")
        if past_key_values is not None:  # the prompt was consumed: feed the last token only
            input_ids = input_ids[:, -1:]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values,
                "past_key_values": past_key_values, "use_cache": kwargs.get("use_cache")}


class OpenVLAForActionPrediction(PrismaticForConditionalGeneration):
    config_class: PretrainedConfig = OpenVLAConfig

    def __init__(self, config: OpenVLAConfig) -> None:
        super().__init__(config)
        self.norm_stats = config.norm_stats
        self.bins = np.linspace(-1, 1, config.n_action_bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0
        self.vocab_size = self.config.text_config.vocab_size - self.config.pad_to_multiple_of

    def predict_action(self, input_ids: torch.Tensor | None = None, unnorm_key: str | None = None,
                       **kwargs) -> np.ndarray:
        if not torch.all(input_ids[:, -1] == SPACE_TOKEN_ID):
            space = torch.tensor([[SPACE_TOKEN_ID]], dtype=torch.long, device=input_ids.device)
            input_ids = torch.cat([input_ids, space], dim=1)  # attention_mask (in kwargs) stays one shorter
        n = self.get_action_dim(unnorm_key)
        ids = self.generate(input_ids, max_new_tokens=n, **kwargs)[0, -n:].cpu().numpy()
        bins = np.clip(self.vocab_size - ids - 1, 0, self.bin_centers.shape[0] - 1)
        normalized = self.bin_centers[bins]
        stats = self.get_action_stats(unnorm_key)
        mask = np.asarray(stats.get("mask", np.ones_like(stats["q01"], dtype=bool)))
        hi, lo = np.asarray(stats["q99"]), np.asarray(stats["q01"])
        return np.where(mask, 0.5 * (normalized + 1) * (hi - lo) + lo, normalized)

    def _unnorm_key(self, unnorm_key: str | None) -> str:
        if unnorm_key is None:
            assert len(self.norm_stats) == 1, f"pass unnorm_key, one of {list(self.norm_stats)}"
            unnorm_key = next(iter(self.norm_stats))
        assert unnorm_key in self.norm_stats, f"unnorm_key must be one of {list(self.norm_stats)}"
        return unnorm_key

    def get_action_dim(self, unnorm_key: str | None = None) -> int:
        return len(self.norm_stats[self._unnorm_key(unnorm_key)]["action"]["q01"])

    def get_action_stats(self, unnorm_key: str | None = None) -> dict:
        return self.norm_stats[self._unnorm_key(unnorm_key)]["action"]
