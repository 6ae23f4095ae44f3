"""Checkpoints made by OpenVLA's own code (issue #23), on the CPU with tiny stand-ins written here (no OpenVLA code,
no download): the ``hf`` backend runs OpenVLA-style transformers-4 remote code under the pinned transformers 5, the
native processor preprocesses as the released processor (bf16-rounded mean/std), tokenizers (fast and sentencepiece)
load or fail clearly before the weights, and OpenVLA's LoRA adapters apply to the native model. Also: the prompt is
built in one place (issue #18)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from core_fixtures import INSTRUCTIONS, save_tiny
from openvla_checkpoints import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TOKENIZER_FILES,
    bf16_rounded,
    openvla_preprocessor_config,
    save_openvla_checkpoint,
    save_sentencepiece_tokenizer,
    set_accepted_timm_versions,
    train_sentencepiece,
)
from PIL import Image
from safetensors.torch import save_file

from helpers import REPO
from vla_ros.backends import load_policy
from vla_ros.backends.hf import RemoteCodeError, transformers4_tokenization_names
from vla_ros.models.tokenization import TokenizerFilesError, load_tokenizer
from vla_ros.prompt import build_prompt

KEY = "libero_spatial"
IMAGES = [np.random.default_rng(i).integers(0, 256, (80, 96, 3), dtype=np.uint8) for i in range(3)]
SIGLIP_MEAN = SIGLIP_STD = [0.5, 0.5, 0.5]


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def _actions(policy) -> np.ndarray:
    return np.stack([policy.predict(img, text) for img, text in zip(IMAGES, INSTRUCTIONS, strict=True)])


@pytest.fixture(scope="module")
def openvla_ckpt(tmp_path_factory) -> Path:
    ckpt, _ = save_openvla_checkpoint(tmp_path_factory.mktemp("openvla") / "ckpt")
    return ckpt


# ---------------------------------------------------------------------------------------------- hf backend
def test_hf_backend_runs_openvla_style_remote_code_like_native(openvla_ckpt):
    """The stand-in has OpenVLA's transformers-4 patterns (``_supports_sdpa`` property, ``tie_weights(self)``, no
    GenerationMixin, a first-step ``prepare_inputs_for_generation`` expecting no cache, ``predict_action`` appending
    29871 past the mask, the processor's 4.x import): before the bridges, loading failed with OpenVLA's
    ``AttributeError ... _supports_sdpa``. Now it loads, unmodified, and decodes what the native model decodes."""
    before = _digest(openvla_ckpt)
    hf = load_policy("hf", str(openvla_ckpt), device="cpu", unnorm_key=KEY)
    native = load_policy("native", str(openvla_ckpt), device="cpu", unnorm_key=KEY)
    assert set(type(hf.model).vla_ros_bridged) == {"_supports_sdpa", "tie_weights", "generate"}
    ref = _actions(native)
    assert len({tuple(a) for a in ref}) > 1  # the images give different actions: the comparison can fail
    np.testing.assert_array_equal(_actions(hf), ref)

    # the first decoding step, through transformers 5's generate, sees exactly the native model's inputs and logits
    # (without the first-step bridge it decodes from the last token alone; without the mask extension the appended
    # 29871 is masked out: both differ here)
    text = INSTRUCTIONS[0]
    inputs = hf.processor(hf.prompt(text), Image.fromarray(IMAGES[0]))
    ids = torch.cat([inputs["input_ids"], torch.tensor([[29871]])], dim=1)  # what predict_action feeds generate
    nat_ids, nat_mask = native.processor.tokenize([native.processor.prompt(text)])
    assert torch.equal(ids, nat_ids)
    assert torch.equal(inputs["pixel_values"], native.processor.pixel_values([IMAGES[0]]))
    with torch.no_grad():
        out = hf.model.generate(ids, attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"],
                                max_new_tokens=1, do_sample=False, output_logits=True, return_dict_in_generate=True)
        ref_logits = native.model(input_ids=nat_ids, pixel_values=inputs["pixel_values"],
                                  attention_mask=nat_mask).logits[0, -1]
    torch.testing.assert_close(out.logits[0][0], ref_logits, rtol=1e-5, atol=1e-5)
    assert _digest(openvla_ckpt) == before  # the checkpoint's files were not edited


def test_hf_backend_says_in_one_line_when_openvla_code_refuses_this_timm(openvla_ckpt, tmp_path):
    """OpenVLA's own code accepts timm 0.9.x only: that cannot be bridged, so the error is one line naming the
    native backend (and what failed), instead of a traceback from inside the checkpoint's code."""
    ckpt = tmp_path / "timm_guard"
    shutil.copytree(openvla_ckpt, ckpt)
    set_accepted_timm_versions(ckpt, {"0.9.10", "0.9.11", "0.9.12", "0.9.16"})
    with pytest.raises(RemoteCodeError) as err:
        load_policy("hf", str(ckpt), device="cpu", unnorm_key=KEY)
    msg = str(err.value)
    assert "\n" not in msg
    assert "modeling_prismatic.OpenVLAForActionPrediction" in msg and "timm" in msg
    assert "NotImplementedError" in msg and "backend 'native'" in msg
    # and the route it names works on that checkpoint
    assert load_policy("native", str(ckpt), device="cpu", unnorm_key=KEY).predict(IMAGES[0], "go").shape == (7,)


def test_hf_backend_says_in_one_line_when_the_checkpoint_processor_does_not_import(openvla_ckpt, tmp_path,
                                                                                   no_weights_read):
    ckpt = tmp_path / "bad_processor"
    shutil.copytree(openvla_ckpt, ckpt)
    proc = ckpt / "processing_prismatic.py"
    proc.write_text(proc.read_text().replace("from transformers.utils import TensorType",
                                             "from transformers.utils import TensorType, NameGoneInSomeVersion"))
    with pytest.raises(RemoteCodeError) as err:  # before any weight is read
        load_policy("hf", str(ckpt), device="cpu", unnorm_key=KEY)
    msg = str(err.value)
    assert "\n" not in msg and "own processor" in msg and "NameGoneInSomeVersion" in msg and "backend 'native'" in msg


# ---------------------------------------------------------------------------------------------- preprocessing
def _released_pixel_values(ckpt: Path, images: list[np.ndarray]) -> torch.Tensor:
    """The stand-in of OpenVLA's PrismaticImageProcessor, loaded from the checkpoint as transformers does."""
    from transformers import AutoImageProcessor

    with transformers4_tokenization_names():
        proc = AutoImageProcessor.from_pretrained(str(ckpt), trust_remote_code=True)
    return proc([Image.fromarray(i) for i in images], return_tensors="pt")["pixel_values"]


def test_native_processor_uses_the_released_rounded_normalisation(tmp_path):
    """A fused (DINOv2 + SigLIP) checkpoint whose preprocessor_config.json stores the DINOv2 mean/std rounded to bf16,
    as OpenVLA's conversion does: the native processor's pixel values equal the released processor's exactly (they
    used the exact constants and differed by up to 0.008); the values survive a save/reload."""
    from vla_ros.models.prismatic.checkpoint import load_model, save_checkpoint

    ckpt = save_tiny(tmp_path / "fused")
    size = json.loads((ckpt / "config.json").read_text())["vision_backbones"][0]["image_size"]
    exact_pol = load_policy("native", str(ckpt), device="cpu", unnorm_key=KEY)
    exact = exact_pol.processor.pixel_values(IMAGES)
    pre = openvla_preprocessor_config(size, [IMAGENET_MEAN, SIGLIP_MEAN], [IMAGENET_STD, SIGLIP_STD])
    (ckpt / "preprocessor_config.json").write_text(json.dumps(pre))
    for name in ("processing_prismatic.py", "configuration_prismatic.py"):  # the released processor's code
        shutil.copy(REPO / "test" / "openvla_standin" / name, ckpt / name)
    assert bf16_rounded(IMAGENET_MEAN) == [0.484375, 0.455078125, 0.40625]
    assert bf16_rounded(IMAGENET_STD) == [0.228515625, 0.2236328125, 0.224609375]

    released = _released_pixel_values(ckpt, IMAGES)
    gap = (exact - released).abs()
    assert 0.008 < gap[:, :3].max() < 0.0082 and gap[:, 3:].max() == 0  # DINOv2 channels only; SigLIP 0.5 is exact
    pol = load_policy("native", str(ckpt), device="cpu", unnorm_key=KEY)
    assert torch.equal(pol.processor.pixel_values(IMAGES), released)
    assert pol.model.config.vision_backbones[0]["mean"] == [0.484375, 0.455078125, 0.40625]
    raw = torch.from_numpy(np.stack([np.asarray(Image.fromarray(i).resize((size, size), Image.BICUBIC))
                                     for i in IMAGES]))
    assert torch.equal(pol.processor.normalize(raw), released)  # the fast path's on-device normalisation too

    model, processor = load_model(ckpt, device="cpu")
    again = save_checkpoint(model, processor.tokenizer, tmp_path / "resaved", model.config.norm_stats)
    assert not (again / "preprocessor_config.json").exists()
    assert torch.equal(load_policy("native", str(again), device="cpu", unnorm_key=KEY).processor.pixel_values(IMAGES),
                       released)


@pytest.mark.parametrize(("change", "match"), [
    ({"image_resize_strategy": "letterbox", "tvf_do_letterbox": True}, "letterbox"),
    ({"input_sizes": [[3, 32, 32]] * 2}, "differ from the model's"),
    ({"tvf_resize_params": [{"size": 56, "interpolation": 3}] * 2}, "shorter side"),
    ({"tvf_resize_params": [{"size": [56, 56], "interpolation": 1}] * 2}, "interpolation 1"),
    ({"tvf_normalize_params": [{"mean": IMAGENET_MEAN, "std": IMAGENET_STD}]}, "the model has 2"),
])
def test_preprocessor_config_the_native_processor_cannot_follow_is_refused(tmp_path, change, match):
    ckpt = save_tiny(tmp_path / "fused")
    pre = openvla_preprocessor_config(56, [IMAGENET_MEAN, SIGLIP_MEAN], [IMAGENET_STD, SIGLIP_STD])
    (ckpt / "preprocessor_config.json").write_text(json.dumps({**pre, **change}))
    with pytest.raises(ValueError, match=match) as err:
        load_policy("native", str(ckpt), device="cpu", unnorm_key=KEY)
    assert "preprocessor_config.json" in str(err.value)


# ---------------------------------------------------------------------------------------------- tokenizers
@pytest.fixture
def no_weights_read(monkeypatch):
    """Fails the test if a model's weights start loading."""
    from transformers import PreTrainedModel

    def refuse(*_a, **_k):
        raise AssertionError("weights were read before the tokenizer was checked")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(refuse))


@pytest.mark.parametrize("backend", ["native", "hf"])
@pytest.mark.parametrize("keep", [(), ("tokenizer_config.json",)], ids=["none", "config_only"])
def test_missing_tokenizer_is_a_clear_error_before_the_weights(openvla_ckpt, tmp_path, no_weights_read, backend, keep):
    ckpt = tmp_path / "no_tokenizer"
    shutil.copytree(openvla_ckpt, ckpt)
    for name in TOKENIZER_FILES:
        if name not in keep:
            (ckpt / name).unlink(missing_ok=True)
    with pytest.raises(TokenizerFilesError) as err:
        load_policy(backend, str(ckpt), device="cpu", unnorm_key=KEY)
    msg = str(err.value)
    assert "tokenizer.json" in msg and "tokenizer.model" in msg and "sentencepiece" in msg
    assert "tokenizer_config.json" in msg.split("found")[-1] if keep else "no tokenizer files" in msg


def test_sentencepiece_tokenizer_without_the_package_says_so(tmp_path, monkeypatch, no_weights_read):
    import importlib.util

    save_sentencepiece_tokenizer(b"not read: the check comes first", tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sentencepiece" else real(name, *a))
    with pytest.raises(TokenizerFilesError, match=r"needs the sentencepiece package: pip install sentencepiece"):
        load_tokenizer(tmp_path)


def test_slow_sentencepiece_and_fast_llama_tokenizers_load_and_agree(tmp_path):
    """A Llama-style sentencepiece model trained here: the checkpoint with only tokenizer.model (OpenVLA's slow
    files) and the same tokenizer as tokenizer.json give sentencepiece's own ids and the same actions."""
    import sentencepiece as spm

    prompts = [build_prompt(t) for t in [*INSTRUCTIONS, "turn on the stove", "push the plate to the front"]]
    proto = train_sentencepiece(prompts)
    slow_dir, _ = save_openvla_checkpoint(tmp_path / "slow", sentencepiece_model=proto)
    assert not (slow_dir / "tokenizer.json").exists()
    slow = load_tokenizer(slow_dir)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    for p in [*prompts, "Put the 2 bowls, then stop."]:
        assert slow(p)["input_ids"] == [sp.bos_id(), *sp.encode(p)]

    fast_dir = tmp_path / "fast"
    shutil.copytree(slow_dir, fast_dir)
    (fast_dir / "tokenizer.model").unlink()
    slow.save_pretrained(fast_dir)
    assert (fast_dir / "tokenizer.json").is_file() and not (fast_dir / "tokenizer.model").exists()
    fast = load_tokenizer(fast_dir)
    assert [fast(p)["input_ids"] for p in prompts] == [slow(p)["input_ids"] for p in prompts]

    pol_slow = load_policy("native", str(slow_dir), device="cpu", unnorm_key=KEY)
    pol_fast = load_policy("native", str(fast_dir), device="cpu", unnorm_key=KEY)
    ref = _actions(pol_slow)
    assert len({tuple(a) for a in ref}) > 1
    np.testing.assert_array_equal(_actions(pol_fast), ref)


def test_tokenizer_smaller_than_the_action_ids_is_refused(tmp_path):
    proto = train_sentencepiece([build_prompt(t) for t in INSTRUCTIONS])
    ckpt, _ = save_openvla_checkpoint(tmp_path / "ckpt", sentencepiece_model=proto)
    save_sentencepiece_tokenizer(train_sentencepiece([build_prompt(t) for t in INSTRUCTIONS], 300), ckpt)
    with pytest.raises(TokenizerFilesError, match="wrong or incomplete tokenizer"):
        load_policy("native", str(ckpt), device="cpu", unnorm_key=KEY)


# ---------------------------------------------------------------------------------------------- LoRA adapters
OPENVLA_LORA_RANK, OPENVLA_LORA_ALPHA = 32, 16  # vla-scripts/finetune.py: r=32, lora_alpha=min(r, 16), all-linear


def _write_openvla_adapter(model: torch.nn.Module, out: Path, seed: int = 0) -> dict[str, tuple]:
    """An adapter as OpenVLA's finetune.py (peft, ``target_modules="all-linear"``) saves it on
    OpenVLAForActionPrediction: every Linear but the LM head, and modules whose name ends like one (the ViTs'
    Conv2d ``patch_embed.proj``), keys ``base_model.model.<module path>.lora_A.weight``. Returns
    {module path: (module, A, B)}."""
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)} - {"lm_head"}
    gen = torch.Generator().manual_seed(seed)
    tensors, targets = {}, {}
    for path, m in model.named_modules():
        if path.rsplit(".", 1)[-1] not in names or not isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        r = OPENVLA_LORA_RANK
        if isinstance(m, torch.nn.Linear):
            a, b = torch.randn(r, m.in_features, generator=gen), torch.randn(m.out_features, r, generator=gen)
        else:
            a = torch.randn(r, m.in_channels, *m.kernel_size, generator=gen)
            b = torch.randn(m.out_channels, r, 1, 1, generator=gen)
        a, b = a * 0.05, b * 0.05
        tensors[f"base_model.model.{path}.lora_A.weight"] = a
        tensors[f"base_model.model.{path}.lora_B.weight"] = b
        targets[path] = (m, a, b)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps({  # the fields of peft 0.11 (OpenVLA's pin)
        "alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": "openvla/openvla-7b", "bias": "none",
        "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": "gaussian", "layer_replication": None,
        "layers_pattern": None, "layers_to_transform": None, "loftq_config": {}, "lora_alpha": OPENVLA_LORA_ALPHA,
        "lora_dropout": 0.0, "megatron_config": None, "megatron_core": "megatron.core", "modules_to_save": None,
        "peft_type": "LORA", "r": OPENVLA_LORA_RANK, "rank_pattern": {}, "revision": None,
        "target_modules": sorted(names), "task_type": None, "use_dora": False, "use_rslora": False}, indent=2))
    return targets


def _logits(policy) -> torch.Tensor:
    proc = policy.processor
    ids, mask = proc.tokenize([proc.prompt(INSTRUCTIONS[0])])
    with torch.no_grad():
        return policy.model(input_ids=ids, pixel_values=proc.pixel_values([IMAGES[0]]),
                            attention_mask=mask).logits[0, -1]


def test_openvla_lora_adapter_loads_onto_the_native_model_merged_or_not(tmp_path):
    """Fused (DINOv2 + SigLIP) model with OpenVLA's module names; the adapter written with those key names equals
    applying W + (alpha / r) B A by hand, unmerged and merged."""
    ckpt = save_tiny(tmp_path / "base")
    base = load_policy("native", str(ckpt), device="cpu", unnorm_key=KEY)
    targets = _write_openvla_adapter(base.model, tmp_path / "adapter")
    layout = json.loads((REPO / "test" / "data" / "openvla-7b-state-dict.json").read_text())["tensors"]
    assert all(f"{p}.weight" in layout for p in targets)  # OpenVLA's own module paths
    assert any("attn_pool" in p for p in targets) and any("patch_embed.proj" in p for p in targets)
    assert not any("lm_head" in p for p in targets)

    by_hand = load_policy("native", str(ckpt), device="cpu", unnorm_key=KEY)
    modules = dict(by_hand.model.named_modules())
    scale = OPENVLA_LORA_ALPHA / OPENVLA_LORA_RANK
    with torch.no_grad():
        for path, (_, a, b) in targets.items():
            w = modules[path].weight
            w += (b.flatten(1) @ a.flatten(1)).reshape(w.shape) * scale
    lora = load_policy("native", str(ckpt), device="cpu", unnorm_key=KEY, adapter=str(tmp_path / "adapter"))
    merged = load_policy("native", str(ckpt), device="cpu", unnorm_key=KEY, adapter=str(tmp_path / "adapter"),
                         merge_adapter=True)
    assert sum("lora_A" in n for n, _ in lora.model.named_parameters()) == len(targets)
    assert not any("lora" in n for n, _ in merged.model.named_parameters())
    merged_params = dict(merged.model.named_parameters())
    for path in targets:
        torch.testing.assert_close(merged_params[f"{path}.weight"], modules[path].weight, rtol=1e-5, atol=1e-6)
    ref = _logits(by_hand)
    assert (ref - _logits(base)).abs().max() > 1e-2  # the adapter changes the model
    torch.testing.assert_close(_logits(lora), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_logits(merged), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(_actions(merged), _actions(by_hand))


# ---------------------------------------------------------------------------------------------- prompt (#18)
def test_the_prompt_is_built_in_one_place_and_all_paths_agree(openvla_ckpt, monkeypatch):
    fills = []
    for folder in ("vla_ros", "sim_bridge", "training"):
        for f in (REPO / folder).rglob("*.py"):
            fills += [f"{f.relative_to(REPO)}" for line in f.read_text().splitlines()
                      if re.search(r"\.format\(\s*instruction\s*=", line)]
    assert fills == ["vla_ros/prompt.py"]

    text = "  Pick Up The Black Bowl "
    expected = "In: What action should the robot take to pick up the black bowl?\nOut:"
    assert build_prompt(text) == expected
    native = load_policy("native", str(openvla_ckpt), device="cpu", unnorm_key=KEY)
    hf = load_policy("hf", str(openvla_ckpt), device="cpu", unnorm_key=KEY)
    assert native.processor.prompt(text) == hf.prompt(text) == expected

    import vla_ros.models.tokenization as tokenization

    seen = []
    monkeypatch.setattr(tokenization, "build_prompt", lambda t, tpl: seen.append(t) or build_prompt(t, tpl))
    tokenization.build_tokenizer([text, " "], text_vocab_size=300)
    assert seen == [text]
    for bad in ("", "   ", None):
        with pytest.raises(ValueError, match="non-empty string"):
            build_prompt(bad)
