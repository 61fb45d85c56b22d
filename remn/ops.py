"""The one dispatch point between the fused Triton kernels and the reference ops.

The model calls only `remn.ops.memory_read` and `remn.ops.local_attention`. With
`backend=None` (automatic) a call goes to the Triton kernel when every tensor is on CUDA,
the dtype is one the kernels take and Triton imports; otherwise to `remn.reference`.
`backend="triton"` forces the kernel and raises with the reason when it cannot run (on CPU
tensors it runs only under `TRITON_INTERPRET=1`); `backend="reference"` forces PyTorch.
"""
from __future__ import annotations

import importlib
import importlib.util

import torch

from remn import reference

BACKENDS = (None, "triton", "reference")


def triton_unavailable_reason(*tensors: torch.Tensor | None) -> str | None:
    """Why the Triton kernels cannot take these tensors, or None when they can (the check
    is the kernels' own, `remn.kernels._common.unsupported_reason`)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    from remn.kernels._common import unsupported_reason

    reason = unsupported_reason("remn.ops", **{f"tensor {i}": t for i, t in enumerate(tensors)})
    return None if reason is None else reason[1]


def can_run_triton(*tensors: torch.Tensor | None, raise_error: bool = False) -> bool:
    """True when the Triton kernels can run on these tensors; with raise_error, say why not."""
    reason = triton_unavailable_reason(*tensors)
    if reason is not None and raise_error:
        raise RuntimeError(f"the Triton backend cannot run: {reason}")
    return reason is None


def choose_backend(backend: str | None, *tensors: torch.Tensor | None) -> str:
    """Resolve `backend` (None, "triton" or "reference") for these tensors."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return "reference"
    if backend == "triton":
        can_run_triton(*tensors, raise_error=True)
        return "triton"
    on_cuda = all(t.device.type == "cuda" for t in tensors if t is not None)
    return "triton" if on_cuda and can_run_triton(*tensors) else "reference"


def memory_read(query_key, memory_key, memory_value, key_bias=None, *, scale=None, top_k=None, backend=None):
    """Gated memory read; see `remn.reference.memory_read` for shapes and math."""
    chosen = choose_backend(backend, query_key, memory_key, memory_value, key_bias)
    if chosen == "triton" and backend is None and top_k is not None:
        # The fused top-k keeps each query's k best logits in registers: larger k reads on the reference.
        limit = importlib.import_module("remn.kernels.memory_read").MAX_FUSED_TOP_K
        chosen = "triton" if top_k <= limit or top_k >= memory_key.shape[-1] else "reference"
    if chosen == "triton":
        from remn.kernels import memory_read as fused_memory_read

        return fused_memory_read(query_key, memory_key, memory_value, key_bias, scale=scale, top_k=top_k)
    return reference.memory_read(query_key, memory_key, memory_value, key_bias, scale=scale, top_k=top_k)


def local_attention(query_key, key, value, radius, key_bias=None, *, scale=None, backend=None):
    """Windowed local attention; see `remn.reference.local_attention` for shapes and math."""
    if choose_backend(backend, query_key, key, value, key_bias) == "triton":
        from remn.kernels import local_attention as fused_local_attention

        return fused_local_attention(query_key, key, value, radius, key_bias, scale=scale)
    return reference.local_attention(query_key, key, value, radius, key_bias, scale=scale)
