"""Offline register/spill check of the fused kernels for Hopper (sm_90a), no GPU needed.

    python bench/ptxas_check.py [--sizes 480p|aligned|plain]

For every tile config the launchers can pick, at Ck = 64 (BLOCK_CK = `key_channel_tile`,
CK_SINGLE), this compiles the kernel with `triton.compile(ASTSource(...),
target=GPUTarget("cuda", 90, 32))`, runs `ptxas -v --gpu-name=sm_90a` on the PTX and
prints one row per (kernel, config, dtype, flags): registers and spill stores/loads in
bytes. (Triton fills n_regs/n_spills only when a driver loads the cubin, so they are read
from ptxas.) The ptxas flags are those of Triton's own `make_cubin`, so the ptxas 13
column is the cubin Triton builds. Two ptxas, both bundled with Triton, are run:
`ptxas-blackwell` (13.x), the one Triton uses for sm_90 and above, on the PTX Triton emits
for it, and the older `ptxas` (12.x) on the same kernel emitted as PTX 8.8, which it reads.

The signature is that of a launch on contiguous tensors at the chosen sizes, specialised
as Triton's JIT does (`native_specialize_impl`): pointers 16-byte aligned, integers equal
to 1 become the constant 1 and multiples of 16 get tt.divisibility 16; scale is fp32.
Register use depends on it (the divisibility decides how wide the loads are), hence
`--sizes`: a 1/16-scale feature map of a 480×864 frame (30×54 pixels, N = 1620, M = 5
frames; most sizes and strides not multiples of 16; the default), an aligned one (32×32,
M = 4 frames; all multiples of 16), or `plain` (every integer an unspecialised i32). Covered:
- `memory_read`: `_memory_read_fwd_kernel` for `_CONFIGS_16BIT` at bf16/fp16 and
  `_CONFIGS_FP32` at fp32, HAS_BIAS × HAS_THRESHOLD (the autotuned launch itself always
  has HAS_THRESHOLD False), O·Cv = 2·512; the top-k path at `_topk_config(kpad)` for kpad
  16…256 at bf16/fp16/fp32: `_memory_topk_kernel` (TOP_K = KPAD = kpad, 4 key splits) and
  the thresholded read, both with enable_fp_fusion=False as launched, HAS_BIAS False/True.
- `local_attention`: `_local_attention_fwd_kernel` for every `_CUDA_CONFIGS` entry at bf16
  and fp32, HAS_BIAS False/True (a [B, 1, H, W] bias), Cv = 512, radius 7; `fp32 use` says
  whether `_prune_configs` keeps the config for fp32.
QK_FP32 / PV_FP32 are `dot_in_fp32(dtype)` as on a GPU (not interpreting). Every other
launch runs with FP fusion on (Triton 3.9's default). About 10 minutes on two CPU cores.
"""
from __future__ import annotations

import argparse
import importlib
import itertools
import re
import subprocess
import tempfile
from pathlib import Path

import torch
import triton
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend
from triton.compiler import ASTSource

TARGET = GPUTarget("cuda", 90, 32)
PTXAS_DIR = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
# (column label, ptxas binary, PTX ISA version to emit; None = Triton's choice for it)
PTXAS = [("ptxas 13", "ptxas-blackwell", None), ("ptxas 12", "ptxas", 88)]
DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
SIZES = {"480p": (30, 54, 5), "aligned": (32, 32, 4), "plain": (32, 32, 4)}  # feature map H, W; memory frames
CK, OBJECTS, CV, RADIUS = 64, 2, 512, 7


def ptxas_usage(ptx: str, binary: str, fp_fusion: bool) -> tuple[int, int, int]:
    """(registers, spill store bytes, spill load bytes) from `ptxas -v` for sm_90a."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "kernel.ptx")
        src.write_text(ptx)
        fmad = [] if fp_fusion else ["--fmad=false"]
        log = subprocess.run(
            [PTXAS_DIR / binary, "-lineinfo", *fmad, "-v", "--regAllocOptLevel=2", "--gpu-name=sm_90a",
             src, "-o", Path(tmp, "kernel.cubin")],
            check=True, capture_output=True, text=True,
        ).stderr
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    stores, loads = map(int, re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log).groups())
    return regs, stores, loads


def check(fn, pointers: dict, ints: dict, constexprs: dict, num_warps, num_stages, fp_fusion=True, plain=False):
    """Usage per ptxas of `fn` launched with these pointer types, integer values and constexprs.

    Integers are specialised on their value as the JIT does, unless `plain`."""
    constexprs, signature, attrs = dict(constexprs), {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
            if name.endswith("_ptr"):  # torch allocations are 16-byte aligned
                attrs[(i,)] = CUDABackend.parse_attr("D")
        elif plain:
            signature[name] = "i32"
        else:
            signature[name], key = native_specialize_impl(CUDABackend, ints[name], False, True, True)
            if signature[name] == "constexpr":
                constexprs[name] = key
            else:
                attrs[(i,)] = CUDABackend.parse_attr(key)
    usage = []
    for _, binary, ptx_version in PTXAS:
        options = dict(num_warps=num_warps, num_stages=num_stages, enable_fp_fusion=fp_fusion)
        if ptx_version is not None:
            options["ptx_version"] = ptx_version
        kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=TARGET, options=options)
        usage.append(ptxas_usage(kernel.asm["ptx"], binary, fp_fusion))
    return usage


def pointer_types(dtype: torch.dtype) -> dict:
    """Tensors in the tested dtype; |k|², thresholds and top-k partials fp32, tie counts int32."""
    ty = "*" + DTYPES[dtype]
    return dict(q_ptr=ty, k_ptr=ty, v_ptr=ty, bias_ptr=ty, out_ptr=ty, key_sq_ptr="*fp32",
                thr_ptr="*fp32", ties_ptr="*i32", part_ptr="*fp32", scale="fp32")


def memory_read_rows(sizes: str):
    """(kernel, config, dtype, flags, usage) for every memory_read launch at Ck = 64."""
    mr = importlib.import_module("remn.kernels.memory_read")
    height, width, frames = SIZES[sizes]
    n, m, ocv = height * width, frames * height * width, OBJECTS * CV
    read_ints = dict(
        stride_qb=CK * n, stride_qc=n, stride_qn=1, stride_kb=CK * m, stride_kc=m, stride_km=1, stride_sb=m,
        stride_vb=ocv * m, stride_vo=CV * m, stride_vc=m, stride_vm=1, stride_ob=ocv * n, stride_oc=n, stride_on=1,
        N=n, M=m, CK=CK, CV=CV, OCV=ocv,
    )
    block_ck = mr.key_channel_tile(CK)
    for dtype, name in DTYPES.items():
        fp32 = mr.dot_in_fp32(dtype)
        flags = dict(QK_FP32=fp32, PV_FP32=fp32, CK_SINGLE=CK <= block_ck, BLOCK_CK=block_ck)
        for config, has_bias, has_threshold in itertools.product(
            mr._CONFIGS_FP32 if fp32 else mr._CONFIGS_16BIT, (False, True), (False, True)
        ):
            tile = config.kwargs
            ints = dict(read_ints, stride_bb=m if has_bias else 0, stride_bm=1 if has_bias else 0,
                        stride_tb=n if has_threshold else 0, stride_tn=1 if has_threshold else 0)
            usage = check(mr._memory_read_fwd_kernel, pointer_types(dtype), ints,
                          dict(flags, **tile, HAS_BIAS=has_bias, HAS_THRESHOLD=has_threshold),
                          config.num_warps, config.num_stages, plain=sizes == "plain")
            label = f"N{tile['BLOCK_N']} M{tile['BLOCK_M']} V{tile['BLOCK_V']} w{config.num_warps} s{config.num_stages}"
            yield "read", label, name, f"bias={has_bias:d} thr={has_threshold:d}", usage
        for kpad, has_bias in itertools.product((16, 32, 64, 128, 256), (False, True)):
            config = mr._topk_config(kpad)
            warps, stages, splits = config["num_warps"], config["num_stages"], 4
            bias_ints = dict(stride_bb=m if has_bias else 0, stride_bm=1 if has_bias else 0)
            tiles = dict(BLOCK_N=config["BLOCK_N"], BLOCK_M=config["BLOCK_M"], HAS_BIAS=has_bias)
            label = f"k{kpad} N{config['BLOCK_N']} M{config['BLOCK_M']} V{config['BLOCK_V']} w{warps} s{stages}"
            topk_ints = dict(read_ints, **bias_ints, stride_pb=splits * n * kpad, stride_ps=n * kpad, stride_pn=kpad,
                             keys_per_split=triton.cdiv(m, splits * config["BLOCK_M"]) * config["BLOCK_M"])
            topk_flags = dict(QK_FP32=fp32, CK_SINGLE=flags["CK_SINGLE"], BLOCK_CK=block_ck, TOP_K=kpad, KPAD=kpad)
            usage = check(mr._memory_topk_kernel, pointer_types(dtype), topk_ints, dict(tiles, **topk_flags),
                          warps, stages, fp_fusion=False, plain=sizes == "plain")
            yield "topk", label, name, f"bias={has_bias:d}", usage
            usage = check(mr._memory_read_fwd_kernel, pointer_types(dtype), dict(read_ints, **bias_ints, stride_tb=n,
                          stride_tn=1), dict(flags, **tiles, BLOCK_V=config["BLOCK_V"], HAS_THRESHOLD=True),
                          warps, stages, fp_fusion=False, plain=sizes == "plain")
            yield "read", label, name, f"bias={has_bias:d} thr=1", usage


def local_attention_rows(sizes: str):
    """(kernel, config, dtype, flags, usage) for every local_attention config at Ck = 64."""
    la = importlib.import_module("remn.kernels.local_attention")
    h, w, _ = SIZES[sizes]
    ints = dict(
        stride_qb=CK * h * w, stride_qc=h * w, stride_qh=w, stride_qw=1,
        stride_kb=CK * h * w, stride_kc=h * w, stride_kh=w, stride_kw=1, stride_sb=h * w, stride_sh=w, stride_sw=1,
        stride_vb=OBJECTS * CV * h * w, stride_vo=CV * h * w, stride_vc=h * w, stride_vh=w, stride_vw=1,
        stride_ob=OBJECTS * CV * h * w, stride_oo=CV * h * w, stride_oc=h * w, stride_oh=w, stride_ow=1,
        H=h, W=w, CK=CK, CV=CV, radius=RADIUS,
    )
    block_ck = la.key_channel_tile(CK, max_tile=64)
    for dtype, config, has_bias in itertools.product((torch.bfloat16, torch.float32), la._CUDA_CONFIGS, (False, True)):
        fp32 = la.dot_in_fp32(dtype)
        bias_strides = (h * w, 0, w, 1) if has_bias else (0, 0, 0, 0)
        bias_ints = dict(zip(("stride_bb", "stride_bo", "stride_bh", "stride_bw"), bias_strides))
        usage = check(la._local_attention_fwd_kernel, pointer_types(dtype), dict(ints, **bias_ints),
                      dict(config.kwargs, HAS_BIAS=has_bias, QK_FP32=fp32, PV_FP32=fp32, CK_SINGLE=CK <= block_ck,
                           BLOCK_CK=block_ck), config.num_warps, config.num_stages, plain=sizes == "plain")
        tile = config.kwargs
        label = (f"{tile['TILE_H']}x{tile['TILE_W']} K{tile['BLOCK_K']} V{tile['BLOCK_V']} "
                 f"w{config.num_warps} s{config.num_stages}")
        flags = f"bias={has_bias:d} fp32 use={'yes' if la._fits_fp32(config) else 'no'}"
        yield "local", label, DTYPES[dtype], flags, usage


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", choices=SIZES, default="480p", help="problem sizes the integers are specialised on")
    sizes = parser.parse_args().sizes
    columns = "".join(f" | {label:>8} regs spill st/ld" for label, _, _ in PTXAS)
    print(f"sizes: {sizes}\n{'kernel':6} {'config':28} {'dtype':5} {'flags':22}{columns}", flush=True)
    for kernel, config, dtype, flags, usage in itertools.chain(memory_read_rows(sizes), local_attention_rows(sizes)):
        cells = "".join(f" | {regs:13d} {stores:6d}/{loads:<6d}" for regs, stores, loads in usage)
        spilling = [label for (label, _, _), (_, stores, loads) in zip(PTXAS, usage) if stores or loads]
        mark = f"  spills with {', '.join(spilling)}" if spilling else ""
        print(f"{kernel:6} {config:28} {dtype:5} {flags:22}{cells}{mark}", flush=True)


if __name__ == "__main__":
    main()
