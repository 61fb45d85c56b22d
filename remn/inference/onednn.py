"""oneDNN's convolution with its post-ops, as the CPU fast path calls it (`FusedConv`).

`torch.ops.mkldnn._convolution_pointwise` (the op Inductor's CPU freezing emits) computes
relu?(conv(x) + add?) in one pass over the output, and takes a weight either plain
[Cout, Cin, kh, kw], which oneDNN reorders into its blocked layout on every call, or packed
in that layout ahead (`torch._C._nn.mkldnn_reorder_conv2d_weight`).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


@functools.cache
def conv_pointwise_available() -> bool:
    """Whether this torch build has oneDNN's convolution with fused post-ops
    (`torch.ops.mkldnn._convolution_pointwise`, a CPU op)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


# Below this many output pixels (N·H'·W') an fp32 FusedConv call takes its weight packed in
# oneDNN's blocked layout for its input's shape, packed on the first call of that shape,
# instead of the plain weight oneDNN reorders on every call. On a 2-core AMD EPYC (AVX2;
# 2026-12-07), one call on its own: 1024 → 512 3×3 at 8×8 took 5.4 ms packed against
# 18 ms plain, 64 → 64 at 16×16 0.20 against 0.29 ms, 1024 → 512 at 30×54 (1620 pixels)
# 0.93× and 64 → 64 at 120×216 1.0×: the reorder's cost is the weight's, the arithmetic's
# grows with the pixels. The packed copy takes the weight's memory again.
PACKED_WEIGHTS_BELOW_PIXELS = 1024


@functools.cache
def onednn_convolves(dtype: torch.dtype) -> bool:
    """Whether oneDNN's convolution takes `dtype` on this CPU: fp32 on every CPU; bf16 and
    fp16 only where the CPU has the instructions oneDNN's kernels for them need (bf16:
    AVX512BW/VL/DQ or AVX-NE-CONVERT, as torch reports it), else it raises. torch's own
    convolution computes them on any CPU."""
    if dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if dtype == torch.float16:
        return torch.ops.mkldnn._is_mkldnn_fp16_supported()
    return True


class FusedConv(nn.Module):
    """A Conv2d with what follows it inside the one oneDNN call: relu?(conv(x) + add?).

    x [N, Cin, H, W], add [N, Cout, H', W'] → [N, Cout, H', W'], channels-last: oneDNN
    fuses the add only into a channels-last output (in NCHW torch falls back to the separate
    ops, which have no bf16 add-relu), so inputs in another layout are made channels-last
    first (the fast path already hands them so). It computes in the dtype a Conv2d would:
    the CPU autocast's where one is on (autocast does not see this op, so the casts are made
    here; weights `store_bf16_weights` holds in bf16 are taken as they are), else the
    weights'. Where oneDNN cannot take the call (x off the CPU, a torch build without the op,
    a dtype oneDNN cannot convolve on this CPU, `onednn_convolves`: bf16 without AVX512 or
    AVX-NE-CONVERT) it runs torch's convolution and the add and ReLU apart.
    In fp32 it matches conv, + and relu run apart to rounding; in bf16
    conv(x) + add is rounded once, not twice. Small fp32 calls run on packed weights
    (PACKED_WEIGHTS_BELOW_PIXELS, `_packed_weight`), to the same bits.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"FusedConv needs explicit zero padding, got padding={conv.padding!r} "
                             f"padding_mode={conv.padding_mode!r}")
        self.weight, self.bias = conv.weight, conv.bias
        self.padding, self.stride, self.dilation = list(conv.padding), list(conv.stride), list(conv.dilation)
        self.groups = conv.groups
        self._packed = None  # (key, weight packed for that key's input shape) or None: see _packed_weight

    def __getstate__(self):
        """The module's state without the packed weight (an opaque oneDNN tensor, which neither
        copies nor pickles); the next small call packs it again."""
        return {**self.__dict__, "_packed": None}

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else self.weight.dtype
        x = x.to(dtype).contiguous(memory_format=torch.channels_last)
        weight = self._packed_weight(x)
        weight = self.weight.to(dtype) if weight is None else weight
        bias = None if self.bias is None else self.bias.to(dtype)
        if add is not None:
            add = add.to(dtype).contiguous(memory_format=torch.channels_last)
        if x.device.type != "cpu" or not conv_pointwise_available() or not onednn_convolves(dtype):
            # torch's convolution, then the add and the ReLU apart
            out = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
            out = out if add is None else out + add
            return F.relu(out) if relu else out
        geometry = (self.padding, self.stride, self.dilation, self.groups)
        if add is None:
            return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *geometry, "relu" if relu else "none",
                                                           [None], "")
        return torch.ops.mkldnn._convolution_pointwise.binary(x, add, weight, bias, *geometry, "add", None,
                                                              "relu" if relu else None, [None], "")

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor | None:
        """The weight packed in oneDNN's blocked layout for x's shape (x: [N, Cin, H, W] on the
        CPU), where the call is fp32 with fewer than PACKED_WEIGHTS_BELOW_PIXELS output pixels
        and not traced by torch.compile; else None. One packing is kept, for the last input
        shape and the weight as it is now (a weight changed in place or replaced packs anew)."""
        if (x.dtype != torch.float32 or self.weight.dtype != torch.float32 or x.device.type != "cpu"
                or torch.compiler.is_compiling()):
            return None
        height, width = (
            (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
            for size, pad, dilation, kernel, stride in zip(x.shape[2:], self.padding, self.dilation,
                                                            self.weight.shape[2:], self.stride))
        if x.shape[0] * height * width >= PACKED_WEIGHTS_BELOW_PIXELS:
            return None
        # an inference tensor keeps no version counter: only its address tells a new weight
        version = None if self.weight.is_inference() else self.weight._version
        key = (tuple(x.shape), self.weight.data_ptr(), version)
        if self._packed is None or self._packed[0] != key:
            packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                self.weight.detach().to_mkldnn(), self.padding, self.stride, self.dilation, self.groups, list(x.shape))
            self._packed = (key, packed)
        return self._packed[1]
