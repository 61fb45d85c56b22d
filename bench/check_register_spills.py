"""Registers and spills of the memory-read kernels on Hopper, checked without a GPU.

Compiles each launch configuration `kernels/memory_read.py` can pick (the autotuned plain
read at bf16/fp16 and fp32, with and without key_bias; the top-k pass and the exact-k read
at every `_topk_config`) for `GPUTarget("cuda", 90, 32)` and assembles the PTX with the
ptxas Triton ships for CUDA 13 (`ptxas-blackwell`, which also targets sm_90a), `-v`.
Prints one row per launch and exits 1 if any spills.

    python bench/check_register_spills.py
"""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, not the interpreter
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

memory_read = importlib.import_module("remn.kernels.memory_read")

TARGET = GPUTarget("cuda", 90, 32)
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas-blackwell")
POINTER_TYPES = {"key_sq_ptr": "*fp32", "thr_ptr": "*fp32", "ties_ptr": "*i32", "part_ptr": "*fp32"}
KEY_DIM = 64  # Ck of every full-size model


def signature(kernel, dtype: str, constexprs: dict) -> dict:
    """Argument types: tensors in `dtype` (fp32 norms/thresholds, int32 tie counts), int32 sizes."""
    types = {}
    for name in kernel.arg_names:
        if name in constexprs:
            types[name] = "constexpr"
        elif name.endswith("_ptr"):
            types[name] = POINTER_TYPES.get(name, f"*{dtype}")
        else:
            types[name] = "fp32" if name == "scale" else "i32"
    return types


def registers_and_spills(kernel, dtype, constexprs, num_warps, num_stages, fp_fusion=True):
    """(registers, spill store bytes, spill load bytes) of one compiled launch."""
    source = triton.compiler.ASTSource(fn=kernel, signature=signature(kernel, dtype, constexprs), constexprs=constexprs)
    options = {"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": fp_fusion}
    compiled = triton.compile(source, target=TARGET, options=options)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as ptx:
        ptx.write(compiled.asm["ptx"])
        ptx.flush()
        report = subprocess.run([PTXAS, "-v", "--gpu-name", "sm_90a", ptx.name, "-o", os.devnull],
                                capture_output=True, text=True, check=True).stderr
    registers = int(re.findall(r"Used (\d+) registers", report)[-1])
    stores, loads = map(int, re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)[-1])
    return registers, stores, loads


def launches():
    """(name, kernel, dtype, constexprs, num_warps, num_stages, fp_fusion) of every launch."""
    single = dict(CK_SINGLE=True, BLOCK_CK=memory_read.key_channel_tile(KEY_DIM))
    for dtype, configs in (("bf16", memory_read._CONFIGS_16BIT), ("fp16", memory_read._CONFIGS_16BIT),
                           ("fp32", memory_read._CONFIGS_FP32)):
        fp32 = dtype == "fp32"
        for config in configs:
            for bias in (False, True):
                constexprs = dict(HAS_BIAS=bias, HAS_THRESHOLD=False, QK_FP32=fp32, PV_FP32=fp32, **single, **config.kwargs)
                yield (f"read {config.kwargs}", memory_read._memory_read_fwd_kernel, dtype, constexprs,
                       config.num_warps, config.num_stages, True)
    for dtype in ("bf16", "fp16", "fp32"):
        fp32 = dtype == "fp32"
        for kpad in (16, 32, 64, 128, 256):
            config = memory_read._topk_config(kpad)
            tiles = {k: config[k] for k in ("BLOCK_N", "BLOCK_M")}
            for bias in (False, True):
                topk = dict(TOP_K=kpad, KPAD=kpad, HAS_BIAS=bias, QK_FP32=fp32, **single, **tiles)
                yield (f"top-k pass k={kpad}", memory_read._memory_topk_kernel, dtype, topk,
                       config["num_warps"], config["num_stages"], False)
                read = dict(HAS_BIAS=bias, HAS_THRESHOLD=True, QK_FP32=fp32, PV_FP32=fp32, BLOCK_V=config["BLOCK_V"],
                            **single, **tiles)
                yield (f"exact-k read k={kpad}", memory_read._memory_read_fwd_kernel, dtype, read,
                       config["num_warps"], config["num_stages"], False)


def main() -> int:
    spilling = 0
    for name, kernel, dtype, constexprs, warps, stages, fusion in launches():
        registers, stores, loads = registers_and_spills(kernel, dtype, constexprs, warps, stages, fusion)
        spilling += stores + loads > 0
        bias = "bias" if constexprs["HAS_BIAS"] else "no bias"
        print(f"{name:<60} {dtype}  {bias:<7}  {warps} warps  {registers:3d} registers  spills {stores}/{loads} B",
              flush=True)
    print(f"{spilling} launches spill")
    return 1 if spilling else 0


if __name__ == "__main__":
    sys.exit(main())
