"""Configuration of the native Prismatic VLA (vision backbone(s) + projector + Llama decoder).

One config class describes both the project's own checkpoints and OpenVLA-format ones:
:meth:`PrismaticConfig.from_openvla_dict` reads the ``config.json`` of an OpenVLA checkpoint
(``model_type: openvla``; keys ``timm_model_ids``, ``image_sizes``, ``arch_specifier``, ``text_config``,
``pad_to_multiple_of``, ``n_action_bins``, ``norm_stats``) into it. The checkpoint's conventions (action space,
gripper convention, image flip) are recorded here too, so loading a checkpoint configures its consumers.
"""

from __future__ import annotations

import copy

from transformers import LlamaConfig, PretrainedConfig

from vla_ros.conventions import ACTION_DIM, DEFAULT_IMAGE_FLIP, LIBERO_ACTION_SPACE

PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"
# Normalisation constants per backbone family (timm's pretrained data configs).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HALF_MEAN, HALF_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
PROJECTORS = ("gelu-mlp", "fused-gelu-mlp", "linear")
ACTION_HEADS = ("tokens", "l1")  # see PrismaticConfig: 256-bin tokens (OpenVLA) or L1 regression (OpenVLA-OFT)
LLAMA2_SPACE_TOKEN_ID = 29871  # "▁": OpenVLA appends it to the prompt for Llama-2 tokenizers


def default_norm_for(timm_model_id: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Image mean/std of a timm backbone family (as OpenVLA's processor takes them from timm)."""
    mid = timm_model_id.lower()
    if "siglip" in mid:
        return HALF_MEAN, HALF_STD
    if "clip" in mid:
        return CLIP_MEAN, CLIP_STD
    return IMAGENET_MEAN, IMAGENET_STD


def vision_backbone_spec(timm_model_id: str, image_size: int, **vit_kwargs) -> dict:
    """One featurizer: a timm ViT (by name, with overrides) plus its preprocessing."""
    mean, std = default_norm_for(timm_model_id)
    return {"timm_model_id": timm_model_id, "image_size": int(image_size), "vit_kwargs": dict(vit_kwargs),
            "mean": list(mean), "std": list(std), "interpolation": "bicubic"}


class PrismaticConfig(PretrainedConfig):
    """Config of :class:`~vla_ros.models.prismatic.modeling_prismatic.PrismaticForActionPrediction`.

    ``action_vocab_size`` is the tokenizer's base vocabulary whose last ``n_action_bins`` ids are the action
    tokens; the embedding matrix (``text_config.vocab_size``) may be larger (padded to ``pad_to_multiple_of``).
    ``predict_done`` adds one decoded token after the action(s): ``done_token_ids = [continue_id, done_id]``.
    ``action_chunk`` K decodes K actions (K * action_dim tokens) per call.

    Decoding (OpenVLA-OFT, Kim et al. 2025; defaults = OpenVLA's, and what every OpenVLA checkpoint uses):
    ``parallel_decoding`` fills all ``n_action_tokens`` slots in one forward pass (learned "empty" slot embeddings
    after the prompt, attending bidirectionally among themselves) instead of token by token; ``action_head``
    ``tokens`` reads the slots through the LM head (256-bin tokens, argmax), ``l1`` through an MLP regressing the
    normalised actions (implies ``parallel_decoding``). The done decision stays a token of the LM head (the last
    slot), restricted to ``done_token_ids``, for both heads. See ``parallel_decoding.py``.

    Inputs beyond OpenVLA's one camera (none by default, so OpenVLA checkpoints are unchanged):
    ``extra_images`` names further cameras (``["wrist"]``), each encoded by the same vision backbone and
    projector, their patches following the main camera's; ``proprio_stats`` (``vla_ros.proprio``'s layout,
    mean and std) adds one decoder position carrying the standardised proprio vector through a small MLP.
    """

    model_type = "vla_ros_prismatic"
    sub_configs = {"text_config": LlamaConfig}  # noqa: RUF012 - transformers API

    def __init__(
        self,
        vision_backbones: list[dict] | None = None,
        arch_specifier: str = "gelu-mlp",
        text_config: dict | LlamaConfig | None = None,
        action_vocab_size: int | None = None,
        n_action_bins: int = 256,
        pad_to_multiple_of: int = 64,
        action_dim: int = ACTION_DIM,
        action_chunk: int = 1,
        predict_done: bool = False,
        done_token_ids: list[int] | None = None,
        prompt_template: str = PROMPT_TEMPLATE,
        prompt_suffix_token_id: int | None = None,
        center_crop: bool = False,
        action_space: dict | None = None,
        gripper_convention: str = "libero_sign",
        image_flip: str = DEFAULT_IMAGE_FLIP,
        norm_stats: dict | None = None,
        layerscale_init: float = 1e-5,
        extra_images: list[str] | None = None,
        proprio_stats: dict | None = None,
        done_threshold: float = 0.5,
        done_confirmations: int = 1,
        parallel_decoding: bool | None = None,  # None: False, or True for the l1 head
        action_head: str = "tokens",
        **kwargs,
    ):
        if isinstance(text_config, dict):
            text_config = LlamaConfig(**text_config)
        self.text_config = text_config if text_config is not None else LlamaConfig()
        self.vision_backbones = copy.deepcopy(vision_backbones) if vision_backbones else [
            vision_backbone_spec("vit_tiny_patch16_224", 224)]
        if len(self.vision_backbones) not in (1, 2):
            raise ValueError(f"one or two (fused) vision backbones supported, got {len(self.vision_backbones)}")
        spec = arch_specifier.split("+")[-1]  # OpenVLA writes "no-align+fused-gelu-mlp"
        if spec not in PROJECTORS:
            raise ValueError(f"unknown projector {arch_specifier!r}; known: {PROJECTORS}")
        self.arch_specifier = spec
        self.action_vocab_size = int(action_vocab_size or (self.text_config.vocab_size - pad_to_multiple_of))
        self.n_action_bins = int(n_action_bins)
        self.pad_to_multiple_of = int(pad_to_multiple_of)
        self.action_dim = int(action_dim)
        self.set_action_decoding(action_head, parallel_decoding, action_chunk)
        self.predict_done = bool(predict_done)
        self.done_token_ids = list(done_token_ids) if done_token_ids else None
        if self.predict_done and (not self.done_token_ids or len(self.done_token_ids) != 2):
            raise ValueError("predict_done needs done_token_ids = [continue_id, done_id]")
        self.prompt_template = prompt_template
        self.prompt_suffix_token_id = prompt_suffix_token_id
        self.center_crop = bool(center_crop)
        self.action_space = dict(action_space) if action_space else LIBERO_ACTION_SPACE.to_dict()
        self.gripper_convention = gripper_convention
        self.image_flip = image_flip
        self.norm_stats = norm_stats
        self.layerscale_init = float(layerscale_init)
        # P(done | done or continue) needed to declare the episode finished: above 0.5 trades a later stop
        # for fewer premature ones (a false "done" ends an episode as a failure)
        self.done_threshold = float(done_threshold)
        self.done_confirmations = int(done_confirmations)  # consecutive done decisions that end an episode
        self.extra_images = list(extra_images or [])
        self.proprio_stats = dict(proprio_stats) if proprio_stats else None
        if self.proprio_stats and len(self.proprio_stats.get("mean", [])) != len(self.proprio_stats.get("std", [])):
            raise ValueError("proprio_stats needs 'mean' and 'std' of equal length")
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    def set_action_decoding(self, action_head: str | None = None, parallel_decoding: bool | None = None,
                            action_chunk: int | None = None) -> None:
        """Set (and check) how actions are decoded; None keeps the current value. ``l1`` implies parallel."""
        head = getattr(self, "action_head", "tokens") if action_head is None else str(action_head)
        if head not in ACTION_HEADS:
            raise ValueError(f"unknown action_head {head!r}; known: {ACTION_HEADS}")
        chunk = int(getattr(self, "action_chunk", 1) if action_chunk is None else action_chunk)
        if chunk < 1:
            raise ValueError("action_chunk must be >= 1")
        parallel = bool(getattr(self, "parallel_decoding", False) if parallel_decoding is None else parallel_decoding)
        if head == "l1" and parallel_decoding is False:
            raise ValueError("action_head 'l1' regresses all action slots in one pass: it needs parallel_decoding")
        self.action_head, self.action_chunk = head, chunk
        self.parallel_decoding = parallel or head == "l1"

    @property
    def use_fused_vision_backbone(self) -> bool:
        return len(self.vision_backbones) == 2

    @property
    def proprio_dim(self) -> int:
        return len(self.proprio_stats["mean"]) if self.proprio_stats else 0

    @property
    def n_views(self) -> int:
        """Camera images per sample: the main one plus ``extra_images``."""
        return 1 + len(self.extra_images)

    @property
    def image_size(self) -> int:
        return int(self.vision_backbones[0]["image_size"])

    @property
    def n_action_tokens(self) -> int:
        """Tokens (with ``parallel_decoding``: slots) decoded per call: the action chunk plus the optional done
        token."""
        return self.action_dim * self.action_chunk + int(self.predict_done)

    @classmethod
    def from_openvla_dict(cls, d: dict, **overrides) -> PrismaticConfig:
        """Read an OpenVLA checkpoint's ``config.json`` (model_type ``openvla``/``prismatic``)."""
        ids = d.get("timm_model_ids")
        if not ids:
            raise ValueError("not an OpenVLA config.json: no 'timm_model_ids'")
        sizes = d.get("image_sizes") or [224] * len(ids)
        fused = bool(d.get("use_fused_vision_backbone", len(ids) == 2))
        ids = ids[:2] if fused else ids[:1]
        backbones = [vision_backbone_spec(mid, size) for mid, size in zip(ids, sizes, strict=False)]
        for spec, act in zip(backbones, d.get("timm_override_act_layers") or [], strict=False):
            if act is not None:
                spec["vit_kwargs"]["act_layer"] = act
        text = dict(d.get("text_config") or {})
        text.pop("model_type", None)
        pad = int(d.get("pad_to_multiple_of", 64))
        vocab = int(text.get("vocab_size", 32000 + pad))
        kwargs = dict(
            vision_backbones=backbones, arch_specifier=d.get("arch_specifier", "fused-gelu-mlp"),
            text_config=text, action_vocab_size=vocab - pad, n_action_bins=int(d.get("n_action_bins", 256)),
            pad_to_multiple_of=pad, norm_stats=d.get("norm_stats"),
            # OpenVLA's LIBERO fine-tunes output the gripper as [0, 1] with 1 = open (see conventions.py)
            gripper_convention="openvla_open01", image_flip="rot180",
            prompt_suffix_token_id=LLAMA2_SPACE_TOKEN_ID if str(d.get("llm_backbone_id", "")).startswith("llama2")
            else None,
            pad_token_id=d.get("pad_token_id"),
        )
        kwargs.update(overrides)
        return cls(**kwargs)
