"""The fused `remn.kernels.local_attention` against the specification, `remn.reference.local_attention`.

Without CUDA the kernel runs in the Triton interpreter on CPU tensors (conftest sets
TRITON_INTERPRET=1), so CPU maps stay tiny; real 480p sizes run only on CUDA.

Tolerances: `kernel_testing.rounding_floor` (flash-attention's rule).
"""
from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from remn import ops, reference
from remn.kernels import local_attention

from kernel_testing import CUDA, DEVICE, DTYPES, needs_cuda, random_normal, rounding_floor




def make_inputs(batch, objects, key_dim, value_dim, height, width, dtype=torch.float32, bias="object", generator=None):
    """Random (query_key [B,Ck,H,W], key [B,Ck,H,W], value [B,O,Cv,H,W], key_bias | None).

    bias: "none"; "object" ([B, O, H, W], log-gates ≤ 0); "pixel" ([H, W], broadcast over
    B and O); "neg_inf" (per object, about a third of the key positions excluded); or
    "all_neg_inf" (object 0 of every batch entry excludes every key position).
    """
    query_key = random_normal((batch, key_dim, height, width), dtype, generator)
    key = random_normal((batch, key_dim, height, width), dtype, generator)
    value = random_normal((batch, objects, value_dim, height, width), dtype, generator)
    if bias == "none":
        return query_key, key, value, None
    if bias == "pixel":
        return query_key, key, value, (-torch.rand(height, width, generator=generator) * 3).to(DEVICE, dtype)
    key_bias = -torch.rand(batch, objects, height, width, generator=generator) * 3  # [B, O, H, W]
    if bias == "neg_inf":
        key_bias = key_bias.masked_fill(torch.rand(key_bias.shape, generator=generator) < 0.35, float("-inf"))
    elif bias == "all_neg_inf":
        key_bias[:, 0] = float("-inf")
    return query_key, key, value, key_bias.to(DEVICE, dtype)


def attention_at_dtype(query_key, key, value, radius, key_bias, scale=None):
    """PyTorch's own rounding at the inputs' dtype, used only to set tolerances.

    The reference's math evaluated in the value dtype with `unfold` windows (outside
    positions masked to −inf). The specification stays `remn.reference`.
    Returns (output [B, O, Cv, H, W], largest finite |logit|).
    """
    dtype = value.dtype
    batch, key_dim, height, width = query_key.shape
    objects, value_dim = value.shape[1:3]
    size = 2 * radius + 1
    window = size * size
    scale = 1.0 / math.sqrt(key_dim) if scale is None else scale
    keys = F.unfold(key.to(dtype), size, padding=radius).view(batch, key_dim, window, height * width)
    query = query_key.to(dtype).reshape(batch, key_dim, 1, height * width)
    logits = scale * (2.0 * (query * keys).sum(1) - keys.pow(2).sum(1))  # [B, K, HW]
    logits = logits[:, None].expand(batch, objects, window, height * width)  # [B, O, K, HW]
    if key_bias is not None:
        bias = key_bias.to(dtype).expand(batch, objects, height, width)
        logits = logits + F.unfold(bias, size, padding=radius).view(batch, objects, window, height * width)
    inside = F.unfold(torch.ones(1, 1, height, width, device=value.device), size, padding=radius) > 0  # [1, K, HW]
    logits = logits.masked_fill(~inside.view(1, 1, window, height * width), float("-inf"))
    probs = torch.softmax(logits, dim=2).nan_to_num(0.0)  # [B, O, K, HW]
    out = torch.empty_like(value)
    for obj in range(objects):  # one object at a time bounds the unfolded values' memory
        values = F.unfold(value[:, obj], size, padding=radius).view(batch, value_dim, window, height * width)
        out[:, obj] = (probs[:, obj, None] * values).sum(2).view(batch, value_dim, height, width)
    finite = logits[torch.isfinite(logits)].float()
    return out, (finite.abs().max().item() if finite.numel() else 0.0)


def assert_matches_reference(out, query_key, key, value, radius, key_bias, scale=None):
    """out ≈ reference within 2 × PyTorch's error at the dtype + a rounding floor."""
    assert out.shape == value.shape
    assert out.dtype == value.dtype
    assert torch.isfinite(out).all(), "kernel produced NaN/inf"
    truth = reference.local_attention(query_key, key, value.float(), radius, key_bias, scale=scale)  # fp32
    pytorch, logit_magnitude = attention_at_dtype(query_key, key, value, radius, key_bias, scale=scale)
    pytorch_err = (pytorch.float() - truth).abs().max().item()
    err = (out.float() - truth).abs().max().item()
    tol = 2.0 * pytorch_err + rounding_floor(out.dtype, logit_magnitude, truth.abs().max().item())
    assert err <= tol, (
        f"max error {err:.3g} > tolerance {tol:.3g} (PyTorch's own error at {out.dtype}: {pytorch_err:.3g})"
    )


# (B, O, Ck, Cv, H, W, radius, bias): odd maps, pixel and channel tails, radius ≥ map size.
# Under the interpreter the kernel runs 4×4 query tiles, 16-column key chunks and 16 value
# channels per program, so these maps also end in partial query tiles on both axes.
CASES = [
    (1, 1, 4, 3, 5, 7, 0, "none"),
    (1, 2, 8, 5, 6, 7, 1, "object"),
    (2, 1, 5, 20, 7, 9, 2, "pixel"),  # two value-channel tiles, the second partial
    (1, 3, 16, 7, 4, 9, 3, "neg_inf"),
    (1, 2, 6, 5, 5, 6, 1, "all_neg_inf"),
    (1, 1, 3, 4, 3, 4, 3, "none"),  # window larger than the map
    (1, 1, 70, 3, 3, 5, 1, "object"),  # Ck over one channel tile (64 + 6)
    (1, 1, 24, 3, 3, 37, 9, "object"),  # halo rows of up to 22 columns: two key chunks; Ck = 24 (tile 32)
    (1, 1, 80, 3, 6, 5, 2, "neg_inf"),  # Ck = 64 + 16
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}_O{}_Ck{}_Cv{}_{}x{}_r{}_{}".format(*c))
def test_matches_reference(case, dtype):
    *sizes, radius, bias = case
    query_key, key, value, key_bias = make_inputs(*sizes, dtype=dtype, bias=bias)
    out = local_attention(query_key, key, value, radius, key_bias)
    assert_matches_reference(out, query_key, key, value, radius, key_bias)


@pytest.mark.parametrize("radius", [8, 12])
def test_large_radius_on_a_tiny_map(radius):
    query_key, key, value, key_bias = make_inputs(1, 1, 4, 3, 4, 5, bias="object")
    out = local_attention(query_key, key, value, radius, key_bias)
    assert_matches_reference(out, query_key, key, value, radius, key_bias)
    # Every window covers the whole map: each pixel is a global read of the frame.
    flat = [t.flatten(-2) for t in (query_key, key, value)]
    global_read = reference.memory_read(*flat, key_bias.flatten(-2)[:, 0])  # [B, O, Cv, H·W]
    torch.testing.assert_close(out.flatten(-2), global_read, rtol=1e-5, atol=1e-6)
    # A radius past int32 reads the same (the launcher clips it to the map).
    assert torch.equal(local_attention(query_key, key, value, 2**40, key_bias), out)


def test_all_excluded_windows_read_zeros():
    query_key, key, value, key_bias = make_inputs(1, 2, 4, 3, 4, 5, bias="all_neg_inf")
    out = local_attention(query_key, key, value, 1, key_bias)
    assert torch.equal(out[:, 0], torch.zeros_like(out[:, 0]))
    assert_matches_reference(out, query_key, key, value, 1, key_bias)


@pytest.mark.parametrize(
    "bias_shape", [(1, 2, 5, 6), (2, 5, 6), (2, 1, 1), (6,)], ids=["1xOxHxW", "OxHxW", "Ox1x1", "W"]
)
def test_broadcast_biases(bias_shape):
    """key_bias of any shape broadcastable to [B, O, H, W] is read through stride-0 views."""
    query_key, key, value, _ = make_inputs(1, 2, 4, 3, 5, 6, bias="none")
    key_bias = -torch.rand(bias_shape).to(DEVICE) * 2
    out = local_attention(query_key, key, value, 1, key_bias)
    assert_matches_reference(out, query_key, key, value, 1, key_bias)


def test_strided_inputs_and_scale():
    query_key, key, value, key_bias = make_inputs(1, 2, 6, 5, 5, 6, bias="object")
    query_key = query_key.transpose(2, 3).contiguous().transpose(2, 3)  # column-major map
    value = value.transpose(1, 2).contiguous().transpose(1, 2)  # O and Cv strides swapped
    key = torch.cat([key, key], dim=1)[:, ::2]  # stride 2 over channels
    assert not (query_key.is_contiguous() or value.is_contiguous() or key.is_contiguous())
    out = local_attention(query_key, key, value, 2, key_bias, scale=3.0)
    assert_matches_reference(out, query_key, key, value, 2, key_bias, scale=3.0)


def test_random_sizes():
    """Property-style: sizes, radius, bias kind and dtype drawn from a seeded generator."""
    gen = torch.Generator().manual_seed(2024)

    def draw(low, high):
        return int(torch.randint(low, high + 1, (1,), generator=gen))

    for _ in range(4):
        sizes = (draw(1, 2), draw(1, 2), draw(1, 12), draw(1, 10), draw(1, 7), draw(1, 7))
        radius = draw(0, 3)
        bias = ("none", "object", "pixel", "neg_inf")[draw(0, 3)]
        dtype = DTYPES[draw(0, len(DTYPES) - 1)]
        query_key, key, value, key_bias = make_inputs(*sizes, dtype=dtype, bias=bias, generator=gen)
        out = local_attention(query_key, key, value, radius, key_bias)
        assert_matches_reference(out, query_key, key, value, radius, key_bias)


@pytest.mark.parametrize("bias", ["object", "pixel"])
def test_gradients_match_reference(bias):
    inputs = make_inputs(1, 2, 5, 4, 5, 6, bias=bias)
    grad_out = torch.randn(1, 2, 4, 5, 6, device=DEVICE)
    fused = [t.clone().requires_grad_() for t in inputs]
    ref = [t.clone().requires_grad_() for t in inputs]
    out = local_attention(*fused[:3], 2, fused[3])
    expected = reference.local_attention(*ref[:3], 2, ref[3])
    out.backward(grad_out)
    expected.backward(grad_out)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for name, got, want in zip(("query_key", "key", "value", "key_bias"), fused, ref):
        assert got.grad.shape == got.shape
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-6, msg=lambda m: f"grad {name}: {m}")


def test_gradients_without_bias():
    query_key, key, value, _ = make_inputs(1, 1, 4, 3, 4, 5, bias="none")
    key.requires_grad_()
    local_attention(query_key, key, value, 1).sum().backward()
    expected = torch.autograd.grad(reference.local_attention(query_key, key, value, 1).sum(), key)[0]
    torch.testing.assert_close(key.grad, expected, rtol=1e-5, atol=1e-6)
    assert query_key.grad is None and value.grad is None


def test_ops_dispatch_to_the_kernel():
    query_key, key, value, key_bias = make_inputs(1, 1, 4, 3, 4, 5)
    torch.testing.assert_close(
        ops.local_attention(query_key, key, value, 1, key_bias, backend="triton"),
        local_attention(query_key, key, value, 1, key_bias),
    )


# --- launcher checks ---------------------------------------------------------------------

def _small():
    return make_inputs(1, 2, 4, 3, 5, 6)


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda q, k, v, b: (q[0], k, v, 1, b), ValueError, r"query_key must have shape \[B, Ck, H, W\]"),
        (lambda q, k, v, b: (q, k[:, :, :4], v, 1, b), ValueError, "must have the query_key's shape"),
        (lambda q, k, v, b: (q, k, v[..., :5], 1, b), ValueError, r"value .* must be \[B, O, Cv, H, W\]"),
        (lambda q, k, v, b: (q, k, v[:, 0], 1, b), ValueError, r"value must have shape \[B, O, Cv, H, W\]"),
        (lambda q, k, v, b: (q, k, v, -1, b), ValueError, "radius must be a non-negative int"),
        (lambda q, k, v, b: (q, k, v, 1.5, b), ValueError, "radius must be a non-negative int"),
        (lambda q, k, v, b: (q, k, v, True, b), ValueError, "radius must be a non-negative int"),
        (lambda q, k, v, b: (q, k, v, 1, b[..., :4]), ValueError, "not broadcastable"),
        (lambda q, k, v, b: (q, k, v, 1, b[None]), ValueError, "not broadcastable"),
        (lambda q, k, v, b: (q, k.to(torch.int64), v, 1, b), TypeError, "floating-point"),
        (lambda q, k, v, b: (q, k, v, 1, b.to(torch.int32)), TypeError, "key_bias must be a floating-point"),
        (lambda q, k, v, b: (q.double(), k, v, 1, b), TypeError, "the Triton kernels take"),
        (lambda q, k, v, b: (q, k, v.to("meta"), 1, b), ValueError, "one device"),
        (lambda q, k, v, b: (*(t.to("meta") for t in (q, k, v)), 1, b.to("meta")), ValueError, "need CUDA tensors"),
    ],
    ids=[
        "rank", "key_shape", "value_hw", "value_rank", "neg_radius", "float_radius", "bool_radius",
        "bias_shape", "bias_rank", "int_dtype", "int_bias", "float64", "device_mix", "meta_device",
    ],
)
def test_launcher_rejects_bad_inputs(mutate, error, match):
    with pytest.raises(error, match=match):
        local_attention(*mutate(*_small()))


def test_launcher_rejects_bad_scale():
    query_key, key, value, key_bias = _small()
    with pytest.raises(TypeError, match="scale must be a float"):
        local_attention(query_key, key, value, 1, key_bias, scale=torch.tensor(0.5))


@pytest.mark.skipif(CUDA, reason="CPU tensors are only accepted under the interpreter")
def test_launcher_rejects_cpu_tensors_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    query_key, key, value, key_bias = _small()
    with pytest.raises(ValueError, match="need CUDA tensors"):
        local_attention(query_key, key, value, 1, key_bias)


@pytest.mark.parametrize("fp32", [False, True], ids=["16bit", "fp32"])
@pytest.mark.parametrize("sizes", [(30, 54, 512), (3, 5, 8)], ids=["480p", "tiny"])
def test_cuda_config_pruning(sizes, fp32):
    """The CUDA autotuner sees only configs checked spill-free for the operand dtype, and
    never an empty list (tiles larger than a tiny problem fall back to one such config)."""
    kernel_module = importlib.import_module("remn.kernels.local_attention")  # the module, not the function
    height, width, value_dim = sizes
    kept = kernel_module._prune_configs(
        kernel_module._CUDA_CONFIGS, {"H": height, "W": width, "CV": value_dim}, QK_FP32=fp32, PV_FP32=fp32,
    )
    assert kept
    if fp32:
        assert all(kernel_module._fits_fp32(c) for c in kept)
    if value_dim <= 64:
        assert all(c.kwargs["BLOCK_V"] == 64 for c in kept)


# --- real sizes (CUDA only) --------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("objects, radius", [(1, 3), (8, 7), (8, 12), (2, 0)])
def test_real_sizes(objects, radius, dtype):
    """480p: a 30×54 key map, Ck 64, Cv 512, per-object biases."""
    query_key, key, value, key_bias = make_inputs(1, objects, 64, 512, 30, 54, dtype=dtype, bias="neg_inf")
    out = local_attention(query_key, key, value, radius, key_bias)
    assert_matches_reference(out, query_key, key, value, radius, key_bias)
