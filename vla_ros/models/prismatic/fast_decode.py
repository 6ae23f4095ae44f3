"""Fast greedy action decoding: static KV cache and (on CUDA) CUDA graphs of the whole action call.

Token-by-token decoding of a 7B model at batch 1 is bound by kernel launches in eager PyTorch (OpenVLA's own
implementation: ~157 ms per action on an H100 where reading the weights 7 times takes ~31 ms). Here the KV cache is
transformers' ``StaticCache`` (fixed addresses), the attention masks are our own fixed-size boolean buffers, and
two CUDA graphs replace the launches: one *prefill* graph per prompt length (vision towers, projector, prompt
through the decoder, first token) and one *decode-step* graph (embedding -> layers -> logits -> argmax -> feed
back), replayed ``n - 1`` times with no host sync in between.

Greedy choices follow :meth:`PrismaticForActionPrediction.select_token`; the eager run of the same static path
(``cuda_graph=False``) is the reference the graphs must match token for token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import StaticCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from vla_ros.models.prismatic.modeling_prismatic import PrismaticForActionPrediction

log = logging.getLogger(__name__)


def fuse_projections_(lm: nn.Module) -> bool:
    """Store each layer's q/k/v and gate/up weights in one tensor (the Linear weights become views of it, so
    no memory is added and training/saving see the usual parameters). Returns False where it can't apply
    (quantized or adapter-wrapped layers)."""
    for layer in lm.model.layers:
        a, m = layer.self_attn, layer.mlp
        mods = (a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj)
        if any(type(x) is not nn.Linear or x.bias is not None for x in mods):
            return False
    for layer in lm.model.layers:
        a, m = layer.self_attn, layer.mlp
        for group, name in (((a.q_proj, a.k_proj, a.v_proj), "_fused_qkv"), ((m.gate_proj, m.up_proj), "_fused_gu")):
            if getattr(layer, name, None) is not None:
                continue
            fused = torch.cat([x.weight.data for x in group], dim=0)
            start = 0
            for x in group:
                n = x.weight.shape[0]
                x.weight = nn.Parameter(fused[start:start + n], requires_grad=x.weight.requires_grad)
                start += n
            object.__setattr__(layer, name, fused)  # plain attribute: not a second parameter
    return True


def fused_decode_step(lm: nn.Module, cache: StaticCache, tok: torch.Tensor, pos: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
    """One batch-1 decode step of a Llama decoder with fused q/k/v and gate/up projections (fewer, larger
    matrix-vector products: the step is bound by reading the weights). Writes K/V at slot ``pos`` of the
    static cache; returns the logits (1, vocab). Same function as the transformers layers, other kernels."""
    model = lm.model
    cfg = model.config
    h = model.embed_tokens(tok)
    cos, sin = model.rotary_emb(h, position_ids=pos)
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // nh
    slot = pos.view(-1)
    for layer, cl in zip(model.layers, cache.layers, strict=False):
        a = layer.self_attn
        x = layer.input_layernorm(h)
        q, k, v = F.linear(x, layer._fused_qkv).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
        q = q.view(1, 1, nh, hd).transpose(1, 2)
        k = k.view(1, 1, nkv, hd).transpose(1, 2)
        v = v.view(1, 1, nkv, hd).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        cl.keys.index_copy_(2, slot, k)
        cl.values.index_copy_(2, slot, v)
        o = F.scaled_dot_product_attention(q, cl.keys, cl.values, attn_mask=mask, scale=a.scaling,
                                           enable_gqa=nkv != nh)
        h = h + a.o_proj(o.transpose(1, 2).reshape(1, 1, nh * hd))
        x = layer.post_attention_layernorm(h)
        g, u = F.linear(x, layer._fused_gu).chunk(2, dim=-1)
        h = h + layer.mlp.down_proj(layer.mlp.act_fn(g) * u)
    return lm.lm_head(model.norm(h))[:, -1]


@dataclass
class _Prefill:
    ids: torch.Tensor  # (1, L) static input ids
    causal: torch.Tensor  # (1, 1, P, max_len) bool mask of the prompt
    graph: torch.cuda.CUDAGraph | None = None


class StaticGreedyDecoder:
    """Batch-1 greedy decoder over a static cache; with ``cuda_graph`` it replays captured graphs."""

    def __init__(self, model: PrismaticForActionPrediction, max_text_tokens: int = 128,
                 cuda_graph: bool | None = None, max_graphs: int = 16, compile: bool | str = False,
                 fused: bool = True):
        self.model = model
        self.lm = model.language_model
        cfg = model.config
        self.n = cfg.n_action_tokens
        # cache slots: image patches + the longest text prompt + the decoded tokens (small: it is GPU memory)
        self.max_len = model.vision_backbone.num_patches + max_text_tokens + self.n
        self.max_len = -(-self.max_len // 64) * 64  # aligned rows let SDPA's fused kernels take the mask
        self.device = model.get_input_embeddings().weight.device
        self.use_graph = (self.device.type == "cuda") if cuda_graph is None else bool(cuda_graph)
        if self.use_graph and self.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self.max_graphs = max_graphs  # one prefill graph per prompt length; oldest dropped beyond this
        self.cache = StaticCache(config=cfg.text_config, max_cache_len=self.max_len)
        # decode step: fused projections where the weights allow it (plain bf16/fp32 Linear layers)
        self.fused = bool(fused) and fuse_projections_(self.lm)
        if self.fused:
            def step() -> torch.Tensor:
                return fused_decode_step(self.lm, self.cache, self.tok, self.pos, self.mask)
        else:
            def step() -> torch.Tensor:
                out = self.lm(input_ids=self.tok, position_ids=self.pos, attention_mask=self.mask,
                              past_key_values=self.cache, use_cache=True)
                return out.logits[:, -1]
        # optional: inductor-fused elementwise work (norms, rotary, residuals) inside our own CUDA graphs;
        # compile="max-autotune" also tunes the matrix-vector kernels and compiles the prompt pass (any length)
        mode = "max-autotune-no-cudagraphs" if compile == "max-autotune" else None
        self._step = torch.compile(step, dynamic=False, mode=mode) if compile else step
        self._embed_images = (torch.compile(model.embed_images, dynamic=False, mode=mode) if compile
                              else model.embed_images)
        self._prefill_lm = torch.compile(self.lm, dynamic=True) if compile == "max-autotune" else self.lm
        d = self.device
        self.tok = torch.zeros((1, 1), dtype=torch.long, device=d)  # token fed at this step
        self.pos = torch.zeros((1, 1), dtype=torch.long, device=d)  # its position (== its cache slot)
        self.step = torch.zeros((1,), dtype=torch.long, device=d)  # index of the token this step produces
        self.mask = torch.zeros((1, 1, 1, self.max_len), dtype=torch.bool, device=d)  # True = may attend
        self.tokens = torch.zeros((self.n,), dtype=torch.long, device=d)
        self.logits = torch.zeros((1, cfg.text_config.vocab_size), dtype=torch.float32, device=d)
        self.pix: torch.Tensor | None = None
        self.pixel_fn = None  # optional in-graph map from the pixel buffer to pixel_values (GPU normalisation)
        self._prefills: dict[int, _Prefill] = {}
        self._decode_graph: torch.cuda.CUDAGraph | None = None

    # ------------------------------------------------------------------ graph bodies (no host syncs)
    def _prefill_body(self, entry: _Prefill, pix: torch.Tensor) -> None:
        if self.pixel_fn is not None:
            pix = self.pixel_fn(pix)
        for layer in self.cache.layers:
            if getattr(layer, "is_initialized", False):
                layer.cumulative_length.zero_()
        emb = self.model.get_input_embeddings()(entry.ids)  # == model.build_inputs_unpadded
        embeds = torch.cat([emb[:, :1], self._embed_images(pix).to(emb.dtype), emb[:, 1:]], dim=1)
        P = embeds.shape[1]
        out = self._prefill_lm(inputs_embeds=embeds, attention_mask=entry.causal,
                      position_ids=torch.arange(P, device=self.device)[None], past_key_values=self.cache,
                      use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1].float()
        self.logits.copy_(logits)
        first = logits.argmax(-1)  # step 0 is always an action token
        self.tokens[:1].copy_(first)
        self.tok.copy_(first.view(1, 1))
        self.pos.fill_(P)
        self.step.fill_(1)
        self.mask.zero_()
        self.mask[..., :P] = True

    def _decode_body(self) -> None:
        self.mask.index_fill_(3, self.pos.view(-1), True)
        logits = self._step().float()
        self.logits.copy_(logits)
        nxt = logits.argmax(-1)
        self.tokens.index_copy_(0, self.step, nxt)
        self.tok.copy_(nxt.view(1, 1))
        self.pos.add_(1)
        self.step.add_(1)

    # ------------------------------------------------------------------ capture
    def _state(self) -> list[torch.Tensor]:
        return [self.tok, self.pos, self.step, self.mask, self.tokens, self.logits,
                *[layer.cumulative_length for layer in self.cache.layers if layer.is_initialized]]

    def _capture(self, fn) -> torch.cuda.CUDAGraph:
        """Warm up ``fn`` on a side stream (allocator, cuBLAS handles, lazy cache), restore the state it changed,
        then capture it. Capturing runs nothing, so the caller replays the graph afterwards."""
        saved = [t.clone() for t in self._state()]
        stream = torch.cuda.Stream(device=self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        for t, s in zip(self._state(), saved, strict=False):
            t.copy_(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other threads' CUDA calls stay legal
            fn()
        return graph

    def _entry(self, input_ids: torch.Tensor) -> _Prefill:
        L = int(input_ids.shape[1])
        entry = self._prefills.get(L)
        if entry is None:
            P = L + self.model.vision_backbone.num_patches
            if P + self.n > self.max_len:
                raise ValueError(f"prompt of {L} tokens exceeds the static cache (max_text_tokens="
                                 f"{self.max_len - self.n - self.model.vision_backbone.num_patches})")
            causal = torch.zeros((1, 1, P, self.max_len), dtype=torch.bool, device=self.device)
            causal[0, 0, :, :P] = torch.ones((P, P), dtype=torch.bool, device=self.device).tril()
            if len(self._prefills) >= self.max_graphs:
                self._prefills.pop(next(iter(self._prefills)))
            entry = self._prefills[L] = _Prefill(torch.zeros_like(input_ids), causal)
        entry.ids.copy_(input_ids)
        return entry

    # ------------------------------------------------------------------ public
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, pixel_fn=None) -> torch.Tensor:
        """(1, n_tokens) greedy ids for one unpadded prompt. With ``pixel_fn``, ``pixel_values`` is a raw buffer
        (e.g. resized uint8 images) that ``pixel_fn`` turns into pixel values inside the prefill graph."""
        if pixel_fn != self.pixel_fn:  # bound methods are new objects on each access: compare by equality
            self.pixel_fn = pixel_fn
            for e in self._prefills.values():
                e.graph = None
        if input_ids.shape[0] != 1:
            raise ValueError("StaticGreedyDecoder decodes one prompt at a time")
        entry = self._entry(input_ids)
        if self.pix is None or self.pix.shape != pixel_values.shape:
            self.pix = torch.zeros_like(pixel_values)
            for e in self._prefills.values():
                e.graph = None  # captured against the old pixel buffer
        self.pix.copy_(pixel_values)
        if self.use_graph:
            try:
                if entry.graph is None:
                    if not any(getattr(layer, "is_initialized", False) for layer in self.cache.layers):
                        self._prefill_body(entry, self.pix)  # allocates the cache outside any graph
                    entry.graph = self._capture(lambda: self._prefill_body(entry, self.pix))
                entry.graph.replay()
                if self._decode_graph is None and self.n > 1:
                    self._decode_graph = self._capture(self._decode_body)
                for _ in range(self.n - 1):
                    self._decode_graph.replay()
            except Exception as exc:  # a kernel that can't be captured, a compiler error: stay correct, just slower
                log.warning("CUDA graph capture failed (%s); decoding eagerly over the static cache", exc,
                            exc_info=True)
                self.use_graph, self._decode_graph = False, None
                self._prefills.clear()
                return self.generate(input_ids, pixel_values, pixel_fn)
        else:
            self._prefill_body(entry, self.pix)
            for _ in range(self.n - 1):
                self._decode_body()
        out = self.tokens.clone()
        if self.model.config.predict_done and self.n > 1:  # the done step chooses among the two reserved ids
            out[-1] = self.model.select_token(self.logits, self.n - 1)[0]
        return out[None]
