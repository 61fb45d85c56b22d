"""Launcher checks and tile helpers shared by the fused kernels.

The shape and rank checks live in `remn.reference` (`check_memory_read_args`,
`check_local_attention_args`) and are reused as they are; this module adds only what a
Triton launch needs on top: a device the kernels can run on, a dtype they take, and the
choice of operand precision for `tl.dot`. Nothing here touches the GPU driver, so
importing it works on a machine without a GPU.
"""
from __future__ import annotations

import math
import numbers
import os

import torch
import triton

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def tuned_launcher(tuned, interpreter_config: triton.Config):
    """What a launch indexes with its grid: the autotuned kernel on a GPU; under
    TRITON_INTERPRET=1 the same kernel at one fixed config, without the autotuner (some
    Triton versions benchmark even a single remaining config, which needs a GPU driver)."""
    if not interpreting():
        return tuned
    return _FixedConfig(tuned.fn, interpreter_config)


class _FixedConfig:
    """`kernel[grid](*args, **kwargs)` with a config's meta-parameters added."""

    def __init__(self, kernel, config: triton.Config):
        self.kernel, self.config = kernel, config

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            return self.kernel[grid](*args, **kwargs, **self.config.all_kwargs())
        return launch


def unsupported_reason(op_name: str, **tensors: torch.Tensor | None) -> tuple[type[Exception], str] | None:
    """Why the kernels cannot take these tensors, as (exception type, message), or None.

    The one capability check between `remn.ops` and a launch: CUDA tensors, or CPU tensors
    under `TRITON_INTERPRET=1` (ValueError otherwise), of fp32/fp16/bf16 (TypeError
    otherwise). Rank, shape and same-device checks are the reference's
    (`remn.reference.check_*_args`).
    """
    allow_cpu = interpreting()
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if tensor.dtype not in KERNEL_DTYPES:
            return TypeError, (
                f"{op_name}: {name} has dtype {tensor.dtype}; the Triton kernels take "
                f"{', '.join(str(d) for d in KERNEL_DTYPES)} (use remn.reference for others)"
            )
        if tensor.device.type != "cuda" and not (allow_cpu and tensor.device.type == "cpu"):
            return ValueError, (
                f"{op_name}: {name} is on {tensor.device}; the Triton kernels need CUDA tensors "
                "(or CPU tensors with TRITON_INTERPRET=1 set before remn.kernels is imported)"
            )
    return None


def check_kernel_tensors(op_name: str, **tensors: torch.Tensor | None) -> None:
    """Raise `unsupported_reason`'s error when the kernels cannot take these tensors."""
    reason = unsupported_reason(op_name, **tensors)
    if reason is not None:
        error, message = reason
        raise error(message)


def dot_in_fp32(*dtypes: torch.dtype) -> bool:
    """Whether a `tl.dot` over operands of these dtypes should upcast both to fp32.

    The fast path feeds fp16/bf16 operands straight to the tensor cores with an fp32
    accumulator; that needs both operands in the same 16-bit dtype. fp32 operands (and
    mixed dtypes) take the exact path: fp32 with `input_precision="ieee"` (no TF32), which
    matches the fp32 reference but runs on the CUDA cores. The interpreter computes bf16
    arithmetic on raw bits, so there bf16 is upcast too (loads and stores stay bf16).
    """
    first = dtypes[0]
    if any(d != first for d in dtypes) or first == torch.float32:
        return True
    return first == torch.bfloat16 and interpreting()


def key_channel_tile(key_dim: int, max_tile: int = 128) -> int:
    """BLOCK_CK: the key channels one `tl.dot` step takes (≥ 16 for the tensor cores).

    When Ck fits in one tile the kernels load the query tile once and keep it in registers.
    """
    return max(16, min(triton.next_power_of_2(key_dim), max_tile))


def resolve_scale(scale, key_dim: int) -> float:
    """The logit scale as a Python float: `scale`, or 1/sqrt(Ck) when it is None."""
    if scale is None:
        return 1.0 / math.sqrt(key_dim)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    return float(scale)


def reference_gradients(reference_op, saved, needs_grad, grad_out):
    """Backward of a fused op by recomputing its reference under autograd.

    saved: the op's tensor inputs (None where absent), needs_grad: which of them want a
    gradient, reference_op(*saved) → output. Returns one gradient (or None) per input.
    """
    with torch.enable_grad():
        leaves = [None if t is None else t.detach().requires_grad_(need) for t, need in zip(saved, needs_grad)]
        out = reference_op(*leaves)
        wanted = [t for t in leaves if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out)) if wanted else iter(())
    return tuple(next(grads) if t is not None and t.requires_grad else None for t in leaves)
