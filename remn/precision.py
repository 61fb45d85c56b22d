"""The one mixed-precision vocabulary of remn: inference, training and the benchmarks.

    "fp32"  full precision
    "bf16"  torch.autocast to bfloat16
    "fp16"  torch.autocast to float16 (CUDA only)
    "auto"  bf16 on CUDA where the device supports it, else fp16; fp32 on the CPU (where
            the CPU has native bf16, inference's fast path runs its key encoder in bf16, and
            its value encoder with at most 2 objects: remn.inference.fast_path)
"""
from __future__ import annotations

import torch

PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def check_precision(precision: str, owner: str) -> None:
    """Raise ValueError naming `owner` (e.g. "InferenceConfig.precision") for a word outside PRECISIONS."""
    if precision not in PRECISIONS:
        raise ValueError(f"{owner} must be one of {PRECISIONS}, got {precision!r}")


def autocast_dtype(precision: str, device_type: str, bf16_supported: bool) -> torch.dtype | None:
    """The autocast dtype of `precision` on a device type ("cuda", "cpu"), None for fp32.

    fp16 needs CUDA (ValueError elsewhere); bf16 is honoured on the CPU too.
    """
    check_precision(precision, "precision")
    if precision == "fp32":
        return None
    if device_type != "cuda":
        if precision == "fp16":
            raise ValueError("precision 'fp16' needs CUDA; use 'bf16' (or 'fp32') on the CPU")
        return torch.bfloat16 if precision == "bf16" else None
    if precision == "auto":
        return torch.bfloat16 if bf16_supported else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16
