"""What every benchmark shares: timing, the run's environment, device peaks, NVML readings."""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]

# Dense peak figures from the vendors' data sheets: (TFLOP/s for 16-bit tensor cores,
# TFLOP/s for fp32 on CUDA cores, TB/s of device memory bandwidth).
DEVICE_PEAKS = {
    "H100 SXM": (989.0, 67.0, 3.35),
    "H100 PCIe": (756.0, 51.0, 2.0),
    "H100 NVL": (835.0, 60.0, 3.9),
    "H200": (989.0, 67.0, 4.8),
    "A100": (312.0, 19.5, 2.0),
}


def device_peaks(device: torch.device) -> tuple[float, float, float] | None:
    """(bf16/fp16 TFLOP/s, fp32 TFLOP/s, TB/s) for a known GPU, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    if "H100" in name:
        for variant in ("PCIe", "NVL"):
            if variant in name:
                return DEVICE_PEAKS[f"H100 {variant}"]
        return DEVICE_PEAKS["H100 SXM"]
    for key, peaks in DEVICE_PEAKS.items():
        if key in name:
            return peaks
    return None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def nvml_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # noqa: BLE001 - no NVML (no GPU, or nvidia-ml-py not installed)
        return None


def environment(device: torch.device) -> dict:
    """Device name, driver and library versions, git commit and date: stamped on every result."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "driver": nvml_driver(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
    }


def time_call(fn: Callable[[], object], device: torch.device, repeats: int = 10, warmup: int = 2) -> dict:
    """Median and 20/80 % quantiles of one call, in milliseconds.

    CUDA: `triton.testing.do_bench` (it flushes the L2 cache and synchronises). CPU: wall
    clock around each call.
    """
    if device.type == "cuda":
        import triton.testing

        median, low, high = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
        return {"ms": median, "ms_p20": low, "ms_p80": high}
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return {
        "ms": statistics.median(samples),
        "ms_p20": samples[int(0.2 * (len(samples) - 1))],
        "ms_p80": samples[int(0.8 * (len(samples) - 1))],
    }


def progress(items, desc: str, total: int | None = None):
    """A progress bar on stderr for a long loop (tqdm; it hides itself when stderr is not a terminal)."""
    return tqdm(items, desc=desc, total=total, file=sys.stderr, leave=False, dynamic_ncols=True, disable=None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class NvmlSampler:
    """GPU utilisation and power from NVML, sampled every `interval` seconds on a background
    thread while active (`with sampler:`), and the device memory in use (`used_bytes()`).
    Without CUDA or nvidia-ml-py it records nothing and reports None."""

    def __init__(self, device: torch.device, interval: float = 0.05):
        self.handle = None
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.pynvml = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        except Exception:  # noqa: BLE001 - NVML is optional
            self.handle = None

    def __enter__(self) -> "NvmlSampler":
        self.samples = []
        if self.handle is not None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample_until_stopped, name="nvml-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.interval):
            utilisation = self.pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu
            power_watts = self.pynvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0
            self.samples.append((float(utilisation), power_watts))

    def used_bytes(self) -> int | None:
        """Device-level memory in use (all processes), as NVML reports it."""
        if self.handle is None:
            return None
        return int(self.pynvml.nvmlDeviceGetMemoryInfo(self.handle).used)

    def summary(self) -> dict | None:
        """Mean utilisation (%), mean and peak power (W) over the last active period."""
        if not self.samples:
            return None
        utilisation, power = zip(*self.samples)
        return {"gpu_util_mean_pct": statistics.fmean(utilisation), "power_mean_w": statistics.fmean(power),
                "power_max_w": max(power), "samples": len(self.samples)}


def host_rss_bytes() -> int:
    """Resident set size of this process, from /proc (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rate_row(timing: dict, flops: float, bytes_moved: float, peaks: tuple | None, dtype: torch.dtype) -> dict:
    """Timing plus achieved TFLOP/s, GB/s and their share of the device's peak."""
    seconds = timing["ms"] / 1e3
    row = dict(timing, tflops=flops / seconds / 1e12, gbs=bytes_moved / seconds / 1e9)
    if peaks is not None:
        peak_flops = peaks[0] if dtype in (torch.float16, torch.bfloat16) else peaks[1]
        row["pct_peak_flops"] = 100.0 * row["tflops"] / peak_flops
        row["pct_peak_bandwidth"] = 100.0 * row["gbs"] / (peaks[2] * 1e3)
    return row


def measure_variants(variants: dict[str, Callable[[], object]], device, flops, bytes_moved, peaks, dtype, repeats):
    """Time each variant; a variant that runs out of memory is recorded as such, not fatal."""
    rows = {}
    for name, fn in variants.items():
        try:
            rows[name] = rate_row(time_call(fn, device, repeats=repeats), flops, bytes_moved, peaks, dtype)
        except torch.OutOfMemoryError:
            rows[name] = {"error": "out of memory"}
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def compare_kernel(variants: dict[str, Callable[[], object]], device, flops, bytes_moved, dtype, repeats,
                   baselines: tuple[str, ...]) -> dict[str, dict]:
    """One kernel case: each variant timed with its rates (`measure_variants`); the fused
    row also gets its largest difference from the reference and its speed-up over each
    baseline that ran."""
    rows = measure_variants(variants, device, flops, bytes_moved, device_peaks(device), dtype, repeats)
    if "ms" in rows.get("fused", {}):
        rows["fused"]["max_abs_diff"] = (variants["fused"]().float() - variants["reference"]().float()).abs().max().item()
    add_speedups(rows, "fused", baselines)
    return rows


def add_speedups(rows: dict[str, dict], fast: str, baselines: tuple[str, ...]) -> None:
    """rows[fast]['x_<baseline>'] = baseline time / fast time, where both ran."""
    if "ms" not in rows.get(fast, {}):
        return
    for baseline in baselines:
        if "ms" in rows.get(baseline, {}):
            rows[fast][f"x_{baseline}"] = rows[baseline]["ms"] / rows[fast]["ms"]
