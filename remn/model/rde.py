"""RDE-VOS's recurrent dynamic embedding (Li et al., CVPR 2022): the memory compressor.

Instead of a growing bank, RDE keeps one memory "embedding" frame and updates it
recurrently: each new memory frame is folded in by the spatio-temporal aggregation module
(SAM), once for keys (C = Ck) and once per object for values (C = Cv):

    x     = [embedding, new] along time                       [N, C, 2, h, w]
    x_agg = x + W(non_local(θ(x), φ↓(x), g↓(x)))              (3-D non-local block)
    x_enh = x_agg + ASPP(x_agg)                               (enhance)
    e'    = Conv3d_(2,3,3)(x_enh)                             [N, C, 1, h, w]  (squeeze)

so the embedding always has the shape of one memory frame. The published recipe starts the
embedding from the annotated frame itself and compresses every memory frame into it; the
inference engine reads from [embedding, last frame, annotated frame].

Parameter names follow the published RDE-VOS checkpoint (`mem_compress.*`). Every
initialisation is PyTorch's default, as in the published code (the non-local block's
zero-initialised W is commented out there).

Odd spatial sizes: the (1, 2, 2) max-pool under φ and g floors, as the published block
does, so an odd last row or column of the key map takes no part in the non-local keys (and
there are no keys at all when h or w is 1: the aggregation then reads zeros). At even h
and w (DAVIS and YouTube-VOS at 480p) every position takes part either way;
`ceil_mode=True` (`ModelConfig.rde_pool_ceil_mode`) pools the odd row/column as a window
of its own instead, which the published checkpoints were not trained with.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TIME = 2  # the SAM sees [embedding, new memory frame]
ASPP_DILATIONS = (2, 4, 6)  # the three (1, 3, 3) branches; the fourth branch is 1×1×1


# ------------------------------------------------------------ non-local math
def non_local_aggregate(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The non-local block's aggregation, reference math: dot products divided by the key
    count, no softmax.

    query [B, C, N], key [B, C, M], value [B, C, M] → [B, C, N]:

        out[b, :, n] = (1/M) Σ_m value[b, :, m] ⟨key[b, :, m], query[b, :, n]⟩

    In the SAM, N = 2·h·w (every position of both frames) and M = 2·⌊h/2⌋·⌊w/2⌋ (the
    pooled positions). Computed in fp32 (fp64 stays fp64); returns query's dtype.

    There is no fused path: `remn.ops.memory_read` and its Triton kernel compute a softmax
    over L2 logits, and the softmax does not commute with this linear (un-normalised)
    attention, so routing through it would change the result. The two matmuls below run
    on cuBLAS on CUDA; no dedicated kernel is written for them.
    """
    for name, tensor in (("query", query), ("key", key), ("value", value)):
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 3 or not tensor.is_floating_point():
            raise ValueError(f"{name} must be a float tensor [B, C, L], got {getattr(tensor, 'shape', type(tensor))}")
    if key.shape != value.shape or key.shape[:2] != query.shape[:2]:
        raise ValueError(
            f"non_local_aggregate needs query [B, C, N], key and value [B, C, M]; got query "
            f"{tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}"
        )
    compute = torch.promote_types(query.dtype, torch.float32)
    num_keys = key.shape[2]
    with torch.autocast(query.device.type, enabled=False):  # autocast would take `@` back to 16 bits
        affinity = query.to(compute).transpose(1, 2) @ key.to(compute)  # [B, N, M]
        affinity = affinity / max(num_keys, 1)
        out = value.to(compute) @ affinity.transpose(1, 2)  # [B, C, N]
    return out.to(query.dtype)


# ------------------------------------------------------------ the SAM
class NonLocalBlock3d(nn.Module):
    """3-D non-local block (embedded dot product, no softmax, no normalisation layer).

    x [N, C, T, h, w] → x + W(y) with y the aggregation of θ(x) over the (1, 2, 2)-pooled
    φ(x), g(x); θ, φ, g map C → C/2 and W maps back, all 1×1×1 convolutions.
    """

    def __init__(self, channels: int, ceil_mode: bool = False):
        super().__init__()
        inner = max(channels // 2, 1)
        self.inner = inner
        self.theta = nn.Conv3d(channels, inner, 1)
        self.phi = nn.Sequential(nn.Conv3d(channels, inner, 1), nn.MaxPool3d((1, 2, 2), ceil_mode=ceil_mode))
        self.g = nn.Sequential(nn.Conv3d(channels, inner, 1), nn.MaxPool3d((1, 2, 2), ceil_mode=ceil_mode))
        self.W = nn.Conv3d(inner, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        query = self.theta(x).flatten(2)  # [N, C/2, T·h·w]
        key = self._pooled(self.phi, x)  # [N, C/2, M], M = T·⌊h/2⌋·⌊w/2⌋ (⌈⌉ with ceil_mode)
        value = self._pooled(self.g, x)  # [N, C/2, M]
        y = non_local_aggregate(query, key, value).view(batch, self.inner, *x.shape[2:])  # [N, C/2, T, h, w]
        return x + self.W(y)

    @staticmethod
    def _pooled(branch: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """φ or g: the 1×1×1 convolution, then the (1, 2, 2) max-pool → [N, C/2, M]. A floor
        pool over h or w = 1 leaves no position (M = 0), where MaxPool3d would raise."""
        projected = branch[0](x)  # [N, C/2, T, h, w]
        if min(x.shape[-2:]) < 2 and not branch[1].ceil_mode:
            return projected.new_zeros(*projected.shape[:2], 0)
        return branch[1](projected).flatten(2)


class _AtrousBranch(nn.Module):
    """One ASPP branch: a bias-free convolution, then ReLU (named as in the checkpoint)."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int | None):
        super().__init__()
        if dilation is None:  # the 1×1×1 branch
            self.atrous_conv = nn.Conv3d(in_channels, out_channels, 1, bias=False)
        else:  # spatial padding = dilation keeps h, w
            self.atrous_conv = nn.Conv3d(
                in_channels, out_channels, (1, 3, 3),
                padding=(0, dilation, dilation), dilation=(1, dilation, dilation), bias=False,
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.atrous_conv(x))


class ASPP3d(nn.Module):
    """Per-frame atrous spatial pyramid: x [N, C, T, h, w] → [N, C, T, h, w].

    Four branches to C/4 channels with ReLU (1×1×1, and (1, 3, 3) at spatial dilations 2,
    4, 6), concatenated and fused by a bias-free (1, 3, 3) convolution to C, then ReLU.
    """

    def __init__(self, channels: int):
        super().__init__()
        mid = max(channels // 4, 1)
        self.aspp1 = _AtrousBranch(channels, mid, None)
        self.aspp2 = _AtrousBranch(channels, mid, ASPP_DILATIONS[0])
        self.aspp3 = _AtrousBranch(channels, mid, ASPP_DILATIONS[1])
        self.aspp4 = _AtrousBranch(channels, mid, ASPP_DILATIONS[2])
        self.conv1 = nn.Conv3d(4 * mid, channels, (1, 3, 3), padding=(0, 1, 1), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.aspp1(x), self.aspp2(x), self.aspp3(x), self.aspp4(x)]  # each [N, C/4, T, h, w]
        return F.relu(self.conv1(torch.cat(branches, dim=1)))


class SpatioTemporalAggregation(nn.Module):
    """RDE's SAM without the squeeze: x [N, C, T, h, w] → x_agg + ASPP(x_agg), same shape,
    with x_agg = NonLocalBlock3d(x)."""

    def __init__(self, channels: int, ceil_mode: bool = False):
        super().__init__()
        self.non_local = NonLocalBlock3d(channels, ceil_mode)
        self.conv1 = ASPP3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.non_local(x)  # [N, C, T, h, w]
        return x + self.conv1(x)


# ------------------------------------------------------------ the compressor
class MemoryCompressor(nn.Module):
    """Folds a new memory frame into the recurrent embedding (`model.mem_compress`).

    update_key(embedding_key [B, Ck, h, w], new_key [B, Ck, h, w]) → [B, Ck, h, w]
    update_value(embedding_value [B, O, Cv, h, w], new_value [B, O, Cv, h, w]) → [B, O, Cv, h, w]
    forward(embedding_key, embedding_value, new_key, new_value) → (key, value), both at once.

    The embedding is first in time, the new frame second (the published order). Objects
    are folded into the batch: each object's value embedding evolves on its own, with the
    same weights. Start the embedding from the annotated frame's key and value.

    The squeeze convolutions are `compress_key` / `compress_value`: the checkpoint's names.
    """

    def __init__(self, key_dim: int = 64, value_dim: int = 512, *, ceil_mode: bool = False):
        super().__init__()
        self.key_dim = key_dim
        self.value_dim = value_dim
        self.key_encoder = SpatioTemporalAggregation(key_dim, ceil_mode)
        self.value_encoder = SpatioTemporalAggregation(value_dim, ceil_mode)
        self.compress_key = nn.Conv3d(key_dim, key_dim, (TIME, 3, 3), padding=(0, 1, 1))
        self.compress_value = nn.Conv3d(value_dim, value_dim, (TIME, 3, 3), padding=(0, 1, 1))

    def update_key(self, embedding_key: torch.Tensor, new_key: torch.Tensor) -> torch.Tensor:
        """embedding_key, new_key [B, Ck, h, w] → the new key embedding [B, Ck, h, w]."""
        _check_pair("key", embedding_key, new_key, 4, 1, self.key_dim, "[B, Ck, h, w]")
        x = torch.stack([embedding_key, new_key], dim=2)  # [B, Ck, 2, h, w]
        return self.compress_key(self.key_encoder(x)).squeeze(2)  # [B, Ck, h, w]

    def update_value(self, embedding_value: torch.Tensor, new_value: torch.Tensor) -> torch.Tensor:
        """embedding_value, new_value [B, O, Cv, h, w] → the new value embedding [B, O, Cv, h, w]."""
        _check_pair("value", embedding_value, new_value, 5, 2, self.value_dim, "[B, O, Cv, h, w]")
        batch, num_objects = new_value.shape[:2]
        x = torch.stack([embedding_value, new_value], dim=3).flatten(0, 1)  # [B·O, Cv, 2, h, w]
        out = self.compress_value(self.value_encoder(x)).squeeze(2)  # [B·O, Cv, h, w]
        return out.view(batch, num_objects, *out.shape[1:])  # [B, O, Cv, h, w]

    def forward(self, embedding_key, embedding_value, new_key, new_value) -> tuple[torch.Tensor, torch.Tensor]:
        """Both embeddings at once: ([B, Ck, h, w], [B, O, Cv, h, w])."""
        return self.update_key(embedding_key, new_key), self.update_value(embedding_value, new_value)


def _check_pair(kind, embedding, new, rank, channel_dim, channels, layout) -> None:
    for name, tensor in ((f"embedding_{kind}", embedding), (f"new_{kind}", new)):
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise TypeError(f"{name} must be a float tensor {layout}, got {getattr(tensor, 'dtype', type(tensor))}")
        if tensor.dim() != rank or tensor.shape[channel_dim] != channels:
            raise ValueError(f"{name} must have shape {layout} with {channels} channels, got {tuple(tensor.shape)}")
    if embedding.shape != new.shape:
        raise ValueError(
            f"embedding_{kind} {tuple(embedding.shape)} and new_{kind} {tuple(new.shape)} must have the same shape"
        )
