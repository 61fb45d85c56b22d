"""Fused Triton kernels, installed as `remn.kernels`.

`memory_read` and `local_attention` have the signatures and semantics of the reference
ops in `remn.reference` (the specification); `remn.ops` dispatches to them. Importing this
package makes no driver or capability call, so it works on a machine without a GPU; the
kernels run on CUDA tensors, or on CPU tensors under `TRITON_INTERPRET=1`.
"""
from .local_attention import local_attention
from .memory_read import memory_read

__all__ = ["memory_read", "local_attention"]
