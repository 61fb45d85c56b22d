"""The REMN network on CPU: shapes through the step API, neutral additions, gradients, bad input."""
import math

import pytest
import torch

import remn
from remn.model import labels_to_masks, probs_to_labels, soft_aggregate


def two_object_clip(num_frames=3, height=50, width=70):
    frames = torch.rand(1, num_frames, 3, height, width)
    masks = torch.zeros(1, 2, height, width)
    masks[0, 0, 8:20, 10:30] = 1
    masks[0, 1, 30:44, 40:60] = 1
    return frames, masks


def test_build_model_fused_segments_two_object_clip_on_cpu():
    model = remn.build_model(fused=True, device="cpu")  # on the CPU the reference path runs
    frames, masks = two_object_clip(num_frames=3, height=48, width=80)
    with torch.no_grad():
        out = model(frames, masks)
    assert out.probs.shape == (1, 2, 3, 48, 80)
    assert out.logits.shape == (1, 2, 3, 48, 80)
    torch.testing.assert_close(out.probs.sum(dim=2), torch.ones(1, 2, 48, 80))
    assert len(out.gate_log_scores) == 2 and out.gate_log_scores[1].shape == (1, 2)


@pytest.mark.parametrize("size", [(16, 16), (33, 47), (50, 70)])
def test_step_api_shapes_and_padding(size):
    model = remn.build_model(config="tiny", device="cpu")
    frames, masks = two_object_clip(num_frames=2, height=size[0], width=size[1])
    with torch.no_grad():
        first = model.encode_key(frames[:, 0])
        padded_h, padded_w = (math.ceil(s / 16) for s in size)
        assert first.key.shape == (1, 16, padded_h, padded_w)
        values = model.encode_value(first, masks)
        assert values.shape == (1, 2, 64, padded_h, padded_w)
        query = model.encode_key(frames[:, 1])
        out = model.segment(query, first.key[:, :, None], values[:, :, :, None], previous=(first, masks))
    assert out.probs.shape == (1, 3, *size)
    labels = probs_to_labels(out.probs, [3, 7])
    assert set(labels.unique().tolist()) <= {0, 3, 7}


def test_probs_to_labels_take_the_first_maximal_channel_as_argmax_does():
    """Ties go to the lower channel and NaN wins, as `argmax` decides; batched leading dims too."""
    probs = torch.rand(2, 4, 9, 11)  # [B, O+1, H, W]
    probs[:, 2] = probs[:, 1]  # exact ties between objects 1 and 2
    probs[0, 0, 3, 4] = 2.0  # background strictly highest
    probs[1, :, 5, 6] = 0.25  # a four-way tie: background wins
    probs[1, 3, 0, 0] = float("nan")  # NaN counts as the maximum
    ids = torch.tensor([3, 7, 9])
    want = torch.tensor([0, 3, 7, 9])[probs.argmax(dim=-3)]  # [B, H, W]
    assert torch.equal(probs_to_labels(probs, ids), want)
    assert probs_to_labels(probs, [3, 7, 9])[1, 0, 0] == 9 and probs_to_labels(probs, ids)[1, 5, 6] == 0


def test_additions_start_neutral():
    """REMN's gate and local branch, untrained, change nothing: STCN's core alone gives the same output."""
    full = remn.build_model(config="tiny", device="cpu")
    core = remn.build_model(config="tiny", gate=False, local_attention=False, device="cpu")
    core.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith(("gate.", "local_branch."))})
    frames, masks = two_object_clip(num_frames=4)
    with torch.no_grad():
        torch.testing.assert_close(full(frames, masks).probs, core(frames, masks).probs, rtol=1e-5, atol=1e-6)


def test_memory_bias_excludes_frames():
    model = remn.build_model(config="tiny", device="cpu")
    frames, masks = two_object_clip(num_frames=3)
    with torch.no_grad():
        feats = [model.encode_key(frames[:, t]) for t in range(3)]
        values = [model.encode_value(feats[t], masks) for t in range(2)]
        keys = torch.stack([f.key for f in feats[:2]], dim=2)
        both = torch.stack(values, dim=3)
        excluded = model.segment(feats[2], keys, both, memory_bias=torch.tensor([[0.0, -math.inf]]))
        alone = model.segment(feats[2], keys[:, :, :1], both[:, :, :, :1])
    torch.testing.assert_close(excluded.probs, alone.probs, rtol=1e-5, atol=1e-6)


def test_gradients_flow_into_gate_and_local_branch():
    model = remn.build_model(config="tiny", device="cpu").train()
    frames, masks = two_object_clip(num_frames=3)
    out = model(frames, masks)
    target = torch.zeros(1, 2, 50, 70, dtype=torch.long)
    loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), target.flatten(0, 1))
    loss.backward()
    gate_grad = model.gate.mlp[2].weight.grad
    assert gate_grad is not None and gate_grad.abs().sum() > 0
    assert model.local_branch.out_proj.weight.grad.abs().sum() > 0
    assert model.key_encoder.conv1.weight.grad.abs().sum() > 0


def test_object_valid_zeroes_padding_objects():
    model = remn.build_model(config="tiny", device="cpu")
    frames, masks = two_object_clip(num_frames=2)
    with torch.no_grad():
        out = model(frames, masks, object_valid=torch.tensor([[True, False]]))
    assert out.probs[:, :, 2].max() < 1e-5


def test_soft_aggregate_matches_stcn_formula():
    probs = torch.rand(2, 3, 4, 5)
    logits = soft_aggregate(probs)
    background = torch.prod(1 - probs, dim=1, keepdim=True)
    expected = torch.cat([background, probs], 1).clamp(1e-7, 1 - 1e-7)
    torch.testing.assert_close(torch.sigmoid(logits), expected)


def test_labels_to_masks_and_unknown_ids():
    labels = torch.tensor([[0, 3], [7, 3]])
    masks = labels_to_masks(labels, [3, 7])
    assert masks.shape == (2, 2, 2) and masks[0].sum() == 2 and masks[1, 1, 0] == 1
    with pytest.raises(ValueError, match=r"ids \[5\] that were never given"):
        labels_to_masks(torch.tensor([[5, 3]]), [3])
    with pytest.raises(TypeError, match="integer"):
        labels_to_masks(torch.zeros(2, 2), [1])


def test_bad_inputs_get_clear_errors():
    model = remn.build_model(config="tiny", device="cpu")
    with pytest.raises(TypeError, match="float RGB"):
        model.encode_key(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model.encode_key(torch.rand(3, 32, 32))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model.encode_key([[0.0]])
    feats = model.encode_key(torch.rand(1, 3, 32, 40))
    with pytest.raises(ValueError, match="differs from the frame size"):
        model.encode_value(feats, torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, O, H, W\]"):
        model.encode_value(feats, torch.zeros(1, 32, 40))
    values = model.encode_value(feats, torch.zeros(1, 1, 32, 40))
    with pytest.raises(ValueError, match="memory_key must be"):
        model.segment(feats, feats.key, values[:, :, :, None])
    with pytest.raises(ValueError, match="memory_value must be"):
        model.segment(feats, feats.key[:, :, None], values)
    with pytest.raises(ValueError, match="at least 2 frames"):
        model(torch.rand(1, 1, 3, 32, 32), torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="unknown config"):
        remn.build_model(config="xmem")
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        remn.build_model(config="tiny", radius=3)
