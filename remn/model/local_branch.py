"""Local attention branch: windowed matching against the previous frame, mask-enhanced.

Each query pixel attends to the (2r+1)² positions around it in the previous frame only, so
a look-alike distractor far from the object cannot be matched. The values read are the
previous frame's query features enhanced by its predicted mask of each object,

    value_o = f_prev ⊙ (1 + m_o) + E(m_o),     key_bias_o = β · m_o,

so foreground features near the object dominate the readout. The branch then acts on the
global read twice, per object o and position x:

    readout_o(x) = global_o(x) · 2σ(w · local_o(x) + b) + P(local_o(x))

- re-weighting: the windowed readout scales the global one by a factor in (0, 2), so a
  position the previous mask does not support (a look-alike far from the object, which
  the global read matches as well as the object itself) can be turned down;
- addition: a 1×1 projection P of the windowed readout.
w, b and P start at zero: an untrained branch multiplies by 1 and adds 0, so the read is
the global one exactly.
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
        self.modulation = nn.Conv2d(value_dim, 1, 1)
        for layer in (self.out_proj, self.modulation):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, global_readout, query_key, previous_key, previous_features, previous_masks, backend=None):
        """global_readout [B, O, Cv, h, w] (the memory read); query_key, previous_key
        [B, Ck, h, w]; previous_features [B, Cv, h, w]; previous_masks [B, O, H, W] at full
        (padded) resolution → the combined readout [B, O, Cv, h, w]."""
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
        readout = readout.reshape(batch * num_objects, value_dim, height, width)  # [B·O, Cv, h, w]
        weight = 2 * torch.sigmoid(self.modulation(readout))  # [B·O, 1, h, w] in (0, 2)
        projected = self.out_proj(readout)  # [B·O, Cv, h, w]
        combined = global_readout.flatten(0, 1) * weight.to(global_readout.dtype) + projected
        return combined.view(batch, num_objects, value_dim, height, width)
