"""Named model configurations: ``openvla-7b`` (OpenVLA's exact layout) and small presets trained here.

``openvla-7b``: dinosiglip-vit-so-224px (timm ``vit_large_patch14_reg4_dinov2`` + ``vit_so400m_patch14_siglip_224``
at 224 px), fused-gelu-mlp projector, Llama-2-7B decoder with the embedding padded 32000 -> 32064. Its parameter
names/shapes equal ``openvla-7b-state-dict.json`` (982 tensors).

Small presets (``tiny-128``, ``small-224``): a timm ViT-Tiny/Small-style encoder and a few-layer Llama with the
project's own small tokenizer, meant to be trained from scratch on LIBERO-like data in minutes on one GPU and to
run at >= 20 actions/s on 2 CPU cores. ``test-fused``: a minuscule fused (DINOv2-style + SigLIP-style) model for
tests of the fused code path.
"""

from __future__ import annotations

from transformers import LlamaConfig

from vla_ros.models.prismatic.configuration_prismatic import (
    LLAMA2_SPACE_TOKEN_ID,
    PrismaticConfig,
    vision_backbone_spec,
)

OPENVLA_7B_TEXT = dict(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048,
                       rms_norm_eps=1e-6, pad_token_id=32000)


def _pad(n: int, multiple: int) -> int:
    return ((n + multiple - 1) // multiple) * multiple


def _small_text(vocab: int, hidden: int, layers: int, heads: int, inter: int, pad_multiple: int) -> dict:
    return dict(vocab_size=_pad(vocab, pad_multiple), hidden_size=hidden, intermediate_size=inter,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                max_position_embeddings=1024, rms_norm_eps=1e-6)


def _vision(name: str) -> list[dict]:
    if name == "tiny-128":
        return [vision_backbone_spec("vit_tiny_patch16_224", 128)]  # 192-d, 12 blocks, 3 heads, 64 patches
    if name == "small-224":
        return [vision_backbone_spec("vit_small_patch16_224", 224)]
    if name == "test-fused":
        small = dict(embed_dim=32, depth=2, num_heads=2)
        return [vision_backbone_spec("vit_small_patch14_reg4_dinov2", 56, **small),
                vision_backbone_spec("vit_so400m_patch14_siglip_224", 56, mlp_ratio=4.0, **small)]
    raise KeyError(name)


SMALL_TEXT = {  # hidden, layers, heads, intermediate
    "tiny-128": (256, 4, 4, 704),
    "small-224": (512, 6, 8, 1408),
    "test-fused": (32, 2, 2, 64),
}
PRESETS = ("openvla-7b", *SMALL_TEXT)


def make_config(preset: str, action_vocab_size: int | None = None, **overrides) -> PrismaticConfig:
    """Config of a named preset. Small presets need the tokenizer's size (``action_vocab_size``)."""
    if preset == "openvla-7b":
        kw = dict(
            vision_backbones=[vision_backbone_spec("vit_large_patch14_reg4_dinov2", 224),
                              vision_backbone_spec("vit_so400m_patch14_siglip_224", 224)],
            arch_specifier="fused-gelu-mlp", text_config=LlamaConfig(**OPENVLA_7B_TEXT), action_vocab_size=32000,
            pad_to_multiple_of=64, gripper_convention="openvla_open01", prompt_suffix_token_id=LLAMA2_SPACE_TOKEN_ID,
            pad_token_id=32000,
        )
        kw.update(overrides)
        return PrismaticConfig(**kw)
    if preset not in SMALL_TEXT:
        raise ValueError(f"unknown preset {preset!r}; known: {list(PRESETS)}")
    if action_vocab_size is None:
        raise ValueError(f"preset {preset!r} needs action_vocab_size (len of its tokenizer)")
    pad = int(overrides.pop("pad_to_multiple_of", 64))
    hidden, layers, heads, inter = SMALL_TEXT[preset]
    text = _small_text(action_vocab_size, hidden, layers, heads, inter, pad)
    text.update(overrides.pop("text_overrides", {}))
    kw = dict(vision_backbones=_vision(preset), arch_specifier="fused-gelu-mlp" if preset == "test-fused"
              else "gelu-mlp", text_config=LlamaConfig(**text), action_vocab_size=action_vocab_size,
              pad_to_multiple_of=pad, gripper_convention="libero_sign")
    kw.update(overrides)
    return PrismaticConfig(**kw)
