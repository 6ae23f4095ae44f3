"""Fast greedy action decoding: static KV cache and (on CUDA) one CUDA graph per decode step.

Token-by-token decoding of a 7B model at batch 1 is bound by kernel launches in eager PyTorch (OpenVLA's
implementation: ~157 ms per action on an H100 where reading the weights 7 times takes ~31 ms). Here the KV cache
is transformers' ``StaticCache`` (fixed addresses), the attention mask is our own fixed-size boolean buffer, and
one decode step (embedding -> 32 layers -> logits -> argmax -> feed back) is captured once as a CUDA graph and
replayed ``n - 1`` times without a host sync. The vision towers, projector and prefill run eagerly.

Greedy choices are the model's own (:meth:`PrismaticForActionPrediction.select_token` semantics); the eager
(no-graph) run of the same static path is the reference the graph must match token for token.
"""

from __future__ import annotations

import torch
from transformers import StaticCache

from vla_ros.models.prismatic.modeling_prismatic import PrismaticForActionPrediction


class StaticGreedyDecoder:
    """Batch-1 greedy decoder over a static cache; ``cuda_graph`` replays a captured decode step."""

    def __init__(self, model: PrismaticForActionPrediction, max_prompt_tokens: int = 640,
                 cuda_graph: bool | None = None):
        self.model = model
        self.lm = model.language_model
        cfg = model.config
        self.n = cfg.n_action_tokens
        self.max_len = max_prompt_tokens + self.n
        self.device = model.get_input_embeddings().weight.device
        self.use_graph = (self.device.type == "cuda") if cuda_graph is None else bool(cuda_graph)
        if self.use_graph and self.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self.cache = StaticCache(config=cfg.text_config, max_cache_len=self.max_len)
        d = self.device
        self.tok = torch.zeros((1, 1), dtype=torch.long, device=d)  # token fed at this step
        self.pos = torch.zeros((1, 1), dtype=torch.long, device=d)  # its position (== its cache slot)
        self.step = torch.zeros((1,), dtype=torch.long, device=d)  # index of the token this step produces
        self.mask = torch.zeros((1, 1, 1, self.max_len), dtype=torch.bool, device=d)  # True = may attend
        self.tokens = torch.zeros((self.n,), dtype=torch.long, device=d)
        self.logits = torch.zeros((1, cfg.text_config.vocab_size), dtype=torch.float32, device=d)
        self.graph: torch.cuda.CUDAGraph | None = None

    def _reset_cache(self) -> None:
        for layer in self.cache.layers:
            if getattr(layer, "is_initialized", False):
                layer.cumulative_length.zero_()

    def _decode_step(self) -> None:
        """One token: all in-place on fixed buffers, no host sync (the body of the CUDA graph)."""
        self.mask.index_fill_(3, self.pos.view(-1), True)
        out = self.lm(input_ids=self.tok, position_ids=self.pos, attention_mask=self.mask,
                      past_key_values=self.cache, use_cache=True)
        logits = out.logits[:, -1].float()
        self.logits.copy_(logits)
        nxt = logits.argmax(-1)
        self.tokens.index_copy_(0, self.step, nxt)
        self.tok.copy_(nxt.view(1, 1))
        self.pos.add_(1)
        self.step.add_(1)

    def _capture(self) -> None:
        stream = torch.cuda.Stream(device=self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        state = [self.tok, self.pos, self.step, self.mask,
                 *[layer.cumulative_length for layer in self.cache.layers if layer.is_initialized]]
        saved = [t.clone() for t in state]
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up: allocator, cuBLAS handles, lazy cache init
                self._decode_step()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        for t, s in zip(state, saved, strict=True):  # the warm-up steps must not count
            t.copy_(s)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._decode_step()

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> int:
        """Vision + projector + prompt through the decoder; sets up the buffers for the first decode step."""
        if input_ids.shape[0] != 1:
            raise ValueError("StaticGreedyDecoder decodes one prompt at a time")
        embeds, _ = self.model.build_inputs(input_ids, pixel_values)
        P = embeds.shape[1]
        if P + self.n > self.max_len:
            raise ValueError(f"prompt of {P} embeddings exceeds the static cache ({self.max_len - self.n})")
        self._reset_cache()
        causal = torch.zeros((1, 1, P, self.max_len), dtype=torch.bool, device=self.device)
        causal[0, 0, :, :P] = torch.ones((P, P), dtype=torch.bool, device=self.device).tril()
        out = self.lm(inputs_embeds=embeds, attention_mask=causal,
                      position_ids=torch.arange(P, device=self.device)[None], past_key_values=self.cache,
                      use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1].float()
        self.logits.copy_(logits)
        first = self.model.select_token(logits, 0)
        self.tokens[0] = first[0]
        self.tok.copy_(first.view(1, 1))
        self.pos.fill_(P)
        self.step.fill_(1)
        self.mask.zero_()
        self.mask[..., :P] = True
        return P

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """(1, n_tokens) greedy ids."""
        self.prefill(input_ids, pixel_values)
        if self.use_graph and self.graph is None and self.n > 1:
            self._capture()
        for _ in range(self.n - 1):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._decode_step()
        out = self.tokens.clone()
        if self.model.config.predict_done and self.n > 1:  # the done step chooses among the two reserved ids
            out[-1] = self.model.select_token(self.logits, self.n - 1)[0]
        return out[None]
