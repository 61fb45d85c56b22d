"""REMN's three ideas, seen through a model for which each of them changes the output.

An untrained REMN is neutral on purpose (the local branch multiplies the global read by 1
and adds 0; the gate scores every frame the same), so these tests set weights by hand: a
local branch that re-weights and adds, and a gate whose score differs from frame to frame.
Each test names the mutation it catches.
"""
import numpy as np
import pytest
import torch

import remn
from remn import reference
from remn.data.synthetic import make_clip
from remn.inference import Segmenter, resolve_inference_config
from remn.inference.memory import make_memory_manager
from remn.inference.objects import ObjectManager
from remn.model.masks import soft_aggregate

HEIGHT, WIDTH = 48, 64

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    """The tiny model with an active local branch and a discriminating gate."""
    torch.manual_seed(3)
    model = remn.build_model(config="tiny", fused=False, device="cpu")
    with torch.no_grad():
        branch = model.local_branch
        branch.modulation.weight.normal_(0, 0.5)
        branch.out_proj.weight.normal_(0, 0.2)
        branch.foreground_bias.fill_(2.0)
        last = model.gate.mlp[2]
        last.weight.normal_(0, 1.0)
        last.bias.fill_(0.0)
    return model


@pytest.fixture(scope="module")
def clip():
    return make_clip(21, num_frames=10, height=HEIGHT, width=WIDTH, num_objects=2, twins=1)


def image(frame: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255  # [1, 3, H, W]


def one_hot(labels: np.ndarray, ids=(1, 2)) -> torch.Tensor:
    return torch.stack([torch.from_numpy(labels == i) for i in ids])[None].float()  # [1, O, H, W]


def config(**overrides):
    return resolve_inference_config("tiny", size=None, **overrides)


# ----------------------------------------------------------------------------- local attention
def test_local_branch_reads_the_previous_mask(model, clip):
    """Mutation caught: the branch ignoring the previous mask (or the model not calling it)."""
    frames, masks = clip
    with torch.inference_mode():
        first, query = model.encode_key(image(frames[0])), model.encode_key(image(frames[1]))
        keys, values = first.key[:, :, None], model.encode_value(first, one_hot(masks[0]))[:, :, :, None]
        with_mask = model.segment(query, keys, values, previous=(first, one_hot(masks[0])))
        moved = one_hot(np.roll(masks[0], 16, axis=1))  # the same objects somewhere else
        with_moved_mask = model.segment(query, keys, values, previous=(first, moved))
        without = model.segment(query, keys, values)
    assert (with_mask.probs - with_moved_mask.probs).abs().max() > 1e-4  # ignoring the mask gives exactly 0
    assert (with_mask.probs - without.probs).abs().max() > 1e-4


def test_local_branch_reweights_the_global_read_where_the_previous_mask_is(model, clip):
    """The combined readout is global · 2σ(w·local + b) + P(local); zero weights give the global read."""
    frames, masks = clip
    branch = model.local_branch
    with torch.inference_mode():
        previous, query = model.encode_key(image(frames[0])), model.encode_key(image(frames[1]))
        global_readout = torch.randn(1, 2, model.config.value_dim, *query.key.shape[-2:])
        padded = torch.nn.functional.pad(one_hot(masks[0]), previous.padding)
        combined = branch(global_readout, query.key, previous.key, previous.key_comp, padded)
        saved = [p.clone() for p in (branch.modulation.weight, branch.out_proj.weight)]
        branch.modulation.weight.zero_()
        branch.out_proj.weight.zero_()
        neutral = branch(global_readout, query.key, previous.key, previous.key_comp, padded)
        branch.modulation.weight.copy_(saved[0])
        branch.out_proj.weight.copy_(saved[1])
    torch.testing.assert_close(neutral, global_readout)
    assert (combined - global_readout).abs().max() > 1e-2


def test_segmenter_gives_the_local_branch_the_previous_frame(model, clip):
    """Mutation caught: the core passing no previous frame, or the current frame, or stale
    probabilities. A written-out loop (every frame in memory, no gate) with previous = the
    frame before and its padded probabilities must match the Segmenter's output."""
    frames, masks = clip
    segmenter = Segmenter(model, config(update="every", mem_every=1, capacity=None, gate=False,
                                      precision="fp32"))  # the loop below is the fp32 model
    results = [segmenter.step(frame, masks[0] if t == 0 else None) for t, frame in enumerate(frames[:5])]
    with torch.inference_mode():
        features = model.encode_key(image(frames[0]))
        object_probs = torch.nn.functional.pad(torch.softmax(
            remn.model.soft_aggregate(one_hot(masks[0])), dim=1)[:, 1:], features.padding)  # [1, O, Hp, Wp]
        keys, values = [features.key], [model.encode_value(features, object_probs)]
        for t in range(1, 5):
            query = model.encode_key(image(frames[t]))
            out = model.segment(query, torch.stack(keys, 2), torch.stack(values, 3), previous=(features, object_probs),
                                top_k=20, gate=False)
            torch.testing.assert_close(results[t].probs, out.probs[0], atol=1e-5, rtol=1e-5)
            features, object_probs = query, out.padded_probs[:, 1:]
            keys.append(features.key)
            values.append(model.encode_value(features, object_probs))


# ----------------------------------------------------------------------------- the gate
def test_gate_scores_bias_the_frames_they_score(model, clip):
    """Mutation caught: scores applied to the wrong memory slots (any permutation). Each
    frame's score depends on that frame's key alone, so scoring frames one at a time gives
    the truth for each slot."""
    frames, masks = clip
    with torch.inference_mode():
        encoded = [model.encode_key(image(f)) for f in frames[:5]]
        # [1, Ck, 4, h, w]; scaled apart, so that the gate scores the four frames differently
        keys = torch.stack([e.key * (0.5 + m) for m, e in enumerate(encoded[:4])], dim=2)
        values = torch.stack([model.encode_value(e, one_hot(masks[t])) for t, e in enumerate(encoded[:4])], dim=3)
        query = encoded[4]
        log_scores = model.gate_log_scores(query, keys)[0]  # [4]
        one_by_one = torch.stack([model.gate_log_scores(query, keys[:, :, [m]])[0, 0] for m in range(4)])
        out = model.segment(query, keys, values)
        bias = one_by_one.repeat_interleave(keys.shape[-2] * keys.shape[-1])[None]  # [1, T·h·w]
        readout = reference.memory_read(query.key.flatten(2), keys.flatten(2), values.flatten(3), bias)
        expected = model.decode(query, readout.view(1, 2, -1, *query.key.shape[-2:]))
    assert one_by_one.max() - one_by_one.min() > 0.1  # the scores differ: a permutation would show
    torch.testing.assert_close(log_scores, one_by_one)
    torch.testing.assert_close(out.padded_logits[:, 1:], expected, atol=1e-4, rtol=1e-4)


def test_bank_keeps_each_slots_own_score_and_drops_the_lowest(model, clip):
    """Mutations caught: EMAs folded into the wrong slots; evicting or dropping any frame but
    the lowest-scored unprotected one(s). Every removal is recorded with the scores then."""
    frames, masks = clip
    segmenter = Segmenter(model, config(capacity=4, change_threshold=0.0, gate_threshold=0.3, gate_momentum=0.5,
                                        drop_unused=False))
    bank_removals = []
    segmenter.step(frames[0], masks[0])
    bank = segmenter.memory.bank
    remove = bank.remove

    def recording_remove(slots):
        if slots:
            bank_removals.append((list(slots), list(bank.scores), list(bank.protected)))
        remove(slots)

    bank.remove = recording_remove
    for t in range(1, len(frames)):
        segmenter.step(frames[t])
    report = segmenter.report()
    assert report.gate_dropped + report.evicted > 0
    for slots, scores, protected in bank_removals:
        kept = [s for s in range(len(scores)) if s not in slots and not protected[s] and scores[s] is not None]
        removed = [scores[s] for s in slots]
        assert all(not protected[s] for s in slots)
        if kept and all(r is not None for r in removed):
            assert max(removed) <= min(scores[s] for s in kept)


def test_gate_drops_as_many_frames_as_it_predicts_unused(model):
    """⌊T − Σ scores⌋ frames go, the lowest-scored unprotected ones; protected frames stay."""
    memory = make_memory_manager(model, config(capacity=None, gate_threshold=0.0).memory)
    bank = memory.bank
    bank.add_group()
    for frame in range(6):
        bank.append(torch.full((1, 16, 2, 2), float(frame)), [torch.zeros(1, 1, 64, 2, 2)], frame, protected=frame == 0)
    bank.scores = [0.1, 0.9, 0.3, 0.95, 0.6, 0.85]  # Σ = 3.7 of T = 6: ⌊2.3⌋ = 2 unused
    memory._drop_by_gate()
    assert bank.frames == [0, 1, 3, 5]  # frames 2 (0.3) and 4 (0.6) go; frame 0 scores lowest but is protected
    assert torch.equal(bank.keys[0, 0, :4, 0, 0], torch.tensor([0.0, 1.0, 3.0, 5.0]))
    memory._drop_by_gate()  # Σ = 2.8 of 4: ⌊1.2⌋ = 1 more, the lowest unprotected (frame 5, 0.85)
    assert bank.frames == [0, 1, 3] and memory.stats.gate_dropped == 3
    kept = make_memory_manager(model, config(capacity=None, gate_threshold=0.0, drop_unused=False).memory)
    kept.bank.add_group()
    kept.bank.append(torch.zeros(1, 16, 2, 2), [torch.zeros(1, 1, 64, 2, 2)], 0, protected=False)
    kept.bank.scores = [0.2]
    kept._drop_by_gate()
    assert kept.bank.frames == [0]


def test_bank_scores_start_at_the_first_read_of_each_slot(model, clip):
    frames, masks = clip
    segmenter = Segmenter(model, config(capacity=None, change_threshold=0.0, gate_threshold=0.0, drop_unused=False))
    seen = []
    network = segmenter.model  # the model the Segmenter runs (on a CPU, its prepared copy)
    real_segment = network.segment

    def segment(*args, **kwargs):
        out = real_segment(*args, **kwargs)
        seen.append(out.gate_log_scores[0].exp().tolist())
        return out

    network.segment = segment
    try:
        for t, frame in enumerate(frames[:4]):
            segmenter.step(frame, masks[0] if t == 0 else None)
        segmenter.report()
    finally:
        del network.segment
    momentum = segmenter.config.memory.gate_momentum
    # slot 0 read 3 times, slot 1 twice, slot 2 once: EMA of each slot's own scores
    assert len(seen) == 3 and [len(read) for read in seen] == [1, 2, 3], seen
    for slot, score in enumerate(segmenter.memory.bank.scores):
        own = [read[slot] for read in seen if len(read) > slot]
        ema = own[0]
        for value in own[1:]:
            ema = momentum * ema + (1 - momentum) * value
        assert score == pytest.approx(ema, rel=1e-5)


# ----------------------------------------------------------------------------- adaptive update
def test_still_stretch_is_not_memorised_but_an_appearance_change_is(model):
    """Mutations caught: memorising frames of a still stretch (beyond one per max_gap);
    missing a sudden appearance change that leaves the masks alone. The policy is driven
    with the true masks, so what it sees is the video, not an untrained model's guesses."""
    frames, masks = make_clip(4, num_frames=30, height=HEIGHT, width=WIDTH, num_objects=2, distractors=0,
                              still=((2, 30),), appearance_changes=(16,))
    settings = config(max_gap=8, appearance_threshold=0.005).memory
    memory = make_memory_manager(model, settings)
    chosen, last = [], None
    with torch.inference_mode():
        for t, frame in enumerate(frames):
            features = model.encode_key(image(frame))
            if last is not None:
                memory.settle()
                if last[0].get():
                    memory.write(t - 1, last[1].key, model.encode_value(last[1], last[2][:, 1:]))
                    chosen.append(t - 1)
            if t == 0:
                memory.add_group(ObjectManager().add_group((1, 2), 0))
            probs = torch.nn.functional.pad(torch.softmax(soft_aggregate(one_hot(masks[t])), dim=1), features.padding)
            last = (memory.decide(t, features, probs, annotated=t == 0), features, probs)
    assert chosen[0] == 0 and 16 in chosen  # the change, with unchanged masks
    # frame 1 moved (the stretch starts at 2); from then on only max_gap (1 + 8 = 9, 16 + 8 = 24) and the change
    assert chosen == [0, 1, 9, 16, 24]
    assert memory.stats.skipped == len(frames) - 1 - len(chosen)  # every frame decided; the last is never written
