"""Saving and loading Prismatic VLA checkpoints: the project's own directories and OpenVLA-format ones.

A checkpoint directory (Hugging Face style) holds ``config.json``, ``model.safetensors`` (or shards with an
index), the tokenizer files and ``dataset_statistics.json``. ``config.json`` with ``model_type: openvla`` (or
``prismatic``) is an OpenVLA checkpoint (e.g. a local copy of ``openvla/openvla-7b`` or a merged fine-tune): its
config is translated and its state dict loads into the native model unchanged (same parameter names). Where the
directory has OpenVLA's ``preprocessor_config.json``, its stored normalisation and resize parameters replace the
backbones' defaults in the config (see ``processor_prismatic.preprocessing_from_file``), so the native processor
(and training on top of the checkpoint) preprocesses as the released processor does. The tokenizer is checked and
loaded before the weights (a missing one is a ``TokenizerFilesError`` naming the files expected).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from vla_ros.models.prismatic.configuration_prismatic import PrismaticConfig
from vla_ros.models.prismatic.modeling_prismatic import LayerScale, PrismaticForActionPrediction
from vla_ros.models.prismatic.parallel_decoding import apply_decoding_options
from vla_ros.models.prismatic.presets import make_config
from vla_ros.models.prismatic.processor_prismatic import PrismaticProcessor, preprocessing_from_file
from vla_ros.models.tokenization import TokenizerFilesError, load_tokenizer
from vla_ros.normalization import STATS_FILENAME, load_statistics, save_statistics
from vla_ros.quantization import bnb_config, check_quantization, quantize_linear_layers_

log = logging.getLogger(__name__)
OPENVLA_MODEL_TYPES = ("openvla", "prismatic")


def save_checkpoint(model: PrismaticForActionPrediction, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path,
                    norm_stats: dict | None = None) -> Path:
    """Write config.json, model.safetensors, tokenizer files and dataset_statistics.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if norm_stats is not None:
        model.config.norm_stats = norm_stats
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if model.config.norm_stats:
        save_statistics(model.config.norm_stats, out)
    return out


def read_config(path: str | Path, **overrides) -> PrismaticConfig:
    """The checkpoint's config as a :class:`PrismaticConfig` (OpenVLA layouts translated); statistics from
    ``dataset_statistics.json`` when present (OpenVLA ships them there and in ``norm_stats``)."""
    p = Path(path)
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{p} is not a checkpoint directory (no config.json)")
    raw = json.loads(cfg_file.read_text())
    mt = raw.get("model_type")
    if mt in OPENVLA_MODEL_TYPES:
        cfg = PrismaticConfig.from_openvla_dict(raw)
    elif mt == PrismaticConfig.model_type:
        cfg = PrismaticConfig.from_pretrained(p)
    else:
        raise ValueError(f"{cfg_file}: model_type {mt!r} is neither vla_ros's ({PrismaticConfig.model_type!r}) nor "
                         f"OpenVLA's {OPENVLA_MODEL_TYPES}; for a checkpoint with its own code use backend 'hf'")
    if (p / STATS_FILENAME).is_file():
        cfg.norm_stats = load_statistics(p)
    cfg.vision_backbones = preprocessing_from_file(p, cfg.vision_backbones)
    for k, v in overrides.items():
        if v is not None:
            setattr(cfg, k, v)
    return cfg


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(path: str | Path, device: str | torch.device | None = "auto", dtype: torch.dtype | None = None,
               quantization: str | None = "none", adapter: str | Path | None = None, merge_adapter: bool = False,
               center_crop: bool | None = None) -> tuple[PrismaticForActionPrediction, PrismaticProcessor]:
    """Load a checkpoint directory (either layout) with optional 4/8-bit weights and a LoRA adapter (peft's
    directory layout, e.g. as OpenVLA's ``finetune.py`` saves it: the module names are the same).

    Config and tokenizer are read first, so that their errors come before the weights are read."""
    config = read_config(path)
    apply_decoding_options(config, adapter)  # an adapter that changed the action head (training/finetune.py)
    tokenizer = load_tokenizer(path)
    if len(tokenizer) < config.action_vocab_size:
        raise TokenizerFilesError(f"{path}: its tokenizer has {len(tokenizer)} ids but the model's action tokens are "
                                  f"ids up to {config.action_vocab_size - 1}: wrong or incomplete tokenizer files")
    model, _, _ = load_pretrained(PrismaticForActionPrediction, path, device, dtype, quantization, config=config)
    if adapter:
        model = apply_adapter(model, adapter, merge=merge_adapter)
        if (Path(adapter) / STATS_FILENAME).is_file():  # an adapter fine-tuned on other data un-normalises with
            model.config.norm_stats = load_statistics(adapter)  # that data's statistics (training/finetune.py)
    return model, PrismaticProcessor(tokenizer, model.config, center_crop=center_crop)


def load_pretrained(model_cls, path: str | Path, device: str | torch.device | None, dtype: torch.dtype | None,
                    quantization: str | None, **kwargs) -> tuple[nn.Module, torch.device, torch.dtype]:
    """``model_cls.from_pretrained(path)`` with optional bitsandbytes 4/8-bit weights, placed on ``device``, in
    eval mode; returns (model, device, dtype). Shared by the native and hf backends."""
    dev = resolve_device(device)
    qcfg = bnb_config(quantization)  # raises a clear error where bitsandbytes can't run
    dtype = dtype or default_dtype(dev)
    if qcfg is not None:  # quantized weights are placed by accelerate's device map, not moved afterwards
        kwargs.update(quantization_config=qcfg, device_map={"": dev.index or 0})
    model = model_cls.from_pretrained(path, dtype=dtype, **kwargs)
    if qcfg is None:
        model.to(dev)
    return model.eval(), dev, dtype


def apply_adapter(model: PrismaticForActionPrediction, adapter: str | Path, merge: bool = False,
                  ) -> PrismaticForActionPrediction:
    """Load a peft LoRA adapter directory on top of ``model``; ``merge`` folds it into the weights.

    Returns the underlying model (with LoRA layers injected, or merged), so the model's own methods stay usable."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, str(adapter))
    peft_model.eval()
    if merge:
        return peft_model.merge_and_unload()
    return peft_model.get_base_model()


@torch.no_grad()
def init_module_random_(module: nn.Module, std: float = 0.02, generator: torch.Generator | None = None) -> None:
    """Random init of one module's own parameters/buffers (not its children), the way from-scratch training
    starts: norms at 1/0, LayerScale at its init value, rotary tables recomputed, everything else N(0, std)."""
    name = type(module).__name__
    params = dict(module.named_parameters(recurse=False))
    if isinstance(module, LayerScale):
        module.scale_factor.fill_(module.init_values)
    elif "Norm" in name:
        for pname, p in params.items():
            p.fill_(1.0 if pname == "weight" else 0.0)
    else:
        for pname, p in params.items():
            if pname == "bias":
                p.zero_()
            else:
                p.normal_(0.0, std, generator=generator)
    if "RotaryEmbedding" in name:
        with torch.device("cpu"):  # the module's own constructor computes the table (any rope type)
            inv_freq = type(module)(module.config).inv_freq
        module.inv_freq.copy_(inv_freq)
        if hasattr(module, "original_inv_freq"):
            module.original_inv_freq.copy_(inv_freq)


@torch.no_grad()
def random_model(config: PrismaticConfig | str, device: str | torch.device | None = "auto",
                 dtype: torch.dtype | None = None, quantization: str | None = "none", seed: int = 0,
                 ) -> PrismaticForActionPrediction:
    """A randomly initialised model built on the meta device and materialised module by module directly on
    ``device`` (a 7B model never needs a CPU copy; with 4/8-bit each Linear is quantized as soon as it exists)."""
    cfg = make_config(config) if isinstance(config, str) else config
    dev = resolve_device(device)
    dtype = dtype or default_dtype(dev)
    q = check_quantization(quantization)
    with torch.device("meta"):
        model = PrismaticForActionPrediction(cfg)
    gen = torch.Generator(device=dev).manual_seed(seed)

    def materialise(m: nn.Module) -> None:
        m.to_empty(device=dev, recurse=False)
        for name, p in list(m.named_parameters(recurse=False)):
            if p.dtype.is_floating_point and p.dtype != dtype:
                setattr(m, name, nn.Parameter(p.data.to(dtype), requires_grad=p.requires_grad))
        init_module_random_(m, generator=gen)

    if q != "none":
        quantize_linear_layers_(model, q, dev, init_fn=materialise)
    for m in model.modules():
        if any(t.is_meta for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]):
            materialise(m)
    return model.eval()
