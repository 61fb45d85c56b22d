"""Local attention branch: windowed matching against the previous frame, mask-enhanced.

Each query pixel attends to the (2r+1)² positions around it in the previous frame only, so
a look-alike distractor far from the object cannot be matched. The values read are the
previous frame's query features enhanced by its predicted mask of each object,

    value_o = f_prev ⊙ (1 + m_o) + E(m_o),     key_bias_o = β · m_o,

so foreground features near the object dominate the readout. The result is projected by a
1×1 convolution that starts at zero: an untrained branch adds nothing to the global read.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from remn import ops


class LocalAttentionBranch(nn.Module):
    def __init__(self, value_dim: int, radius: int):
        super().__init__()
        if radius < 1:
            raise ValueError(f"local attention radius must be >= 1, got {radius}")
        self.radius = radius
        self.mask_embed = nn.Conv2d(1, value_dim, 1)
        self.foreground_bias = nn.Parameter(torch.zeros(()))
        self.out_proj = nn.Conv2d(value_dim, value_dim, 1)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query_key, previous_key, previous_features, previous_masks, backend=None):
        """query_key, previous_key [B, Ck, h, w]; previous_features [B, Cv, h, w];
        previous_masks [B, O, H, W] at full (padded) resolution → readout [B, O, Cv, h, w]."""
        batch, value_dim, height, width = previous_features.shape
        num_objects = previous_masks.shape[1]
        masks = F.adaptive_avg_pool2d(previous_masks, (height, width))  # [B, O, h, w]
        embedded = self.mask_embed(masks.reshape(batch * num_objects, 1, height, width))  # [B·O, Cv, h, w]
        values = previous_features[:, None] * (1 + masks[:, :, None]) + embedded.view(
            batch, num_objects, value_dim, height, width
        )  # [B, O, Cv, h, w]
        key_bias = self.foreground_bias * masks  # [B, O, h, w]
        readout = ops.local_attention(
            query_key, previous_key, values.to(query_key.dtype), self.radius, key_bias.to(query_key.dtype), backend=backend
        )  # [B, O, Cv, h, w]
        projected = self.out_proj(readout.reshape(batch * num_objects, value_dim, height, width))
        return projected.view(batch, num_objects, value_dim, height, width)
