"""The kernel microbenchmarks under pytest-benchmark, with bench/run.py's cases and figures.

    python -m pytest bench/test_kernel_benchmarks.py --benchmark-only [--benchmark-json FILE]

On CUDA: the full cases (memory read at 480p and 1080p, T up to 50, O up to 8, top-k;
local attention at 480p, r = 2…12) in bf16, for the fused kernel, the reference and the
best other PyTorch composition (SDPA / unfold). Elsewhere: the quick cases in fp32, and no
fused kernel. Every result's extra_info holds GFLOP and bytes moved (the formulas of
bench_memory_read / bench_local_attention) and the TFLOP/s and GB/s of the median time.
The default `python -m pytest` does not collect this file (pytest.ini: testpaths = tests).
"""
from __future__ import annotations

import pytest
import torch

import bench_local_attention
import bench_memory_read
from common import synchronize

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPE = torch.bfloat16 if CUDA else torch.float32
OPS = {"memory_read": (bench_memory_read, "sdpa"), "local_attention": (bench_local_attention, "unfold")}


def parameters():
    for op, (module, other) in OPS.items():
        for case in module.cases(quick=not CUDA):
            for impl in ("fused", "reference", other):
                yield pytest.param(op, case, impl, id="-".join([op, *map(str, case), impl]))


@pytest.mark.parametrize("op, case, impl", list(parameters()))
def test_kernel(benchmark, op, case, impl):
    module, _ = OPS[op]
    variants, flops, bytes_moved = module.problem(case, DEVICE, DTYPE)
    if impl not in variants:
        pytest.skip(f"no {impl} implementation for this case on {DEVICE.type}")
    run = variants[impl]

    def call():
        run()
        synchronize(DEVICE)

    try:
        call()  # warm-up: compilation and autotuning stay out of the timings
        benchmark(call)
    except torch.OutOfMemoryError:
        pytest.skip(f"{impl} ran out of device memory")
    benchmark.extra_info.update(gflop=flops / 1e9, bytes=bytes_moved, dtype=str(DTYPE).removeprefix("torch."))
    if benchmark.stats is not None:  # None under --benchmark-disable
        seconds = benchmark.stats.stats.median
        benchmark.extra_info.update(tflops=flops / seconds / 1e12, gbs=bytes_moved / seconds / 1e9)
