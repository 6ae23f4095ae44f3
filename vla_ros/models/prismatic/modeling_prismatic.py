"""The native Prismatic VLA (OpenVLA's architecture), built from timm ViTs and transformers' Llama.

Architecture as described by OpenVLA (Kim et al., 2024) and Prismatic VLMs (Karamcheti et al., 2024):
- vision: one timm ViT, or a fused pair (DINOv2-style ViT with registers + SigLIP-style ViT) fed a 6-channel
  stack of the two preprocessings; patch features of the second-to-last block, concatenated along channels;
- projector: ``gelu-mlp`` (2 layers) or ``fused-gelu-mlp`` (3 layers, 4x hidden);
- decoder: ``LlamaForCausalLM``; the projected patches are inserted right after the BOS token;
- actions: greedy decoding of ``action_dim`` (x chunk, + optional done) tokens, de-tokenized OpenVLA's way; or,
  with ``config.parallel_decoding`` (OpenVLA-OFT), all slots in one pass, read as tokens or by an L1 head
  (``parallel_decoding.py``, ``action_heads.py``).

Parameter names equal OpenVLA's HF checkpoint layout (``vision_backbone.featurizer…``, ``projector.fc1…``,
``language_model.model…``; LayerScale as ``scale_factor``), so OpenVLA-format state dicts load unchanged.
"""

from __future__ import annotations

import numpy as np
import timm
import torch
from timm.layers import LayerScale as TimmLayerScale
from torch import nn
from transformers import DynamicCache, LlamaForCausalLM, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from vla_ros.action_tokenizer import ActionTokenizer
from vla_ros.models.prismatic.action_heads import ActionSlots, L1ActionHead, ParallelActionOutput
from vla_ros.models.prismatic.configuration_prismatic import PrismaticConfig
from vla_ros.models.prismatic.parallel_decoding import parallel_forward, predict_parallel, slot_token_ids
from vla_ros.normalization import ActionNormalizer

IGNORE_INDEX = -100


class LayerScale(nn.Module):
    """LayerScale with OpenVLA's parameter name (``scale_factor``; timm calls it ``gamma``)."""

    def __init__(self, dim: int, init_values: float = 1e-5):
        super().__init__()
        self.init_values = float(init_values)
        self.scale_factor = nn.Parameter(torch.full((dim,), self.init_values))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_factor


def build_featurizer(spec: dict, layerscale_init: float = 1e-5) -> nn.Module:
    """A timm VisionTransformer from a backbone spec (no pretrained download), LayerScale renamed."""
    kwargs = {"num_classes": 0, "img_size": int(spec["image_size"]), **spec.get("vit_kwargs", {})}
    vit = timm.create_model(spec["timm_model_id"], pretrained=False, **kwargs)
    for blk in getattr(vit, "blocks", []):
        for name in ("ls1", "ls2"):
            ls = getattr(blk, name, None)
            if isinstance(ls, TimmLayerScale):
                new = LayerScale(ls.gamma.shape[0], layerscale_init)
                new.to(device=ls.gamma.device, dtype=ls.gamma.dtype)
                setattr(blk, name, new)
    return vit


def vit_patch_features(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Patch tokens after the second-to-last block (prefix tokens dropped), as OpenVLA's featurizer
    (``get_intermediate_layers(n={len(blocks) - 2})``); the last block is never run."""
    x = vit.patch_embed(x)
    x = vit._pos_embed(x)
    x = vit.patch_drop(x)
    x = vit.norm_pre(x)
    for blk in vit.blocks[:-1]:
        x = blk(x)
    return x[:, vit.num_prefix_tokens:]


class PrismaticVisionBackbone(nn.Module):
    def __init__(self, config: PrismaticConfig):
        super().__init__()
        specs = config.vision_backbones
        self.featurizer = build_featurizer(specs[0], config.layerscale_init)
        self.fused_featurizer = build_featurizer(specs[1], config.layerscale_init) if len(specs) == 2 else None
        self.embed_dim = self.featurizer.embed_dim + (self.fused_featurizer.embed_dim if self.fused_featurizer else 0)
        self.num_patches = self.featurizer.patch_embed.num_patches

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.fused_featurizer is None:
            return vit_patch_features(self.featurizer, pixel_values)
        a, b = torch.split(pixel_values, [3, 3], dim=1)
        return torch.cat([vit_patch_features(self.featurizer, a), vit_patch_features(self.fused_featurizer, b)], dim=2)


class PrismaticProjector(nn.Module):
    def __init__(self, arch: str, vision_dim: int, llm_dim: int):
        super().__init__()
        self.arch = arch
        if arch == "fused-gelu-mlp":
            hidden = 4 * vision_dim
            self.fc1, self.fc2, self.fc3 = nn.Linear(vision_dim, hidden), nn.Linear(hidden, llm_dim), nn.Linear(
                llm_dim, llm_dim)
        elif arch == "gelu-mlp":
            self.fc1, self.fc2 = nn.Linear(vision_dim, llm_dim), nn.Linear(llm_dim, llm_dim)
        elif arch == "linear":
            self.fc1 = nn.Linear(vision_dim, llm_dim)
        else:
            raise ValueError(f"unknown projector {arch!r}")
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.arch == "linear":
            return self.fc1(x)
        x = self.fc2(self.act(self.fc1(x)))
        if self.arch == "fused-gelu-mlp":
            x = self.fc3(self.act(x))
        return x


class ProprioProjector(nn.Module):
    """Standardised proprio vector -> one decoder embedding (2-layer GELU MLP)."""

    def __init__(self, proprio_dim: int, llm_dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(proprio_dim, llm_dim), nn.Linear(llm_dim, llm_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PrismaticPreTrainedModel(PreTrainedModel):
    config_class = PrismaticConfig
    base_model_prefix = "vla"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer", "Block"]  # noqa: RUF012 - transformers API
    _supports_sdpa = True
    _supports_flash_attn = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, LayerScale):
            module.scale_factor.fill_(module.init_values)
            return
        # timm's own initialisation of the ViT parameters stands (cls/reg tokens, pos_embed, latent queries);
        # Linear/Embedding/Norm layers get transformers' default init.
        super()._init_weights(module)


class PrismaticForActionPrediction(PrismaticPreTrainedModel):
    """Vision backbone(s) + projector + Llama decoder, predicting actions as tokens."""

    def __init__(self, config: PrismaticConfig):
        super().__init__(config)
        self.vision_backbone = PrismaticVisionBackbone(config)
        llm_dim = config.text_config.hidden_size
        self.projector = PrismaticProjector(config.arch_specifier, self.vision_backbone.embed_dim, llm_dim)
        self.language_model = LlamaForCausalLM(config.text_config)
        self.proprio_projector = ProprioProjector(config.proprio_dim, llm_dim) if config.proprio_dim else None
        # OpenVLA-OFT's additions (absent, so OpenVLA's parameter layout unchanged, for sequential models)
        self.action_slots = ActionSlots(config.n_action_tokens, llm_dim) if config.parallel_decoding else None
        self.l1_head = L1ActionHead(llm_dim, config.action_dim) if config.action_head == "l1" else None
        self.action_tokenizer = ActionTokenizer(config.action_vocab_size, config.n_action_bins)
        if config.action_vocab_size > config.text_config.vocab_size:
            raise ValueError(f"action_vocab_size {config.action_vocab_size} exceeds the embedding rows "
                             f"{config.text_config.vocab_size}")
        self.post_init()

    # ------------------------------------------------------------------ plumbing for transformers / peft
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    # ------------------------------------------------------------------ forward
    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, V * 3k, S, S) (V camera views, k backbones) -> projected patches (B, V * P, llm_dim): every view
        through the same backbone and projector, the main camera's patches first."""
        v = self.config.n_views
        b, c, h, w = pixel_values.shape
        if c % v:
            raise ValueError(f"pixel_values have {c} channels, not a multiple of the model's {v} views")
        x = pixel_values.reshape(b * v, c // v, h, w) if v > 1 else pixel_values
        feats = self.projector(self.vision_backbone(x.to(self._vision_dtype())))
        return feats.reshape(b, -1, feats.shape[-1]) if v > 1 else feats

    def embed_prefix(self, pixel_values: torch.Tensor, proprio: torch.Tensor | None = None) -> torch.Tensor:
        """The embeddings inserted after BOS: image patches, then (for proprio models) the proprio token."""
        patches = self.embed_images(pixel_values)
        if self.proprio_projector is None:
            return patches
        if proprio is None:
            raise ValueError("this model consumes proprio (config.proprio_stats); pass proprio=")
        tok = self.proprio_projector(proprio.to(patches.dtype))
        return torch.cat([patches, tok[:, None]], dim=1)

    def _vision_dtype(self) -> torch.dtype:
        return self.vision_backbone.featurizer.patch_embed.proj.weight.dtype

    def build_inputs(self, input_ids: torch.Tensor, pixel_values: torch.Tensor,
                     attention_mask: torch.Tensor | None = None, proprio: torch.Tensor | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Multimodal input embeddings ``[BOS, patches, rest of the prompt]`` and their attention mask.

        The patches go right after each row's first real token (BOS), so left-padded batches (generation) and
        right-padded ones (training) both work."""
        emb = self.get_input_embeddings()(input_ids)
        patches = self.embed_prefix(pixel_values, proprio).to(emb.dtype)
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        ones = torch.ones(patches.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
        first = attention_mask.long().argmax(dim=1)  # index of the first real token per row
        if bool((first == 0).all()):
            return (torch.cat([emb[:, :1], patches, emb[:, 1:]], dim=1),
                    torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1))
        rows, masks = [], []
        for r, k in enumerate(first.tolist()):
            rows.append(torch.cat([emb[r, : k + 1], patches[r], emb[r, k + 1:]], dim=0))
            masks.append(torch.cat([attention_mask[r, : k + 1], ones[r], attention_mask[r, k + 1:]], dim=0))
        return torch.stack(rows), torch.stack(masks)

    def build_inputs_unpadded(self, input_ids: torch.Tensor, pixel_values: torch.Tensor,
                              proprio: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`build_inputs` for unpadded rows, free of host syncs (capturable in a CUDA graph)."""
        emb = self.get_input_embeddings()(input_ids)
        patches = self.embed_prefix(pixel_values, proprio).to(emb.dtype)
        return torch.cat([emb[:, :1], patches, emb[:, 1:]], dim=1)

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, proprio: torch.Tensor | None = None,
                action_targets: torch.Tensor | None = None, **kwargs) -> CausalLMOutputWithPast | ParallelActionOutput:
        """Teacher-forced forward for training; ``labels`` align with ``input_ids`` (patches are ignored).
        Parallel-decoding models: prompt + slots in one pass, ``labels`` (B, n_slots) and for the l1 head
        ``action_targets`` (B, K, action_dim) (``parallel_decoding.parallel_training_batch``)."""
        if self.config.parallel_decoding:
            return parallel_forward(self, input_ids, pixel_values, attention_mask, labels, proprio, action_targets)
        embeds, mask = self.build_inputs(input_ids, pixel_values, attention_mask, proprio)
        full_labels = None
        if labels is not None:
            n_p = embeds.shape[1] - input_ids.shape[1]
            ign = torch.full((labels.shape[0], n_p), IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
            full_labels = torch.cat([labels[:, :1], ign, labels[:, 1:]], dim=1)
        return self.language_model(inputs_embeds=embeds, attention_mask=mask, labels=full_labels, **kwargs)

    # ------------------------------------------------------------------ decoding
    def select_token(self, logits: torch.Tensor, step: int) -> torch.Tensor:
        """Greedy choice at decode ``step``: unconstrained argmax for action tokens (as OpenVLA), and for the
        trailing done token ``done`` where its probability against ``continue`` exceeds
        ``config.done_threshold`` (0.5: the better of the two ids)."""
        if self.config.predict_done and step == self.config.n_action_tokens - 1:
            ids = torch.tensor(self.config.done_token_ids, device=logits.device)
            p_done = torch.softmax(logits[:, ids].float(), dim=-1)[:, 1]
            return ids[(p_done > self.config.done_threshold).long()]
        return logits.argmax(-1)

    @torch.no_grad()
    def generate_action_tokens(self, input_ids: torch.Tensor, pixel_values: torch.Tensor,
                               attention_mask: torch.Tensor | None = None, proprio: torch.Tensor | None = None,
                               ) -> torch.Tensor:
        """The plain (reference) greedy decode: dynamic KV cache, eager, any batch/padding. -> (B, n_tokens).
        Parallel ``tokens``-head models: the slot tokens of one pass (the l1 head has no tokens)."""
        if self.config.parallel_decoding:
            if self.config.action_head != "tokens":
                raise ValueError(f"the {self.config.action_head!r} head regresses actions; use predict_parallel")
            out = parallel_forward(self, input_ids, pixel_values, attention_mask, proprio=proprio)
            return slot_token_ids(self.config, out)
        embeds, mask = self.build_inputs(input_ids, pixel_values, attention_mask, proprio)
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.config.text_config)
        out = self.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos,
                                  past_key_values=cache, use_cache=True, logits_to_keep=1)
        n = self.config.n_action_tokens
        tokens = []
        for step in range(n):
            tok = self.select_token(out.logits[:, -1].float(), step)
            tokens.append(tok)
            if step == n - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = pos[:, -1:] + 1
            out = self.language_model(input_ids=tok[:, None], attention_mask=mask, position_ids=pos,
                                      past_key_values=cache, use_cache=True)
        return torch.stack(tokens, dim=1)

    def tokens_to_actions(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, n_tokens) ids -> normalised actions (B, chunk, action_dim) and done flags (B,)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        c = self.config
        n_act = c.action_dim * c.action_chunk
        actions = self.action_tokenizer.decode(tokens[:, :n_act]).reshape(-1, c.action_chunk, c.action_dim)
        if c.predict_done:
            done = tokens[:, n_act] == c.done_token_ids[1]
        else:
            done = np.zeros(tokens.shape[0], dtype=bool)
        return actions, done

    def get_normalizer(self, unnorm_key: str | None = None) -> ActionNormalizer:
        if not self.config.norm_stats:
            raise ValueError("this model has no dataset statistics (norm_stats); cannot un-normalise actions")
        return ActionNormalizer.from_statistics(self.config.norm_stats, unnorm_key)

    @torch.no_grad()
    def predict_action(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, unnorm_key: str | None = None,
                       attention_mask: torch.Tensor | None = None, proprio: torch.Tensor | None = None,
                       **kwargs) -> np.ndarray:
        """OpenVLA's ``predict_action`` signature: un-normalised action(s) of the first batch row
        ((action_dim,) or (chunk, action_dim)). Greedy only (``do_sample`` other than False is refused)."""
        if kwargs.get("do_sample", False):
            raise ValueError("only greedy decoding is supported (do_sample=False)")
        normalizer = self.get_normalizer(unnorm_key)
        if self.config.parallel_decoding:
            actions, _ = self.predict_parallel(input_ids, pixel_values, attention_mask, proprio)
        else:
            tokens = self.generate_action_tokens(input_ids, pixel_values, attention_mask, proprio).cpu().numpy()
            actions, _ = self.tokens_to_actions(tokens)
        a = normalizer.unnormalize(actions[0])
        return a[0] if self.config.action_chunk == 1 else a

    def predict_parallel(self, input_ids: torch.Tensor, pixel_values: torch.Tensor,
                         attention_mask: torch.Tensor | None = None, proprio: torch.Tensor | None = None,
                         ) -> tuple[np.ndarray, np.ndarray]:
        """Parallel-decoding models: normalised actions (B, K, action_dim) and done flags (B,) of one pass."""
        return predict_parallel(self, input_ids, pixel_values, attention_mask, proprio)
