"""Reference PyTorch implementations of remn's two hot ops: the specification.

The fused Triton kernels in `remn.kernels` must match these functions (same signatures,
same semantics); the tests compare against them and the benchmarks use them as the
baseline. Both compute in fp32 whatever the input dtype and return the value's dtype.

Affinity (STCN's negative squared L2 distance, with the query's own |q|² dropped because
the softmax over keys does not depend on it):

    logit[b, i, j] = scale · (2⟨q_bi, k_bj⟩ − |k_bj|²) + key_bias[b, j],  scale = 1/sqrt(Ck)

A key whose bias is −inf takes no part; a query with no remaining key reads zeros.
Autocast is switched off inside both ops, so they compute in fp32 under mixed precision too.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


def _check_rank(name: str, tensor: torch.Tensor, rank: int, layout: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(tensor).__name__}")
    if tensor.dim() != rank:
        raise ValueError(f"{name} must have shape {layout}, got {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {tensor.dtype}")


def _without_autocast(op):
    """Run `op` with autocast off on the inputs' device: the reference math stays fp32."""
    @functools.wraps(op)
    def wrapper(query_key, *args, **kwargs):
        device_type = query_key.device.type if isinstance(query_key, torch.Tensor) else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            return op(query_key, *args, **kwargs)

    return wrapper


def _safe_softmax(logits: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax over `dim` where a slice of only −inf gives zeros instead of NaN, and weights
    below the dtype's smallest normal number are zero. Those subnormal weights (a logit more
    than ~87 below its row's largest, in fp32) change no sum of weighted values beyond its
    rounding, but x86 CPUs compute with subnormal operands many times slower: with trained
    weights they made local attention at 480p with 2 objects take 4.6× its time (359 ms
    against 78 ms on this project's CPU; its value product 11×)."""
    smallest_normal = torch.finfo(logits.dtype).tiny
    row_max = logits.amax(dim=dim, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(logits - row_max.detach())
    total = weights.sum(dim=dim, keepdim=True)
    weights = weights / total.clamp_min(smallest_normal)
    return weights.masked_fill(weights < smallest_normal, 0.0)


def key_square_norms(memory_key: torch.Tensor) -> torch.Tensor:
    """memory_key [B, Ck, M] → |k_j|² [B, M] in fp32, the same bits for equal keys.

    Reduced along a contiguous channel axis, one key at a time, so that two equal keys get
    equal norms wherever they sit in memory (a reduction over the strided channel axis can
    round a key differently by its position, which would break exact top-k ties at random).
    """
    return memory_key.float().transpose(1, 2).contiguous().pow(2).sum(dim=2)  # [B, M]


def top_k_mask(logits: torch.Tensor, top_k: int, dim: int = 1) -> torch.Tensor:
    """logits [B, M, N] → bool [B, M, N]: per query n, exactly `top_k` keys (top_k ≤ M), the
    largest logits, ties at the k-th largest value taken in order of key index. `dim` names
    the key axis (2 for query-major logits [B, N, M]).

    The keys above the k-th value all take part; of those equal to it, the first
    k − #above along M do. Deterministic on every device, unlike `torch.topk`'s indices.
    """
    kth_largest = logits.topk(top_k, dim=dim).values.narrow(dim, top_k - 1, 1)  # [B, 1, N]
    above = logits > kth_largest  # [B, M, N]
    tied = logits == kth_largest  # [B, M, N]
    places_left = top_k - above.sum(dim=dim, keepdim=True)  # [B, 1, N], ≥ 1
    return above | (tied & (tied.cumsum(dim=dim) <= places_left))


def top_k_indices(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Query-major logits [B, N, M] → int64 [B, N, k]: the keys `top_k_mask` keeps for each
    query, in ascending key order (a deterministic order, so sums over them round the same
    way every run). No host synchronisation: the mask is ranked, not `nonzero`-ed."""
    kept = top_k_mask(logits, top_k, dim=2)  # [B, N, M]
    num_keys = logits.shape[2]
    rank = torch.arange(num_keys, 0, -1, device=logits.device, dtype=torch.int32)  # [M]: M … 1, larger for earlier keys
    return torch.where(kept, rank, 0).topk(top_k, dim=2).indices  # [B, N, k]


def top_k_indices_eager(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """`top_k_indices` (query-major logits [B, N, M], top_k < M → int64 [B, N, k], the same
    keys in the same order), about 4× faster where no tie straddles the k-th largest logit,
    the usual case for float logits: one `topk` of k + 1 values, and where the k-th is
    strictly above the (k+1)-th for every query the k keys are the only ones at or above
    it, whichever of equal keys `topk` returned first, so sorting their indices gives
    `top_k_indices` exactly. Otherwise (ties, −inf-excluded keys at the k-th place, NaN)
    it returns `top_k_indices` itself. The check is one host synchronisation per call: for
    eager code only (the exported graph takes `top_k_indices`)."""
    largest, index = logits.topk(top_k + 1, dim=2)  # [B, N, k+1], descending
    if bool((largest[..., top_k - 1] > largest[..., top_k]).all()):
        return index[..., :top_k].sort(dim=2).values  # [B, N, k], ascending key order
    return top_k_indices(logits, top_k)


def check_memory_read_args(query_key, memory_key, memory_value, key_bias, top_k):
    """Validate `memory_read` arguments; returns (B, Ck, N, M, O, Cv)."""
    _check_rank("query_key", query_key, 3, "[B, Ck, N]")
    _check_rank("memory_key", memory_key, 3, "[B, Ck, M]")
    _check_rank("memory_value", memory_value, 4, "[B, O, Cv, M]")
    batch, key_dim, num_queries = query_key.shape
    num_objects, value_dim, num_keys = memory_value.shape[1:]
    if memory_key.shape[:2] != (batch, key_dim):
        raise ValueError(
            f"memory_key {tuple(memory_key.shape)} does not match query_key "
            f"{tuple(query_key.shape)} in batch or key channels ([B, Ck, M] vs [B, Ck, N])"
        )
    if memory_value.shape[0] != batch or memory_value.shape[3] != memory_key.shape[2]:
        raise ValueError(
            f"memory_value {tuple(memory_value.shape)} must be [B, O, Cv, M] with B={batch} "
            f"and M={memory_key.shape[2]} memory positions"
        )
    if key_bias is not None:
        _check_rank("key_bias", key_bias, 2, "[B, M]")
        if tuple(key_bias.shape) != (batch, num_keys):
            raise ValueError(f"key_bias must have shape [B, M] = {(batch, num_keys)}, got {tuple(key_bias.shape)}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    devices = {t.device for t in (query_key, memory_key, memory_value) + ((key_bias,) if key_bias is not None else ())}
    if len(devices) != 1:
        raise ValueError(f"all memory_read inputs must be on one device, got {sorted(map(str, devices))}")
    return batch, key_dim, num_queries, num_keys, num_objects, value_dim


# Logits per chunk of queries: 4 Mi fp32 elements, 16 MiB.
MEMORY_READ_CHUNK_ELEMENTS = 1 << 22


@_without_autocast
def memory_read(
    query_key: torch.Tensor,
    memory_key: torch.Tensor,
    memory_value: torch.Tensor,
    key_bias: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    top_k: int | None = None,
) -> torch.Tensor:
    """Gated global memory read.

    query_key: [B, Ck, N]; memory_key: [B, Ck, M]; memory_value: [B, O, Cv, M];
    key_bias: [B, M] or None (the log of each memory frame's gate score, per position).
    Returns [B, O, Cv, N]: out[b, o, :, i] = Σ_j softmax_j(logit[b, i, j]) · v[b, o, :, j].
    With `top_k=k` exactly k keys take part per query (STCN's `softmax_w_top`): its k
    largest logits, ties at the k-th value broken towards the lowest key index.

    Queries are taken in chunks, so at most `MEMORY_READ_CHUNK_ELEMENTS` elements of the
    N × M affinity exist at a time (at least one query's row). With top-k each query sums
    its k values only instead of a dense product with a mostly-zero softmax: O(N·k·O·Cv)
    instead of O(N·M·O·Cv), as one `embedding_bag` (gather and weighted sum in one pass, in
    ascending key order), so no [chunk, k, O·Cv] copy of the values is made.
    """
    batch, _, num_queries, num_keys, num_objects, value_dim = check_memory_read_args(
        query_key, memory_key, memory_value, key_bias, top_k
    )
    scale = 1.0 / math.sqrt(query_key.shape[1]) if scale is None else scale
    query = query_key.float().transpose(1, 2)  # [B, N, Ck]
    keys = memory_key.float()  # [B, Ck, M]
    key_term = -scale * key_square_norms(keys)  # [B, M]
    if key_bias is not None:
        key_term = key_term + key_bias.float()
    values = memory_value.float().flatten(1, 2)  # [B, O·Cv, M]
    selective = top_k is not None and top_k < num_keys
    if selective:
        values_by_key = values.transpose(1, 2).contiguous().view(batch * num_keys, -1)  # [B·M, O·Cv], rows contiguous
        key_offset = num_keys * torch.arange(batch, device=values.device)[:, None, None]  # [B, 1, 1]: b·M
    chunk = max(1, MEMORY_READ_CHUNK_ELEMENTS // max(1, batch * num_keys))
    outputs = []
    for start in range(0, num_queries, chunk):
        # logit[b, i, j] = scale · (2⟨q_i, k_j⟩ − |k_j|²) + bias_j
        logits = torch.baddbmm(key_term[:, None, :], query[:, start:start + chunk], keys, alpha=2.0 * scale)  # [B, n, M]
        if selective:
            index = top_k_indices_eager(logits, top_k)  # [B, n, k]
            weights = _safe_softmax(logits.gather(2, index), dim=2)  # [B, n, k]
            read = F.embedding_bag(
                (index + key_offset).flatten(0, 1), values_by_key, per_sample_weights=weights.flatten(0, 1), mode="sum"
            )  # [B·n, O·Cv]: Σ_k weight · value
            outputs.append(read.view(batch, -1, num_objects * value_dim).transpose(1, 2))  # [B, O·Cv, n]
        else:
            outputs.append(torch.bmm(values, _safe_softmax(logits, dim=2).transpose(1, 2)))  # [B, O·Cv, n]
    if not outputs:  # no query
        return memory_value.new_zeros(batch, num_objects, value_dim, 0)
    out = torch.cat(outputs, dim=2)  # [B, O·Cv, N]
    return out.view(batch, num_objects, value_dim, num_queries).to(memory_value.dtype)


def check_local_attention_args(query_key, key, value, radius, key_bias):
    """Validate `local_attention` arguments; returns (B, Ck, H, W, O, Cv)."""
    _check_rank("query_key", query_key, 4, "[B, Ck, H, W]")
    _check_rank("key", key, 4, "[B, Ck, H, W]")
    _check_rank("value", value, 5, "[B, O, Cv, H, W]")
    if key.shape != query_key.shape:
        raise ValueError(f"key {tuple(key.shape)} must have the query_key's shape {tuple(query_key.shape)}")
    batch, key_dim, height, width = query_key.shape
    if value.shape[0] != batch or tuple(value.shape[3:]) != (height, width):
        raise ValueError(f"value {tuple(value.shape)} must be [B, O, Cv, H, W] with B, H, W = {batch}, {height}, {width}")
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
        raise ValueError(f"radius must be a non-negative int, got {radius!r}")
    if key_bias is not None:
        if not isinstance(key_bias, torch.Tensor) or not key_bias.is_floating_point():
            raise TypeError("key_bias must be a floating-point tensor broadcastable to [B, O, H, W]")
        target = (batch, value.shape[1], height, width)
        shape = tuple(key_bias.shape)
        aligned = zip(reversed(shape), reversed(target))
        if len(shape) > len(target) or any(size not in (1, want) for size, want in aligned):
            raise ValueError(f"key_bias {tuple(key_bias.shape)} is not broadcastable to [B, O, H, W] = {target}")
    devices = {t.device for t in (query_key, key, value) + ((key_bias,) if key_bias is not None else ())}
    if len(devices) != 1:
        raise ValueError(f"all local_attention inputs must be on one device, got {sorted(map(str, devices))}")
    return batch, key_dim, height, width, value.shape[1], value.shape[2]


# Logits of the local attention per tile of query rows: 4 Mi fp32 elements, 16 MiB.
LOCAL_ATTENTION_TILE_ELEMENTS = 1 << 22


@_without_autocast
def local_attention(
    query_key: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    radius: int,
    key_bias: torch.Tensor | None = None,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """Windowed attention of each query pixel over the previous frame around the same position.

    query_key, key: [B, Ck, H, W]; value: [B, O, Cv, H, W]; key_bias: broadcastable to
    [B, O, H, W] (a bias per object and key position) or None.
    Returns [B, O, Cv, H, W]: for pixel p, softmax over the neighbours p' with |p'−p|∞ ≤ radius
    that lie inside the image (outside positions are excluded, never zero-padded into the
    softmax) of logit(p, p') = scale·(2⟨q_p, k_p'⟩ − |k_p'|²) + key_bias[o, p'], then
    Σ_p' weight · value[o, :, p'].

    Computed per tile of query rows against the rows within `radius` of it (its halo, full
    width, clipped to the image), as two matrix products with the positions outside each
    query's window masked out: at most `LOCAL_ATTENTION_TILE_ELEMENTS` logits at a time.
    """
    batch, key_dim, height, width, num_objects, value_dim = check_local_attention_args(
        query_key, key, value, radius, key_bias
    )
    scale = 1.0 / math.sqrt(key_dim) if scale is None else scale
    query = query_key.float()
    keys = key.float()
    values = value.float()
    key_term = -scale * keys.pow(2).sum(1)  # [B, H, W]
    bias = key_term[:, None].expand(batch, num_objects, height, width)  # [B, O, H, W]
    if key_bias is not None:
        bias = bias + key_bias.float()
    device = query.device
    rows_per_tile = 1
    while rows_per_tile < height and (
        batch * num_objects * (rows_per_tile + 1) * width * (rows_per_tile + 1 + 2 * radius) * width
        <= LOCAL_ATTENTION_TILE_ELEMENTS
    ):
        rows_per_tile += 1
    columns = torch.arange(width, device=device)
    column_near = (columns[:, None] - columns[None, :]).abs() <= radius  # [W (query), W (key)]
    outputs = []
    for top in range(0, height, rows_per_tile):
        bottom = min(height, top + rows_per_tile)
        halo_top, halo_bottom = max(0, top - radius), min(height, bottom + radius)
        rows = torch.arange(top, bottom, device=device)
        halo_rows = torch.arange(halo_top, halo_bottom, device=device)
        row_near = (rows[:, None] - halo_rows[None, :]).abs() <= radius  # [h, hh]
        inside = (row_near[:, None, :, None] & column_near[None, :, None, :]).flatten(2).flatten(0, 1)  # [h·W, hh·W]
        tile_query = query[:, :, top:bottom].flatten(2)  # [B, Ck, h·W]
        halo_keys = keys[:, :, halo_top:halo_bottom].flatten(2)  # [B, Ck, hh·W]
        affinity = 2.0 * scale * torch.bmm(tile_query.transpose(1, 2), halo_keys)  # [B, h·W, hh·W]
        logits = affinity[:, None] + bias[:, :, halo_top:halo_bottom].flatten(2)[:, :, None]  # [B, O, h·W, hh·W]
        weights = _safe_softmax(logits.masked_fill(~inside, float("-inf")), dim=3)  # [B, O, h·W, hh·W]
        halo_values = values[:, :, :, halo_top:halo_bottom].flatten(3)  # [B, O, Cv, hh·W]
        outputs.append(torch.matmul(halo_values, weights.transpose(2, 3)))  # [B, O, Cv, h·W]
    out = torch.cat(outputs, dim=3).view(batch, num_objects, value_dim, height, width)  # [B, O, Cv, H, W]
    return out.to(value.dtype)
