"""Small tokenizers built here (no Llama-2 tokenizer can be downloaded): for tests and from-scratch presets.

:func:`build_tokenizer` trains a byte-level BPE on the given texts (so any instruction is encodable) and then
appends the reserved ids at the *end* of the vocabulary, as OpenVLA's layout requires: the two episode-end ids
(``<continue>``, ``<done>``) and then the ``n_action_bins`` action ids, so that ``vocab_size - bin`` (OpenVLA's
action token) lands on them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from vla_ros.models.prismatic.configuration_prismatic import PROMPT_TEMPLATE

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
DONE_TOKENS = ("<continue>", "<done>")


@dataclass
class TokenizerInfo:
    action_vocab_size: int  # len(tokenizer): action ids are its last n_action_bins ids
    done_token_ids: list[int]  # [continue_id, done_id]


def build_tokenizer(texts: Iterable[str], text_vocab_size: int = 512, n_action_bins: int = 256,
                    ) -> tuple[PreTrainedTokenizerFast, TokenizerInfo]:
    """Train a byte-level BPE on ``texts`` (plus the prompt template) and reserve the done/action ids last."""
    corpus = [PROMPT_TEMPLATE.format(instruction=t.lower()) for t in texts] or [PROMPT_TEMPLATE]
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
