"""Fused gated memory read: one streaming pass, the N×M affinity never leaves registers.

Math (same as `remn.reference.memory_read`, which is the specification):

    logit[b, i, j] = scale · (2⟨q_bi, k_bj⟩ − |k_bj|²) + key_bias[b, j]
    out[b, o, :, i] = Σ_j softmax_j(logit[b, i, :]) · v[b, o, :, j]

Design:
- `_memory_read_fwd_kernel`: grid (query tiles, value-channel tiles, B). A program owns
  BLOCK_N queries and BLOCK_V of the O·Cv value channels (all O objects read with the same
  probabilities, so the values are read as [B, O·Cv, M]) and streams the keys BLOCK_M at a
  time: logits with `tl.dot` (|k|² precomputed once per key by the launcher, [B, M] fp32),
  an online softmax in fp32 (running max m and sum l; the accumulator is rescaled by
  exp(m_old − m_new)), then `tl.dot(p, v)` into an fp32 [BLOCK_N, BLOCK_V] accumulator.
- Top-k (`top_k=k < M`): `_memory_topk_kernel` streams the same logit tiles first and keeps,
  per query, the multiset of its k largest logits in a [BLOCK_N, KPAD] register buffer
  (unordered; columns ≥ k pinned at +inf so min(buffer) is the k-th largest). Each key tile
  is merged by repeated max extraction, only over the entries that beat the current k-th
  value, and only as many rounds as the busiest row needs (≤ k): late in the stream a tile
  rarely needs more than one or two rounds. The keys are split over programs for occupancy;
  each split writes its k best logits ([B, splits, N, k]), the launcher takes the k-th largest
  of those few values per query (`torch.topk` over splits·k) and counts how many of them lie
  strictly above it (every key above the k-th value is in its split's k best, so the count
  is exact): the read keeps exactly k keys per query, like the reference, all those above
  the threshold and the first k − #above of those equal to it in key order (a running count
  of ties carried from tile to tile, with a `tl.cumsum` inside each tile). Memory
  O(N·(Cv + splits·k)).
  Both kernels compute logit tiles with the same helper, the same tile sizes and warps, the
  same precomputed |k|² and no FP contraction, so a key's logit is bit-identical in both
  passes and the k-th key is never lost to rounding.
- Backward recomputes through `remn.reference.memory_read` (see `memory_read`).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from remn.reference import check_memory_read_args, key_square_norms
from remn.reference import memory_read as reference_memory_read

from ._common import (
    check_kernel_tensors, dot_in_fp32, interpreting, key_channel_tile, reference_gradients, resolve_scale,
    tuned_launcher,
)

LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x·log2(e)); constexpr so kernels may read it

# Largest top_k the fused path takes: the per-query buffer lives in registers.
MAX_FUSED_TOP_K = 256


@triton.jit
def _logit_tile(
    q_tile, q_base, k_base, key_sq_base, bias_base,
    stride_qc, stride_qn, stride_kc, stride_km, stride_bm,
    offs_n, offs_m, N, M, CK, scale,
    HAS_BIAS: tl.constexpr, QK_FP32: tl.constexpr, CK_SINGLE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_CK: tl.constexpr,
):
    """Logits [BLOCK_N, BLOCK_M] in fp32 for queries offs_n and keys offs_m; −inf past M.

    q_tile is the query tile [BLOCK_N, BLOCK_CK] (fp32 when QK_FP32) when Ck fits one tile
    (CK_SINGLE); otherwise it is ignored and the query is loaded chunk by chunk with the keys.
    |k|² comes precomputed (fp32, contiguous over M) so that every pass reads the same bits.
    """
    mask_n = offs_n < N
    mask_m = offs_m < M
    offs_c = tl.arange(0, BLOCK_CK)
    if CK_SINGLE:
        k = tl.load(
            k_base + offs_c[:, None].to(tl.int64) * stride_kc + offs_m[None, :] * stride_km,
            mask=(offs_c[:, None] < CK) & mask_m[None, :], other=0.0,
        )  # [BLOCK_CK, BLOCK_M]
        if QK_FP32:
            qk = tl.dot(q_tile, k.to(tl.float32), input_precision="ieee")
        else:
            qk = tl.dot(q_tile, k)  # [BLOCK_N, BLOCK_M], fp32 accumulator
    else:
        qk = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        for c0 in range(0, CK, BLOCK_CK):
            chan = c0 + offs_c
            mask_c = chan < CK
            k = tl.load(
                k_base + chan[:, None].to(tl.int64) * stride_kc + offs_m[None, :] * stride_km,
                mask=mask_c[:, None] & mask_m[None, :], other=0.0,
            )  # [BLOCK_CK, BLOCK_M]
            q = tl.load(
                q_base + chan[None, :].to(tl.int64) * stride_qc + offs_n[:, None] * stride_qn,
                mask=mask_n[:, None] & mask_c[None, :], other=0.0,
            )  # [BLOCK_N, BLOCK_CK]
            if QK_FP32:
                qk = tl.dot(q.to(tl.float32), k.to(tl.float32), qk, input_precision="ieee")
            else:
                qk = tl.dot(q, k, qk)
    key_sq = tl.load(key_sq_base + offs_m, mask=mask_m, other=0.0)  # [BLOCK_M]
    logits = scale * (2.0 * qk - key_sq[None, :])
    if HAS_BIAS:
        bias = tl.load(bias_base + offs_m * stride_bm, mask=mask_m, other=0.0).to(tl.float32)
        logits = logits + bias[None, :]
    return tl.where(mask_m[None, :], logits, float("-inf"))


@triton.jit
def _load_query_tile(q_base, stride_qc, stride_qn, offs_n, N, CK, QK_FP32: tl.constexpr, BLOCK_CK: tl.constexpr):
    """The query tile [BLOCK_N, BLOCK_CK] (channels past Ck and queries past N read 0)."""
    offs_c = tl.arange(0, BLOCK_CK)
    q = tl.load(
        q_base + offs_c[None, :].to(tl.int64) * stride_qc + offs_n[:, None] * stride_qn,
        mask=(offs_n[:, None] < N) & (offs_c[None, :] < CK), other=0.0,
    )
    if QK_FP32:
        q = q.to(tl.float32)
    return q


@triton.jit
def _memory_read_fwd_kernel(
    q_ptr, k_ptr, key_sq_ptr, v_ptr, bias_ptr, thr_ptr, ties_ptr, out_ptr,
    stride_qb, stride_qc, stride_qn,
    stride_kb, stride_kc, stride_km, stride_sb,
    stride_vb, stride_vo, stride_vc, stride_vm,
    stride_bb, stride_bm,
    stride_tb, stride_tn,
    stride_ob, stride_oc, stride_on,
    N, M, CK, CV, OCV, scale,
    HAS_BIAS: tl.constexpr, HAS_THRESHOLD: tl.constexpr,
    QK_FP32: tl.constexpr, PV_FP32: tl.constexpr, CK_SINGLE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_CK: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """out[b, c, i] for BLOCK_N queries i and BLOCK_V flattened value channels c = o·Cv + cv.

    HAS_THRESHOLD (top-k): query i reads the keys whose logit is above thr[b, i], and of those
    equal to it the first ties[b, i] in key order; thr and ties share the strides (stride_tb,
    stride_tn).
    """
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_ch = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)  # flattened object·channel index
    mask_ch = offs_ch < OCV
    # [B, O, Cv, M] read as [B, O·Cv, M] without assuming O and Cv strides merge.
    value_chan_off = (offs_ch // CV).to(tl.int64) * stride_vo + (offs_ch % CV).to(tl.int64) * stride_vc

    q_base = q_ptr + pid_b * stride_qb
    k_base = k_ptr + pid_b * stride_kb
    key_sq_base = key_sq_ptr + pid_b * stride_sb
    v_base = v_ptr + pid_b * stride_vb
    bias_base = bias_ptr + pid_b * stride_bb

    q_tile = _load_query_tile(q_base, stride_qc, stride_qn, offs_n, N, CK, QK_FP32, BLOCK_CK)
    if HAS_THRESHOLD:
        threshold = tl.load(thr_ptr + pid_b * stride_tb + offs_n * stride_tn, mask=mask_n, other=float("-inf"))
        ties_allowed = tl.load(ties_ptr + pid_b * stride_tb + offs_n * stride_tn, mask=mask_n, other=0)
        ties_seen = tl.zeros([BLOCK_N], dtype=tl.int32)  # keys equal to the threshold in earlier tiles

    row_max = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        logits = _logit_tile(
            q_tile, q_base, k_base, key_sq_base, bias_base, stride_qc, stride_qn, stride_kc, stride_km, stride_bm,
            offs_n, offs_m, N, M, CK, scale, HAS_BIAS, QK_FP32, CK_SINGLE, BLOCK_N, BLOCK_M, BLOCK_CK,
        )  # [BLOCK_N, BLOCK_M]
        if HAS_THRESHOLD:
            tied = logits == threshold[:, None]  # [BLOCK_N, BLOCK_M]
            tie_rank = tl.cumsum(tied.to(tl.int32), axis=1) + ties_seen[:, None]  # 1-based among the row's ties
            keep = (logits > threshold[:, None]) | (tied & (tie_rank <= ties_allowed[:, None]))
            ties_seen += tl.sum(tied.to(tl.int32), axis=1)
            logits = tl.where(keep, logits, float("-inf"))
        # Online softmax; a row that has seen only −inf keeps max −inf and subtracts 0.
        new_max = tl.maximum(row_max, tl.max(logits, axis=1))
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        alpha = tl.exp2((row_max - safe_max) * LOG2E)
        probs = tl.exp2((logits - safe_max[:, None]) * LOG2E)  # [BLOCK_N, BLOCK_M]
        row_sum = row_sum * alpha + tl.sum(probs, axis=1)
        row_max = new_max

        values = tl.load(
            v_base + value_chan_off[None, :] + offs_m[:, None].to(tl.int64) * stride_vm,
            mask=(offs_m[:, None] < M) & mask_ch[None, :], other=0.0,
        )  # [BLOCK_M, BLOCK_V]
        acc = acc * alpha[:, None]
        if PV_FP32:
            acc = tl.dot(probs, values.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(probs.to(values.dtype), values, acc)

    # A query with no remaining key (all −inf) reads zeros, never 0/0.
    # (A row that saw a finite logit has row_sum ≥ 1: its max contributes exp(0).)
    out = acc / tl.where(row_sum > 0.0, row_sum, 1.0)[:, None]
    out_ptrs = out_ptr + pid_b * stride_ob + offs_ch[None, :].to(tl.int64) * stride_oc + offs_n[:, None] * stride_on
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_ch[None, :])


@triton.jit
def _memory_topk_kernel(
    q_ptr, k_ptr, key_sq_ptr, bias_ptr, part_ptr,
    stride_qb, stride_qc, stride_qn,
    stride_kb, stride_kc, stride_km, stride_sb,
    stride_bb, stride_bm,
    stride_pb, stride_ps, stride_pn,
    N, M, CK, keys_per_split, scale,
    TOP_K: tl.constexpr, KPAD: tl.constexpr,
    HAS_BIAS: tl.constexpr, QK_FP32: tl.constexpr, CK_SINGLE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_CK: tl.constexpr,
):
    """part[b, split, i, :TOP_K] = the TOP_K largest logits of query i over this split's keys.

    Unfilled places hold −inf (fewer than TOP_K finite logits in the split).
    """
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    q_base = q_ptr + pid_b * stride_qb
    k_base = k_ptr + pid_b * stride_kb
    key_sq_base = key_sq_ptr + pid_b * stride_sb
    bias_base = bias_ptr + pid_b * stride_bb
    q_tile = _load_query_tile(q_base, stride_qc, stride_qn, offs_n, N, CK, QK_FP32, BLOCK_CK)

    cols_k = tl.arange(0, KPAD)
    cols_m = tl.arange(0, BLOCK_M)
    # Unordered buffer of each query's best TOP_K logits; the KPAD − TOP_K pad columns are
    # +inf so that min(best) is the current TOP_K-th largest and they are never replaced.
    best = tl.where(cols_k[None, :] < TOP_K, float("-inf"), float("inf")) + tl.zeros([BLOCK_N, KPAD], tl.float32)
    kth, low_col = tl.min(best, axis=1, return_indices=True)  # k-th largest so far and where it sits

    m_start = pid_s * keys_per_split
    m_stop = tl.minimum(m_start + keys_per_split, M)
    for m0 in range(m_start, m_stop, BLOCK_M):
        offs_m = m0 + cols_m
        logits = _logit_tile(
            q_tile, q_base, k_base, key_sq_base, bias_base, stride_qc, stride_qn, stride_kc, stride_km, stride_bm,
            offs_n, offs_m, N, M, CK, scale, HAS_BIAS, QK_FP32, CK_SINGLE, BLOCK_N, BLOCK_M, BLOCK_CK,
        )  # [BLOCK_N, BLOCK_M]
        # Only logits above the current k-th value can change it (an equal one cannot).
        beats = logits > kth[:, None]
        candidates = tl.where(beats, logits, float("-inf"))
        rounds = tl.minimum(tl.max(tl.sum(beats.to(tl.int32), axis=1), axis=0), TOP_K)
        for _ in range(0, rounds):
            # Take each row's largest remaining candidate (one occurrence of it) ...
            top, top_col = tl.max(candidates, axis=1, return_indices=True)
            candidates = tl.where(cols_m[None, :] == top_col[:, None], float("-inf"), candidates)
            # ... and let it replace the row's current k-th value when it is larger.
            replace = (cols_k[None, :] == low_col[:, None]) & (top > kth)[:, None]
            best = tl.where(replace, top[:, None], best)
            kth, low_col = tl.min(best, axis=1, return_indices=True)

    part_ptrs = part_ptr + pid_b * stride_pb + pid_s * stride_ps + offs_n[:, None] * stride_pn + cols_k[None, :]
    tl.store(part_ptrs, best, mask=(offs_n[:, None] < N) & (cols_k[None, :] < TOP_K))


def _config(block_n, block_m, block_v, num_warps, num_stages):
    return triton.Config({"BLOCK_N": block_n, "BLOCK_M": block_m, "BLOCK_V": block_v},
                         num_warps=num_warps, num_stages=num_stages)


# Tile configurations, one list per operand precision; BLOCK_CK is not tuned: it follows Ck
# (`key_channel_tile`). Registers and spills on sm_90a at Ck = 64, O·Cv = 1024, from
# `bench/ptxas_check.py` (Triton 3.9's own ptxas 13.4 and flags, integers specialised as
# the JIT does), plain read: at a 480p-sized launch (N = 1620) the first 16-bit config
# (64, 64, 64, 4 warps) spills 220–244 bytes at 255 registers and the other three are clean
# (240–255); at sizes that are multiples of 16 all are clean (128–176). The fp32 list
# (exact dots on the CUDA cores; the 16-bit tiles spill at fp32) is clean at every size
# checked (98–210 registers).
_CONFIGS_16BIT = [
    _config(64, 64, 64, num_warps=4, num_stages=3),
    _config(64, 64, 128, num_warps=8, num_stages=3),
    _config(128, 64, 64, num_warps=8, num_stages=3),
    _config(128, 64, 128, num_warps=8, num_stages=2),
]
_CONFIGS_FP32 = [
    _config(64, 32, 128, num_warps=8, num_stages=2),
    _config(64, 32, 128, num_warps=8, num_stages=3),
    _config(32, 64, 128, num_warps=8, num_stages=2),
    _config(64, 32, 64, num_warps=8, num_stages=2),  # the one for O·Cv ≤ 64
]
# Under TRITON_INTERPRET=1 one small config: no benchmarking, and test-sized problems
# still span several query, key and channel tiles.
_INTERPRETER_CONFIG = triton.Config({"BLOCK_N": 16, "BLOCK_M": 16, "BLOCK_V": 16}, num_warps=4, num_stages=1)


def _prune_configs(configs, named_args, **kwargs):
    """The list for the operand precision, without tiles larger than the problem, and with
    two pipeline stages for 128-channel key tiles (three would fill shared memory)."""
    fp32 = kwargs["QK_FP32"] or kwargs["PV_FP32"]
    configs = [c for c in configs if (c in _CONFIGS_FP32) == fp32]
    if kwargs["BLOCK_CK"] > 64:
        configs = [triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=min(c.num_stages, 2)) for c in configs]
    kept = [
        c for c in configs
        if not (c.kwargs["BLOCK_N"] > 64 and named_args["N"] <= 64)
        and not (c.kwargs["BLOCK_V"] > 64 and named_args["OCV"] <= 64)
    ]
    return kept or configs[:1]


# The plain read is autotuned on the sizes that stay fixed during a video (N, O·Cv, Ck):
# M grows with the memory every frame and is left out of the key so that it does not retune.
# The choice is cached on disk (Triton's cache directory, keyed by the kernel's source, the
# key and the device): a size is benchmarked once per machine, not in every process's first frame.
_memory_read_fwd_tuned = triton.autotune(
    configs=_CONFIGS_16BIT + _CONFIGS_FP32, key=["N", "OCV", "CK"],
    prune_configs_by={"early_config_prune": _prune_configs}, cache_results=True,
)(_memory_read_fwd_kernel)


def _topk_config(kpad: int) -> dict:
    """Tiles shared by the top-k pass and the read that follows it (bit-identical logits).

    BLOCK_N shrinks as k grows so that the [BLOCK_N, KPAD] buffer stays in registers. Both
    launches also pass enable_fp_fusion=False, so that no FMA contraction can differ between
    the two compiled kernels. Measured on sm_90a with `bench/ptxas_check.py`: at bf16/fp16
    both kernels are spill-free for every kpad (kpad ≤ 64 takes 8 warps: with 4, the exact-k
    read's running tie count spills). At fp32 they are not yet: at 480p sizes the read spills
    about 500 bytes at kpad 128 and 270 at kpad 256, and at sizes that are multiples of 16
    the read with key_bias at kpad ≤ 128 falls to 32 registers and spills about 7 KB. Those
    tiles want retuning on a GPU.
    """
    if interpreting():
        return dict(_INTERPRETER_CONFIG.kwargs, num_warps=4, num_stages=1)
    block_n = 64 if kpad <= 64 else (32 if kpad <= 128 else 16)
    num_warps = 8 if kpad <= 64 else 4
    return {"BLOCK_N": block_n, "BLOCK_M": 64, "BLOCK_V": 64, "num_warps": num_warps, "num_stages": 2}


def _topk_splits(query_tiles: int, batch: int, key_tiles: int, device: torch.device) -> int:
    """How many programs share one query tile's keys in the top-k pass (fills the GPU).

    Aims at about two programs per SM on CUDA; on CPU (interpreter) at 4 programs, so that
    small test problems also take the multi-split path.
    """
    if device.type == "cuda":
        target = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 4
    return max(1, min(key_tiles, triton.cdiv(target, max(1, query_tiles * batch))))


def _memory_read_launch(query_key, memory_key, memory_value, key_bias, scale, top_k):
    """Validate, allocate and launch; returns [B, O, Cv, N] in memory_value's dtype.

    Inputs may have any strides (the kernels take explicit strides); nothing is copied.
    """
    batch, key_dim, num_queries, num_keys, num_objects, value_dim = check_memory_read_args(
        query_key, memory_key, memory_value, key_bias, top_k
    )
    check_kernel_tensors(
        "memory_read", query_key=query_key, memory_key=memory_key, memory_value=memory_value, key_bias=key_bias
    )
    scale = resolve_scale(scale, key_dim)
    out = torch.empty(
        (batch, num_objects, value_dim, num_queries), dtype=memory_value.dtype, device=memory_value.device
    )
    if out.numel() == 0:
        return out
    out_flat = out.view(batch, num_objects * value_dim, num_queries)  # [B, O·Cv, N]

    use_top_k = top_k is not None and top_k < num_keys
    if use_top_k and top_k > MAX_FUSED_TOP_K:
        raise ValueError(
            f"memory_read: the fused kernel takes top_k ≤ {MAX_FUSED_TOP_K} (got {top_k} with M={num_keys}); "
            "use remn.reference.memory_read (backend='reference') for larger k"
        )
    has_bias = key_bias is not None
    bias = key_bias if has_bias else query_key  # placeholder pointer, never read
    stride_bb, stride_bm = (key_bias.stride(0), key_bias.stride(1)) if has_bias else (0, 0)
    block_ck = key_channel_tile(key_dim)
    flags = dict(
        HAS_BIAS=has_bias,
        QK_FP32=dot_in_fp32(query_key.dtype, memory_key.dtype),
        PV_FP32=dot_in_fp32(memory_value.dtype),
        CK_SINGLE=key_dim <= block_ck,
        BLOCK_CK=block_ck,
    )
    # |k|² once per key, in fp32 exactly as the reference computes it; both top-k passes and
    # every query/channel tile read these bits instead of re-reducing the key tile.
    key_sq = key_square_norms(memory_key)  # [B, M], contiguous
    common_args = (
        query_key.stride(0), query_key.stride(1), query_key.stride(2),
        memory_key.stride(0), memory_key.stride(1), memory_key.stride(2), key_sq.stride(0),
    )
    value_strides = memory_value.stride()  # (b, o, cv, m)

    if not use_top_k:
        def grid(meta):
            value_tiles = triton.cdiv(num_objects * value_dim, meta["BLOCK_V"])
            return (triton.cdiv(num_queries, meta["BLOCK_N"]), value_tiles, batch)

        tuned_launcher(_memory_read_fwd_tuned, _INTERPRETER_CONFIG)[grid](
            query_key, memory_key, key_sq, memory_value, bias, out, out, out,  # thr_ptr, ties_ptr unused
            *common_args, *value_strides, stride_bb, stride_bm, 0, 0, *out_flat.stride(),
            num_queries, num_keys, key_dim, value_dim, num_objects * value_dim, scale,
            HAS_THRESHOLD=False, **flags,
        )
        return out

    # Top-k: pass 1 writes each split's k best logits, the k-th largest of those is the
    # threshold, pass 2 reads exactly k keys with the same tiles.
    kpad = triton.next_power_of_2(top_k)
    config = _topk_config(kpad)
    block_n, block_m = config["BLOCK_N"], config["BLOCK_M"]
    query_tiles = triton.cdiv(num_queries, block_n)
    key_tiles = triton.cdiv(num_keys, block_m)
    splits = _topk_splits(query_tiles, batch, key_tiles, query_key.device)
    keys_per_split = triton.cdiv(key_tiles, splits) * block_m
    splits = triton.cdiv(num_keys, keys_per_split)
    partial = torch.empty((batch, splits, num_queries, top_k), dtype=torch.float32, device=query_key.device)
    _memory_topk_kernel[(query_tiles, splits, batch)](
        query_key, memory_key, key_sq, bias, partial,
        *common_args, stride_bb, stride_bm, partial.stride(0), partial.stride(1), partial.stride(2),
        num_queries, num_keys, key_dim, keys_per_split, scale,
        TOP_K=top_k, KPAD=kpad, HAS_BIAS=has_bias, QK_FP32=flags["QK_FP32"], CK_SINGLE=flags["CK_SINGLE"],
        BLOCK_N=block_n, BLOCK_M=block_m, BLOCK_CK=block_ck,
        num_warps=config["num_warps"], num_stages=config["num_stages"], enable_fp_fusion=False,
    )
    candidates = partial.permute(0, 2, 1, 3).reshape(batch, num_queries, splits * top_k)  # [B, N, splits·k]
    threshold = candidates.topk(top_k, dim=2).values[..., -1].contiguous()  # [B, N]: k-th largest logit
    # Places left for keys tied at the threshold, ≥ 1: every key above it is among the candidates.
    ties_allowed = (top_k - (candidates > threshold[..., None]).sum(dim=2)).to(torch.int32)  # [B, N], contiguous
    grid = (query_tiles, triton.cdiv(num_objects * value_dim, config["BLOCK_V"]), batch)
    _memory_read_fwd_kernel[grid](
        query_key, memory_key, key_sq, memory_value, bias, threshold, ties_allowed, out,
        *common_args, *value_strides, stride_bb, stride_bm, threshold.stride(0), threshold.stride(1),
        *out_flat.stride(),
        num_queries, num_keys, key_dim, value_dim, num_objects * value_dim, scale,
        HAS_THRESHOLD=True, **flags, BLOCK_N=block_n, BLOCK_M=block_m, BLOCK_V=config["BLOCK_V"],
        num_warps=config["num_warps"], num_stages=config["num_stages"], enable_fp_fusion=False,
    )
    return out


class _MemoryReadFunction(torch.autograd.Function):
    """Fused forward; backward recomputes `remn.reference.memory_read` under enable_grad."""

    @staticmethod
    def forward(ctx, query_key, memory_key, memory_value, key_bias, scale, top_k):
        ctx.save_for_backward(query_key, memory_key, memory_value, key_bias)
        ctx.scale, ctx.top_k = scale, top_k
        return _memory_read_launch(query_key, memory_key, memory_value, key_bias, scale, top_k)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        grads = reference_gradients(
            lambda q, k, v, bias: reference_memory_read(q, k, v, bias, scale=ctx.scale, top_k=ctx.top_k),
            ctx.saved_tensors, ctx.needs_input_grad[:4], grad_out,
        )
        return (*grads, None, None)


def memory_read(
    query_key: torch.Tensor,
    memory_key: torch.Tensor,
    memory_value: torch.Tensor,
    key_bias: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    top_k: int | None = None,
) -> torch.Tensor:
    """Fused gated memory read; same contract as `remn.reference.memory_read`.

    query_key: [B, Ck, N]; memory_key: [B, Ck, M]; memory_value: [B, O, Cv, M];
    key_bias: [B, M] or None. Returns [B, O, Cv, N] in memory_value's dtype:

        out[b, o, :, i] = Σ_j softmax_j(scale·(2⟨q_bi, k_bj⟩ − |k_bj|²) + key_bias[b, j]) · v[b, o, :, j]

    scale defaults to 1/sqrt(Ck). With `top_k=k` (k < M, k ≤ MAX_FUSED_TOP_K) exactly k keys
    take part per query, its k largest logits with ties at the k-th value taken in key
    order (as `remn.reference.top_k_mask`); k ≥ M is the plain read. Keys with
    −inf bias take no part; a query with no remaining key reads zeros.

    Tensors: CUDA (or CPU under TRITON_INTERPRET=1), fp32/fp16/bf16, any strides; the
    softmax and accumulators are fp32. fp16/bf16 logits and p·v use the tensor cores with
    fp32 accumulation (p is rounded to the value dtype); fp32 inputs use exact fp32 dots
    (`input_precision="ieee"`, no TF32).

    Backward is not fused: it recomputes the reference op (`remn.reference.memory_read`,
    which materialises the [B, M, N] affinity) under `torch.enable_grad()` and
    differentiates that, so gradients w.r.t. query_key, memory_key, memory_value and
    key_bias are the reference's; it is differentiable once (no double backward).
    """
    tensors = (query_key, memory_key, memory_value, key_bias)
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors):
        return _MemoryReadFunction.apply(query_key, memory_key, memory_value, key_bias, scale, top_k)
    return _memory_read_launch(query_key, memory_key, memory_value, key_bias, scale, top_k)
