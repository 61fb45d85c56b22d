"""The `stcn` and `rde` presets against the published inference loops, written out.

The loops below follow the published code's semantics (STCN: `eval_davis.py`,
`inference_core.py`, `inference_memory_bank.py`, `model/aggregate.py`,
`util/tensor_util.py`; RDE-VOS: its `inference_core.py`, `inference_memory_bank.py` in
mode "two-frames-compress", and `MemCrompress`), in plain torch on the network's own
modules (key encoder, projections, value encoder, decoder, compressor weights) and none of
remn's engine calls: their own padding, memory bank, top-k softmax, decoding, soft
aggregation, memory schedule, compression (the non-local pooling included) and crop.

Each convention the published loops fix is switchable (`band`, `ties`, `ceil_pool`), and
the videos are built so that each one changes the result: sizes that are not multiples
of 16 (a padding band the decoder predicts), odd key-map sides (the SAM's floor pooling),
and a still opening stretch (memory frames whose keys equal the annotated frame's with
different values, so logits tie at the k-th place). The tests check that remn equals the
faithful loop and that every wrong convention would have been seen.

Ties: the published `softmax_w_top` keeps exactly k keys with `torch.topk`, whose choice
among equal logits is not specified; the loops here take tied keys in key order (a stable
sort), the rule remn documents. Equal keys must also get equal logits: the published
`mk.pow(2).sum(1)` can round |k|² of equal keys differently by their position on a CPU,
so the loops reduce each key on its own, as remn does. The published softmax over the k values omits the max
shift; the loops subtract it (the same value, without underflow at random weights).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import remn
from remn.data.synthetic import make_clip
from remn.inference import Segmenter, resolve_inference_config
from remn.model import REMN
from remn.model.network import IMAGENET_MEAN, IMAGENET_STD

from test_rde import functional_sam

pytestmark = pytest.mark.usefixtures("one_thread")

# (H, W): padded to 80 × 96 (key map 5 × 6), 64 × 112 (4 × 7), and 64 × 80 (4 × 5, no band).
SIZES = [(72, 88), (56, 100), (64, 80)]
STILL_FRAMES = 11  # frames 0, 5, 10 (STCN's memory) and 0, 3, 6, 9 (RDE's) are the same image
MOVING_FRAMES = 7


# ----------------------------------------------------------------------------- the published loop
def pad_to_16(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """STCN's `pad_divide_by(x, 16)`: zero padding (left, right, top, bottom), the odd pixel last."""
    height, width = x.shape[-2:]
    extra_h, extra_w = -height % 16, -width % 16
    pad = (extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2)
    return F.pad(x, pad), pad


def unpad(x: torch.Tensor, pad) -> torch.Tensor:
    left, right, top, bottom = pad
    return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]


def aggregate(object_probs: torch.Tensor) -> torch.Tensor:
    """STCN's `aggregate(prob, keep_bg=True)`: [K, 1, H, W] → [K+1, 1, H, W]."""
    probs = torch.cat([torch.prod(1 - object_probs, dim=0, keepdim=True), object_probs], 0).clamp(1e-7, 1 - 1e-7)
    return torch.softmax(torch.log(probs / (1 - probs)), dim=0)


def softmax_over_top_k(affinity: torch.Tensor, top_k: int, ties: str) -> torch.Tensor:
    """`softmax_w_top`: affinity [1, M, N] → weights [1, M, N] on exactly k keys per query
    (ties="exact", tied keys in key order) or, the convention remn had, on every key ≥ the
    k-th logit (ties="at_least_kth")."""
    if ties == "at_least_kth":
        kth = affinity.topk(top_k, dim=1).values[:, -1:]
        return torch.softmax(affinity.masked_fill(affinity < kth, -math.inf), dim=1)
    indices = torch.sort(affinity, dim=1, descending=True, stable=True).indices[:, :top_k]  # [1, k, N]
    values = affinity.gather(1, indices)
    return torch.zeros_like(affinity).scatter_(1, indices, torch.softmax(values, dim=1))


def published_compress(compressor, key, value, ceil_pool):
    """`MemCrompress.forward`: key [1, Ck, 2, h, w], value [K, Cv, 2, h, w] (embedding first)
    → ([1, Ck, 1, h, w], [K, Cv, 1, h, w]); the SAM written out, pooling floored as published."""
    new_key = F.conv3d(functional_sam(compressor.key_encoder, key, ceil_pool), compressor.compress_key.weight,
                       compressor.compress_key.bias, padding=(0, 1, 1))
    new_value = F.conv3d(functional_sam(compressor.value_encoder, value, ceil_pool),
                         compressor.compress_value.weight, compressor.compress_value.bias, padding=(0, 1, 1))
    return new_key, new_value


def published_loop(model, frames, first_labels, num_objects, *, memory, top_k, mem_every,
                   band="predicted", ties="exact", ceil_pool=False):
    """The published DAVIS loop on one video: frames uint8 [T, H, W, 3], first_labels [H, W]
    ids 1..K → probabilities [T, K+1, H, W] at the frame size.

    memory: "stcn" (the annotated frame and every mem_every-th, concatenated) or "rde"
    ("two-frames-compress": [embedding, last] + the annotated frame twice).
    band: "predicted" (published: memory encodes the padded-size prediction) or "zero"
    (crop, then zero-pad again). ties, ceil_pool: see softmax_over_top_k, published_compress.
    """
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    images = (torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255 - mean) / std
    images, pad = pad_to_16(images)  # [T, 3, Hp, Wp]
    num_frames = len(frames)

    def encode_key(t):
        f16, f8, f4 = model.key_encoder(images[t:t + 1])
        return model.key_proj(f16), model.key_comp(f16), f16, f8, f4

    def encode_value(t, f16, object_probs):  # object_probs [K, 1, Hp, Wp]
        if band == "zero":
            object_probs = pad_to_16(unpad(object_probs, pad))[0]
        others = torch.stack([object_probs[[j for j in range(num_objects) if j != i]].sum(0)
                              for i in range(num_objects)]) if num_objects > 1 else torch.zeros_like(object_probs)
        value = model.value_encoder(images[t:t + 1].expand(num_objects, -1, -1, -1),
                                    f16.expand(num_objects, -1, -1, -1), object_probs, others)
        return value.unsqueeze(2)  # [K, Cv, 1, h, w]

    one_hot = torch.stack([torch.from_numpy(first_labels == i) for i in range(1, num_objects + 1)])[:, None].float()
    probs = [aggregate(pad_to_16(one_hot)[0])]  # [K+1, 1, Hp, Wp]
    key, _, f16, _, _ = encode_key(0)
    first = (key.unsqueeze(2), encode_value(0, f16, probs[0][1:]))  # [1, Ck, 1, h, w], [K, Cv, 1, h, w]
    bank = [first]  # stcn: every memory frame; rde: [embedding] then [embedding, last]
    for t in range(1, num_frames):
        key, key_comp, f16, f8, f4 = encode_key(t)
        # rde: [embedding, annotated] (the embedding is the annotated frame until a frame is
        # compressed into it), then [embedding, last, annotated, annotated]
        read = bank if memory == "stcn" else (bank + [first, first] if len(bank) == 2 else [first, first])
        memory_key = torch.cat([k for k, _ in read], dim=2).flatten(2)  # [1, Ck, T·h·w]
        memory_value = torch.cat([v for _, v in read], dim=2).flatten(2)  # [K, Cv, T·h·w]
        query = key.flatten(2)  # [1, Ck, h·w]
        # |k|² key by key, so that equal keys tie exactly (see the module docstring)
        key_sq = torch.stack([k.pow(2).sum() for k in memory_key[0].unbind(1)])[None, :, None]  # [1, T·h·w, 1]
        affinity = 2 * memory_key.transpose(1, 2) @ query - key_sq
        affinity = affinity / math.sqrt(memory_key.shape[1])  # [1, T·h·w, h·w]
        weights = softmax_over_top_k(affinity, top_k, ties)
        readout = torch.bmm(memory_value, weights.expand(num_objects, -1, -1)).view(num_objects, -1, *key.shape[-2:])
        logits = model.decoder(torch.cat([readout, key_comp.expand(num_objects, -1, -1, -1)], 1),
                               f8.expand(num_objects, -1, -1, -1), f4.expand(num_objects, -1, -1, -1))
        probs.append(aggregate(torch.sigmoid(logits)))  # [K+1, 1, Hp, Wp]
        if t != num_frames - 1 and t % mem_every == 0:
            new = (key.unsqueeze(2), encode_value(t, f16, probs[-1][1:]))
            if memory == "stcn":
                bank.append(new)
            else:  # embedding ← compress([embedding, new]); last ← new
                embedding = bank[0]
                compressed = published_compress(
                    model.mem_compress, torch.cat([embedding[0], new[0]], dim=2),
                    torch.cat([embedding[1], new[1]], dim=2), ceil_pool,
                )
                bank = [compressed, new]
    return torch.stack([unpad(p[:, 0], pad) for p in probs])  # [T, K+1, H, W]


# ----------------------------------------------------------------------------- set-up
PRESETS = {
    "stcn": dict(memory="stcn", top_k=20, mem_every=5),
    "rde": dict(memory="rde", top_k=40, mem_every=3),
}


def make_model(preset: str):
    torch.manual_seed(3)
    memory = "rde" if preset == "rde" else "remn"
    model = remn.build_model(config="tiny", memory=memory, gate=False, local_attention=False, fused=False,
                             device="cpu")
    # Random weights under which the conventions matter: the value encoder's mask inputs
    # amplified (at initialisation they barely reach the values, so every object reads
    # about the same thing) and the decoder's logits spread around 0 (both classes).
    with torch.no_grad():
        model.value_encoder.conv1.weight[:, 3:] *= 30.0  # channels 3, 4: object mask, other objects
        model.decoder.pred.weight *= 10.0
        model.decoder.pred.bias.fill_(0.0)
    return model


def make_video(height: int, width: int, seed: int = 4):
    frames, masks = make_clip(seed, num_frames=MOVING_FRAMES + 1, height=height, width=width, num_objects=2)
    still = [frames[0]] * STILL_FRAMES
    return np.stack(still + list(frames[1:])), masks[0]


def run_remn(model, preset, frames, first_labels):
    config = resolve_inference_config(preset, model="rde" if preset == "rde" else "stcn", size=None)
    segmenter = Segmenter(model, config)
    results = [segmenter.step(frame, first_labels if t == 0 else None) for t, frame in enumerate(frames)]
    return torch.stack([r.probs for r in results]), torch.stack([r.labels for r in results])


def per_frame_agreement(labels, probs, published):
    """labels [T, H, W] (ids 1..K are channels 1..K), probs [T, K+1, H, W] against the
    published probabilities → (fraction of equal labels per frame [T], 99.9th percentile
    of |Δp| per frame [T])."""
    labels_equal = (labels == published.argmax(1)).flatten(1).float().mean(1)
    delta = (probs - published).abs().flatten(1)
    return labels_equal, torch.quantile(delta, 0.999, dim=1)


# ----------------------------------------------------------------------------- the tests
# The interpreter is slow: the fused path runs one size per preset, each with a band and an
# odd side (STCN: 72 × 88, key map 5 × 6; RDE: 56 × 100, key map 4 × 7).
CASES = [("reference", preset, size) for preset in ("stcn", "rde") for size in SIZES]
CASES += [("triton", "stcn", (72, 88)), ("triton", "rde", (56, 100))]


@pytest.mark.parametrize("path, preset, size", CASES, ids=lambda c: c if isinstance(c, str) else f"{c[0]}x{c[1]}")
def test_preset_equals_the_published_loop(path, preset, size, monkeypatch):
    """Per frame: labels equal on ≥ 99.9 % of pixels, 99.9th percentile of |Δp| ≤ 1e-3, on
    the reference path and on the fused kernels (the Triton interpreter without CUDA, where
    the model's automatic dispatch would take the reference: the kernels are forced)."""
    model = make_model(preset)
    if path == "triton":
        monkeypatch.setattr(REMN, "backend", property(lambda self: "triton"))
    frames, first_labels = make_video(*size)
    with torch.inference_mode():
        published = published_loop(model, frames, first_labels, 2, **PRESETS[preset])
        probs, labels = run_remn(model, preset, frames, first_labels)
    assert probs.shape == published.shape
    labels_equal, delta = per_frame_agreement(labels, probs, published)
    assert (labels_equal >= 0.999).all(), f"labels per frame: {labels_equal.tolist()}"
    assert (delta <= 1e-3).all(), f"99.9th percentile |Δp| per frame: {delta.tolist()}"
    assert 0.05 < (labels > 0).float().mean() < 0.95, "the weights must predict both background and objects"


CONVENTIONS = [
    ("stcn", (72, 88), dict(band="zero")),
    ("stcn", (64, 80), dict(ties="at_least_kth")),
    ("rde", (72, 88), dict(band="zero")),
    ("rde", (64, 80), dict(ties="at_least_kth")),
    ("rde", (64, 80), dict(ceil_pool=True)),  # key map 4 × 5: an odd last column
]


@pytest.mark.parametrize("preset, size, convention", CONVENTIONS, ids=lambda c: str(c))
def test_each_published_convention_changes_these_videos(preset, size, convention):
    """The other convention moves labels and probabilities past the tolerances above, so
    the equality test would see remn taking it."""
    model = make_model(preset)
    frames, first_labels = make_video(*size)
    with torch.inference_mode():
        published = published_loop(model, frames, first_labels, 2, **PRESETS[preset])
        other = published_loop(model, frames, first_labels, 2, **PRESETS[preset], **convention)
    labels_equal, delta = per_frame_agreement(other.argmax(1), other, published)
    assert delta.max() > 1e-3, f"99.9th percentile |Δp| per frame: {delta.tolist()}"
    assert labels_equal.min() < 0.999, f"labels per frame: {labels_equal.tolist()}"
