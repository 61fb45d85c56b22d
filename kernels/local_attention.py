"""Fused windowed local attention: the (2r+1)²-wide affinity never leaves registers.

Math (same as `remn.reference.local_attention`, which is the specification): for query
pixel p and object o, over the neighbours p' with |p' − p|∞ ≤ r that lie inside the image,

    logit[o, p, p'] = scale · (2⟨q_p, k_p'⟩ − |k_p'|²) + key_bias[o, p']
    out[o, :, p]    = Σ_p' softmax_p'(logit[o, p, :]) · value[o, :, p']

Design: `_local_attention_fwd_kernel` has grid (pixel tiles, O · value-channel tiles, B). A
program owns BLOCK_P consecutive pixels of the flattened H·W map, one object and BLOCK_V of
its value channels, and streams over the window offsets (dy, dx): the shifted key column
gives one logit per pixel (a reduction over Ck, no `tl.dot`: every query has its own keys;
|k|² comes precomputed by the launcher, [B, H, W] fp32), an online softmax in fp32 updates
the running max and sum, and the shifted value tile is accumulated into an fp32
[BLOCK_V, BLOCK_P] accumulator. Neighbours outside the image are
masked to −inf (excluded, not zero-padded), and offsets that no pixel of the tile can use
are skipped (the dy/dx ranges are clipped to the tile's rows and the image), so a radius
larger than the map costs no more than the map. The radius is a runtime argument: no
recompilation per radius. Backward recomputes through `remn.reference.local_attention`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from remn.reference import check_local_attention_args
from remn.reference import local_attention as reference_local_attention

from ._common import check_kernel_tensors, interpreting, reference_gradients, resolve_scale

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
    HAS_BIAS: tl.constexpr, CK_SINGLE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_CK: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """out[b, o, c, p] for BLOCK_P flattened pixels p, one object o, BLOCK_V channels c."""
    pid_p = tl.program_id(0)
    pid_ov = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    value_tiles = tl.cdiv(CV, BLOCK_V)
    obj = (pid_ov // value_tiles).to(tl.int64)
    pid_v = pid_ov % value_tiles

    num_pixels = H * W
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < num_pixels
    y = (offs_p // W).to(tl.int64)
    x = (offs_p % W).to(tl.int64)
    offs_c = tl.arange(0, BLOCK_CK).to(tl.int64)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_v = offs_v < CV

    # Per-pixel pointers at window offset (0, 0), [BLOCK_P]; an offset (dy, dx) adds
    # dy·stride_h + dx·stride_w. Channel offsets stay 1-D: the 2-D tiles are formed inside the
    # loop so that no [channels, pixels] pointer tensor is held in registers across it.
    q_pix = q_ptr + pid_b * stride_qb + y * stride_qh + x * stride_qw
    k_pix = k_ptr + pid_b * stride_kb + y * stride_kh + x * stride_kw
    v_pix = v_ptr + pid_b * stride_vb + obj * stride_vo + y * stride_vh + x * stride_vw
    b_pix = bias_ptr + pid_b * stride_bb + obj * stride_bo + y * stride_bh + x * stride_bw
    s_pix = key_sq_ptr + pid_b * stride_sb + y * stride_sh + x * stride_sw
    k_chan = offs_c * stride_kc  # [BLOCK_CK]
    v_chan = offs_v.to(tl.int64) * stride_vc  # [BLOCK_V]
    mask_v2 = mask_v[:, None]

    if CK_SINGLE:
        mask_c2 = offs_c[:, None] < CK
        q_tile = tl.load(
            q_pix[None, :] + offs_c[:, None] * stride_qc, mask=mask_c2 & mask_p[None, :], other=0.0,
        ).to(tl.float32)  # [BLOCK_CK, BLOCK_P]

    # Offsets some pixel of this tile can use: rows first_row..last_row, any column.
    first_row = (pid_p * BLOCK_P) // W
    last_row = (tl.minimum(pid_p * BLOCK_P + BLOCK_P, num_pixels) - 1) // W
    dy_start = tl.maximum(-radius, -last_row)
    dy_stop = tl.minimum(radius, H - 1 - first_row) + 1
    dx_start = tl.maximum(-radius, 1 - W)
    dx_stop = tl.minimum(radius, W - 1) + 1

    row_max = tl.full([BLOCK_P], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_P], dtype=tl.float32)
    acc = tl.zeros([BLOCK_V, BLOCK_P], dtype=tl.float32)
    for dy in range(dy_start, dy_stop):
        row_ok = mask_p & (y >= -dy) & (y < H - dy)
        k_row = k_pix + dy * stride_kh
        v_row = v_pix + dy * stride_vh
        b_row = b_pix + dy * stride_bh
        s_row = s_pix + dy * stride_sh
        for dx in range(dx_start, dx_stop):
            inside = row_ok & (x >= -dx) & (x < W - dx)  # neighbour in the image, [BLOCK_P]
            k_at = (k_row + dx * stride_kw)[None, :] + k_chan[:, None]  # [BLOCK_CK, BLOCK_P]
            if CK_SINGLE:
                k = tl.load(k_at, mask=mask_c2 & inside[None, :], other=0.0).to(tl.float32)  # [BLOCK_CK, BLOCK_P]
                qk = tl.sum(q_tile * k, axis=0)
            else:
                qk = tl.zeros([BLOCK_P], dtype=tl.float32)
                for c0 in range(0, CK, BLOCK_CK):
                    chan = c0 + offs_c
                    mask_c = chan[:, None] < CK
                    k = tl.load(k_at + c0 * stride_kc, mask=mask_c & inside[None, :], other=0.0).to(tl.float32)
                    q = tl.load(
                        q_pix[None, :] + chan[:, None] * stride_qc, mask=mask_c & mask_p[None, :], other=0.0,
                    ).to(tl.float32)
                    qk += tl.sum(q * k, axis=0)
            key_sq = tl.load(s_row + dx * stride_sw, mask=inside, other=0.0)  # |k_p'|², [BLOCK_P]
            logit = scale * (2.0 * qk - key_sq)
            if HAS_BIAS:
                bias = tl.load(b_row + dx * stride_bw, mask=inside, other=0.0)
                logit = logit + bias.to(tl.float32)
            logit = tl.where(inside, logit, float("-inf"))

            # Online softmax over the window; −inf-only rows keep max −inf and subtract 0.
            new_max = tl.maximum(row_max, logit)
            safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
            alpha = tl.exp2((row_max - safe_max) * LOG2E)
            prob = tl.exp2((logit - safe_max) * LOG2E)  # [BLOCK_P]
            row_sum = row_sum * alpha + prob
            row_max = new_max
            values = tl.load(
                (v_row + dx * stride_vw)[None, :] + v_chan[:, None], mask=mask_v2 & inside[None, :], other=0.0,
            )  # [BLOCK_V, BLOCK_P]
            acc = acc * alpha[None, :] + prob[None, :] * values.to(tl.float32)

    out = acc / tl.where(row_sum > 0.0, row_sum, 1.0)[None, :]  # no neighbour left → zeros
    out_ptrs = (
        out_ptr + pid_b * stride_ob + obj * stride_oo + offs_v[:, None].to(tl.int64) * stride_oc
        + (y * stride_oh + x * stride_ow)[None, :]
    )
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask_v2 & mask_p[None, :])


# Spill-free on sm_90 at Ck = 64 (checked offline with ptxas): a [BLOCK_CK, BLOCK_P] key tile
# per offset needs about 16 elements per thread, hence 8 warps for 64-pixel tiles.
_CUDA_CONFIGS = [
    triton.Config({"BLOCK_P": 32, "BLOCK_V": 32}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_P": 32, "BLOCK_V": 64}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_P": 64, "BLOCK_V": 32}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_P": 64, "BLOCK_V": 64}, num_warps=8, num_stages=2),
]
# One small config under TRITON_INTERPRET=1: no benchmarking, several tiles at test sizes.
_INTERPRETER_CONFIG = triton.Config({"BLOCK_P": 32, "BLOCK_V": 16}, num_warps=4, num_stages=1)


def _prune_configs(configs, named_args, **kwargs):
    """One config in the interpreter; on CUDA drop channel tiles wider than Cv."""
    if interpreting():
        return [_INTERPRETER_CONFIG]
    kept = [c for c in configs if not (c.kwargs["BLOCK_V"] > 32 and named_args["CV"] <= 32)]
    return kept or configs[:1]


# Tuned on the sizes that select tiles (pixels, Cv, Ck); the radius only sets the loop length.
_local_attention_fwd_tuned = triton.autotune(
    configs=_CUDA_CONFIGS, key=["H", "W", "CK", "CV"], prune_configs_by={"early_config_prune": _prune_configs},
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
    block_ck = max(1, min(triton.next_power_of_2(max(key_dim, 1)), 64))

    def grid(meta):
        value_tiles = triton.cdiv(value_dim, meta["BLOCK_V"])
        return (triton.cdiv(height * width, meta["BLOCK_P"]), num_objects * value_tiles, batch)

    key_sq = key.float().pow(2).sum(dim=1)  # [B, H, W]: |k|² once per key pixel, in fp32
    _local_attention_fwd_tuned[grid](
        query_key, key, key_sq, value, bias if has_bias else query_key, out,  # placeholder pointer when no bias
        *query_key.stride(), *key.stride(), *key_sq.stride(), *value.stride(), *bias_strides, *out.stride(),
        height, width, key_dim, value_dim, radius, scale,
        HAS_BIAS=has_bias, CK_SINGLE=key_dim <= block_ck, BLOCK_CK=block_ck,
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

    Tensors: CUDA (or CPU under TRITON_INTERPRET=1), fp32/fp16/bf16, any strides; all
    arithmetic is fp32 (loads are upcast).

    Backward is not fused: it recomputes the reference op (`remn.reference.local_attention`)
    under `torch.enable_grad()` and differentiates that, so gradients w.r.t. query_key, key,
    value and key_bias are the reference's; it is differentiable once (no double backward).
    """
    tensors = (query_key, key, value, key_bias)
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors):
        return _LocalAttentionFunction.apply(query_key, key, value, radius, key_bias, scale)
    return _local_attention_launch(query_key, key, value, radius, key_bias, scale)
