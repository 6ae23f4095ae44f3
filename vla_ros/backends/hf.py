"""``hf`` backend: a checkpoint that ships its own modelling code (e.g. OpenVLA's HF release), through
transformers' remote-code loading (``trust_remote_code``) and the model's own ``predict_action``.

OpenVLA's README usage: ``AutoProcessor.from_pretrained(path, trust_remote_code=True)``,
``AutoModelForVision2Seq.from_pretrained(...)``, ``processor(prompt, image)`` then
``model.predict_action(**inputs, unnorm_key=..., do_sample=False)``. transformers 5 dropped the
``AutoModelForVision2Seq`` name, so the model class is taken from the checkpoint's ``auto_map`` entry
(``AutoModelForVision2Seq``, ``AutoModelForImageTextToText`` or ``AutoModelForCausalLM``) directly.

Code written for transformers 4 (OpenVLA's: 4.40.1) meets API changes in transformers 5. Without editing the
checkpoint's files, :func:`bridge_model_class` subclasses its model class where it shows these patterns:

- ``_supports_sdpa`` as a property reading a submodule: transformers 5 reads it inside ``PreTrainedModel.__init__``,
  before the submodule exists (``AttributeError``); before that, the bridge answers for the text decoder class of the
  config, which is what the property asks;
- ``tie_weights(self)``: transformers 5 calls it with ``missing_keys=`` / ``recompute_mapping=``; the bridge calls the
  checkpoint's own version without them;
- no ``GenerationMixin`` (transformers 4's ``PreTrainedModel`` had ``generate``): mixed in;
- a ``prepare_inputs_for_generation`` written for transformers 4's first step, which passed no cache: transformers 5
  passes an empty ``DynamicCache``, which such code takes for "prompt consumed" (it would decode from the last token
  without the image); the bridge passes None on that step. It also extends a 2-D ``attention_mask`` shorter than the
  prompt with ones: OpenVLA's ``predict_action`` appends a token after the processor's mask, and transformers 4
  attended such uncovered trailing tokens where transformers 5 pads the mask with zeros (masking them).

The processor's module is imported with the tokenizer type names transformers 4 exported from
``transformers.tokenization_utils`` (:func:`transformers4_tokenization_names`). Anything else the checkpoint's code
does not survive (e.g. OpenVLA's own refusal of timm >= 1.0) is a :class:`RemoteCodeError`: one line naming the
failing step and the route that works (for OpenVLA-format checkpoints: the ``native`` backend).
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vla_ros.conventions import ActionSpace
from vla_ros.models.prismatic.checkpoint import OPENVLA_MODEL_TYPES, apply_adapter, load_pretrained
from vla_ros.models.prismatic.configuration_prismatic import PROMPT_TEMPLATE, PrismaticConfig
from vla_ros.models.prismatic.processor_prismatic import check_image, resize_and_crop
from vla_ros.models.tokenization import check_tokenizer_files
from vla_ros.policy import Policy, PolicyMetadata, PolicyOutput
from vla_ros.prompt import build_prompt

AUTO_MODEL_KEYS = ("AutoModelForVision2Seq", "AutoModelForImageTextToText", "AutoModelForCausalLM")
# what transformers 4's ``transformers.tokenization_utils`` re-exported from ``tokenization_utils_base``
TRANSFORMERS4_TOKENIZATION_NAMES = (
    "AddedToken", "BatchEncoding", "EncodedInput", "EncodedInputPair", "PaddingStrategy", "PreTokenizedInput",
    "PreTokenizedInputPair", "PreTrainedTokenizerBase", "TensorType", "TextInput", "TextInputPair",
    "TruncationStrategy")


class RemoteCodeError(RuntimeError):
    """The checkpoint's own code does not run under the installed libraries; the message is one line that names the
    failing step and the route that works."""


def _versions() -> str:
    import timm
    import transformers

    return f"transformers {transformers.__version__}, timm {timm.__version__}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


@contextlib.contextmanager
def transformers4_tokenization_names() -> Iterator[None]:
    """While a checkpoint's modules import: the names transformers 4 exported from ``transformers.tokenization_utils``
    (transformers 5 made that module an alias of the sentencepiece backend and keeps them in
    ``tokenization_utils_base``). Removed again afterwards; an imported module keeps what it bound."""
    import transformers.tokenization_utils as old
    import transformers.tokenization_utils_base as base

    added = [n for n in TRANSFORMERS4_TOKENIZATION_NAMES if not hasattr(old, n) and hasattr(base, n)]
    for name in added:
        setattr(old, name, getattr(base, name))
    try:
        yield
    finally:
        for name in added:
            delattr(old, name)


def _accepts_keyword(fn: Callable, name: str) -> bool:
    params = inspect.signature(fn).parameters.values()
    return any(p.kind is p.VAR_KEYWORD or p.name == name for p in params)


def _text_decoder_supports_sdpa(config) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        return bool(MODEL_FOR_CAUSAL_LM_MAPPING[type(config.get_text_config())]._supports_sdpa)
    except KeyError:
        return False  # unknown decoder: transformers falls back to eager attention


def bridge_model_class(remote_cls: type, advice: str = "", checkpoint: str = "") -> type:
    """A subclass of the checkpoint's model class with the transformers-4 patterns listed in the module docstring
    bridged (only those it shows), of the same name and module; ``vla_ros_bridged`` lists them. Errors raised while
    it is built become a :class:`RemoteCodeError` (starting with ``checkpoint``, ending with ``advice``)."""
    from transformers import Cache, GenerationMixin

    ns: dict = {"__module__": remote_cls.__module__, "__qualname__": remote_cls.__qualname__,
                "__doc__": remote_cls.__doc__}
    bridged = []
    sdpa = inspect.getattr_static(remote_cls, "_supports_sdpa", None)
    if isinstance(sdpa, property):
        def supports_sdpa(self) -> bool:
            try:
                return bool(sdpa.fget(self))
            except AttributeError:  # asked before the submodule it reads exists
                return _text_decoder_supports_sdpa(self.config)

        ns["_supports_sdpa"] = property(supports_sdpa)
        bridged.append("_supports_sdpa")

    legacy_tie = remote_cls.tie_weights
    if not _accepts_keyword(legacy_tie, "recompute_mapping"):
        def tie_weights(self, missing_keys=None, recompute_mapping: bool = True, **_) -> None:
            # the checkpoint's own tying; transformers 5's bookkeeping of tied keys missing from the checkpoint only
            # affects its load report
            legacy_tie(self)

        ns["tie_weights"] = tie_weights
        bridged.append("tie_weights")

    bases: tuple[type, ...] = (remote_cls,)
    legacy_prepare = getattr(remote_cls, "prepare_inputs_for_generation", None)
    if not issubclass(remote_cls, GenerationMixin) and legacy_prepare is not None:
        def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, **kwargs):
            if isinstance(past_key_values, Cache) and past_key_values.get_seq_length() == 0:
                past_key_values = None  # transformers 4's first step (see the module docstring)
                if attention_mask is not None and input_ids is not None and attention_mask.ndim == 2:
                    short = input_ids.shape[-1] - attention_mask.shape[-1]
                    if short > 0:
                        attention_mask = F.pad(attention_mask, (0, short), value=1)
            return legacy_prepare(self, input_ids, past_key_values=past_key_values, attention_mask=attention_mask,
                                  **kwargs)

        bases = (remote_cls, GenerationMixin)
        ns["prepare_inputs_for_generation"] = prepare_inputs_for_generation
        bridged.append("generate")

    if isinstance(getattr(remote_cls, "_skip_keys_device_placement", None), str):  # transformers 5 wants a list
        ns["_skip_keys_device_placement"] = [remote_cls._skip_keys_device_placement]

    def __init__(self, config, *args, **kwargs):  # noqa: N807 - the bridged class's constructor
        try:
            remote_cls.__init__(self, config, *args, **kwargs)
        except Exception as exc:
            where = f"{checkpoint}: " if checkpoint else ""
            code = f"{remote_cls.__module__.rsplit('.', 1)[-1]}.{remote_cls.__name__}"
            raise RemoteCodeError(f"{where}the checkpoint's own {code} does not build under {_versions()}: "
                                  f"{_one_line(exc)}{advice}") from exc

    ns["__init__"] = __init__
    cls = type(remote_cls.__name__, bases, ns)
    cls.vla_ros_bridged = tuple(bridged)
    return cls


class HFRemoteCodePolicy(Policy):
    def __init__(self, model, processor, unnorm_key: str | None, metadata: PolicyMetadata, device: torch.device,
                 dtype: torch.dtype, prompt_template: str = PROMPT_TEMPLATE, center_crop: bool = False,
                 advice: str = ""):
        self.model, self.processor = model, processor
        self.unnorm_key = unnorm_key
        self.metadata = metadata
        self.device, self.dtype = device, dtype
        self.prompt_template = prompt_template
        self.center_crop = center_crop
        self.advice = advice

    def prompt(self, instruction: str) -> str:
        return build_prompt(instruction, self.prompt_template)

    def act_batch(self, images: list[np.ndarray], instructions: list[str], *, extra_images=None,
                  proprios=None) -> list[PolicyOutput]:
        if len(images) != len(instructions) or not images:
            raise ValueError(f"need as many images as instructions (>0), got {len(images)} and {len(instructions)}")
        outs = []
        for img, text in zip(images, instructions, strict=True):  # OpenVLA's predict_action is batch 1
            prompt = self.prompt(text)
            img = check_image(img)
            if self.center_crop:  # OpenVLA's evaluation crops before the processor (which resizes)
                img = np.asarray(resize_and_crop(img, self.metadata.image_size, center_crop=True))
            inputs = self.processor(prompt, Image.fromarray(img))
            inputs = {k: (v.to(self.device, dtype=self.dtype) if k == "pixel_values" else v.to(self.device))
                      for k, v in inputs.items() if isinstance(v, torch.Tensor)}
            try:
                with torch.inference_mode():
                    action = self.model.predict_action(**inputs, unnorm_key=self.unnorm_key, do_sample=False)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as exc:
                raise RemoteCodeError(f"{self.metadata.model_id}: the checkpoint's own predict_action fails under "
                                      f"{_versions()}: {_one_line(exc)}{self.advice}") from exc
            a = np.asarray(action, dtype=np.float64)
            outs.append(PolicyOutput(a.reshape(-1, a.shape[-1])[0].copy()))
        return outs

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _metadata(cfg: dict, name: str, unnorm_key: str | None, center_crop: bool) -> PolicyMetadata:
    """The checkpoint's recorded conventions; OpenVLA's own configs record none, so OpenVLA's apply."""
    openvla = cfg.get("model_type") in OPENVLA_MODEL_TYPES
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
    native_reads_it = cfg.get("model_type") in (*OPENVLA_MODEL_TYPES, PrismaticConfig.model_type)
    advice = (". Use backend 'native' for this checkpoint: it reads the same weights, tokenizer and preprocessing "
              "without the checkpoint's code" if native_reads_it else "")
    # tokenizer and processor before the weights: their failures show in seconds, not after a 15 GB read
    check_tokenizer_files(path)
    try:
        with transformers4_tokenization_names():
            processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    except OSError:  # a missing or unreadable file, not an incompatibility
        raise
    except Exception as exc:
        raise RemoteCodeError(f"{path}: the checkpoint's own processor does not load under {_versions()}: "
                              f"{_one_line(exc)}{advice}") from exc
    with transformers4_tokenization_names():
        model_cls = bridge_model_class(get_class_from_dynamic_module(auto_map[key], path), advice, str(path))
    model, dev, torch_dtype = load_pretrained(model_cls, path, device, parse_dtype(dtype), quantization,
                                              trust_remote_code=True)
    if adapter:
        model = apply_adapter(model, adapter, merge=merge_adapter)
    stats = getattr(model, "norm_stats", None) or getattr(model.config, "norm_stats", None)
    if stats:
        unnorm_key = select_unnorm_key(stats, unnorm_key)  # fail now, listing the keys
    crop = bool(center_crop) if center_crop is not None else bool(cfg.get("center_crop", False))
    meta = _metadata(cfg, Path(path).name, unnorm_key, crop)
    return HFRemoteCodePolicy(model, processor, unnorm_key, meta, dev, torch_dtype,
                              prompt_template=cfg.get("prompt_template", PROMPT_TEMPLATE), center_crop=crop,
                              advice=advice)
