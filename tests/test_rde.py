"""RDE-VOS's memory compressor: checkpoint names, shapes, recurrence, the math, the loss."""

import pytest
import torch
import torch.nn.functional as F

import remn
from remn.checkpoint import load_weights, save_weights
from remn.model import REMN, MemoryCompressor
from remn.model.rde import non_local_aggregate

from published_checkpoints import random_published_state

KEY_DIM, VALUE_DIM = 8, 16  # small compressor for the shape and math tests


# ------------------------------------------------------------ checkpoints
def test_published_rde_checkpoint_loads_strictly(tmp_path):
    state = random_published_state("rde_state_dict.json")
    assert len(state) == 435 and sum(k.startswith("mem_compress.") for k in state) == 30
    path = tmp_path / "rde.pth"
    torch.save(state, path)
    model = remn.build_model(config="rde", weights=path, device="cpu")
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert model.gate is None and model.local_branch is None
    assert model.mem_compress.compress_key.weight.shape == (64, 64, 2, 3, 3)


@pytest.mark.parametrize(
    "drop, message",
    [
        (lambda k: k == "mem_compress.compress_value.bias", r"missing keys \(1\): mem_compress.compress_value.bias"),
        (lambda k: k.startswith("mem_compress."), r"missing keys \(30\): mem_compress\."),  # an STCN-style file
    ],
)
def test_missing_mem_compress_keys_are_refused(tmp_path, drop, message):
    model = remn.build_model(config="tiny", memory="rde", device="cpu")
    path = tmp_path / "tiny_rde.pth"
    save_weights(model, path)
    payload = torch.load(path, weights_only=True)
    payload["model"] = {k: v for k, v in payload["model"].items() if not drop(k)}
    torch.save(payload, path)
    with pytest.raises(ValueError, match=message):
        load_weights(REMN(model.config), path)


def test_only_rde_memory_builds_a_compressor():
    assert remn.build_model(config="tiny", device="cpu").mem_compress is None
    assert remn.PRESETS["rde"].model.memory == "rde"


# ------------------------------------------------------------ shapes
@pytest.mark.parametrize("batch, objects, height, width", [(1, 1, 4, 6), (2, 3, 5, 7), (1, 2, 1, 9), (2, 1, 3, 1)])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_compress_shapes_including_odd_sizes(batch, objects, height, width, ceil_mode):
    compressor = MemoryCompressor(KEY_DIM, VALUE_DIM, ceil_mode=ceil_mode)
    embedding_key, new_key = torch.randn(2, batch, KEY_DIM, height, width)
    embedding_value, new_value = torch.randn(2, batch, objects, VALUE_DIM, height, width)
    key, value = compressor(embedding_key, embedding_value, new_key, new_value)
    assert key.shape == (batch, KEY_DIM, height, width)
    assert value.shape == (batch, objects, VALUE_DIM, height, width)
    assert torch.isfinite(key).all() and torch.isfinite(value).all()
    # floor (published): M = 2·⌊h/2⌋·⌊w/2⌋, none at h or w = 1; ceil: every position, 2·⌈h/2⌉·⌈w/2⌉
    non_local = compressor.key_encoder.non_local
    pooled = non_local._pooled(non_local.phi, torch.stack([embedding_key, new_key], dim=2))  # [B, C/2, M]
    rounding = (lambda n: -(-n // 2)) if ceil_mode else (lambda n: n // 2)
    assert pooled.shape[2] == 2 * rounding(height) * rounding(width)


def test_objects_are_compressed_independently():
    compressor = MemoryCompressor(KEY_DIM, VALUE_DIM)
    embedding, new = torch.randn(2, 1, 3, VALUE_DIM, 5, 6)
    together = compressor.update_value(embedding, new)
    alone = compressor.update_value(embedding[:, 1:2], new[:, 1:2])
    torch.testing.assert_close(together[:, 1:2], alone, rtol=1e-5, atol=1e-5)


def test_embedding_keeps_its_shape_over_many_steps():
    compressor = MemoryCompressor(KEY_DIM, VALUE_DIM).eval()
    key, value = torch.randn(1, KEY_DIM, 5, 7), torch.randn(1, 2, VALUE_DIM, 5, 7)
    with torch.no_grad():
        for _ in range(50):
            key = compressor.update_key(key, torch.randn_like(key))
            value = compressor.update_value(value, torch.randn_like(value))
            assert key.shape == (1, KEY_DIM, 5, 7) and value.shape == (1, 2, VALUE_DIM, 5, 7)
    assert torch.isfinite(key).all() and torch.isfinite(value).all()


def test_gradients_flow_through_recurrent_compression():
    compressor = MemoryCompressor(KEY_DIM, VALUE_DIM)
    frames = torch.randn(4, 1, KEY_DIM, 4, 5, requires_grad=True)
    key = frames[0]
    for t in range(1, 4):
        key = compressor.update_key(key, frames[t])
    key.square().mean().backward()
    assert torch.isfinite(frames.grad).all() and frames.grad[0].abs().sum() > 0
    assert compressor.compress_key.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda c: c.update_key(torch.zeros(1, KEY_DIM, 4, 4), torch.zeros(1, KEY_DIM, 4, 5)), "same shape"),
        (lambda c: c.update_key(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)), "8 channels"),
        (lambda c: c.update_value(torch.zeros(1, VALUE_DIM, 4, 4), torch.zeros(1, VALUE_DIM, 4, 4)), r"\[B, O, Cv"),
    ],
)
def test_bad_compress_inputs_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call(MemoryCompressor(KEY_DIM, VALUE_DIM))


# ------------------------------------------------------------ the math
def naive_non_local(query, key, value):
    batch, channels, num_queries = query.shape
    num_keys = key.shape[2]
    out = torch.zeros(batch, channels, num_queries, dtype=torch.float64)
    for b in range(batch):
        for n in range(num_queries):
            for m in range(num_keys):
                weight = sum(float(key[b, c, m]) * float(query[b, c, n]) for c in range(channels)) / num_keys
                out[b, :, n] += weight * value[b, :, m].double()
    return out


@pytest.mark.parametrize("channels, num_queries, num_keys", [(3, 10, 6), (1, 2, 1), (5, 18, 6)])
def test_non_local_aggregate_matches_naive_loop(channels, num_queries, num_keys):
    query = torch.randn(2, channels, num_queries)
    key, value = torch.randn(2, 2, channels, num_keys)
    expected = naive_non_local(query, key, value)
    torch.testing.assert_close(non_local_aggregate(query.double(), key.double(), value.double()), expected)
    torch.testing.assert_close(non_local_aggregate(query, key, value), expected.float(), rtol=1e-5, atol=1e-5)
    low = non_local_aggregate(query.bfloat16(), key.bfloat16(), value.bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), expected.float(), rtol=2e-2, atol=2e-2)


def functional_sam(sam, x, ceil_mode):
    """The SAM written out from its description, with the module's weights."""
    nl, aspp = sam.non_local, sam.conv1
    theta = F.conv3d(x, nl.theta.weight, nl.theta.bias).flatten(2)
    phi = F.max_pool3d(F.conv3d(x, nl.phi[0].weight, nl.phi[0].bias), (1, 2, 2), ceil_mode=ceil_mode).flatten(2)
    g = F.max_pool3d(F.conv3d(x, nl.g[0].weight, nl.g[0].bias), (1, 2, 2), ceil_mode=ceil_mode).flatten(2)
    f = theta.transpose(1, 2) @ phi / phi.shape[2]  # no softmax
    y = (f @ g.transpose(1, 2)).transpose(1, 2).reshape(x.shape[0], -1, *x.shape[2:])
    x = x + F.conv3d(y, nl.W.weight, nl.W.bias)
    branches = [F.relu(F.conv3d(x, aspp.aspp1.atrous_conv.weight))]
    for module, d in ((aspp.aspp2, 2), (aspp.aspp3, 4), (aspp.aspp4, 6)):
        branches.append(F.relu(F.conv3d(x, module.atrous_conv.weight, padding=(0, d, d), dilation=(1, d, d))))
    return x + F.relu(F.conv3d(torch.cat(branches, 1), aspp.conv1.weight, padding=(0, 1, 1)))


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("height, width", [(4, 6), (5, 3)])
def test_compressor_matches_its_description(height, width, ceil_mode):
    compressor = MemoryCompressor(KEY_DIM, VALUE_DIM, ceil_mode=ceil_mode).double()
    embedding, new = torch.randn(2, 2, KEY_DIM, height, width, dtype=torch.float64)
    x = torch.stack([embedding, new], dim=2)  # embedding first in time
    expected = F.conv3d(functional_sam(compressor.key_encoder, x, ceil_mode), compressor.compress_key.weight,
                        compressor.compress_key.bias, padding=(0, 1, 1)).squeeze(2)
    torch.testing.assert_close(compressor.update_key(embedding, new), expected)


def test_floor_pooling_agrees_at_even_sizes_only():
    ceil = MemoryCompressor(KEY_DIM, VALUE_DIM, ceil_mode=True)
    floor = MemoryCompressor(KEY_DIM, VALUE_DIM)  # the published pooling is the default
    floor.load_state_dict(ceil.state_dict())
    embedding, new = torch.randn(2, 1, KEY_DIM, 4, 6)
    torch.testing.assert_close(ceil.update_key(embedding, new), floor.update_key(embedding, new))
    embedding, new = torch.randn(2, 1, KEY_DIM, 3, 5)  # an odd last row and column: floor drops them
    assert (ceil.update_key(embedding, new) - floor.update_key(embedding, new)).abs().max() > 1e-4


def test_model_config_chooses_the_pooling():
    assert remn.build_model(config="rde", device="cpu").mem_compress.key_encoder.non_local.phi[1].ceil_mode is False
    model = remn.build_model(config="tiny", memory="rde", rde_pool_ceil_mode=True, device="cpu")
    assert model.mem_compress.value_encoder.non_local.g[1].ceil_mode is True


# ------------------------------------------------------------ reading the embedding
def test_tiny_rde_model_reads_from_a_compressed_embedding():
    model = remn.build_model(config="tiny", memory="rde", device="cpu")
    frames = torch.rand(1, 3, 3, 40, 56)
    masks = torch.zeros(1, 2, 40, 56)
    masks[0, 0, 5:20, 5:25] = 1
    masks[0, 1, 22:35, 30:50] = 1
    with torch.no_grad():
        first = model.encode_key(frames[:, 0])
        first_value = model.encode_value(first, masks)  # [B, O, Cv, h, w]
        embedding_key, embedding_value = first.key, first_value  # the embedding starts as the annotated frame
        second = model.encode_key(frames[:, 1])
        out = model.segment(second, embedding_key[:, :, None], embedding_value[:, :, :, None])
        new_value = model.encode_value(second, out.probs[:, 1:])
        embedding_key, embedding_value = model.mem_compress(embedding_key, embedding_value, second.key, new_value)
        memory_key = torch.stack([embedding_key, second.key, first.key], dim=2)  # [B, Ck, 3, h, w]
        memory_value = torch.stack([embedding_value, new_value, first_value], dim=3)  # [B, O, Cv, 3, h, w]
        out = model.segment(model.encode_key(frames[:, 2]), memory_key, memory_value)
    assert embedding_key.shape == first.key.shape and embedding_value.shape == (1, 2, 64, 3, 4)
    assert out.probs.shape == (1, 3, 40, 56)
