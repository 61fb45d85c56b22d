"""Soft modulation gate: scores each memory frame in (0, 1] for the dynamic memory bank.

For memory frame t and the current query, with spatially pooled keys m_t, q ∈ R^Ck:

    z_t = MLP([m_t, q, |m_t − q|, m_t ⊙ q]),   score_t = sigmoid(z_t),   bias_t = log score_t

The memory read adds bias_t to the logits of every position of frame t (the "gated"
softmax), so a low score fades a frame out smoothly and differentiably; the inference
engine drops frames whose score stays low. The last layer starts with zero weights and a
large bias, so an untrained gate gives every frame the same score: a constant bias does
not change a softmax, so the read then equals STCN's exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INITIAL_LOGIT = 6.0  # sigmoid(6) ≈ 0.9975: every frame starts near 1 and equal


class SoftModulationGate(nn.Module):
    def __init__(self, key_dim: int, hidden: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4 * key_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.constant_(self.mlp[2].bias, INITIAL_LOGIT)

    def forward(self, query_key: torch.Tensor, memory_key: torch.Tensor) -> torch.Tensor:
        """query_key [B, Ck, h, w], memory_key [B, Ck, T, h, w] → log scores [B, T] (all ≤ 0)."""
        query = query_key.float().mean(dim=(-2, -1))[:, None, :]  # [B, 1, Ck]
        memory = memory_key.float().mean(dim=(-2, -1)).transpose(1, 2)  # [B, T, Ck]
        query = query.expand_as(memory)  # [B, T, Ck]
        features = torch.cat([memory, query, (memory - query).abs(), memory * query], dim=-1)  # [B, T, 4Ck]
        return F.logsigmoid(self.mlp(features).squeeze(-1))  # [B, T]
