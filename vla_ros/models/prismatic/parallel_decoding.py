"""Parallel decoding (OpenVLA-OFT, Kim et al. 2025): all action slots in one pass through the same Llama layers.

Layout: ``[BOS, patches (+ proprio), prompt..., slot_1 ... slot_N]``, N = ``config.n_action_tokens`` (K x
action_dim action slots, then the done slot of ``predict_done`` models), the slots' inputs being the learned
:class:`~vla_ros.models.prismatic.action_heads.ActionSlots` embeddings and their position ids continuing the
prompt's. One 4-D attention mask makes the shared ``LlamaModel`` causal over the prompt (its hidden states are
those of the sequential model) and bidirectional among the slots, which see the whole prompt and each other;
padding is never attended. Prompts are left padded (the processor's ``tokenize``) when acting and training, but
the mask and the position ids hold for any padding.

Reading the slots: the ``tokens`` head takes the LM head's argmax at each action slot (OpenVLA's 256 bins); the
``l1`` head regresses the normalised actions. The done slot is read through the LM head for both heads,
restricted to ``done_token_ids`` and thresholded at ``config.done_threshold``, as the sequential done token is.
The CUDA-graph fast path (``fast_decode.py``) decodes token by token only; these models run this plain forward.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BatchFeature

from vla_ros.models.prismatic.action_heads import ParallelActionOutput

# The decoding options a fine-tuned adapter changes in its base (written by training/finetune.py next to the
# adapter, applied to the base's config before the adapter loads).
DECODING_FILE = "action_decoding.json"
DECODING_KEYS = ("action_head", "parallel_decoding", "action_chunk")


def slot_attention_mask(prompt_mask: torch.Tensor, n_slots: int, dtype: torch.dtype, additive: bool
                        ) -> torch.Tensor:
    """(B, 1, T, T) mask over ``prompt_mask`` (B, P; 1 = real token) followed by ``n_slots`` slots.

    Query i may attend key j when j is real and (j <= i, or both are slots). A padding query also attends
    itself, so no softmax row is empty (its output is never read). ``additive``: 0 / dtype-min floats (eager
    attention adds the mask) instead of booleans (True = attend, as SDPA takes them)."""
    b, p = prompt_mask.shape
    t = p + n_slots
    dev = prompt_mask.device
    real = torch.cat([prompt_mask.bool(), torch.ones((b, n_slots), dtype=torch.bool, device=dev)], dim=1)
    idx = torch.arange(t, device=dev)
    is_slot = idx >= p
    pattern = (idx[None, :] <= idx[:, None]) | (is_slot[:, None] & is_slot[None, :])
    allowed = (pattern[None] & real[:, None, :]) | torch.eye(t, dtype=torch.bool, device=dev)[None]
    allowed = allowed[:, None]
    if not additive:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=dev).masked_fill(~allowed, torch.finfo(dtype).min)


def slot_inputs(model, input_ids: torch.Tensor, pixel_values: torch.Tensor, attention_mask: torch.Tensor | None,
                proprio: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs_embeds, 4-D attention mask, position_ids) of the prompt followed by the action slots."""
    impl = str(model.language_model.config._attn_implementation or "sdpa")
    if impl.startswith("flash"):
        raise ValueError(f"parallel decoding needs a custom 4-D attention mask, which {impl!r} cannot take; "
                         "load the model with attn_implementation='sdpa' or 'eager'")
    embeds, mask = model.build_inputs(input_ids, pixel_values, attention_mask, proprio)
    n = model.config.n_action_tokens
    slots = model.action_slots(embeds.shape[0]).to(embeds.dtype)
    real = mask.long()
    pos_prompt = (real.cumsum(-1) - 1).clamp(min=0)
    pos_slots = real.sum(-1, keepdim=True) + torch.arange(n, device=real.device)[None]
    mask4d = slot_attention_mask(mask, n, embeds.dtype, additive=impl == "eager")
    return torch.cat([embeds, slots], dim=1), mask4d, torch.cat([pos_prompt, pos_slots], dim=1)


def slot_loss(config, logits: torch.Tensor | None, actions: torch.Tensor | None, labels: torch.Tensor | None,
              action_targets: torch.Tensor | None) -> torch.Tensor:
    """``tokens``: cross-entropy of every slot against ``labels`` (B, n_slots), -100 ignored (the torch
    default); ``l1``: mean |actions - action_targets| over (B, K, D), plus the done slot's cross-entropy."""
    n_act = config.action_dim * config.action_chunk
    if config.action_head == "tokens":
        if labels is None:
            raise ValueError("the tokens head trains on labels (the slots' token ids)")
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten().to(logits.device))
    if action_targets is None:
        raise ValueError("the l1 head trains on action_targets (normalised actions, (B, K, action_dim))")
    loss = F.l1_loss(actions.float(), action_targets.to(actions.device, torch.float32))
    if config.predict_done:
        if labels is None:
            raise ValueError("the done slot trains on labels[:, -1] (continue or done id)")
        loss = loss + F.cross_entropy(logits[:, 0].float(), labels[:, n_act].to(logits.device))
    return loss


def parallel_forward(model, input_ids: torch.Tensor, pixel_values: torch.Tensor,
                     attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                     proprio: torch.Tensor | None = None, action_targets: torch.Tensor | None = None,
                     ) -> ParallelActionOutput:
    """One forward pass over prompt + slots: slot logits / l1 actions, and the loss when targets are given."""
    cfg = model.config
    embeds, mask4d, position_ids = slot_inputs(model, input_ids, pixel_values, attention_mask, proprio)
    hidden = model.language_model.model(inputs_embeds=embeds, attention_mask=mask4d, position_ids=position_ids,
                                        use_cache=False).last_hidden_state
    slot_h = hidden[:, -cfg.n_action_tokens:]
    n_act = cfg.action_dim * cfg.action_chunk
    lm_head = model.language_model.lm_head
    if cfg.action_head == "tokens":
        logits, actions = lm_head(slot_h), None
    else:
        actions = model.l1_head(slot_h[:, :n_act])
        logits = lm_head(slot_h[:, n_act:]) if cfg.predict_done else None
    loss = None
    if labels is not None or action_targets is not None:
        loss = slot_loss(cfg, logits, actions, labels, action_targets)
    return ParallelActionOutput(loss=loss, logits=logits, actions=actions, slot_hidden_states=slot_h)


def done_decisions(config, done_logits: torch.Tensor) -> torch.Tensor:
    """(B,) bool: P(done) against continue above ``config.done_threshold`` at the done slot (B, vocab)."""
    ids = torch.tensor(config.done_token_ids, device=done_logits.device)
    return torch.softmax(done_logits[:, ids].float(), dim=-1)[:, 1] > config.done_threshold


def slot_token_ids(config, out: ParallelActionOutput) -> torch.Tensor:
    """(B, n_action_tokens) ids of a ``tokens``-head output: unconstrained argmax per action slot (as OpenVLA),
    then the continue/done id."""
    n_act = config.action_dim * config.action_chunk
    tokens = out.logits[:, :n_act].argmax(-1)
    if not config.predict_done:
        return tokens
    ids = torch.tensor(config.done_token_ids, device=tokens.device)
    return torch.cat([tokens, ids[done_decisions(config, out.logits[:, n_act]).long()][:, None]], dim=1)


@torch.no_grad()
def predict_parallel(model, input_ids: torch.Tensor, pixel_values: torch.Tensor,
                     attention_mask: torch.Tensor | None = None, proprio: torch.Tensor | None = None,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Normalised actions (B, K, action_dim) float64 in [-1, 1] and done flags (B,) of one parallel pass."""
    cfg = model.config
    out = parallel_forward(model, input_ids, pixel_values, attention_mask, proprio=proprio)
    if cfg.action_head == "tokens":
        return model.tokens_to_actions(slot_token_ids(cfg, out).cpu().numpy())
    actions = out.actions.float().clamp(-1.0, 1.0).cpu().numpy().astype(np.float64)
    if cfg.predict_done:
        done = done_decisions(cfg, out.logits[:, 0]).cpu().numpy()
    else:
        done = np.zeros(actions.shape[0], dtype=bool)
    return actions, done


def parallel_training_batch(processor, images: list[np.ndarray], instructions: list[str], slot_labels: np.ndarray,
                            action_targets: np.ndarray | None = None,
                            extra_images: dict[str, list[np.ndarray]] | None = None,
                            proprios: list[np.ndarray] | None = None) -> BatchFeature:
    """A training batch in the layout :func:`parallel_forward` reads when acting: the prompt left padded (the
    processor's ``tokenize``), ``labels`` = the slots' target ids (B, n_slots: action tokens, then the
    continue/done id), and for the l1 head ``action_targets`` (B, K, action_dim) normalised actions."""
    labels = torch.as_tensor(np.asarray(slot_labels, dtype=np.int64))
    if labels.ndim != 2 or labels.shape[0] != len(instructions):
        raise ValueError(f"slot_labels must be (batch, n_slots), got {tuple(labels.shape)}")
    ids, mask = processor.tokenize([processor.prompt(t) for t in instructions])
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels,
             "pixel_values": processor.model_pixel_values(images, extra_images)}
    if action_targets is not None:
        batch["action_targets"] = torch.as_tensor(np.asarray(action_targets, dtype=np.float32))
    proprio = processor.proprio_values(proprios, len(images))
    if proprio is not None:
        batch["proprio"] = proprio
    return BatchFeature(batch)


def decoding_options(config) -> dict:
    return {k: getattr(config, k) for k in DECODING_KEYS}


def write_decoding_options(config, directory: str | Path) -> Path:
    """Record ``config``'s decoding options in ``directory`` (an adapter directory)."""
    path = Path(directory) / DECODING_FILE
    path.write_text(json.dumps(decoding_options(config), indent=2) + "\n")
    return path


def apply_decoding_options(config, directory: str | Path | None) -> bool:
    """Set the decoding options recorded in ``directory`` (if it has any) on ``config``; True when it had."""
    path = Path(directory) / DECODING_FILE if directory else None
    if path is None or not path.is_file():
        return False
    opts = json.loads(path.read_text())
    unknown = set(opts) - set(DECODING_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown decoding options {sorted(unknown)}")
    config.set_action_decoding(opts.get("action_head"), opts.get("parallel_decoding"), opts.get("action_chunk"))
    return True
