"""Local attention microbenchmark: fused kernel vs the reference vs an unfold composition.

FLOPs per call: 2·B·H·W·(2r+1)²·(Ck + O·Cv). Bytes: query, key, value, bias read once and
the output written once.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from common import compare_kernel, progress
from remn import ops, reference


def unfold_local_attention(query_key, key, value, radius, key_bias):
    """The same math with `F.unfold`: every window materialised, [B, O, Cv, (2r+1)², H·W]."""
    batch, key_dim, height, width = query_key.shape
    num_objects, value_dim = value.shape[1:3]
    window = 2 * radius + 1
    size = window * window
    keys = F.unfold(key.float(), window, padding=radius).view(batch, key_dim, size, height * width)
    inside = F.unfold(key.new_ones(1, 1, height, width, dtype=torch.float32), window, padding=radius).view(1, 1, size, -1) > 0
    query = query_key.float().view(batch, key_dim, 1, height * width)
    affinity = (2 * (query * keys).sum(1) - keys.pow(2).sum(1)) / math.sqrt(key_dim)  # [B, K, HW]
    bias = F.unfold(key_bias.float().reshape(batch * num_objects, 1, height, width), window, padding=radius)
    logits = affinity[:, None] + bias.view(batch, num_objects, size, -1)  # [B, O, K, HW]
    weights = torch.softmax(logits.masked_fill(~inside, float("-inf")), dim=2)
    values = F.unfold(value.reshape(batch * num_objects, value_dim, height, width), window, padding=radius)
    values = values.view(batch, num_objects, value_dim, size, height * width)  # [B, O, Cv, K, HW]
    out = (values * weights[:, :, None].to(values.dtype)).sum(3)  # [B, O, Cv, HW]
    return out.view(batch, num_objects, value_dim, height, width)


def cases(quick: bool):
    """(name, B, Ck, Cv, H, W, O, radius)."""
    if quick:
        return [("quick", 1, 16, 32, 6, 8, o, r) for o in (1, 2) for r in (1, 3)]
    return [("480p", 1, 64, 512, 30, 54, o, r) for o in (1, 2, 4) for r in (2, 4, 7, 12)]


def problem(case, device: torch.device, dtype: torch.dtype):
    """One case's implementations → (variants name → zero-argument call, FLOPs, bytes moved)."""
    name, batch, key_dim, value_dim, height, width, objects, radius = case
    query_key = torch.randn(batch, key_dim, height, width, device=device, dtype=dtype)
    key = torch.randn(batch, key_dim, height, width, device=device, dtype=dtype)
    value = torch.randn(batch, objects, value_dim, height, width, device=device, dtype=dtype)
    key_bias = torch.randn(batch, objects, height, width, device=device, dtype=dtype)
    args = (query_key, key, value, radius, key_bias)
    variants = {"reference": lambda: reference.local_attention(*args), "unfold": lambda: unfold_local_attention(*args)}
    if device.type == "cuda" and ops.can_run_triton(query_key, key, value, key_bias):
        variants["fused"] = lambda: ops.local_attention(*args, backend="triton")
    window = (2 * radius + 1) ** 2
    flops = 2.0 * batch * height * width * window * (key_dim + objects * value_dim)
    bytes_moved = dtype.itemsize * batch * height * width * (2 * key_dim + 2 * objects * value_dim + objects)
    return variants, flops, bytes_moved


def run(device: torch.device, dtype: torch.dtype, quick: bool, repeats: int) -> list[dict]:
    results = []
    for case in progress(cases(quick), "local attention"):
        name, batch, key_dim, value_dim, height, width, objects, radius = case
        variants, flops, bytes_moved = problem(case, device, dtype)
        rows = compare_kernel(variants, device, flops, bytes_moved, dtype, repeats, ("reference", "unfold"))
        results.append({"op": "local_attention", "case": name, "B": batch, "Ck": key_dim, "Cv": value_dim, "H": height,
                        "W": width, "O": objects, "radius": radius, "dtype": str(dtype).removeprefix("torch."),
                        "gflop": flops / 1e9, **rows})
    return results
