"""Fast greedy action decoding: static KV cache and (on CUDA) CUDA graphs of the whole action call.

Token-by-token decoding of a 7B model at batch 1 is bound by kernel launches in eager PyTorch (OpenVLA's own
implementation: ~157 ms per action on an H100 where reading the weights 7 times takes ~31 ms). Here the KV cache is
transformers' ``StaticCache`` (fixed addresses), the attention masks are our own fixed-size boolean buffers, and
two CUDA graphs replace the launches: one *prefill* graph per prompt length (vision towers, projector, prompt
through the decoder, first token) and one *decode-step* graph (embedding -> layers -> logits -> argmax -> feed
back), replayed ``n - 1`` times with no host sync in between.

Greedy choices follow :meth:`PrismaticForActionPrediction.select_token`; the eager run of the same static path
(``cuda_graph=False``) is the reference the graphs must match token for token.

``compile=True`` (CUDA) runs each decoder layer as one ``torch.compile``-d function of plain tensors (one compiled
graph serves all 32 layers: quick to compile), inside the same CUDA graphs: fused norms/rotary/residuals, the
prompt's attention through SDPA's causal (flash) kernel over just the prompt, the last layer only for the last
position, and in the decode step matrix-vector products as inductor reductions tuned by coordinate descent
(``coordinate_descent_tuning``: inductor then decomposes 1-row matmuls and tunes them to near the bandwidth
floor). Other kernels, other rounding: its greedy tokens equal the eager ones wherever the choice is not a bf16
near-tie (``bench/bench_inference.py --check`` reports the margins of every mismatch).
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


# ---------------------------------------------------------------------- compiled path: layers as pure functions
def _rms(h: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm, same operations."""
    x = h.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return w * x.to(h.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """apply_rotary_pos_emb for one tensor (B, H, T, hd) with cos/sin (B, T, hd)."""
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.unsqueeze(1) + rot * sin.unsqueeze(1)


def layer_weights(layer: nn.Module) -> tuple[torch.Tensor, ...]:
    """(input norm, fused qkv, o, post-attention norm, fused gate/up, down) of a fused Llama layer."""
    return (layer.input_layernorm.weight, layer._fused_qkv, layer.self_attn.o_proj.weight,
            layer.post_attention_layernorm.weight, layer._fused_gu, layer.mlp.down_proj.weight)


def decode_layer(h, ln1, wqkv, wo, ln2, wgu, wdown, keys, values, cos, sin, slot, mask,
                 eps: float, nh: int, nkv: int, hd: int, scaling: float) -> torch.Tensor:
    """One Llama layer for one token at cache ``slot`` (writes its K/V there; attends where ``mask``)."""
    x = _rms(h, ln1, eps)
    q, k, v = F.linear(x, wqkv).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
    q = _rope(q.view(1, 1, nh, hd).transpose(1, 2), cos, sin)
    k = _rope(k.view(1, 1, nkv, hd).transpose(1, 2), cos, sin)
    keys.index_copy_(2, slot, k)
    values.index_copy_(2, slot, v.view(1, 1, nkv, hd).transpose(1, 2))
    o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scaling, enable_gqa=nkv != nh)
    h = h + F.linear(o.transpose(1, 2).reshape(1, 1, nh * hd), wo)
    g, u = F.linear(_rms(h, ln2, eps), wgu).chunk(2, dim=-1)
    return h + F.linear(F.silu(g) * u, wdown)


def prefill_layer(h, ln1, wqkv, wo, ln2, wgu, wdown, keys, values, cos, sin,
                  eps: float, nh: int, nkv: int, hd: int, scaling: float, last: bool) -> torch.Tensor:
    """One Llama layer over the whole prompt (T tokens at cache slots 0..T-1, causal). ``last``: return only the
    last position (the one whose logits are needed); K/V of all positions are still written."""
    T = h.shape[1]
    x = _rms(h, ln1, eps)
    q, k, v = F.linear(x, wqkv).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
    q = _rope(q.view(1, T, nh, hd).transpose(1, 2), cos, sin)
    k = _rope(k.view(1, T, nkv, hd).transpose(1, 2), cos, sin)
    v = v.view(1, T, nkv, hd).transpose(1, 2)
    keys[:, :, :T].copy_(k)
    values[:, :, :T].copy_(v)
    if last:  # one query that sees every key: no mask
        q, h = q[:, :, -1:], h[:, -1:]
    o = F.scaled_dot_product_attention(q, k, v, is_causal=not last, scale=scaling, enable_gqa=nkv != nh)
    h = h + F.linear(o.transpose(1, 2).reshape(1, h.shape[1], nh * hd), wo)
    g, u = F.linear(_rms(h, ln2, eps), wgu).chunk(2, dim=-1)
    return h + F.linear(F.silu(g) * u, wdown)


def lm_head_logits(h, norm_w, head_w, eps: float) -> torch.Tensor:
    """Final norm and lm_head of the last position -> (1, vocab) in the model's dtype."""
    return F.linear(_rms(h[:, -1], norm_w, eps), head_w)


def decode_head_logits(h, norm_w, head_w, eps: float) -> torch.Tensor:
    """:func:`lm_head_logits` under its own name: compiled with other options than the prefill's."""
    return lm_head_logits(h, norm_w, head_w, eps)


_COMPILED: dict[tuple, object] = {}


def _compiled(fn, compile: bool | str, decode: bool):
    """``fn`` through torch.compile, once per process (plain tensors in: one graph serves every layer and decoder
    instance). ``compile="layers-eager"``: the same functions uncompiled (debugging, CPU tests)."""
    if compile == "layers-eager":
        return fn
    options = {"coordinate_descent_tuning": True} if decode and compile is True else None
    key = (fn, decode, compile)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(fn, dynamic=False, fullgraph=True, options=options)
    return _COMPILED[key]


def _layered_ok(lm: nn.Module) -> bool:
    cfg = lm.model.config
    layer = lm.model.layers[0]
    return (getattr(cfg, "hidden_act", "silu") == "silu" and layer.self_attn.o_proj.bias is None
            and layer.mlp.down_proj.bias is None and lm.lm_head.bias is None)


@dataclass
class _Prefill:
    ids: torch.Tensor  # (1, L) static input ids
    causal: torch.Tensor  # (1, 1, P, max_len) bool mask of the prompt
    graph: torch.cuda.CUDAGraph | None = None


class StaticGreedyDecoder:
    """Batch-1 greedy decoder over a static cache; with ``cuda_graph`` it replays captured graphs."""

    def __init__(self, model: PrismaticForActionPrediction, max_text_tokens: int = 128,
                 cuda_graph: bool | None = None, max_graphs: int = 16, compile: bool | str = False,
                 fused: bool = True, keep_logits: bool = False):
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
        # compile: True (layers as compiled functions, tuned matrix-vector products in the decode step),
        # "no-cdt" (the same without coordinate-descent tuning: cuBLAS matrix-vector products), "layers-eager"
        # (the same functions uncompiled). Without fused weights (quantized, adapters): the whole step compiled.
        if compile not in (False, True, "no-cdt", "layers-eager"):
            raise ValueError(f"compile must be False, True, 'no-cdt' or 'layers-eager', not {compile!r}")
        self.compile = compile
        self.layered = bool(compile) and self.fused and _layered_ok(self.lm)
        if self.layered:
            self._decode_layer = _compiled(decode_layer, compile, decode=True)
            self._decode_head = _compiled(decode_head_logits, compile, decode=True)
            self._prefill_layer = _compiled(prefill_layer, compile, decode=False)
            self._prefill_head = _compiled(lm_head_logits, compile, decode=False)
            tcfg = cfg.text_config
            self._dims = dict(eps=float(tcfg.rms_norm_eps), nh=tcfg.num_attention_heads,
                              nkv=tcfg.num_key_value_heads,
                              hd=getattr(tcfg, "head_dim", None) or tcfg.hidden_size // tcfg.num_attention_heads,
                              scaling=float(self.lm.model.layers[0].self_attn.scaling))
            self._step = self._layered_step
        else:
            self._step = torch.compile(step, dynamic=False) if compile and compile != "layers-eager" else step
        self._embed_images = (torch.compile(model.embed_images, dynamic=False)
                              if compile and compile != "layers-eager" else model.embed_images)
        d = self.device
        self.tok = torch.zeros((1, 1), dtype=torch.long, device=d)  # token fed at this step
        self.pos = torch.zeros((1, 1), dtype=torch.long, device=d)  # its position (== its cache slot)
        self.step = torch.zeros((1,), dtype=torch.long, device=d)  # index of the token this step produces
        self.mask = torch.zeros((1, 1, 1, self.max_len), dtype=torch.bool, device=d)  # True = may attend
        self.tokens = torch.zeros((self.n,), dtype=torch.long, device=d)
        self.logits = torch.zeros((1, cfg.text_config.vocab_size), dtype=torch.float32, device=d)
        # every step's logits (checks of near-ties); off by default: one more copy per step
        self.all_logits = (torch.zeros((self.n, cfg.text_config.vocab_size), dtype=torch.float32, device=d)
                           if keep_logits else None)
        self.pix: torch.Tensor | None = None
        self.pixel_fn = None  # optional in-graph map from the pixel buffer to pixel_values (GPU normalisation)
        self._prefills: dict[int, _Prefill] = {}
        self._decode_graph: torch.cuda.CUDAGraph | None = None

    # ------------------------------------------------------------------ layered (compiled) bodies
    def _init_cache(self) -> None:
        """Allocate the static cache's K/V tensors now (the layered path writes them directly)."""
        tcfg = self.model.config.text_config
        d = self._dims
        kv = torch.zeros((1, d["nkv"], 1, d["hd"]), dtype=self.lm.lm_head.weight.dtype, device=self.device)
        for layer in self.cache.layers[: tcfg.num_hidden_layers]:
            if not getattr(layer, "is_initialized", False):
                layer.lazy_initialization(kv, kv)

    def _layered_prefill(self, embeds: torch.Tensor) -> torch.Tensor:
        self._init_cache()
        P = embeds.shape[1]
        cos, sin = self.lm.model.rotary_emb(embeds, position_ids=torch.arange(P, device=self.device)[None])
        h = embeds
        layers = self.lm.model.layers
        for i, (layer, cl) in enumerate(zip(layers, self.cache.layers, strict=False)):
            h = self._prefill_layer(h, *layer_weights(layer), cl.keys, cl.values, cos, sin, **self._dims,
                                    last=i == len(layers) - 1)
        return self._prefill_head(h, self.lm.model.norm.weight, self.lm.lm_head.weight, self._dims["eps"])

    def _layered_step(self) -> torch.Tensor:
        h = self.lm.model.embed_tokens(self.tok)
        cos, sin = self.lm.model.rotary_emb(h, position_ids=self.pos)
        slot = self.pos.view(-1)
        for layer, cl in zip(self.lm.model.layers, self.cache.layers, strict=False):
            h = self._decode_layer(h, *layer_weights(layer), cl.keys, cl.values, cos, sin, slot, self.mask,
                                   **self._dims)
        return self._decode_head(h, self.lm.model.norm.weight, self.lm.lm_head.weight, self._dims["eps"])

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
        if self.layered:
            logits = self._layered_prefill(embeds).float()
        else:
            out = self.lm(inputs_embeds=embeds, attention_mask=entry.causal,
                          position_ids=torch.arange(P, device=self.device)[None], past_key_values=self.cache,
                          use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1].float()
        self.logits.copy_(logits)
        if self.all_logits is not None:
            self.all_logits[:1].copy_(logits)
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
        if self.all_logits is not None:
            self.all_logits.index_copy_(0, self.step, logits)
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
