"""The custom ops `remn::memory_read` and `remn::local_attention` (remn.ops): opcheck,
their gradients, the one-chunk decomposition, and torch.compile of the model's steps."""
import pytest
import torch

import remn
from remn import ops, reference

pytestmark = pytest.mark.usefixtures("one_thread")


def memory_read_inputs(batch, key_dim, queries, keys, objects, value_dim, *, bias=True, ties=False):
    query = torch.randn(batch, key_dim, queries)
    memory_key = torch.randn(batch, key_dim, keys)
    if ties:  # equal keys: exact top-k ties, broken towards the lowest key index
        memory_key[:, :, 1::2] = memory_key[:, :, 0:-1:2][..., : memory_key[:, :, 1::2].shape[-1]]
    value = torch.randn(batch, objects, value_dim, keys)
    key_bias = None
    if bias:
        key_bias = torch.randn(batch, keys)
        key_bias[:, :2] = float("-inf")  # excluded keys
    return query, memory_key, value, key_bias


@pytest.mark.parametrize("top_k, scale, bias", [(4, None, True), (None, 0.3, False)])
def test_opcheck_memory_read(top_k, scale, bias):
    query, memory_key, value, key_bias = memory_read_inputs(2, 5, 7, 13, 3, 6, bias=bias)
    args = (query, memory_key, value, key_bias, scale, top_k)
    for tensor in args[:4]:
        if tensor is not None:
            tensor.requires_grad_(True)
    torch.library.opcheck(torch.ops.remn.memory_read.default, args)


@pytest.mark.parametrize("radius, bias_shape, scale", [(2, (2, 1, 5, 7), None), (1, None, 0.5)])
def test_opcheck_local_attention(radius, bias_shape, scale):
    query, key = torch.randn(2, 4, 5, 7), torch.randn(2, 4, 5, 7)
    value = torch.randn(2, 3, 6, 5, 7)
    key_bias = None if bias_shape is None else torch.randn(bias_shape)
    args = (query, key, value, radius, key_bias, scale)
    for tensor in (query, key, value, key_bias):
        if tensor is not None:
            tensor.requires_grad_(True)
    torch.library.opcheck(torch.ops.remn.local_attention.default, args)


def _gradients(fn, tensors):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    grad_out = torch.linspace(-1, 1, out.numel()).view_as(out)
    return out, torch.autograd.grad(out, leaves, grad_out)


def test_custom_op_gradients_are_the_references():
    query, memory_key, value, key_bias = memory_read_inputs(1, 6, 9, 11, 2, 5, ties=True)
    tensors = (query, memory_key, value, key_bias)
    out, grads = _gradients(lambda *t: ops.memory_read(*t, top_k=3), tensors)
    ref_out, ref_grads = _gradients(lambda *t: reference.memory_read(*t, top_k=3), tensors)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref, rtol=0, atol=0)

    tensors = (torch.randn(1, 4, 5, 6), torch.randn(1, 4, 5, 6), torch.randn(1, 2, 3, 5, 6), torch.randn(1, 2, 5, 6))
    out, grads = _gradients(lambda q, k, v, b: ops.local_attention(q, k, v, 2, b), tensors)
    ref_out, ref_grads = _gradients(lambda q, k, v, b: reference.local_attention(q, k, v, 2, b), tensors)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref, rtol=0, atol=0)


def test_only_the_wanted_gradients_are_computed():
    query, memory_key, value, _ = memory_read_inputs(1, 4, 6, 8, 1, 3, bias=False)
    value.requires_grad_(True)
    ops.memory_read(query, memory_key, value, top_k=2).sum().backward()
    assert value.grad is not None and query.grad is None and memory_key.grad is None


@pytest.mark.parametrize("top_k", [None, 1, 5, 40])
def test_one_chunk_decomposition_equals_the_chunked_reference(monkeypatch, top_k):
    """The export's decomposition reads all queries at once; the reference, with a small
    chunk budget here, in several chunks: the same numbers."""
    monkeypatch.setattr(reference, "MEMORY_READ_CHUNK_ELEMENTS", 64)  # a few queries per chunk
    query, memory_key, value, key_bias = memory_read_inputs(2, 8, 37, 29, 3, 5, ties=True)
    expected = reference.memory_read(query, memory_key, value, key_bias, top_k=top_k)
    got = ops.memory_read_one_chunk(query, memory_key, value, key_bias, None, top_k)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    expected = reference.memory_read(query, memory_key, value, top_k=top_k)  # no bias
    torch.testing.assert_close(ops.memory_read_one_chunk(query, memory_key, value, None, None, top_k), expected,
                               rtol=1e-6, atol=1e-6)


def test_bad_backend_is_refused_before_dispatch():
    query, memory_key, value, _ = memory_read_inputs(1, 4, 3, 5, 1, 2, bias=False)
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.memory_read(query, memory_key, value, backend="cuda")


def test_compiled_steps_equal_eager():
    """torch.compile(fullgraph=True) traces the three step functions through the custom ops
    without a graph break, and the compiled steps compute what eager does. (The aot_eager
    backend keeps this test quick; bench/bench_export.py compiles with Inductor.)"""
    torch._dynamo.reset()
    model = remn.build_model(config="tiny", device="cpu")
    with torch.no_grad():
        model.local_branch.out_proj.weight.normal_(0, 0.1)  # the local branch reads something
        model.gate.mlp[2].weight.normal_(0, 0.1)  # gate scores differ by frame
    frames = torch.rand(3, 1, 3, 40, 56)  # padded to 48×64: 12 key positions per frame, top-20 of 24
    masks = torch.rand(1, 2, 40, 56)
    compiled = {name: torch.compile(getattr(model, name), fullgraph=True, backend="aot_eager")
                for name in ("encode_key", "encode_value", "segment")}
    with torch.no_grad():
        eager_features = [model.encode_key(frame) for frame in frames]
        compiled_features = compiled["encode_key"](frames[0])
        for name in ("image", "key", "key_comp", "f16", "f8", "f4"):
            torch.testing.assert_close(getattr(compiled_features, name), getattr(eager_features[0], name))
        values = model.encode_value(eager_features[0], masks)
        torch.testing.assert_close(compiled["encode_value"](eager_features[0], masks), values)
        memory_key = torch.stack([eager_features[0].key, eager_features[1].key], dim=2)  # [1, Ck, 2, h, w]
        memory_value = torch.stack([values, values.flip(1)], dim=3)  # [1, O, Cv, 2, h, w]
        previous = (eager_features[1], masks)
        eager = model.segment(eager_features[2], memory_key, memory_value, previous=previous, top_k=20)
        comp = compiled["segment"](eager_features[2], memory_key, memory_value, previous=previous, top_k=20)
        torch.testing.assert_close(comp.padded_probs, eager.padded_probs)
        torch.testing.assert_close(comp.gate_log_scores, eager.gate_log_scores)
