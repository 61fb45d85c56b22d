"""The fused `remn.kernels.memory_read` against the specification, `remn.reference.memory_read`.

Without CUDA the kernels run in the Triton interpreter on CPU tensors (conftest sets
TRITON_INTERPRET=1), so CPU shapes stay tiny; real 480p sizes run only on CUDA.

Tolerances: `kernel_testing.rounding_floor` (flash-attention's rule).
"""
from __future__ import annotations

import math

import pytest
import torch

from remn import ops, reference
from remn.kernels import memory_read
from remn.kernels.memory_read import MAX_FUSED_TOP_K

from kernel_testing import CUDA, DEVICE, DTYPES, needs_cuda, random_normal, rounding_floor




def make_inputs(batch, objects, key_dim, value_dim, queries, keys, dtype=torch.float32, bias="finite", generator=None):
    """Random (query_key [B,Ck,N], memory_key [B,Ck,M], memory_value [B,O,Cv,M], key_bias [B,M] | None).

    bias: "none", "finite" (log-gates ≤ 0), "neg_inf" (about a third of the keys excluded
    by −inf, key 0 always kept) or "all_neg_inf" (every key of batch entry 0 excluded).
    """
    query_key = random_normal((batch, key_dim, queries), dtype, generator)
    memory_key = random_normal((batch, key_dim, keys), dtype, generator)
    memory_value = random_normal((batch, objects, value_dim, keys), dtype, generator)
    if bias == "none":
        return query_key, memory_key, memory_value, None
    key_bias = -torch.rand(batch, keys, generator=generator) * 3.0  # [B, M]
    if bias == "neg_inf":
        excluded = torch.rand(batch, keys, generator=generator) < 0.35
        excluded[:, 0] = False  # keep at least one key per batch entry
        key_bias = key_bias.masked_fill(excluded, float("-inf"))
    elif bias == "all_neg_inf":
        key_bias[0] = float("-inf")
    return query_key, memory_key, memory_value, key_bias.to(DEVICE, dtype)


def read_at_dtype(query_key, memory_key, memory_value, key_bias, scale=None, top_k=None):
    """PyTorch's own rounding at the inputs' dtype, used only to set tolerances.

    The same math as the reference with logits, softmax and the read evaluated in the
    value dtype; the top-k key set is taken from fp32 logits so that only rounding, not a
    different selection, is measured. The specification stays `remn.reference`.
    Returns (output [B, O, Cv, N], largest finite |logit|).
    """
    dtype = memory_value.dtype
    scale = 1.0 / math.sqrt(memory_key.shape[1]) if scale is None else scale
    logits32 = scale * (2.0 * torch.einsum("bcm,bcn->bmn", memory_key.float(), query_key.float())
                        - memory_key.float().pow(2).sum(1)[:, :, None])  # [B, M, N]
    logits = scale * (2.0 * torch.einsum("bcm,bcn->bmn", memory_key.to(dtype), query_key.to(dtype))
                      - memory_key.to(dtype).pow(2).sum(1)[:, :, None])  # [B, M, N] at dtype
    if key_bias is not None:
        logits32 = logits32 + key_bias.float()[:, :, None]
        logits = logits + key_bias.to(dtype)[:, :, None]
    if top_k is not None and top_k < logits.shape[1]:
        logits = logits.masked_fill(~reference.top_k_mask(logits32, top_k), float("-inf"))
    probs = torch.softmax(logits, dim=1).nan_to_num(0.0)  # all −inf columns read zeros
    finite = logits32[torch.isfinite(logits32)]
    logit_magnitude = finite.abs().max().item() if finite.numel() else 0.0
    return torch.einsum("bocm,bmn->bocn", memory_value, probs), logit_magnitude


def assert_matches_reference(out, query_key, memory_key, memory_value, key_bias, scale=None, top_k=None):
    """out ≈ reference within 2 × PyTorch's error at the dtype + a rounding floor."""
    batch, _, queries = query_key.shape
    objects, value_dim = memory_value.shape[1:3]
    assert out.shape == (batch, objects, value_dim, queries)
    assert out.dtype == memory_value.dtype
    assert torch.isfinite(out).all(), "kernel produced NaN/inf"
    # The fp32 reference output (the reference upcasts; an fp32 value keeps it fp32).
    truth = reference.memory_read(query_key, memory_key, memory_value.float(), key_bias, scale=scale, top_k=top_k)
    pytorch, logit_magnitude = read_at_dtype(query_key, memory_key, memory_value, key_bias, scale=scale, top_k=top_k)
    pytorch_err = (pytorch.float() - truth).abs().max().item()
    err = (out.float() - truth).abs().max().item()
    tol = 2.0 * pytorch_err + rounding_floor(out.dtype, logit_magnitude, truth.abs().max().item())
    assert err <= tol, (
        f"max error {err:.3g} > tolerance {tol:.3g} (PyTorch's own error at {out.dtype}: {pytorch_err:.3g})"
    )


# (B, O, Ck, Cv, N, M, bias): odd sizes, tails of every tile, M = 1, N = 1.
SHAPES = [
    (1, 1, 8, 4, 16, 16, "none"),
    (2, 2, 5, 7, 37, 41, "finite"),
    (1, 3, 16, 11, 23, 33, "neg_inf"),
    (1, 1, 4, 20, 9, 1, "finite"),
    (1, 2, 3, 3, 1, 29, "none"),
    (2, 1, 12, 17, 18, 17, "all_neg_inf"),
    (1, 1, 130, 3, 9, 20, "finite"),  # Ck over one channel tile
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_O{}_Ck{}_Cv{}_N{}_M{}_{}".format(*s))
def test_matches_reference(shape, dtype):
    *sizes, bias = shape
    inputs = make_inputs(*sizes, dtype=dtype, bias=bias)
    assert_matches_reference(memory_read(*inputs), *inputs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape, top_k",
    [
        ((1, 2, 6, 5, 19, 37, "finite"), 1),
        ((1, 1, 8, 3, 21, 40, "none"), 20),
        ((2, 1, 5, 6, 17, 33, "neg_inf"), 20),  # fewer finite keys than k in places
        ((1, 1, 4, 4, 7, 13, "finite"), 13),  # k = M: plain read
        ((1, 1, 4, 4, 7, 13, "finite"), 50),  # k > M: plain read
        ((1, 1, 6, 3, 5, 90, "finite"), 64),
        ((1, 1, 6, 3, 5, 130, "neg_inf"), 100),  # a 128-wide buffer
    ],
    ids=["k1", "k20", "k20_neg_inf", "k_eq_M", "k_gt_M", "k64", "k100"],
)
def test_top_k_matches_reference(shape, top_k, dtype):
    *sizes, bias = shape
    inputs = make_inputs(*sizes, dtype=dtype, bias=bias)
    assert_matches_reference(memory_read(*inputs, top_k=top_k), *inputs, top_k=top_k)


@pytest.mark.parametrize("top_k", [1, 3, 6, 29, 30, 45])
def test_top_k_keeps_exactly_k_with_ties_in_key_order(top_k):
    """Exactly k keys per query, ties at the k-th logit taken in key order, like the
    reference; k ≥ M (30) reads every key.

    Small integer keys and queries with scale 1/4 make every logit exact in fp32, and each
    key appears twice (15 positions apart: the copies fall in different key tiles and
    top-k splits) with different values, so the k-th largest logit is shared by at least
    two keys and reading the wrong copy changes the output.
    """
    gen = torch.Generator().manual_seed(7)
    key_dim, queries, half = 4, 20, 15
    query_key = torch.randint(-2, 3, (1, key_dim, queries), generator=gen).float().to(DEVICE)
    keys = torch.randint(-2, 3, (1, key_dim, half), generator=gen).float()
    memory_key = torch.cat([keys, keys], dim=2).to(DEVICE)  # [1, Ck, 30]: every key twice
    memory_value = torch.randn(1, 2, 3, 2 * half, generator=gen).to(DEVICE)
    key_bias = torch.zeros(1, 2 * half, device=DEVICE)
    logits = 0.25 * (2 * torch.einsum("bcm,bcn->bmn", memory_key, query_key) - memory_key.pow(2).sum(1)[:, :, None])
    if top_k < 2 * half:
        at_least_kth = (logits >= logits.topk(top_k, dim=1).values[:, -1:]).sum(1)
        assert (at_least_kth > top_k).any(), "the test must produce ties at the threshold"
    out = memory_read(query_key, memory_key, memory_value, key_bias, scale=0.25, top_k=top_k)
    expected = reference.memory_read(query_key, memory_key, memory_value, key_bias, scale=0.25, top_k=top_k)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    # Spelled out: the k best in order of (−logit, key index).
    order = sorted(range(2 * half), key=lambda j: (-logits[0, j, 0].item(), j))[: min(top_k, 2 * half)]
    weights = torch.softmax(logits[0, order, 0], dim=0)  # [k]
    spelled = torch.einsum("ocm,m->oc", memory_value[0][:, :, order], weights)  # [O, Cv] for query 0
    torch.testing.assert_close(out[0, :, :, 0], spelled, rtol=1e-5, atol=1e-6)


def test_all_excluded_rows_read_zeros():
    """Batch entry 0 has only −inf biases: zeros, not NaN; entry 1 is a normal read."""
    inputs = make_inputs(2, 2, 5, 6, 20, 19, bias="all_neg_inf")
    for top_k in (None, 4):
        out = memory_read(*inputs, top_k=top_k)
        assert torch.equal(out[0], torch.zeros_like(out[0]))
        assert_matches_reference(out, *inputs, top_k=top_k)


def test_large_logits_are_stable():
    """A large scale makes logits of several hundred: the running max keeps exp finite."""
    inputs = make_inputs(1, 1, 8, 5, 18, 35, bias="finite")
    assert_matches_reference(memory_read(*inputs, scale=40.0), *inputs, scale=40.0)


def test_strided_inputs():
    """Non-contiguous views are read through their strides (no copy needed)."""
    query_key, memory_key, memory_value, key_bias = make_inputs(1, 2, 6, 5, 20, 24)
    query_key = query_key.transpose(1, 2).contiguous().transpose(1, 2)  # [B, Ck, N], Ck fastest
    memory_value = memory_value.transpose(1, 2).contiguous().transpose(1, 2)  # O and Cv strides do not merge
    memory_key = torch.cat([memory_key, memory_key], dim=2)[:, :, ::2]  # stride 2 along M
    key_bias = torch.stack([key_bias, key_bias], dim=2)[..., 0]  # stride 2 along M
    assert not (query_key.is_contiguous() or memory_value.is_contiguous() or memory_key.is_contiguous())
    inputs = (query_key, memory_key, memory_value, key_bias)
    assert_matches_reference(memory_read(*inputs), *inputs)


def test_random_sizes():
    """Property-style: sizes, k, bias kind and dtype drawn from a seeded generator."""
    gen = torch.Generator().manual_seed(2024)

    def draw(low, high):
        return int(torch.randint(low, high + 1, (1,), generator=gen))

    for _ in range(5):
        sizes = (draw(1, 2), draw(1, 3), draw(1, 16), draw(1, 20), draw(1, 40), draw(1, 40))
        bias = ("none", "finite", "neg_inf")[draw(0, 2)]
        dtype = DTYPES[draw(0, len(DTYPES) - 1)]
        top_k = (None, draw(1, sizes[-1] + 2))[draw(0, 1)]
        inputs = make_inputs(*sizes, dtype=dtype, bias=bias, generator=gen)
        assert_matches_reference(memory_read(*inputs, top_k=top_k), *inputs, top_k=top_k)


@pytest.mark.parametrize("top_k", [None, 5])
def test_gradients_match_reference(top_k):
    inputs = make_inputs(2, 2, 6, 5, 18, 21, bias="neg_inf")
    grad_out = torch.randn(2, 2, 5, 18, device=DEVICE)
    fused = [t.clone().requires_grad_() for t in inputs]
    ref = [t.clone().requires_grad_() for t in inputs]
    out = memory_read(*fused, top_k=top_k)
    expected = reference.memory_read(*ref, top_k=top_k)
    out.backward(grad_out)
    expected.backward(grad_out)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for name, got, want in zip(("query_key", "memory_key", "memory_value", "key_bias"), fused, ref):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-6, msg=lambda m: f"grad {name}: {m}")


def test_gradients_for_a_subset_of_inputs():
    """Only memory_value requires grad (frozen keys): the others get no gradient."""
    query_key, memory_key, memory_value, _ = make_inputs(1, 1, 4, 3, 9, 12, bias="none")
    memory_value.requires_grad_()
    memory_read(query_key, memory_key, memory_value).sum().backward()
    expected = torch.autograd.grad(reference.memory_read(query_key, memory_key, memory_value).sum(), memory_value)[0]
    torch.testing.assert_close(memory_value.grad, expected)
    assert query_key.grad is None and memory_key.grad is None


def test_ops_dispatch_to_the_kernel():
    inputs = make_inputs(1, 1, 4, 3, 10, 12)
    torch.testing.assert_close(ops.memory_read(*inputs, backend="triton"), memory_read(*inputs))


# --- launcher checks ---------------------------------------------------------------------

def _small():
    return make_inputs(1, 2, 4, 3, 5, 6)


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda q, k, v, b: (q[0], k, v, b), ValueError, r"query_key must have shape \[B, Ck, N\]"),
        (lambda q, k, v, b: (q, k, v[:, 0], b), ValueError, r"memory_value must have shape \[B, O, Cv, M\]"),
        (lambda q, k, v, b: (q, k[:, :3], v, b), ValueError, "does not match query_key"),
        (lambda q, k, v, b: (q, k, v[..., :5], b), ValueError, "memory positions"),
        (lambda q, k, v, b: (q, k, v, b[:, :5]), ValueError, r"key_bias must have shape \[B, M\]"),
        (lambda q, k, v, b: (q.to(torch.int32), k, v, b), TypeError, "floating-point"),
        (lambda q, k, v, b: (q, k, v.double(), b), TypeError, "the Triton kernels take"),
        (lambda q, k, v, b: (q, k.to("meta"), v, b), ValueError, "one device"),
        (lambda q, k, v, b: tuple(t.to("meta") for t in (q, k, v, b)), ValueError, "need CUDA tensors"),
    ],
    ids=["rank", "value_rank", "key_dim", "value_M", "bias_shape", "int_dtype", "float64", "device_mix", "meta_device"],
)
def test_launcher_rejects_bad_inputs(mutate, error, match):
    with pytest.raises(error, match=match):
        memory_read(*mutate(*_small()))


@pytest.mark.parametrize("top_k", [0, -3, True, 2.5])
def test_launcher_rejects_bad_top_k(top_k):
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        memory_read(*_small(), top_k=top_k)


def test_launcher_rejects_top_k_beyond_the_fused_limit():
    inputs = make_inputs(1, 1, 4, 3, 2, MAX_FUSED_TOP_K + 10)
    with pytest.raises(ValueError, match="top_k ≤"):
        memory_read(*inputs, top_k=MAX_FUSED_TOP_K + 1)


def test_launcher_rejects_bad_scale():
    with pytest.raises(TypeError, match="scale must be a float"):
        memory_read(*_small(), scale="0.5")


@pytest.mark.skipif(CUDA, reason="CPU tensors are only accepted under the interpreter")
def test_launcher_rejects_cpu_tensors_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="need CUDA tensors"):
        memory_read(*_small())


# --- real sizes (CUDA only) --------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(
    "frames, objects, top_k", [(1, 1, None), (20, 8, None), (50, 8, None), (50, 4, 30), (20, 8, 64)]
)
def test_real_sizes(frames, objects, top_k, dtype):
    """480p: a 30×54 key map (N = 1620), T memory frames (M = T·N), Ck 64, Cv 512."""
    queries = 30 * 54
    inputs = make_inputs(1, objects, 64, 512, queries, frames * queries, dtype=dtype, bias="finite")
    assert_matches_reference(memory_read(*inputs, top_k=top_k), *inputs, top_k=top_k)


@pytest.mark.parametrize("fp32", [False, True])
@pytest.mark.parametrize("block_ck, num_queries, value_channels", [(64, 1620, 1024), (128, 1620, 1024), (128, 40, 32)])
def test_cuda_config_pruning(block_ck, num_queries, value_channels, fp32):
    """The CUDA autotuner gets only the tiles checked spill-free for the operand precision,
    never an empty list, never tiles larger than the problem when smaller ones exist, and
    only two pipeline stages for 128-channel key tiles."""
    import importlib

    kernel_module = importlib.import_module("remn.kernels.memory_read")  # the module, not the function
    own = kernel_module._CONFIGS_FP32 if fp32 else kernel_module._CONFIGS_16BIT
    kept = kernel_module._prune_configs(
        kernel_module._CONFIGS_16BIT + kernel_module._CONFIGS_FP32,
        {"N": num_queries, "OCV": value_channels, "CK": block_ck}, BLOCK_CK=block_ck, QK_FP32=fp32, PV_FP32=fp32,
    )
    assert kept
    assert all(any(c.kwargs == o.kwargs and c.num_warps == o.num_warps for o in own) for c in kept)
    if block_ck > 64:
        assert all(c.num_stages <= 2 for c in kept)
    else:
        assert kept == own
    if num_queries <= 64:
        assert all(c.kwargs["BLOCK_N"] <= 64 for c in kept)
    if value_channels <= 64:
        assert all(c.kwargs["BLOCK_V"] <= 64 for c in kept)
