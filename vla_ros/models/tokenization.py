"""Checkpoint tokenizers, and small tokenizers built here (for tests and from-scratch presets).

:func:`load_tokenizer` reads a checkpoint directory's tokenizer: ``tokenizer.json``
(fast) or ``tokenizer.model`` (sentencepiece, converted by transformers; needs the ``sentencepiece`` package), and
:func:`check_tokenizer_files` says clearly, before any weights load, when neither is there.

:func:`build_tokenizer` trains a byte-level BPE on the given texts (so any instruction is encodable) and then
appends the reserved ids at the *end* of the vocabulary, as OpenVLA's layout requires: the two episode-end ids
(``<continue>``, ``<done>``) and then the ``n_action_bins`` action ids, so that ``vocab_size - bin`` (OpenVLA's
action token) lands on them.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from vla_ros.models.prismatic.configuration_prismatic import PROMPT_TEMPLATE
from vla_ros.prompt import build_prompt

log = logging.getLogger(__name__)
FAST_TOKENIZER_FILE, SENTENCEPIECE_FILE = "tokenizer.json", "tokenizer.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
DONE_TOKENS = ("<continue>", "<done>")


class TokenizerFilesError(FileNotFoundError):
    """A checkpoint directory without a usable tokenizer (the message names the files expected)."""


def check_tokenizer_files(path: str | Path) -> str:
    """The tokenizer file a checkpoint directory holds (``tokenizer.json`` preferred, else ``tokenizer.model``), or a
    :class:`TokenizerFilesError` naming the files expected (also where only a sentencepiece model is there and the
    ``sentencepiece`` package is not installed). Cheap: call it before loading weights."""
    d = Path(path)
    if (d / FAST_TOKENIZER_FILE).is_file():
        found = FAST_TOKENIZER_FILE
    elif (d / SENTENCEPIECE_FILE).is_file():
        if importlib.util.find_spec("sentencepiece") is None:
            raise TokenizerFilesError(f"{d}: its tokenizer is a sentencepiece model ({SENTENCEPIECE_FILE}, no "
                                      f"{FAST_TOKENIZER_FILE}), which needs the sentencepiece package: pip install "
                                      "sentencepiece (listed in requirements/core.txt)")
        found = SENTENCEPIECE_FILE
    else:
        present = sorted(p.name for p in d.iterdir() if "token" in p.name) if d.is_dir() else []
        raise TokenizerFilesError(
            f"{d}: no tokenizer: expected {FAST_TOKENIZER_FILE} (a fast tokenizer) or {SENTENCEPIECE_FILE} (a "
            f"sentencepiece model), with {TOKENIZER_CONFIG_FILE}; found {', '.join(present) or 'no tokenizer files'}. "
            "Copy the tokenizer files of the model it was trained from (for OpenVLA fine-tunes: those of "
            "openvla/openvla-7b) into the directory")
    if not (d / TOKENIZER_CONFIG_FILE).is_file():
        log.warning("%s: no %s beside %s: special tokens (BOS/EOS/pad) are unknown", d, TOKENIZER_CONFIG_FILE, found)
    return found


def _sentencepiece_tokenizer_class(path: Path) -> type:
    """The transformers class ``tokenizer_config.json`` names (no remote code), else Llama's: the sentencepiece
    tokenizer of every Prismatic/OpenVLA checkpoint."""
    import transformers

    cfg_file = path / TOKENIZER_CONFIG_FILE
    name = json.loads(cfg_file.read_text()).get("tokenizer_class") if cfg_file.is_file() else None
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    if isinstance(cls, type) and issubclass(cls, PreTrainedTokenizerBase):
        return cls
    return transformers.LlamaTokenizer


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer: ``tokenizer.json`` as is (no auto-class lookup of the config, which would ask
    about remote code for directories exported with it), else ``tokenizer.model`` through transformers' conversion."""
    d = Path(path)
    found = check_tokenizer_files(d)
    try:
        if found == FAST_TOKENIZER_FILE:
            return PreTrainedTokenizerFast.from_pretrained(str(d))
        return _sentencepiece_tokenizer_class(d).from_pretrained(str(d))
    except Exception as exc:
        raise TokenizerFilesError(f"{d}: could not load its tokenizer from {found}: {exc}") from exc


@dataclass
class TokenizerInfo:
    action_vocab_size: int  # len(tokenizer): action ids are its last n_action_bins ids
    done_token_ids: list[int]  # [continue_id, done_id]


def build_tokenizer(texts: Iterable[str], text_vocab_size: int = 512, n_action_bins: int = 256,
                    ) -> tuple[PreTrainedTokenizerFast, TokenizerInfo]:
    """Train a byte-level BPE on ``texts`` (plus the prompt template) and reserve the done/action ids last."""
    corpus = [build_prompt(t, PROMPT_TEMPLATE) for t in texts if t.strip()] or [PROMPT_TEMPLATE]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=text_vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", padding_side="left")
    fast.add_tokens(list(DONE_TOKENS), special_tokens=True)
    fast.add_tokens([f"<act_{i}>" for i in range(n_action_bins - 1, -1, -1)], special_tokens=True)
    done_ids = [fast.convert_tokens_to_ids(t) for t in DONE_TOKENS]
    info = TokenizerInfo(action_vocab_size=len(fast), done_token_ids=done_ids)
    # action ids must be exactly the last n_action_bins ids
    assert fast.convert_tokens_to_ids("<act_0>") == info.action_vocab_size - 1
    return fast, info
