"""The modules that OpenVLA-OFT (Kim et al. 2025) adds to OpenVLA's architecture, and the parallel forward's output.

- :class:`ActionSlots`: one learned "empty" input embedding per action slot (and the done slot), placed after
  the prompt. OFT's released code zeroes the input embeddings of the action positions; learned ones start near
  zero (N(0, initializer_range)) and let each slot carry its identity besides its position;
- :class:`L1ActionHead`: the regression head. Layout of OFT's ``L1RegressionActionHead``: for each of the K
  actions of a chunk, the final hidden states of its ``action_dim`` slots are concatenated and an MLP with two
  residual blocks (OFT's ``MLPResNet``, here with GELU, as the project's projectors) maps them to the
  ``action_dim`` normalised values; trained with an L1 loss, clipped to [-1, 1] when acting (the range the
  q01/q99 normalisation and the 256 bins span).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput


class ActionSlots(nn.Module):
    """Learned input embeddings of the ``n_slots`` positions decoded in one pass."""

    def __init__(self, n_slots: int, hidden_size: int):
        super().__init__()
        self.embedding = nn.Embedding(n_slots, hidden_size)

    def forward(self, batch_size: int) -> torch.Tensor:
        """(batch_size, n_slots, hidden_size)."""
        return self.embedding.weight[None].expand(batch_size, -1, -1)


class ResidualMLPBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm, self.fc, self.act = nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.fc(self.norm(x)))


class L1ActionHead(nn.Module):
    """Slot hidden states (B, K * action_dim, H) -> normalised actions (B, K, action_dim), unclipped."""

    def __init__(self, hidden_size: int, action_dim: int, n_blocks: int = 2):
        super().__init__()
        self.action_dim = int(action_dim)
        self.norm_in = nn.LayerNorm(hidden_size * action_dim)
        self.fc_in = nn.Linear(hidden_size * action_dim, hidden_size)
        self.act = nn.GELU()
        self.blocks = nn.ModuleList(ResidualMLPBlock(hidden_size) for _ in range(n_blocks))
        self.norm_out = nn.LayerNorm(hidden_size)
        self.fc_out = nn.Linear(hidden_size, action_dim)

    def forward(self, slot_hidden: torch.Tensor) -> torch.Tensor:
        b, n, h = slot_hidden.shape
        if n % self.action_dim:
            raise ValueError(f"{n} action slots are not a whole number of {self.action_dim}-D actions")
        x = slot_hidden.reshape(b, n // self.action_dim, self.action_dim * h)
        x = self.act(self.fc_in(self.norm_in(x)))
        for block in self.blocks:
            x = block(x)
        return self.fc_out(self.norm_out(x))


@dataclass
class ParallelActionOutput(ModelOutput):
    """What the parallel forward returns (training and acting).

    ``logits``: LM-head logits of the slots it reads: every slot for the ``tokens`` head, only the done slot for
    ``l1`` (None for an l1 model without the done decision). ``actions``: the l1 head's normalised actions
    (B, K, action_dim), unclipped (None for ``tokens``). ``slot_hidden_states``: final (normed) hidden states of
    all slots (B, n_slots, H). ``loss``: cross-entropy on the slot tokens (``tokens``) or L1 on the normalised
    actions (``l1``), plus the done slot's cross-entropy, when labels are given.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    actions: torch.Tensor | None = None
    slot_hidden_states: torch.Tensor | None = None
