"""Tiny checkpoints in the layout OpenVLA's own code writes (built here: nothing is downloaded, nothing of OpenVLA's
code is used).

:func:`save_openvla_checkpoint` writes what a checkpoint saved by OpenVLA's ``save_pretrained`` holds: ``config.json``
with OpenVLA's fields and an ``auto_map`` naming the remote code, ``model.safetensors`` with OpenVLA's parameter
names, ``dataset_statistics.json``, Llama-2-layout tokenizer files (32000 ids, "▁" at 29871, ``<PAD>`` at 32000, an
embedding padded to 32064), a ``preprocessor_config.json`` as OpenVLA's conversion makes it (mean/std stored rounded
to bf16 in ``tvf_normalize_params``), and the stand-in remote code of ``test/openvla_standin/``.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import torch
from core_fixtures import two_dataset_stats
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, processors
from transformers import PreTrainedTokenizerFast

from vla_ros.models.prismatic import PrismaticConfig, PrismaticForActionPrediction
from vla_ros.normalization import save_statistics

STANDIN_DIR = Path(__file__).parent / "openvla_standin"
LLAMA2_VOCAB, SPACE_ID, PAD_ID = 32000, 29871, 32000
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")


def bf16_rounded(values: list[float]) -> list[float]:
    """What OpenVLA's conversion stored: the constants passed through a bf16 tensor."""
    return torch.tensor(values, dtype=torch.bfloat16).float().tolist()


def llama2_layout_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer with the Llama-2 tokenizer's layout and pipeline (BPE with byte fallback, "▁" for
    spaces and as prefix, BOS prepended): 32000 ids with "▁" at 29871, the action ids (the last 256) unused by text,
    and OpenVLA's added ``<PAD>`` (id 32000)."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:?.,'-"
    for c in chars:
        vocab[c] = len(vocab)
    filler = 0
    while len(vocab) < LLAMA2_VOCAB:
        if len(vocab) == SPACE_ID:
            vocab["▁"] = SPACE_ID
        else:
            vocab[f"<unused_{filler}>"] = len(vocab)
            filler += 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.add_special_tokens({"pad_token": "<PAD>"})
    assert fast.convert_tokens_to_ids("<PAD>") == PAD_ID and fast.convert_ids_to_tokens(SPACE_ID) == "▁"
    return fast


def train_sentencepiece(texts: list[str], vocab_size: int = 400) -> bytes:
    """A small sentencepiece model with the Llama-2 tokenizer's settings (BPE, byte fallback, ids 0/1/2 =
    unk/BOS/EOS, no normalisation), trained on ``texts`` (about a tenth of a second)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts * 10), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
        split_digits=True, num_threads=1, minloglevel=2)
    return buf.getvalue()


def save_sentencepiece_tokenizer(model_proto: bytes, out: Path) -> None:
    """OpenVLA-style slow tokenizer files: ``tokenizer.model`` and ``tokenizer_config.json`` naming LlamaTokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(model_proto)
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2))


def openvla_config_dict(image_size: int = 64, hidden: int = 64, text_vocab: int = LLAMA2_VOCAB) -> dict:
    """OpenVLA's ``config.json`` fields for a tiny model (timm ViT-Tiny at ``image_size``, 2-layer Llama; the
    embedding has ``text_vocab`` + 64 rows, OpenVLA's padding)."""
    return {
        "model_type": "openvla", "architectures": ["OpenVLAForActionPrediction"],
        "auto_map": {"AutoConfig": "configuration_prismatic.OpenVLAConfig",
                     "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction"},
        "vision_backbone_id": "tiny-vit", "llm_backbone_id": "llama2-7b-pure", "arch_specifier": "no-align+gelu-mlp",
        "use_fused_vision_backbone": False, "image_resize_strategy": "resize-naive",
        "timm_model_ids": ["vit_tiny_patch16_224"], "timm_override_act_layers": [None], "image_sizes": [image_size],
        "text_config": {"model_type": "llama", "vocab_size": text_vocab + 64, "hidden_size": hidden,
                        "intermediate_size": 2 * hidden, "num_hidden_layers": 2, "num_attention_heads": 4,
                        "num_key_value_heads": 4, "max_position_embeddings": 512, "pad_token_id": text_vocab},
        "pad_to_multiple_of": 64, "n_action_bins": 256, "pad_token_id": text_vocab, "llm_max_length": 2048,
        "norm_stats": two_dataset_stats(), "torch_dtype": "float32",
    }


def openvla_preprocessor_config(image_size: int, means: list[list[float]], stds: list[list[float]]) -> dict:
    """``preprocessor_config.json`` as OpenVLA's conversion writes it: exact ``means``/``stds`` and the
    torchvision parameters its processor applies, with mean/std rounded to bf16 (see :func:`bf16_rounded`)."""
    n = len(means)
    return {
        "auto_map": {"AutoImageProcessor": "processing_prismatic.PrismaticImageProcessor",
                     "AutoProcessor": "processing_prismatic.PrismaticProcessor"},
        "image_processor_type": "PrismaticImageProcessor", "processor_class": "PrismaticProcessor",
        "image_resize_strategy": "resize-naive", "use_fused_vision_backbone": n == 2,
        "input_sizes": [[3, image_size, image_size]] * n, "interpolations": ["bicubic"] * n,
        "means": means, "stds": stds,
        "tvf_resize_params": [{"antialias": True, "interpolation": 3, "max_size": None,
                               "size": [image_size, image_size]}] * n,
        "tvf_crop_params": [{"output_size": [image_size, image_size]}] * n,
        "tvf_normalize_params": [{"inplace": False, "mean": bf16_rounded(m), "std": bf16_rounded(s)}
                                 for m, s in zip(means, stds, strict=True)],
        "tvf_do_letterbox": False, "tvf_letterbox_fill": None,
    }


def save_tokenizer_openvla_style(tok: PreTrainedTokenizerFast, out: Path) -> None:
    tok.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(tokenizer_class="LlamaTokenizer", processor_class="PrismaticProcessor",
               auto_map={"AutoProcessor": "processing_prismatic.PrismaticProcessor"})
    cfg_path.write_text(json.dumps(cfg, indent=2))


def save_openvla_checkpoint(out: Path, seed: int = 0, image_size: int = 64,
                            sentencepiece_model: bytes | None = None) -> tuple[Path, dict]:
    """Write the checkpoint; returns (directory, its config.json dict). The tokenizer: the Llama-2-layout one, or with
    ``sentencepiece_model`` only that model's slow-tokenizer files (its vocabulary then sizes the embedding).
    Weights: random, except that the LM head rows of text ids are zero, so that greedy decoding picks action tokens
    (random weights mostly pick text tokens, which all decode to the same clipped action) and different logits show
    as different actions."""
    text_vocab = LLAMA2_VOCAB
    if sentencepiece_model is not None:
        import sentencepiece as spm

        text_vocab = spm.SentencePieceProcessor(model_proto=sentencepiece_model).get_piece_size()
    raw = openvla_config_dict(image_size, text_vocab=text_vocab)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = PrismaticForActionPrediction(PrismaticConfig.from_openvla_dict(raw)).eval()
    with torch.no_grad():
        head = model.language_model.lm_head.weight
        head[: text_vocab - 256].zero_()
        head[text_vocab:].zero_()
        head[text_vocab - 256: text_vocab].mul_(20.0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    save_statistics(raw["norm_stats"], out)
    if sentencepiece_model is None:
        save_tokenizer_openvla_style(llama2_layout_tokenizer(), out)
    else:
        save_sentencepiece_tokenizer(sentencepiece_model, out)
    pre = openvla_preprocessor_config(image_size, [IMAGENET_MEAN], [IMAGENET_STD])
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    for f in STANDIN_DIR.glob("*.py"):
        shutil.copy(f, out / f.name)
    return out, raw


def set_accepted_timm_versions(checkpoint: Path, versions: set[str]) -> None:
    """Make the stand-in refuse every timm but ``versions``, as OpenVLA's code does (it accepts 0.9.x only)."""
    path = checkpoint / "modeling_prismatic.py"
    src = path.read_text()
    assert "ACCEPTED_TIMM_VERSIONS: set[str] | None = None" in src
    path.write_text(src.replace("ACCEPTED_TIMM_VERSIONS: set[str] | None = None",
                                f"ACCEPTED_TIMM_VERSIONS: set[str] | None = {set(versions)!r}"))
