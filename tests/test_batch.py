"""BatchSegmenter: several videos stepped at once, each equal to its one-at-a-time run."""
import numpy as np
import pytest
import torch

import remn
from remn.data.synthetic import make_clip
from remn.inference import Segmenter, resolve_inference_config
from remn.inference.batch import BatchSegmenter, FrameInput, VideoStepError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return remn.build_model(config="tiny", fused=False, device="cpu")


def video(seed, frames, objects, size=(40, 56), late=None):
    """(frames, {frame: mask}): objects 1..objects; `late` = (id, frame) enters at that frame."""
    clip, masks = make_clip(seed, num_frames=frames, height=size[0], width=size[1], num_objects=objects)
    if late is None:
        return clip, {0: masks[0]}
    late_id, at = late
    return clip, {0: np.where(masks[0] == late_id, 0, masks[0]), at: np.where(masks[at] == late_id, late_id, 0)}


def assert_same_result(mine, theirs):
    """Probabilities within 1e-5, and the same labels: a batched convolution sums in another
    order, so where the one-at-a-time run's best channels tie to within 2e-5 (the untrained
    model saturates objects to equal clamped values) either of the tied ids may win."""
    assert mine.index == theirs.index and mine.object_ids == theirs.object_ids
    torch.testing.assert_close(mine.probs, theirs.probs, rtol=0, atol=1e-5)
    ids = torch.tensor((0,) + theirs.object_ids)
    channel = (mine.labels[None] == ids[:, None, None]).int().argmax(dim=0)  # [H, W] channel of mine's label
    chosen = theirs.probs.gather(0, channel[None])[0]  # [H, W]: its probability in the one-at-a-time run
    tied = chosen >= theirs.probs.max(dim=0).values - 2e-5  # mine's label is one of theirs' best
    assert tied.all(), f"frame {mine.index}: a label that is not among the best channels"
    clear = (theirs.probs >= theirs.probs.max(dim=0, keepdim=True).values - 2e-5).sum(0) == 1  # [H, W] no near-tie
    assert torch.equal(mine.labels[clear], theirs.labels[clear]), f"frame {mine.index}: labels differ off ties"


def alone(model, config, clip, annotations):
    segmenter = Segmenter(model, config)
    results = [segmenter.step(frame, annotations.get(t)) for t, frame in enumerate(clip)]
    return results, segmenter.report()


# Videos: different lengths, numbers of objects, an object entering mid-video (a second
# group with its own, shorter memory), one of another size (its own encode batch).
VIDEOS = {
    "a": dict(seed=1, frames=7, objects=1),
    "b": dict(seed=2, frames=4, objects=2),
    "c": dict(seed=3, frames=6, objects=3, late=(3, 2)),
    "d": dict(seed=4, frames=5, objects=2, size=(32, 48)),
    "e": dict(seed=5, frames=4, objects=1),  # joins when b finishes
}


@pytest.fixture(scope="module")
def rde_model():
    torch.manual_seed(0)
    return remn.build_model(config="tiny", memory="rde", gate=False, local_attention=False, fused=False, device="cpu")


@pytest.mark.parametrize("preset, overrides", [
    ("tiny", dict(change_threshold=0.02, max_gap=2)),  # adaptive: memories of different lengths
    ("tiny", dict(capacity=3, change_threshold=0.0)),  # evictions at capacity
    ("rde", dict(mem_every=2)),  # RDE's slots: reads with a key bias of their own
])
def test_each_video_equals_its_one_at_a_time_run(model, rde_model, preset, overrides):
    config = resolve_inference_config(preset, size=None, top_k=5, **overrides)
    model = rde_model if preset == "rde" else model
    data = {name: video(**spec) for name, spec in VIDEOS.items()}
    expected = {name: alone(model, config, *data[name]) for name in data}

    calls = []
    batch = BatchSegmenter(model, config)
    segment = batch.model.segment  # the model the batch runs (on a CPU the Segmenter's prepared copy)

    def counting_segment(features, memory_key, *args, **kwargs):
        calls.append((features.batch, memory_key.shape[2]))
        return segment(features, memory_key, *args, **kwargs)

    encodes = []
    encode_value = batch.model.encode_value

    def counting_encode_value(features, masks):
        encodes.append(masks.shape[0])
        return encode_value(features, masks)

    for name in "abcd":
        batch.add(name)
    position = {name: 0 for name in data}
    got = {name: [] for name in data}
    reports = {}
    batch.model.segment, batch.model.encode_value = counting_segment, counting_encode_value
    try:
        while batch.videos:
            inputs = {}
            for name in batch.videos:
                clip, annotations = data[name]
                t = position[name]
                inputs[name] = FrameInput(clip[t], annotations.get(t))
            for name, result in batch.step(inputs).items():
                got[name].append(result)
                position[name] += 1
                if position[name] == len(data[name][0]):
                    reports[name] = batch.remove(name)
                    if name == "b":
                        batch.add("e")  # joins while a, c and d go on
    finally:
        del batch.model.segment, batch.model.encode_value
    assert any(b > 1 for b, _ in calls), "no batched read happened"
    assert any(b > 1 for b in encodes), "no memory frames were encoded together"
    for name, (want, want_report) in expected.items():
        assert len(got[name]) == len(want)
        for mine, theirs in zip(got[name], want):
            assert_same_result(mine, theirs)
            assert mine.memorised == theirs.memorised
        mine_report = reports[name]
        assert (mine_report.frames, mine_report.memorised, mine_report.evicted, mine_report.memory_frames) == (
            want_report.frames, want_report.memorised, want_report.evicted, want_report.memory_frames)


def test_memories_of_different_lengths_share_one_read(model):
    """Two same-size videos whose banks differ in length are read by one model.segment call
    with the shorter padded by a −inf bias; each still equals its run alone."""
    config = resolve_inference_config("tiny", size=None, update="every", mem_every=1)
    long_clip, long_masks = video(6, 5, 2)
    short_clip, short_masks = video(7, 3, 1)
    expected_long, _ = alone(model, config, long_clip, long_masks)
    expected_short, _ = alone(model, config, short_clip, short_masks)
    batch = BatchSegmenter(model, config)
    batch.add("long")
    results = [batch.step({"long": FrameInput(long_clip[0], long_masks[0])})["long"]]
    batch.add("short")  # joins two frames behind: its memory stays two frames shorter
    results.append(batch.step({"long": FrameInput(long_clip[1])})["long"])
    lengths = []
    segment = batch.model.segment
    batch.model.segment = lambda features, key, *a, **k: lengths.append((features.batch, key.shape[2])) or segment(features, key, *a, **k)
    try:
        short_results = []
        for t in range(3):
            out = batch.step({"long": FrameInput(long_clip[2 + t]), "short": FrameInput(short_clip[t], short_masks.get(t))})
            results.append(out["long"])
            short_results.append(out["short"])
    finally:
        del batch.model.segment
    assert lengths == [(1, 2), (2, 3), (2, 4)]  # the short video's first frame does not read; then T = 1 and 2 padded
    for mine, theirs in zip(results + short_results, expected_long + expected_short):
        assert_same_result(mine, theirs)


def test_bad_input_names_the_video_and_changes_nothing(model):
    config = resolve_inference_config("tiny", size=None)
    clip_a, masks_a = video(8, 3, 1)
    clip_b, masks_b = video(9, 3, 2)
    expected_a, _ = alone(model, config, clip_a, masks_a)
    batch = BatchSegmenter(model, config)
    batch.add("a")
    batch.add("b")
    first = batch.step({"a": FrameInput(clip_a[0], masks_a[0]), "b": FrameInput(clip_b[0], masks_b[0])})
    with pytest.raises(VideoStepError, match="video 'b'.*frame 1 is") as caught:
        batch.step({"a": FrameInput(clip_a[1]), "b": FrameInput(clip_b[1][:-2])})
    assert caught.value.name == "b"
    with pytest.raises(KeyError, match="not in the batch"):
        batch.step({"z": FrameInput(clip_a[1])})
    with pytest.raises(ValueError, match="already in the batch"):
        batch.add("a")
    batch.remove("b")
    rest = [batch.step({"a": FrameInput(frame)})["a"] for frame in clip_a[1:]]
    for mine, theirs in zip([first["a"]] + rest, expected_a):
        assert_same_result(mine, theirs)
