"""``native`` backend: the project's Prismatic VLA, from its own or OpenVLA-format checkpoint directories.

``path`` is a checkpoint directory, or ``preset:<name>`` for random weights (benchmarks; small presets get a
tokenizer built here). Options: ``device`` (auto/cpu/cuda), ``dtype``, ``quantization`` (none/8bit/4bit),
``adapter`` (+ ``merge_adapter``), ``unnorm_key``, ``center_crop``, ``fast`` (static cache + CUDA graphs for
batch-1 decoding; off = the plain dynamic-cache loop).
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

import numpy as np
import torch

from vla_ros.conventions import ActionSpace
from vla_ros.models.prismatic.checkpoint import load_model, random_model
from vla_ros.models.prismatic.fast_decode import StaticGreedyDecoder
from vla_ros.models.prismatic.modeling_prismatic import PrismaticForActionPrediction
from vla_ros.models.prismatic.presets import make_config
from vla_ros.models.prismatic.processor_prismatic import PrismaticProcessor, check_image
from vla_ros.normalization import identity_statistics
from vla_ros.policy import Policy, PolicyMetadata, PolicyOutput

log = logging.getLogger(__name__)
# Instruction-like text for the tokenizer of random-weight presets, so prompts have realistic token counts
# (about 20, as with Llama-2's tokenizer) and benchmark prefill lengths match OpenVLA's.
BENCH_INSTRUCTIONS = [
    f"{verb} the {obj} {where}" for verb in ("pick up", "put", "place", "push", "open", "close", "turn on")
    for obj in ("black bowl", "plate", "ramekin", "wine bottle", "cream cheese", "top drawer of the cabinet",
                "alphabet soup", "tomato sauce", "stove", "ketchup", "butter", "milk", "orange juice")
    for where in ("", "and place it on the plate", "between the plate and the ramekin", "in the basket",
                  "on top of the cabinet", "next to the cookie box", "on the stove")
]
_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
           "fp32": torch.float32, "float32": torch.float32}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; known: {sorted(_DTYPES)}") from None


class PrismaticPolicy(Policy):
    """:class:`~vla_ros.policy.Policy` over a :class:`PrismaticForActionPrediction` and its processor.

    With ``action_chunk`` K > 1 one model call yields K actions: single-image calls return them one per call
    from a queue (``reset()`` clears it); ``done`` is reported with the chunk's last action."""

    def __init__(self, model: PrismaticForActionPrediction, processor: PrismaticProcessor,
                 unnorm_key: str | None = None, fast: bool = True, model_id: str = "", compile: bool = False):
        self.model = model
        self.processor = processor
        cfg = model.config
        self.normalizer = model.get_normalizer(unnorm_key)  # fails now, listing the keys, if ambiguous
        self.unnorm_key = unnorm_key or next(iter(cfg.norm_stats))
        self.device = model.get_input_embeddings().weight.device
        self.fast = bool(fast)
        self.compile = bool(compile)
        self._decoder: StaticGreedyDecoder | None = None
        self._queue: deque[PolicyOutput] = deque()
        # consecutive model decisions that said done; the policy declares done at config.done_confirmations
        self._done_streak = 0
        self.metadata = PolicyMetadata(
            model_id=model_id or "native",
            action_space=ActionSpace.from_dict(cfg.action_space),
            gripper_convention=cfg.gripper_convention,
            image_flip=cfg.image_flip,
            image_size=cfg.image_size,
            action_dim=cfg.action_dim,
            predicts_done=cfg.predict_done,
            extra_images=tuple(cfg.extra_images),
            proprio_layout=(cfg.proprio_stats or {}).get("layout", ""),
            extra={"unnorm_key": self.unnorm_key, "action_chunk": cfg.action_chunk, "backend": "native",
                   "center_crop": processor.center_crop, "action_head": cfg.action_head,
                   "parallel_decoding": cfg.parallel_decoding},
        )
        if cfg.parallel_decoding and self.fast:  # fast_decode.py decodes token by token only
            log.info("%s: parallel decoding (%s head, %d slots) runs the plain forward pass, one per call; the "
                     "CUDA-graph fast path is not built for it yet", model_id or "native", cfg.action_head,
                     cfg.n_action_tokens)
            self.fast = False

    def set_unnorm_key(self, unnorm_key: str | None) -> None:
        """Switch to another dataset's statistics of this checkpoint (raises, listing the keys, if unknown)."""
        self.normalizer = self.model.get_normalizer(unnorm_key)
        self.unnorm_key = unnorm_key or next(iter(self.model.config.norm_stats))
        self.metadata.extra["unnorm_key"] = self.unnorm_key

    def decode_tokens(self, images: list[np.ndarray], instructions: list[str], fast: bool | None = None, *,
                      extra_images: dict[str, list[np.ndarray]] | None = None,
                      proprios: list[np.ndarray] | None = None) -> np.ndarray:
        """(B, n_tokens) greedy token ids for the inputs."""
        images = [check_image(i) for i in images]
        prompts = [self.processor.prompt(t) for t in instructions]
        ids, mask = (t.to(self.device) for t in self.processor.tokenize(prompts))
        if self.needs_extra_inputs:
            # small multi-camera/proprio models: the plain decode (the graph path is built for one camera)
            pix = self.processor.model_pixel_values(images, extra_images).to(self.device)
            proprio = self.processor.proprio_values(proprios, len(images))
            with torch.inference_mode():
                return self.model.generate_action_tokens(
                    ids, pix, mask, None if proprio is None else proprio.to(self.device)).cpu().numpy()
        use_fast = (self.fast if fast is None else fast) and ids.shape[0] == 1
        use_fast = use_fast and not self.model.config.parallel_decoding  # the graphs decode token by token only
        with torch.inference_mode():
            if use_fast and self.processor.shared_resize:
                # resized uint8 goes to the device; normalisation runs there, inside the prefill graph
                raw = self.processor.resized_uint8(images).to(self.device)
                tokens = self._fast_decoder().generate(ids, raw, pixel_fn=self.processor.normalize)
            elif use_fast:
                tokens = self._fast_decoder().generate(ids, self.processor.pixel_values(images).to(self.device))
            else:
                pix = self.processor.pixel_values(images).to(self.device)
                tokens = self.model.generate_action_tokens(ids, pix, mask)
        return tokens.cpu().numpy()

    def decode_parallel(self, images: list[np.ndarray], instructions: list[str], *,
                        extra_images: dict[str, list[np.ndarray]] | None = None,
                        proprios: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Parallel-decoding models: normalised actions (B, K, D) and done decisions (B,) of one forward pass."""
        images = [check_image(i) for i in images]
        prompts = [self.processor.prompt(t) for t in instructions]
        ids, mask = (t.to(self.device) for t in self.processor.tokenize(prompts))
        pix = self.processor.model_pixel_values(images, extra_images).to(self.device)
        proprio = self.processor.proprio_values(proprios, len(images))
        with torch.inference_mode():
            return self.model.predict_parallel(ids, pix, mask, None if proprio is None else proprio.to(self.device))

    def _fast_decoder(self) -> StaticGreedyDecoder:
        if self._decoder is None:
            self._decoder = StaticGreedyDecoder(self.model, compile=self.compile)
        return self._decoder

    def act_batch(self, images: list[np.ndarray], instructions: list[str], *,
                  extra_images: dict[str, list[np.ndarray]] | None = None,
                  proprios: list[np.ndarray] | None = None) -> list[PolicyOutput]:
        if len(images) != len(instructions) or not images:
            raise ValueError(f"need as many images as instructions (>0), got {len(images)} and {len(instructions)}")
        if len(images) == 1 and self._queue:
            return [self._queue.popleft()]
        if self.model.config.parallel_decoding:
            actions, done = self.decode_parallel(images, instructions, extra_images=extra_images, proprios=proprios)
        else:
            tokens = self.decode_tokens(images, instructions, extra_images=extra_images, proprios=proprios)
            actions, done = self.model.tokens_to_actions(tokens)
        actions = self.normalizer.unnormalize(actions)  # (B, K, D) float64
        chunk = actions.shape[1]
        if len(images) == 1:
            # An isolated "done" is more often a misjudged frame than the end of the task: with
            # done_confirmations N the episode ends only after N decisions in a row said so (the actions of
            # the unconfirmed ones are executed as usual). Batched calls have no episode, hence no streak.
            self._done_streak = self._done_streak + 1 if done[0] else 0
            done = np.array([self._done_streak >= self.model.config.done_confirmations])
        if len(images) == 1 and chunk > 1:
            outs = [PolicyOutput(actions[0, k].copy(), done=bool(done[0]) and k == chunk - 1, actions=actions[0].copy(),
                                 chunk_index=k) for k in range(chunk)]
            self._queue.extend(outs[1:])
            return [outs[0]]
        return [PolicyOutput(actions[b, 0].copy(), done=bool(done[b]), actions=actions[b].copy() if chunk > 1 else None)
                for b in range(len(images))]

    def reset(self) -> None:
        self._queue.clear()
        self._done_streak = 0

    def close(self) -> None:
        self._decoder = None
        self.model = None  # type: ignore[assignment]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def random_policy(preset: str, device: str | None = "auto", dtype: torch.dtype | None = None,
                  quantization: str | None = "none", seed: int = 0, fast: bool = True, compile: bool = False,
                  ) -> PrismaticPolicy:
    """A policy with random weights for a preset (benchmarks, smoke tests); identity action statistics."""
    from vla_ros.models.tokenization import build_tokenizer

    # A tokenizer of our own (no Llama-2 tokenizer offline); openvla-7b keeps its 32000-id action layout.
    tok, info = build_tokenizer(BENCH_INSTRUCTIONS, text_vocab_size=1000)
    if preset == "openvla-7b":
        cfg = make_config(preset, prompt_suffix_token_id=None)
    else:
        cfg = make_config(preset, action_vocab_size=info.action_vocab_size)
    cfg.norm_stats = identity_statistics(cfg.action_dim, "random")
    model = random_model(cfg, device=device, dtype=dtype, quantization=quantization, seed=seed)
    return PrismaticPolicy(model, PrismaticProcessor(tok, cfg), fast=fast, model_id=f"preset:{preset}:random",
                           compile=compile)


def load(path: str | None = None, device: str | None = "auto", dtype: str | torch.dtype | None = None,
         quantization: str | None = "none", adapter: str | None = None, merge_adapter: bool = False,
         unnorm_key: str | None = None, center_crop: bool | None = None, fast: bool = True, seed: int = 0,
         compile: bool = False, threads: int | None = None, done_threshold: float | None = None,
         done_confirmations: int | None = None) -> PrismaticPolicy:
    """``done_threshold``: probability the done token needs (against continue) to count as a done decision;
    ``done_confirmations``: consecutive done decisions that end the episode. None: the checkpoint's
    ``config.done_threshold`` / ``config.done_confirmations`` (defaults 0.5 and 1: the plain argmax)."""
    if threads:  # CPU: on a loaded 2-core machine 1 thread avoids OpenMP spin-waiting (see docs/core.md)
        torch.set_num_threads(int(threads))
    if not path:
        raise ValueError("the native backend needs a checkpoint directory or 'preset:<name>'")
    if str(path).startswith("preset:"):
        return random_policy(str(path).split(":", 1)[1], device=device, dtype=parse_dtype(dtype),
                             quantization=quantization, seed=seed, fast=fast, compile=compile)
    model, processor = load_model(path, device=device, dtype=parse_dtype(dtype), quantization=quantization,
                                  adapter=adapter, merge_adapter=merge_adapter, center_crop=center_crop)
    if done_threshold is not None:
        if not 0.0 < float(done_threshold) < 1.0:
            raise ValueError(f"done_threshold must be in (0, 1), got {done_threshold}")
        model.config.done_threshold = float(done_threshold)
    if done_confirmations is not None:
        if int(done_confirmations) < 1:
            raise ValueError(f"done_confirmations must be >= 1, got {done_confirmations}")
        model.config.done_confirmations = int(done_confirmations)
    return PrismaticPolicy(model, processor, unnorm_key=unnorm_key, fast=fast, model_id=str(Path(path).name),
                           compile=compile)
