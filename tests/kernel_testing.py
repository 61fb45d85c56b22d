"""What the kernel equivalence tests share: devices, dtypes, random inputs, tolerances.

Tolerances follow flash-attention's rule: a kernel's error against the fp32 reference must
stay within twice PyTorch's own error when the same math runs at the input dtype, plus a
rounding floor (`rounding_floor`).
"""
import pytest
import torch

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
# bf16 only on CUDA: the interpreter's bf16 arithmetic is not meaningful.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])
needs_cuda = pytest.mark.skipif(not CUDA, reason="real sizes need CUDA (too slow for the interpreter)")


def rounding_floor(dtype, logit_magnitude, out_magnitude):
    """The error allowed on top of 2 × PyTorch's: a few fp32 ulps of the logits (summation
    order differs between the kernel and the reference: tiled or per-offset sums vs einsum,
    streaming vs one-shot softmax sums), carried through exp into the output, plus one unit
    of the output dtype's rounding."""
    logit_ulps = 4.0 * torch.finfo(torch.float32).eps * max(1.0, logit_magnitude)
    return (logit_ulps + torch.finfo(dtype).eps) * max(1.0, out_magnitude)


def random_normal(shape, dtype, generator=None):
    """Standard normal on DEVICE in `dtype`: from `generator` on the CPU (seeded property
    tests), or drawn on the device when None (real sizes are large)."""
    if generator is None:
        return torch.randn(*shape, device=DEVICE).to(dtype)
    return torch.randn(*shape, generator=generator).to(DEVICE, dtype)
