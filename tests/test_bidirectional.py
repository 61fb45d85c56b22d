"""Propagation both ways from annotated frames: the plan (which run wins where) and the
predictions, against the one-at-a-time engine run forward and over the reversed frames."""
import numpy as np
import pytest
import torch

import remn
from remn.data.synthetic import make_clip
from remn.inference import Segmenter, resolve_inference_config
from remn.inference.bidirectional import BACKWARD, FORWARD, BothWaysSegmenter, nearest_annotation, plan_runs
from remn.model.masks import soft_aggregate
from test_batch import assert_same_result

pytestmark = pytest.mark.usefixtures("one_thread")
# fp32: runs of different object sets are compared at 1e-5, beyond the CPU default's bf16 encoders
CONFIG = dict(size=None, change_threshold=0.02, max_gap=2, precision="fp32")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return remn.build_model(config="tiny", fused=False, device="cpu")


@pytest.fixture(scope="module")
def clip():
    return make_clip(31, num_frames=8, height=40, width=56, num_objects=3)


def alone(model, frames, mask):
    """The one-at-a-time engine over `frames` in the order given, `mask` on the first."""
    segmenter = Segmenter(model, resolve_inference_config("tiny", **CONFIG))
    return [segmenter.step(frame, mask if t == 0 else None) for t, frame in enumerate(frames)]


def both_ways(model, frames, annotations):
    engine = BothWaysSegmenter(model, resolve_inference_config("tiny", **CONFIG))
    predictions = list(engine.run(len(frames), lambda t: frames[t], annotations))
    assert sorted(p.index for p in predictions) == list(range(len(frames)))  # each frame once
    return {p.index: p for p in predictions}, engine


def test_plan_nearest_annotation_wins_ties_to_the_earlier():
    runs = {(r.seed, r.direction): r for r in plan_runs(10, {1: (1, 2), 5: (3,), 7: (1,)})}
    assert set(runs) == {(1, FORWARD), (1, BACKWARD), (5, FORWARD), (5, BACKWARD), (7, FORWARD), (7, BACKWARD)}
    # Object 1 is annotated on 1 and 7: frame 4 is 3 from each, the tie goes to frame 1.
    assert runs[1, FORWARD].wins == {1: (1, 2), 2: (1, 2), 3: (1, 2), 4: (1, 2), 5: (2,), 6: (2,), 7: (2,), 8: (2,), 9: (2,)}
    assert runs[7, BACKWARD].frames == (7, 6, 5) and runs[7, BACKWARD].wins == {6: (1,), 5: (1,)}
    assert runs[7, FORWARD].wins == {7: (1,), 8: (1,), 9: (1,)}
    assert runs[1, BACKWARD].frames == (1, 0) and runs[5, BACKWARD].frames == (5, 4, 3, 2, 1, 0)
    # Every (frame, object) has exactly one winner, the nearest annotation of that object.
    for t in range(10):
        winners = [(r.seed, o) for r in runs.values() for o in r.wins.get(t, ())]
        assert sorted(o for _, o in winners) == [1, 2, 3]
        assert dict((o, s) for s, o in winners)[1] == nearest_annotation(t, [1, 7])
    # The first frame annotated: the forward engine alone.
    (only,) = plan_runs(6, {0: (4,)})
    assert (only.seed, only.direction, only.frames) == (0, FORWARD, tuple(range(6)))
    # The same objects on every annotated frame: each frame is segmented by one run.
    covered = sorted(t for r in plan_runs(9, {2: (1,), 6: (1,)}) for t in r.wins)
    assert covered == list(range(9))


@pytest.mark.parametrize("frames, annotations, message", [
    (5, {5: (1,)}, "outside the video"),
    (5, {2: ()}, "must hold an object"),
    (5, {}, "at least one annotated frame"),
    (0, {0: (1,)}, "at least one frame"),
])
def test_plan_bad_input(frames, annotations, message):
    with pytest.raises(ValueError, match=message):
        plan_runs(frames, annotations)


def test_one_annotation_propagates_forward_and_backward(model, clip):
    frames, masks = clip
    mask = np.where(masks[3] == 3, 0, masks[3])  # objects 1 and 2 on frame 3
    got, engine = both_ways(model, frames, {3: mask})
    forward = alone(model, frames[3:], mask)
    backward = alone(model, frames[3::-1], mask)
    for t in range(len(frames)):
        theirs = forward[t - 3] if t >= 3 else backward[3 - t]
        assert_same_result(_as_result(got[t], theirs.index), theirs)
    assert np.array_equal(got[3].labels.numpy(), mask)  # the given mask, exactly
    assert sorted(r.frames for r in engine.reports) == [4, 5]  # two runs: 5 frames forward, 4 backward


def test_first_frame_annotation_is_the_forward_engine(model, clip):
    frames, masks = clip
    got, engine = both_ways(model, frames, {0: masks[0]})
    for t, theirs in enumerate(alone(model, frames, masks[0])):
        assert_same_result(_as_result(got[t], t), theirs)
    assert len(engine.reports) == 1


def test_several_annotations_each_seed_their_objects(model, clip):
    """Objects 1, 2 annotated on frame 1, object 3 on frame 5, object 1 again on frame 6:
    each frame takes each object from its nearest annotation's run, soft-aggregated; an
    annotated frame keeps its mask for the ids it annotates."""
    frames, masks = clip
    annotations = {1: np.where(masks[1] == 3, 0, masks[1]), 5: np.where(masks[5] == 3, 3, 0),
                   6: np.where(masks[6] == 1, 1, 0)}
    got, _ = both_ways(model, frames, annotations)
    runs = {}  # (seed, direction) → {frame: object probs by id}, from the engine run alone
    for seed, mask in annotations.items():
        for direction, order in ((FORWARD, list(range(seed, len(frames)))), (BACKWARD, list(range(seed, -1, -1)))):
            results = alone(model, [frames[t] for t in order], mask)
            runs[seed, direction] = {t: dict(zip(r.object_ids, r.probs[1:])) for t, r in zip(order, results)}
    for t in range(len(frames)):
        expected = []
        for object_id, annotated_on in ((1, [1, 6]), (2, [1]), (3, [5])):
            seed = nearest_annotation(t, annotated_on)
            expected.append(runs[seed, FORWARD if t >= seed else BACKWARD][t][object_id])
        object_probs = torch.stack(expected)  # [3, H, W]
        if t in annotations:
            given = torch.from_numpy(annotations[t]).long()
            for channel, object_id in enumerate((1, 2, 3)):
                object_probs[channel] = (given == object_id).float() if (given == object_id).any() \
                    else object_probs[channel] * (given == 0)
        want = torch.softmax(soft_aggregate(object_probs[None]), dim=1)[0]
        assert got[t].object_ids == (1, 2, 3)
        torch.testing.assert_close(got[t].probs, want, rtol=0, atol=1e-5)
        if t in annotations:
            given = annotations[t]
            assert np.array_equal(got[t].labels.numpy()[given > 0], given[given > 0])


def _as_result(prediction, index):
    """A FramePrediction with the step index of the run it is compared with."""
    prediction.index = index
    return prediction


# ----------------------------------------------------------------------------- remn segment
FAST = ["--config", "tiny", "--no-fused", "--size", "0", "--no-progress", "--device", "cpu"]


def test_segment_from_a_middle_frame_writes_every_frame(model, clip, tmp_path, capsys):
    from remn.cli import main
    from remn.data.palette import read_annotation, write_annotation, write_frame

    frames, masks = clip
    for t, frame in enumerate(frames):
        write_frame(tmp_path / "frames" / f"f{10 + t}.png", frame)
    write_annotation(tmp_path / "k.png", masks[4])
    for mask_frame, out in (("4", tmp_path / "by-index"), ("f14", tmp_path / "by-name")):
        assert main(["segment", str(tmp_path / "frames"), "--mask-frame", mask_frame, "--mask", str(tmp_path / "k.png"),
                     "--output", str(out), *FAST]) == 0
    assert "8 frames" in capsys.readouterr().out
    written = [read_annotation(tmp_path / "by-index" / f"f{10 + t}.png")[0] for t in range(len(frames))]
    assert np.array_equal(written[4], masks[4])
    for t in range(len(frames)):
        assert np.array_equal(written[t], read_annotation(tmp_path / "by-name" / f"f{10 + t}.png")[0])
    assert main(["segment", str(tmp_path / "frames"), "--mask-frame", "9", "--mask", str(tmp_path / "k.png"),
                 "--output", str(tmp_path / "bad"), *FAST]) == 2
    assert "not a frame index" in capsys.readouterr().err
    assert main(["segment", "--davis-root", str(tmp_path / "davis"), "--mask-frame", "3", "--output",
                 str(tmp_path / "d"), *FAST]) == 2
    assert "dataset runs keep their first-frame protocol" in capsys.readouterr().err


def test_video_file_streams_forward_and_refuses_both_ways(clip, tmp_path, capsys):
    av = pytest.importorskip("av")  # `pip install remn[video]`
    from remn.cli import main
    from remn.data.palette import read_annotation, write_annotation
    from remn.data.video import open_video

    frames, masks = clip
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    write_annotation(tmp_path / "first.png", masks[0])
    stream_of = open_video(path, tmp_path / "first.png").frames()
    assert next(stream_of).shape == frames.shape[1:]  # decoded one at a time
    stream_of.close()
    assert main(["segment", str(path), "--mask", str(tmp_path / "first.png"), "--output", str(tmp_path / "out"), *FAST]) == 0
    written = sorted((tmp_path / "out").glob("*.png"))
    assert [p.stem for p in written] == [f"{t:05d}" for t in range(len(frames))]
    assert np.array_equal(read_annotation(written[0])[0], masks[0])
    assert main(["segment", str(path), "--mask-frame", "3", "--mask", str(tmp_path / "first.png"),
                 "--output", str(tmp_path / "x"), *FAST]) == 2
    assert "extract its frames" in capsys.readouterr().err
