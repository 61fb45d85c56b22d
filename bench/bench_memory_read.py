"""Memory read microbenchmark: fused kernel vs the reference vs an SDPA composition.

FLOPs per read: 2·B·N·M·Ck (affinity) + 2·B·N·M·O·Cv (readout). Bytes: the inputs read
once and the output written once (what a fused kernel must move at the least).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from common import compare_kernel, progress
from remn import ops, reference


def sdpa_memory_read(query_key, memory_key, memory_value, key_bias=None):
    """The same math through `scaled_dot_product_attention`: |k|² and the bias folded into an
    extra key dimension (q' = [2q, 1], k' = [k, −|k|² + bias·sqrt(Ck)]), padded to a multiple of 8."""
    batch, key_dim, num_queries = query_key.shape
    num_objects, value_dim, num_keys = memory_value.shape[1:]
    scale = 1.0 / math.sqrt(key_dim)
    extra = -memory_key.float().pow(2).sum(1)  # [B, M]
    if key_bias is not None:
        extra = extra + key_bias.float() / scale
    pad = -(key_dim + 1) % 8
    ones = query_key.new_ones(batch, num_queries, 1)
    query = F.pad(torch.cat([2 * query_key.transpose(1, 2), ones], dim=-1), (0, pad))  # [B, N, Ck+1+pad]
    keys = F.pad(torch.cat([memory_key.transpose(1, 2), extra[..., None].to(memory_key.dtype)], dim=-1), (0, pad))
    values = memory_value.flatten(1, 2).transpose(1, 2)  # [B, M, O·Cv]
    out = F.scaled_dot_product_attention(query[:, None], keys[:, None], values[:, None], scale=scale)  # [B, 1, N, O·Cv]
    return out[:, 0].transpose(1, 2).reshape(batch, num_objects, value_dim, num_queries)


def cases(quick: bool):
    """(name, B, Ck, Cv, N, T, O, top_k) — N is a 480p feature map (30×54) on the GPU."""
    if quick:
        return [("quick", 1, 16, 32, 48, t, o, k) for t in (1, 4) for o in (1, 2) for k in (None, 8)]
    rows = [("480p", 1, 64, 512, 30 * 54, t, o, None) for t in (1, 5, 10, 20, 50) for o in (1, 2, 4, 8)]
    rows += [("480p", 1, 64, 512, 30 * 54, t, 2, k) for t in (10, 50) for k in (20, 30, 64)]
    rows += [("1080p", 1, 64, 512, 68 * 120, 20, 2, k) for k in (None, 20)]
    return rows


def problem(case, device: torch.device, dtype: torch.dtype):
    """One case's implementations → (variants name → zero-argument call, FLOPs, bytes moved)."""
    name, batch, key_dim, value_dim, num_queries, frames, objects, top_k = case
    num_keys = frames * num_queries
    query_key = torch.randn(batch, key_dim, num_queries, device=device, dtype=dtype)
    memory_key = torch.randn(batch, key_dim, num_keys, device=device, dtype=dtype)
    memory_value = torch.randn(batch, objects, value_dim, num_keys, device=device, dtype=dtype)
    key_bias = torch.randn(batch, num_keys, device=device, dtype=dtype).clamp_max(0)
    args = (query_key, memory_key, memory_value, key_bias)
    variants = {"reference": lambda: reference.memory_read(*args, top_k=top_k)}
    if top_k is None:
        variants["sdpa"] = lambda: sdpa_memory_read(*args)
    if device.type == "cuda" and ops.can_run_triton(*args):
        variants["fused"] = lambda: ops.memory_read(*args, top_k=top_k, backend="triton")
    flops = 2.0 * batch * num_queries * num_keys * (key_dim + objects * value_dim)
    bytes_moved = dtype.itemsize * batch * (
        key_dim * (num_queries + num_keys) + objects * value_dim * (num_keys + num_queries) + num_keys
    )
    return variants, flops, bytes_moved


def run(device: torch.device, dtype: torch.dtype, quick: bool, repeats: int) -> list[dict]:
    results = []
    for case in progress(cases(quick), "memory read"):
        name, batch, key_dim, value_dim, num_queries, frames, objects, top_k = case
        variants, flops, bytes_moved = problem(case, device, dtype)
        rows = compare_kernel(variants, device, flops, bytes_moved, dtype, repeats, ("reference", "sdpa"))
        results.append({"op": "memory_read", "case": name, "B": batch, "Ck": key_dim, "Cv": value_dim, "N": num_queries,
                        "T": frames, "O": objects, "top_k": top_k, "dtype": str(dtype).removeprefix("torch."),
                        "gflop": flops / 1e9, **rows})
        del variants
    return results
