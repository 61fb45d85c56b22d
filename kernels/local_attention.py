"""Fused windowed local attention: the (2r+1)²-wide affinity never leaves registers.

Math (same as `remn.reference.local_attention`, which is the specification): for query
pixel p and object o, over the neighbours p' with |p' − p|∞ ≤ r that lie inside the image,

    logit[o, p, p'] = scale · (2⟨q_p, k_p'⟩ − |k_p'|²) + key_bias[o, p']
    out[o, :, p]    = Σ_p' softmax_p'(logit[o, p, :]) · value[o, :, p']

Design (fused neighbourhood attention, as in NATTEN's fused kernels and flash-attention):
`_local_attention_fwd_kernel` has grid (query tiles, O · value-channel tiles, B). A program
owns a TILE_H × TILE_W tile of query pixels (BLOCK_Q = TILE_H·TILE_W, flattened row-major:
pixel i of the tile is (y0 + i // TILE_W, x0 + i % TILE_W)), one object and BLOCK_V of its
value channels. The tile's window union is its halo, rows y0 − r … y0 + TILE_H − 1 + r and
columns x0 − r … x0 + TILE_W − 1 + r, clipped to the image: keys outside it are never
touched, so a radius larger than the map costs no more than the map. The program streams the
halo one key row at a time in chunks of BLOCK_K columns (one flat loop over (row, chunk), so
that the software pipeliner sees every step). Per chunk, like a flash-attention step:
- logits [BLOCK_Q, BLOCK_K] = `tl.dot(q [BLOCK_Q, Ck], k [Ck, BLOCK_K])` with an fp32
  accumulator, then scale·(2qk − |k|²) + bias (|k|² comes precomputed by the launcher,
  [B, H, W] fp32); pairs outside the window (|Δy| > r or |Δx| > r) and keys outside the
  image are masked to −inf (excluded, never zero-padded);
- an online softmax in fp32 (exp2) updates the running max and sum per query;
- acc [BLOCK_Q, BLOCK_V] (fp32) is rescaled and gains `tl.dot(p [BLOCK_Q, BLOCK_K],
  v [BLOCK_K, BLOCK_V])`.
Every query of the tile sees only (2r+1)² of the (TILE_H + 2r) · ⌈(TILE_W + 2r)/BLOCK_K⌉ ·
BLOCK_K keys computed for the tile (interior 4×16 tiles with BLOCK_K = 16: 10× the window
at r = 2, 4.7× at r = 4, 2.6× at r = 7, 2.2× at r = 12): the masked rest is the price of
running on the tensor cores. fp16/bf16 operands go to the tensor cores as they are (p rounded to the value dtype
for the second dot, as flash-attention does); fp32 operands use exact fp32 dots
(`input_precision="ieee"`, no TF32). The radius is a runtime argument: no recompilation per
radius. Backward recomputes through `remn.reference.local_attention`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from remn.reference import check_local_attention_args
from remn.reference import local_attention as reference_local_attention

from ._common import (
    check_kernel_tensors, dot_in_fp32, key_channel_tile, reference_gradients, resolve_scale, tuned_launcher,
)

LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x·log2(e)); constexpr so kernels may read it


@triton.jit
def _local_attention_fwd_kernel(
    q_ptr, k_ptr, key_sq_ptr, v_ptr, bias_ptr, out_ptr,
    stride_qb, stride_qc, stride_qh, stride_qw,
    stride_kb, stride_kc, stride_kh, stride_kw,
    stride_sb, stride_sh, stride_sw,
    stride_vb, stride_vo, stride_vc, stride_vh, stride_vw,
    stride_bb, stride_bo, stride_bh, stride_bw,
    stride_ob, stride_oo, stride_oc, stride_oh, stride_ow,
    H, W, CK, CV, radius, scale,
    HAS_BIAS: tl.constexpr, QK_FP32: tl.constexpr, PV_FP32: tl.constexpr, CK_SINGLE: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_CK: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """out[b, o, c, p] for the TILE_H × TILE_W pixels p of one tile, one object o, BLOCK_V channels c."""
    pid_t = tl.program_id(0)
    pid_ov = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    tiles_w = tl.cdiv(W, TILE_W)
    y0 = (pid_t // tiles_w) * TILE_H
    x0 = (pid_t % tiles_w) * TILE_W
    value_tiles = tl.cdiv(CV, BLOCK_V)
    obj = (pid_ov // value_tiles).to(tl.int64)
    pid_v = pid_ov % value_tiles

    offs_q = tl.arange(0, TILE_H * TILE_W)  # BLOCK_Q query pixels, row-major in the tile
    qy = y0 + offs_q // TILE_W  # [BLOCK_Q]
    qx = x0 + offs_q % TILE_W  # [BLOCK_Q]
    mask_q = (qy < H) & (qx < W)
    offs_c = tl.arange(0, BLOCK_CK)
    offs_k = tl.arange(0, BLOCK_K)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_v = offs_v < CV

    q_pix = qy.to(tl.int64) * stride_qh + qx.to(tl.int64) * stride_qw  # [BLOCK_Q]
    q_base = q_ptr + pid_b * stride_qb
    k_base = k_ptr + pid_b * stride_kb
    key_sq_base = key_sq_ptr + pid_b * stride_sb
    v_base = v_ptr + pid_b * stride_vb + obj * stride_vo
    bias_base = bias_ptr + pid_b * stride_bb + obj * stride_bo
    v_chan = offs_v.to(tl.int64) * stride_vc  # [BLOCK_V]
    if CK_SINGLE:
        q_tile = tl.load(
            q_base + q_pix[:, None] + offs_c[None, :].to(tl.int64) * stride_qc,
            mask=mask_q[:, None] & (offs_c[None, :] < CK), other=0.0,
        )  # [BLOCK_Q, BLOCK_CK]
        if QK_FP32:
            q_tile = q_tile.to(tl.float32)

    # The halo: key rows and columns that some query of this tile can see.
    ky_start = tl.maximum(y0 - radius, 0)
    ky_stop = tl.minimum(y0 + TILE_H + radius, H)
    kx_start = tl.maximum(x0 - radius, 0)
    kx_stop = tl.minimum(x0 + TILE_W + radius, W)
    chunks = tl.cdiv(kx_stop - kx_start, BLOCK_K)  # key chunks per halo row

    row_max = tl.full([TILE_H * TILE_W], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([TILE_H * TILE_W], dtype=tl.float32)
    acc = tl.zeros([TILE_H * TILE_W, BLOCK_V], dtype=tl.float32)
    for step in range(0, (ky_stop - ky_start) * chunks):
        ky = ky_start + step // chunks
        kx = kx_start + (step % chunks) * BLOCK_K + offs_k  # [BLOCK_K]
        mask_k = kx < kx_stop
        k_pix = ky.to(tl.int64) * stride_kh + kx.to(tl.int64) * stride_kw  # [BLOCK_K]
        if CK_SINGLE:
            k = tl.load(
                k_base + k_pix[None, :] + offs_c[:, None].to(tl.int64) * stride_kc,
                mask=(offs_c[:, None] < CK) & mask_k[None, :], other=0.0,
            )  # [BLOCK_CK, BLOCK_K]
            if QK_FP32:
                qk = tl.dot(q_tile, k.to(tl.float32), input_precision="ieee")
            else:
                qk = tl.dot(q_tile, k)  # [BLOCK_Q, BLOCK_K], fp32 accumulator
        else:
            qk = tl.zeros([TILE_H * TILE_W, BLOCK_K], dtype=tl.float32)
            for c0 in range(0, CK, BLOCK_CK):
                chan = c0 + offs_c
                mask_c = chan < CK
                q = tl.load(
                    q_base + q_pix[:, None] + chan[None, :].to(tl.int64) * stride_qc,
                    mask=mask_q[:, None] & mask_c[None, :], other=0.0,
                )  # [BLOCK_Q, BLOCK_CK]
                k = tl.load(
                    k_base + k_pix[None, :] + chan[:, None].to(tl.int64) * stride_kc,
                    mask=mask_c[:, None] & mask_k[None, :], other=0.0,
                )  # [BLOCK_CK, BLOCK_K]
                if QK_FP32:
                    qk = tl.dot(q.to(tl.float32), k.to(tl.float32), qk, input_precision="ieee")
                else:
                    qk = tl.dot(q, k, qk)
        key_sq = tl.load(
            key_sq_base + ky.to(tl.int64) * stride_sh + kx.to(tl.int64) * stride_sw, mask=mask_k, other=0.0,
        )  # |k|², [BLOCK_K]
        logits = scale * (2.0 * qk - key_sq[None, :])  # [BLOCK_Q, BLOCK_K]
        if HAS_BIAS:
            bias = tl.load(
                bias_base + ky.to(tl.int64) * stride_bh + kx.to(tl.int64) * stride_bw, mask=mask_k, other=0.0,
            ).to(tl.float32)  # [BLOCK_K]
            logits = logits + bias[None, :]
        # Pairs inside the window with the key inside the image. (Queries past the image, in
        # partial tiles, compute on zero queries and are never stored.)
        dy = ky - qy  # [BLOCK_Q]
        dx = kx[None, :] - qx[:, None]  # [BLOCK_Q, BLOCK_K]
        row_seen = (dy >= -radius) & (dy <= radius)  # [BLOCK_Q]
        seen = row_seen[:, None] & mask_k[None, :] & (dx >= -radius) & (dx <= radius)  # [BLOCK_Q, BLOCK_K]
        logits = tl.where(seen, logits, float("-inf"))

        # Online softmax; a query that has seen only −inf keeps max −inf and subtracts 0.
        new_max = tl.maximum(row_max, tl.max(logits, axis=1))
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        alpha = tl.exp2((row_max - safe_max) * LOG2E)  # [BLOCK_Q]
        probs = tl.exp2((logits - safe_max[:, None]) * LOG2E)  # [BLOCK_Q, BLOCK_K]
        row_sum = row_sum * alpha + tl.sum(probs, axis=1)
        row_max = new_max

        values = tl.load(
            v_base + v_chan[None, :] + (ky.to(tl.int64) * stride_vh + kx.to(tl.int64) * stride_vw)[:, None],
            mask=mask_k[:, None] & mask_v[None, :], other=0.0,
        )  # [BLOCK_K, BLOCK_V]
        acc = acc * alpha[:, None]
        if PV_FP32:
            acc = tl.dot(probs, values.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(probs.to(values.dtype), values, acc)  # [BLOCK_Q, BLOCK_V]

    # A query whose window holds only −inf logits reads zeros, never 0/0 (a query that saw a
    # finite logit has row_sum ≥ 1: its max contributes exp(0)).
    out = acc / tl.where(row_sum > 0.0, row_sum, 1.0)[:, None]
    out_ptrs = (
        out_ptr + pid_b * stride_ob + obj * stride_oo + offs_v[None, :].to(tl.int64) * stride_oc
        + (qy.to(tl.int64) * stride_oh + qx.to(tl.int64) * stride_ow)[:, None]
    )
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask_q[:, None] & mask_v[None, :])


def _config(tile_h, tile_w, block_k, block_v, num_warps, num_stages):
    """A TILE_H × TILE_W query tile, BLOCK_K key columns per step and BLOCK_V value channels."""
    return triton.Config(
        {"TILE_H": tile_h, "TILE_W": tile_w, "BLOCK_K": block_k, "BLOCK_V": block_v},
        num_warps=num_warps, num_stages=num_stages,
    )


# Tile configurations; BLOCK_CK is not tuned, it follows Ck (`key_channel_tile`, ≤ 64).
# Checked offline for sm_90a at Ck = 64, Cv = 512 (compiled with Triton 3.9 for
# GPUTarget("cuda", 90, 32), then the ptxas Triton uses, -v): with bf16/fp16 operands every
# config below runs both dots on wgmma without spills (130–250 registers). With fp32
# operands (exact dots on the CUDA cores) only the 8-warp configs with
# BLOCK_Q·(BLOCK_K + BLOCK_V) ≤ 64·160 are spill-free (162–209 registers), so
# `_prune_configs` keeps only those for fp32: every 4-warp fp32 config spills (200–10000
# bytes), and so do the larger 8-warp ones (270–1240 bytes). Left out because they spill at
# bf16 too: 4 warps with 8×16 tiles and BLOCK_V 128, or with BLOCK_K 32 and BLOCK_V 128.
# Off the target sizes, the chunked path (Ck > 64) spills ≤ 104 bytes in one bf16 and two
# fp32 configs; everything is spill-free at Ck = 24.
_CUDA_CONFIGS = [
    # Spill-free at every dtype.
    _config(4, 16, 16, 128, num_warps=8, num_stages=2),
    _config(4, 16, 32, 128, num_warps=8, num_stages=2),
    _config(8, 8, 32, 64, num_warps=8, num_stages=2),
    _config(8, 16, 16, 64, num_warps=8, num_stages=3),
    # 16-bit operands only (tensor cores).
    _config(4, 16, 16, 64, num_warps=4, num_stages=2),
    _config(4, 16, 32, 64, num_warps=4, num_stages=3),
    _config(8, 8, 16, 64, num_warps=4, num_stages=3),
    _config(8, 16, 16, 64, num_warps=4, num_stages=2),
    _config(8, 16, 32, 128, num_warps=8, num_stages=2),
]
# One small config under TRITON_INTERPRET=1: no benchmarking, and test-sized maps still span
# several query tiles (partial ones at the right and bottom edges), several key chunks per
# halo row once the halo is wider than 16 columns, and several value-channel tiles.
_INTERPRETER_CONFIG = triton.Config(
    {"TILE_H": 4, "TILE_W": 4, "BLOCK_K": 16, "BLOCK_V": 16}, num_warps=4, num_stages=1,
)


def _fits_fp32(config):
    """Whether a config stays spill-free with fp32 operands (see the note above the list)."""
    block_q = config.kwargs["TILE_H"] * config.kwargs["TILE_W"]
    return config.num_warps == 8 and block_q * (config.kwargs["BLOCK_K"] + config.kwargs["BLOCK_V"]) <= 64 * 160


def _prune_configs(configs, named_args, **kwargs):
    """The spill-free configs for the operand dtype, without tiles larger than the problem
    (or, when every tile is, the smallest)."""
    if kwargs["QK_FP32"] or kwargs["PV_FP32"]:
        configs = [c for c in configs if _fits_fp32(c)]
    kept = [
        c for c in configs
        if not (c.kwargs["BLOCK_V"] > 64 and named_args["CV"] <= 64)
        and not (c.kwargs["TILE_H"] > 4 and named_args["H"] <= 4)
        and not (c.kwargs["TILE_W"] > 8 and named_args["W"] <= 8)
    ]
    if kept:
        return kept
    return [min(configs, key=lambda c: (c.kwargs["TILE_H"] * c.kwargs["TILE_W"], c.kwargs["BLOCK_V"]))]


# Tuned on the sizes that select tiles (H, W, Ck, Cv); the radius only sets the loop length.
# The choice is cached on disk, as the memory read's is.
_local_attention_fwd_tuned = triton.autotune(
    configs=_CUDA_CONFIGS, key=["H", "W", "CK", "CV"], prune_configs_by={"early_config_prune": _prune_configs},
    cache_results=True,
)(_local_attention_fwd_kernel)


def _local_attention_launch(query_key, key, value, radius, key_bias, scale):
    """Validate, allocate and launch; returns [B, O, Cv, H, W] in value's dtype.

    Inputs may have any strides; key_bias is expanded to [B, O, H, W] as a stride-0 view
    (no copy).
    """
    batch, key_dim, height, width, num_objects, value_dim = check_local_attention_args(
        query_key, key, value, radius, key_bias
    )
    check_kernel_tensors("local_attention", query_key=query_key, key=key, value=value, key_bias=key_bias)
    scale = resolve_scale(scale, key_dim)
    out = torch.empty((batch, num_objects, value_dim, height, width), dtype=value.dtype, device=value.device)
    if out.numel() == 0:
        return out
    has_bias = key_bias is not None
    bias = key_bias.expand(batch, num_objects, height, width) if has_bias else None  # [B, O, H, W] view
    bias_strides = bias.stride() if has_bias else (0, 0, 0, 0)
    block_ck = key_channel_tile(key_dim, max_tile=64)
    # A window wider than the map sees the whole map: the same result with a radius that fits
    # the kernel's int32 arithmetic.
    radius = min(radius, max(height, width))

    def grid(meta):
        query_tiles = triton.cdiv(height, meta["TILE_H"]) * triton.cdiv(width, meta["TILE_W"])
        return (query_tiles, num_objects * triton.cdiv(value_dim, meta["BLOCK_V"]), batch)

    key_sq = key.float().pow(2).sum(dim=1)  # [B, H, W]: |k|² once per key pixel, in fp32
    tuned_launcher(_local_attention_fwd_tuned, _INTERPRETER_CONFIG)[grid](
        query_key, key, key_sq, value, bias if has_bias else query_key, out,  # placeholder pointer when no bias
        *query_key.stride(), *key.stride(), *key_sq.stride(), *value.stride(), *bias_strides, *out.stride(),
        height, width, key_dim, value_dim, radius, scale,
        HAS_BIAS=has_bias,
        QK_FP32=dot_in_fp32(query_key.dtype, key.dtype),
        PV_FP32=dot_in_fp32(value.dtype),
        CK_SINGLE=key_dim <= block_ck,
        BLOCK_CK=block_ck,
    )
    return out


class _LocalAttentionFunction(torch.autograd.Function):
    """Fused forward; backward recomputes `remn.reference.local_attention` under enable_grad."""

    @staticmethod
    def forward(ctx, query_key, key, value, radius, key_bias, scale):
        ctx.save_for_backward(query_key, key, value, key_bias)
        ctx.radius, ctx.scale = radius, scale
        return _local_attention_launch(query_key, key, value, radius, key_bias, scale)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        needs = ctx.needs_input_grad
        q_grad, k_grad, v_grad, bias_grad = reference_gradients(
            lambda q, k, v, bias: reference_local_attention(q, k, v, ctx.radius, bias, scale=ctx.scale),
            ctx.saved_tensors, (needs[0], needs[1], needs[2], needs[4]), grad_out,
        )
        return q_grad, k_grad, v_grad, None, bias_grad, None


def local_attention(
    query_key: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    radius: int,
    key_bias: torch.Tensor | None = None,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """Fused windowed attention; same contract as `remn.reference.local_attention`.

    query_key, key: [B, Ck, H, W]; value: [B, O, Cv, H, W]; key_bias broadcastable to
    [B, O, H, W] or None; radius ≥ 0. Returns [B, O, Cv, H, W] in value's dtype:

        out[b, o, :, p] = Σ_{p' ∈ window(p) ∩ image} softmax_p'(scale·(2⟨q_p, k_p'⟩ − |k_p'|²)
                          + key_bias[b, o, p']) · value[b, o, :, p']

    with window(p) = {p' : |p' − p|∞ ≤ radius}; scale defaults to 1/sqrt(Ck). A pixel whose
    window holds only −inf logits reads zeros.

    Tensors: CUDA (or CPU under TRITON_INTERPRET=1), fp32/fp16/bf16, any strides; the
    softmax and accumulators are fp32. fp16/bf16 logits and p·v use the tensor cores with
    fp32 accumulation (p is rounded to the value dtype); fp32 inputs use exact fp32 dots
    (`input_precision="ieee"`, no TF32).

    Backward is not fused: it recomputes the reference op (`remn.reference.local_attention`)
    under `torch.enable_grad()` and differentiates that, so gradients w.r.t. query_key, key,
    value and key_bias are the reference's; it is differentiable once (no double backward).
    """
    tensors = (query_key, key, value, key_bias)
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors):
        return _LocalAttentionFunction.apply(query_key, key, value, radius, key_bias, scale)
    return _local_attention_launch(query_key, key, value, radius, key_bias, scale)
