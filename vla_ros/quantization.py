"""4/8-bit weights through bitsandbytes (NF4 with bf16 compute, or LLM.int8), for both local backends.

``bnb_config`` gives transformers' ``BitsAndBytesConfig`` for ``from_pretrained``; ``quantize_linear_layers_``
converts an already-built model layer by layer (random-weight benchmarks, where nothing is on disk). Both need a
CUDA GPU and the ``bitsandbytes`` package; without them :class:`QuantizationUnavailableError` says so.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

QUANTIZATIONS = ("none", "8bit", "4bit")
# Kept in bf16 like transformers does by default: the output head (argmax over it decides every token).
SKIP_MODULES = ("lm_head",)


class QuantizationUnavailableError(RuntimeError):
    """The requested quantization cannot run on this machine (reason and requirement in the message)."""


def check_quantization(quantization: str | None) -> str:
    q = (quantization or "none").lower()
    if q in ("", "none", "bf16", "fp16", "fp32"):
        return "none"
    if q in ("4bit", "nf4", "int4"):
        q = "4bit"
    elif q in ("8bit", "int8"):
        q = "8bit"
    else:
        raise ValueError(f"unknown quantization {quantization!r}; known: {QUANTIZATIONS}")
    if not torch.cuda.is_available():
        raise QuantizationUnavailableError(
            f"quantization={q!r} needs a CUDA GPU and the bitsandbytes package (pip install bitsandbytes); "
            "this machine has no CUDA device. Use quantization='none' here.")
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # ImportError, or a broken native library
        raise QuantizationUnavailableError(
            f"quantization={q!r} needs the bitsandbytes package with CUDA kernels (pip install bitsandbytes): {exc}"
        ) from exc
    return q


def bnb_config(quantization: str | None):
    """transformers' BitsAndBytesConfig for ``quantization`` (None for 'none'); raises if it can't run here."""
    q = check_quantization(quantization)
    if q == "none":
        return None
    from transformers import BitsAndBytesConfig

    if q == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=list(SKIP_MODULES))
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(SKIP_MODULES))


def quantize_linear(linear: nn.Linear, quantization: str, device: torch.device) -> nn.Module:
    """One nn.Linear -> bitsandbytes Linear4bit (NF4, bf16 compute) / Linear8bitLt on ``device``."""
    import bitsandbytes as bnb

    has_bias = linear.bias is not None
    if quantization == "4bit":
        new = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=has_bias,
                                compute_dtype=torch.bfloat16, quant_type="nf4", device="meta")
        new.weight = bnb.nn.Params4bit(linear.weight.data.to(torch.bfloat16), requires_grad=False,
                                       quant_type="nf4").to(device)
    elif quantization == "8bit":
        new = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias,
                                  has_fp16_weights=False, device="meta")
        # Int8Params quantize when moved from the CPU
        new.weight = bnb.nn.Int8Params(linear.weight.data.to("cpu", torch.float16), requires_grad=False,
                                       has_fp16_weights=False).to(device)
    else:
        raise ValueError(f"not a bitsandbytes quantization: {quantization!r}")
    if has_bias:
        new.bias = nn.Parameter(linear.bias.data.to(device, torch.bfloat16), requires_grad=False)
    return new


def quantize_linear_layers_(model: nn.Module, quantization: str, device: torch.device,
                            init_fn: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """Replace every nn.Linear (except :data:`SKIP_MODULES`) in place, one at a time, so that the peak memory
    stays at the quantized size plus one bf16 layer. ``init_fn`` materialises a meta layer first (random weights)."""
    q = check_quantization(quantization)
    # (parent, name) pairs only: holding the Linear objects themselves would keep every bf16 weight alive
    targets = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, nn.Linear) and name not in SKIP_MODULES]
    for parent, name in targets:
        child = getattr(parent, name)
        if init_fn is not None:
            init_fn(child)
        setattr(parent, name, quantize_linear(child, q, device))
        del child
    return model
