"""The reference ops against naive per-element loops that spell the math out."""
import math

import pytest
import torch

from remn import ops, reference


def naive_memory_read(query_key, memory_key, memory_value, key_bias=None, top_k=None):
    batch, key_dim, num_queries = query_key.shape
    num_objects, value_dim, num_keys = memory_value.shape[1:]
    out = torch.zeros(batch, num_objects, value_dim, num_queries, dtype=torch.float64)
    for b in range(batch):
        for i in range(num_queries):
            logits = []
            for j in range(num_keys):
                q, k = query_key[b, :, i].double(), memory_key[b, :, j].double()
                logit = (2 * q.dot(k) - k.dot(k)) / math.sqrt(key_dim)
                logits.append(logit + (float(key_bias[b, j]) if key_bias is not None else 0.0))
            logits = torch.tensor(logits, dtype=torch.float64)
            if top_k is not None and top_k < num_keys:
                # exactly k keys: the largest logits, ties taken in key order
                ranked = sorted(range(num_keys), key=lambda j: (-logits[j].item(), j))
                dropped = torch.ones(num_keys, dtype=torch.bool)
                dropped[ranked[:top_k]] = False
                logits = logits.masked_fill(dropped, -math.inf)
            if torch.isinf(logits).all():
                continue  # every key excluded: zeros
            weights = torch.softmax(logits, dim=0)
            out[b, :, :, i] = torch.einsum("ocm,m->oc", memory_value[b].double(), weights)
    return out


def naive_local_attention(query_key, key, value, radius, key_bias=None):
    batch, key_dim, height, width = query_key.shape
    num_objects, value_dim = value.shape[1:3]
    bias = torch.zeros(batch, num_objects, height, width, dtype=torch.float64)
    if key_bias is not None:
        bias = bias + key_bias.double()
    out = torch.zeros(batch, num_objects, value_dim, height, width, dtype=torch.float64)
    for b in range(batch):
        for o in range(num_objects):
            for y in range(height):
                for x in range(width):
                    positions, logits = [], []
                    for yy in range(max(0, y - radius), min(height, y + radius + 1)):
                        for xx in range(max(0, x - radius), min(width, x + radius + 1)):
                            q, k = query_key[b, :, y, x].double(), key[b, :, yy, xx].double()
                            logits.append((2 * q.dot(k) - k.dot(k)) / math.sqrt(key_dim) + bias[b, o, yy, xx])
                            positions.append((yy, xx))
                    logits = torch.stack(logits)
                    if torch.isinf(logits).all():
                        continue
                    weights = torch.softmax(logits, dim=0)
                    for weight, (yy, xx) in zip(weights, positions):
                        out[b, o, :, y, x] += weight * value[b, o, :, yy, xx].double()
    return out


@pytest.mark.parametrize("num_keys", [1, 5, 13])
@pytest.mark.parametrize("num_objects", [1, 3])
@pytest.mark.parametrize("top_k", [None, 1, 4, 50])
def test_memory_read_matches_naive(num_keys, num_objects, top_k):
    query_key, memory_key = torch.randn(2, 6, 7), torch.randn(2, 6, num_keys)
    memory_value = torch.randn(2, num_objects, 5, num_keys)
    key_bias = torch.randn(2, num_keys)
    got = reference.memory_read(query_key, memory_key, memory_value, key_bias, top_k=top_k)
    want = naive_memory_read(query_key, memory_key, memory_value, key_bias, top_k)
    assert got.shape == (2, num_objects, 5, 7)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("top_k", [1, 2, 5, 8, 9])
def test_memory_read_top_k_keeps_exactly_k_with_ties_in_key_order(top_k):
    """Each key appears twice with different values; logits are exact in fp64 and fp32, so
    the k-th largest is tied and which copy is read changes the output."""
    query_key = torch.randint(-2, 3, (2, 4, 6)).double()
    keys = torch.randint(-2, 3, (2, 4, 4)).double()
    memory_key = torch.cat([keys, keys[:, :, :1]], dim=2)  # [2, 4, 5]: key 0 again at the end
    memory_key = torch.cat([memory_key, keys], dim=2)  # [2, 4, 9]
    memory_value = torch.randn(2, 2, 3, 9, dtype=torch.float64)
    got = reference.memory_read(query_key, memory_key, memory_value, top_k=top_k)
    logits = 0.5 * (2 * torch.einsum("bcm,bcn->bmn", memory_key, query_key) - memory_key.pow(2).sum(1)[:, :, None])
    kept = reference.top_k_mask(logits, top_k)
    assert (kept.sum(1) == min(top_k, 9)).all()
    at_least_kth = logits >= logits.topk(top_k, dim=1).values[:, -1:]
    assert (at_least_kth.sum(1) > top_k).any() or top_k == 9, "the test must produce ties at the k-th logit"
    want = naive_memory_read(query_key, memory_key, memory_value, None, top_k)
    torch.testing.assert_close(got, want.to(got.dtype))


@pytest.mark.parametrize("case", ["distinct", "tied", "excluded"])
def test_eager_top_k_indices_equal_the_graph_form(case):
    """top_k_indices_eager takes one topk where no tie straddles the k-th logit and the
    graph form otherwise: the same keys in the same order either way."""
    generator = torch.Generator().manual_seed(3)
    if case == "tied":  # small integers: many equal logits at the k-th place
        logits = torch.randint(-3, 4, (2, 9, 31), generator=generator).float()
    else:
        logits = torch.randn(2, 9, 31, generator=generator)
    if case == "excluded":  # fewer than k + 1 finite keys for one query: −inf ties at the k-th place
        logits[1, 4, 2:] = -math.inf
    for top_k in (1, 4, 30):
        torch.testing.assert_close(reference.top_k_indices_eager(logits, top_k), reference.top_k_indices(logits, top_k),
                                   rtol=0, atol=0)


def test_memory_read_excluded_keys_and_all_excluded_rows():
    query_key, memory_key = torch.randn(2, 4, 6), torch.randn(2, 4, 9)
    memory_value = torch.randn(2, 2, 3, 9)
    key_bias = torch.zeros(2, 9)
    key_bias[0, ::2] = -math.inf  # some keys excluded
    key_bias[1] = -math.inf  # every key excluded: that batch reads zeros
    got = reference.memory_read(query_key, memory_key, memory_value, key_bias, top_k=3)
    want = naive_memory_read(query_key, memory_key, memory_value, key_bias, 3)
    assert torch.isfinite(got).all()
    assert torch.equal(got[1], torch.zeros_like(got[1]))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_memory_read_gradients_finite_with_excluded_keys():
    query_key = torch.randn(1, 4, 5, requires_grad=True)
    memory_key = torch.randn(1, 4, 6, requires_grad=True)
    memory_value = torch.randn(1, 2, 3, 6, requires_grad=True)
    key_bias = torch.zeros(1, 6)
    key_bias[0, :3] = -math.inf
    key_bias.requires_grad_(True)
    reference.memory_read(query_key, memory_key, memory_value, key_bias, top_k=2).sum().backward()
    for tensor in (query_key, memory_key, memory_value, key_bias):
        assert torch.isfinite(tensor.grad).all()


@pytest.mark.parametrize("radius", [0, 1, 2, 4])
@pytest.mark.parametrize("size", [(1, 1), (3, 5), (6, 4)])
def test_local_attention_matches_naive(radius, size):
    query_key, key = torch.randn(2, 5, *size), torch.randn(2, 5, *size)
    value = torch.randn(2, 3, 4, *size)
    key_bias = torch.randn(2, 3, *size)
    got = reference.local_attention(query_key, key, value, radius, key_bias)
    want = naive_local_attention(query_key, key, value, radius, key_bias)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_local_attention_broadcast_bias_and_excluded_windows():
    query_key, key = torch.randn(1, 3, 4, 5), torch.randn(1, 3, 4, 5)
    value = torch.randn(1, 2, 2, 4, 5)
    key_bias = torch.zeros(1, 1, 4, 5)  # broadcast over objects
    key_bias[..., :, :3] = -math.inf  # pixels whose window lies in columns 0..2 only read zeros
    got = reference.local_attention(query_key, key, value, 1, key_bias)
    want = naive_local_attention(query_key, key, value, 1, key_bias.expand(1, 2, 4, 5))
    assert torch.isfinite(got).all()
    assert torch.equal(got[..., :, :2], torch.zeros_like(got[..., :, :2]))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_softmax_weights_below_the_smallest_normal_are_zero():
    """A logit 95 below its row's largest has weight e^-95 ≈ 5e-42, subnormal in fp32 (slow
    on x86): it is 0, and the other weights are the exact softmax's to rounding."""
    logits = torch.tensor([[0.0, -1.0, -95.0, -math.inf], [-80.0, -180.0, -200.0, -math.inf]])
    weights = reference._safe_softmax(logits, dim=1)
    tiny = torch.finfo(torch.float32).tiny
    assert weights[0, 2] == 0 and weights[1, 1:].eq(0).all() and weights[:, 3].eq(0).all()
    assert not ((weights > 0) & (weights < tiny)).any()
    torch.testing.assert_close(weights.double(), torch.softmax(logits.double(), dim=1), rtol=1e-6, atol=1e-30)


def test_local_attention_far_logits_read_as_the_exact_math():
    """With a strongly separated window (most weights subnormal or smaller before they are
    zeroed) the read is the fp64 naive one to fp32 rounding."""
    generator = torch.Generator().manual_seed(0)
    query_key, key = 12 * torch.randn(1, 4, 6, 7, generator=generator), 12 * torch.randn(1, 4, 6, 7, generator=generator)
    value = torch.randn(1, 2, 3, 6, 7, generator=generator)
    got = reference.local_attention(query_key, key, value, 2)
    want = naive_local_attention(query_key, key, value, 2)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_reference_keeps_value_dtype():
    got = reference.memory_read(torch.randn(1, 4, 3).half(), torch.randn(1, 4, 5).half(), torch.randn(1, 1, 2, 5).half())
    assert got.dtype == torch.float16


@pytest.mark.parametrize(
    "args, message",
    [
        ((torch.randn(4, 3), torch.randn(1, 4, 5), torch.randn(1, 1, 2, 5)), r"query_key must have shape \[B, Ck, N\]"),
        ((torch.randn(1, 4, 3), torch.randn(1, 5, 5), torch.randn(1, 1, 2, 5)), "does not match query_key"),
        ((torch.randn(1, 4, 3), torch.randn(1, 4, 5), torch.randn(1, 1, 2, 6)), "memory_value"),
        ((torch.randn(1, 4, 3), torch.randn(1, 4, 5), torch.randn(1, 1, 2, 5), torch.randn(1, 4)), "key_bias"),
    ],
)
def test_memory_read_rejects_bad_shapes(args, message):
    with pytest.raises(ValueError, match=message):
        reference.memory_read(*args)


def test_bad_dtypes_and_arguments():
    with pytest.raises(TypeError, match="floating-point"):
        reference.memory_read(torch.ones(1, 4, 3, dtype=torch.long), torch.randn(1, 4, 5), torch.randn(1, 1, 2, 5))
    with pytest.raises(ValueError, match="top_k"):
        reference.memory_read(torch.randn(1, 4, 3), torch.randn(1, 4, 5), torch.randn(1, 1, 2, 5), top_k=0)
    with pytest.raises(ValueError, match="radius"):
        reference.local_attention(torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3), torch.randn(1, 1, 2, 3, 3), -1)
    with pytest.raises(ValueError, match="broadcastable"):
        reference.local_attention(
            torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3), torch.randn(1, 1, 2, 3, 3), 1, torch.randn(2, 1, 3, 3)
        )


def test_dispatch_chooses_reference_on_cpu_and_explains_forced_triton():
    tensors = (torch.randn(1, 4, 3), torch.randn(1, 4, 5), torch.randn(1, 1, 2, 5))
    assert ops.choose_backend(None, *tensors) == "reference"
    assert ops.choose_backend("reference", *tensors) == "reference"
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.choose_backend("cuda", *tensors)
    assert ops.triton_unavailable_reason(torch.ones(2, dtype=torch.float64)) is not None
    torch.testing.assert_close(ops.memory_read(*tensors), reference.memory_read(*tensors))


def test_reference_computes_in_fp32_under_autocast():
    query_key, memory_key = torch.randn(1, 8, 6), torch.randn(1, 8, 30)
    memory_value = torch.randn(1, 2, 4, 30)
    want = reference.memory_read(query_key, memory_key, memory_value)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = reference.memory_read(query_key, memory_key, memory_value)
        local = reference.local_attention(torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3), torch.randn(1, 1, 2, 3, 3), 1)
    assert got.dtype == torch.float32 and local.dtype == torch.float32
    torch.testing.assert_close(got, want)
