"""OpenVLA's action discretisation, exactly (so OpenVLA checkpoints decode correctly).

Semantics follow OpenVLA's ``prismatic/vla/action_tokenizer.py`` (Kim et al., 2024): ``n_bins`` uniform bin
edges over [min, max] (``linspace``), ``n_bins - 1`` bin centres; a normalised action is clipped, digitised
(``np.digitize`` gives 1..n_bins) and mapped to token id ``vocab_size - bin``, i.e. the last ``n_bins`` ids of the
*tokenizer's* base vocabulary (Llama-2's least-used BPE tokens). Decoding inverts that with clipping to the valid
centre range. ``vocab_size`` is the tokenizer's vocabulary, not the (padded) embedding matrix: openvla-7b has a
32000-token tokenizer and a 32064-row embedding.
"""

from __future__ import annotations

import numpy as np


class ActionTokenizer:
    """Maps normalised actions in [min_action, max_action] to token ids and back."""

    def __init__(self, vocab_size: int, n_bins: int = 256, min_action: float = -1.0, max_action: float = 1.0):
        if n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {n_bins}")
        if vocab_size <= n_bins:
            raise ValueError(f"vocab_size {vocab_size} must exceed n_bins {n_bins} (action ids are its last ids)")
        if not max_action > min_action:
            raise ValueError(f"need max_action > min_action, got [{min_action}, {max_action}]")
        self.vocab_size = int(vocab_size)
        self.n_bins = int(n_bins)
        self.min_action = float(min_action)
        self.max_action = float(max_action)
        self.bins = np.linspace(self.min_action, self.max_action, self.n_bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0

    @property
    def first_token_id(self) -> int:
        """Smallest action token id (``vocab_size - n_bins``)."""
        return self.vocab_size - self.n_bins

    @property
    def bin_width(self) -> float:
        return float(self.bins[1] - self.bins[0])

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """Normalised actions (any shape) -> token ids (int64, same shape); out-of-range values are clipped."""
        a = np.asarray(actions, dtype=np.float64)
        if not np.all(np.isfinite(a)):
            raise ValueError("cannot tokenize NaN/inf actions")
        a = np.clip(a, self.min_action, self.max_action)
        discretized = np.digitize(a, self.bins)  # 1..n_bins
        return (self.vocab_size - discretized).astype(np.int64)

    def decode(self, token_ids: np.ndarray) -> np.ndarray:
        """Token ids -> normalised actions (bin centres). Ids outside the action range clip to the nearest bin,
        as OpenVLA does (a model that emits a text token still yields a bounded action)."""
        ids = np.asarray(token_ids, dtype=np.int64)
        discretized = self.vocab_size - ids
        idx = np.clip(discretized - 1, 0, self.bin_centers.shape[0] - 1)
        return self.bin_centers[idx]

    def is_action_token(self, token_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(token_ids, dtype=np.int64)
        return (ids >= self.first_token_id) & (ids < self.vocab_size)
