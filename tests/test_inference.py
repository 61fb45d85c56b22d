"""The inference engine: Segmenter.step, the memory manager's policy, the object manager."""
import numpy as np
import pytest
import torch

import remn
from remn.data.synthetic import make_clip
from remn.inference import InferenceConfig, Segmenter, resolve_inference_config
from remn.inference.memory import FrameBank, make_memory_manager, mask_change
from remn.model.masks import soft_aggregate

HEIGHT, WIDTH = 48, 64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return remn.build_model(config="tiny", fused=False, device="cpu")


@pytest.fixture(scope="module")
def clip():
    return make_clip(12, num_frames=12, height=HEIGHT, width=WIDTH, num_objects=3)  # all objects stay visible


def tiny(**overrides) -> InferenceConfig:
    return resolve_inference_config("tiny", size=None, **overrides)


def relabel(masks: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    out = np.zeros_like(masks)
    for old, new in mapping.items():
        out[masks == old] = new
    return out


def run(segmenter, frames, masks_by_frame):
    return [segmenter.step(frame, masks_by_frame.get(t)) for t, frame in enumerate(frames)]


# ----------------------------------------------------------------------------- outputs
def test_outputs_sizes_and_ids_with_non_contiguous_ids(model, clip):
    frames, masks = clip
    ids = {1: 3, 2: 7, 3: 12}
    first = relabel(masks[0], ids)
    results = run(Segmenter(model, tiny()), frames[:6], {0: first})
    assert len(results) == 6
    for t, result in enumerate(results):
        assert result.index == t
        assert result.object_ids == (3, 7, 12)
        assert result.labels.shape == (HEIGHT, WIDTH) and result.labels.dtype == torch.int64
        assert result.probs.shape == (4, HEIGHT, WIDTH)
        torch.testing.assert_close(result.probs.sum(0), torch.ones(HEIGHT, WIDTH))
        assert set(torch.unique(result.labels).tolist()) <= {0, 3, 7, 12}
    assert torch.equal(results[0].labels, torch.from_numpy(first).long())  # the given mask wins on its frame


def test_resized_processing_returns_input_size(model, clip):
    frames, masks = clip
    segmenter = Segmenter(model, resolve_inference_config("tiny", size=32))
    results = run(segmenter, frames[:3], {0: masks[0]})
    assert segmenter._work_size == (32, 43)
    assert all(r.labels.shape == (HEIGHT, WIDTH) and r.probs.shape == (4, HEIGHT, WIDTH) for r in results)
    assert torch.equal(results[0].labels, torch.from_numpy(masks[0]).long())  # the given mask, not resized twice


def test_frame_formats_agree(model, clip):
    frames, masks = clip
    as_float = [torch.from_numpy(f).permute(2, 0, 1).float() / 255 for f in frames[:3]]
    a = run(Segmenter(model, tiny()), frames[:3], {0: masks[0]})
    b = run(Segmenter(model, tiny()), as_float, {0: torch.from_numpy(masks[0])})
    for x, y in zip(a, b):
        torch.testing.assert_close(x.probs, y.probs)


def test_deterministic(model, clip):
    frames, masks = clip
    a = run(Segmenter(model, tiny()), frames, {0: masks[0]})
    b = run(Segmenter(model, tiny()), frames, {0: masks[0]})
    for x, y in zip(a, b):
        assert torch.equal(x.probs, y.probs) and torch.equal(x.labels, y.labels)


# ----------------------------------------------------------------------------- objects
def test_object_added_mid_video(model, clip):
    frames, masks = clip
    entry = 4
    first = np.where(masks[0] == 3, 0, masks[0])  # object 3 is not annotated yet
    late = np.where(masks[entry] == 3, 3, 0)  # its own mask, given on its entry frame only
    segmenter = Segmenter(model, tiny(capacity=5))
    results = run(segmenter, frames, {0: first, entry: late})
    for result in results[:entry]:
        assert result.object_ids == (1, 2) and 3 not in result.labels
    assert results[entry].object_ids == (1, 2, 3)
    assert torch.equal(results[entry].labels == 3, torch.from_numpy(late == 3))  # the given mask wins
    groups = segmenter.objects.groups
    assert [(g.entry_frame, g.ids) for g in groups] == [(0, (1, 2)), (entry, (3,))]
    bank = segmenter.memory.bank
    assert bank.frames[0] == 0 and entry in bank.frames  # both entry frames are protected
    assert bank.protected[bank.frames.index(entry)]
    assert all(f >= entry for f in bank.frames[bank.first_slot(entry):])  # group 1 reads from its entry on
    assert bank.values[1].shape[1] == 1 and bank.values[0].shape[1] == 2


def test_object_ids_declared(model, clip):
    frames, masks = clip
    segmenter = Segmenter(model, tiny())
    with pytest.raises(ValueError, match=r"not among the declared object_ids"):
        segmenter.step(frames[0], masks[0], object_ids=[1, 2])
    result = segmenter.step(frames[0], masks[0], object_ids=[1, 2, 3, 9])  # 9: declared, absent
    assert result.object_ids == (1, 2, 3, 9)


def test_bad_inputs(model, clip):
    frames, masks = clip
    with pytest.raises(ValueError, match="first frame needs a mask"):
        Segmenter(model, tiny()).step(frames[0])
    with pytest.raises(ValueError, match="first annotation is empty"):
        Segmenter(model, tiny()).step(frames[0], np.zeros((HEIGHT, WIDTH), np.uint8))
    with pytest.raises(ValueError, match="differs from the frame size"):
        Segmenter(model, tiny()).step(frames[0], masks[0][:-1])
    segmenter = Segmenter(model, tiny())
    segmenter.step(frames[0], masks[0])
    with pytest.raises(ValueError, match="but the video's frames are"):
        segmenter.step(frames[1][:-2])
    with pytest.raises(ValueError, match="uint8 frame must be"):
        segmenter.step(frames[1][..., :2])


# ----------------------------------------------------------------------------- memory
def test_capacity_bounds_bank_and_first_frame_survives(model, clip):
    frames, masks = clip
    segmenter = Segmenter(model, tiny(capacity=3, change_threshold=0.0))
    segmenter.step(frames[0], masks[0])
    for frame in frames[1:]:
        segmenter.step(frame)
        bank = segmenter.memory.bank
        assert len(bank) <= 3 and bank.frames[0] == 0 and bank.frames == sorted(bank.frames)
    report = segmenter.report("clip")
    assert report.evicted > 0 and report.peak_memory_frames == 3 and report.memory_frames == 3


def test_gate_threshold_drops_frames_but_not_the_first(model, clip):
    frames, masks = clip
    # The untrained gate scores every frame sigmoid(6) ≈ 0.9975: a threshold above that drops
    # each unprotected frame at its first read.
    segmenter = Segmenter(model, tiny(gate_threshold=0.999, change_threshold=0.0))
    run(segmenter, frames[:6], {0: masks[0]})
    report = segmenter.report("clip")
    assert report.gate_dropped == 4  # frames 1..4 (frame 5 is chosen but not yet encoded)
    assert segmenter.memory.bank.frames == [0]


def test_capacity_eviction_takes_the_lowest_gate_score(model):
    memory = make_memory_manager(model, tiny(capacity=4).memory)
    bank = memory.bank
    bank.add_group()
    key, values = torch.zeros(1, 16, 2, 2), [torch.zeros(1, 1, 64, 2, 2)]
    for frame in range(4):
        bank.append(key + frame, [values[0] + frame], frame, protected=frame == 0)
    bank.scores = [0.01, 0.9, 0.2, 0.8]  # the first frame scores lowest but is protected
    memory._make_room()
    assert bank.frames == [0, 1, 3]
    assert torch.equal(bank.keys[0, 0, :3, 0, 0], torch.tensor([0.0, 1.0, 3.0]))  # compacted in time order
    assert torch.equal(bank.values[0][0, 0, 0, :3, 0, 0], torch.tensor([0.0, 1.0, 3.0]))


def test_unbounded_bank_grows_by_doubling():
    bank = FrameBank(capacity=None)
    bank.add_group()
    for frame in range(17):
        bank.append(torch.full((1, 2, 1, 1), float(frame)), [torch.zeros(1, 1, 3, 1, 1)], frame, protected=False)
    assert bank.slots == 32 and len(bank) == 17
    assert torch.equal(bank.keys[0, 0, :17, 0, 0], torch.arange(17.0))


def test_mask_change():
    a = torch.tensor([[0, 1], [2, 2]])
    assert mask_change(a, a, 2).item() == 0.0
    b = torch.tensor([[0, 1], [1, 2]])  # object 1: IoU 1/2; object 2: IoU 1/2
    assert mask_change(b, a, 2).item() == pytest.approx(0.5)
    assert mask_change(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long), 3).item() == 0.0


def test_adaptive_update_skips_static_frames_and_respects_max_gap(model):
    frames, masks = make_clip(5, num_frames=14, height=HEIGHT, width=WIDTH, num_objects=2, static=True)
    segmenter = Segmenter(model, tiny(max_gap=4))
    results = run(segmenter, frames, {0: masks[0]})
    chosen = [r.index for r in results if r.memorised]
    assert segmenter.report("static").skipped > 0
    assert len(chosen) < len(results)
    assert all(b - a <= 4 for a, b in zip(chosen, chosen[1:] + [len(results) - 1]))


def test_long_video_keeps_memory_flat(model):
    frames, masks = make_clip(7, num_frames=6, height=32, width=32, num_objects=2)
    # Local attention off: this test is about the memory, and the reference local attention is slow on CPU.
    segmenter = Segmenter(model, tiny(capacity=6, change_threshold=0.0, local_attention=False))
    segmenter.step(frames[0], masks[0])
    storage = None
    for t in range(1, 300):
        segmenter.step(frames[t % len(frames)])
        bank = segmenter.memory.bank
        assert len(bank) <= 6
        if t == 20:  # warmed up: storage allocated, bank full
            storage = (bank.keys.data_ptr(), bank.keys.shape, bank.values[0].data_ptr(), bank.values[0].shape)
    bank = segmenter.memory.bank
    assert (bank.keys.data_ptr(), bank.keys.shape, bank.values[0].data_ptr(), bank.values[0].shape) == storage
    assert bank.frames[0] == 0 and segmenter.report("long").memorised == 299


def test_stcn_preset_reproduces_stcn_inference():
    torch.manual_seed(1)
    model = remn.build_model(config="tiny", fused=False, device="cpu", gate=False, local_attention=False)
    frames, masks = make_clip(11, num_frames=17, height=HEIGHT, width=WIDTH, num_objects=2)
    config = resolve_inference_config("stcn", model="tiny", size=None)
    segmenter = Segmenter(model, config)
    results = run(segmenter, frames, {0: masks[0]})
    assert [r.index for r in results if r.memorised] == [0, 5, 10, 15]
    assert segmenter.memory.bank.frames == [0, 5, 10, 15]

    # STCN's loop, written out: first frame + every 5th frame, soft probabilities of the
    # aggregated prediction into memory, top-k 20, memory grown by concatenation.
    def image(t):
        return torch.from_numpy(frames[t]).permute(2, 0, 1)[None].float() / 255

    with torch.inference_mode():
        one_hot = torch.stack([torch.from_numpy(masks[0] == i) for i in (1, 2)])[None].float()
        probs = torch.softmax(soft_aggregate(one_hot), dim=1)
        features = model.encode_key(image(0))
        keys, values = [features.key], [model.encode_value(features, probs[:, 1:])]
        for t in range(1, len(frames)):
            features = model.encode_key(image(t))
            out = model.segment(features, torch.stack(keys, 2), torch.stack(values, 3), top_k=20)
            torch.testing.assert_close(results[t].probs, out.probs[0], atol=1e-5, rtol=1e-5)
            if t % 5 == 0:
                keys.append(features.key)
                values.append(model.encode_value(features, out.probs[:, 1:]))


def test_presets_and_config_checks():
    stcn = resolve_inference_config("stcn")
    bank = stcn.memory
    assert (stcn.model, bank.update, bank.mem_every, stcn.top_k, bank.gate, stcn.local_attention, bank.capacity) == (
        "stcn", "every", 5, 20, False, False, None)
    remn_config = resolve_inference_config("remn")
    assert remn_config.memory.update == "adaptive" and remn_config.memory.gate and remn_config.local_attention
    assert resolve_inference_config("tiny").model == "tiny" and remn_config.size == 480
    for bad in ({"capacity": 1}, {"change_threshold": 1.5}, {"update": "sometimes"}, {"precision": "fp8"}, {"top_k": 0}):
        with pytest.raises(ValueError):
            resolve_inference_config("remn", **bad)
    with pytest.raises(ValueError, match="unknown inference preset"):
        resolve_inference_config("xmem")


def test_one_preset_table_gives_model_and_inference():
    """Each row of remn.config.PRESETS builds its model and resolves its inference; the
    inference preset's model is the same row, and `to_dict` round-trips."""
    import remn
    from remn.config import resolve_config

    for name, row in remn.PRESETS.items():
        config = resolve_inference_config(name)
        assert (config.name, config.model) == (name, name)
        assert resolve_config(name) == row.model
        assert resolve_inference_config(config.to_dict()) == config
        assert config.memory.needs_compressor == (row.model.memory == "rde")
    with pytest.raises(TypeError):
        remn.PRESETS["remn"].inference["top_k"] = 1  # the table is read-only
    # bf16 on CUDA by default; the published presets run fp32, as their inference did
    assert [resolve_inference_config(n).precision for n in ("remn", "small", "stcn", "rde")] == ["auto", "auto", "fp32", "fp32"]


# ----------------------------------------------------------------------------- no host waits
def test_decisions_reach_the_host_one_frame_later_with_the_same_outcome(model, clip):
    """A frame's memory decision is read when the next frame's read begins; the memory
    that read sees, and the statistics, are those of deciding at once."""
    frames, masks = clip
    segmenter = Segmenter(model, tiny(change_threshold=0.02, max_gap=3))
    results = []
    for t, frame in enumerate(frames):
        results.append(segmenter.step(frame, masks[0] if t == 0 else None))
        # After step t the bank holds frames chosen up to t − 1, the latest of them last.
        chosen_before = [r.index for r in results[:-1] if r.memorised]
        if t >= 1:
            bank = segmenter.memory.bank.frames
            assert set(bank) <= set(chosen_before) and bank[-1] == chosen_before[-1]
    report = segmenter.report("clip")
    chosen = sum(r.memorised for r in results)
    assert report.memorised == chosen - results[-1].memorised  # the last chosen frame is never encoded
    assert report.memorised + report.skipped + results[-1].memorised == len(frames)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host-device synchronisation exists only on CUDA")
@pytest.mark.parametrize("preset", ["remn", "rde"])
def test_steps_never_synchronise_the_gpu(preset):
    """After warm-up (Triton autotuning benchmarks, annotated frames check their ids) a step
    queues its work without a stream/device synchronisation or a blocking copy. The
    deferred reads wait on an event only, which the sync-debug mode allows."""
    torch.manual_seed(0)
    model = remn.build_model(config=preset, device="cuda")
    frames, masks = make_clip(4, num_frames=12, height=240, width=432, num_objects=2)
    segmenter = Segmenter(model, resolve_inference_config(preset, precision="bf16"))
    segmenter.step(frames[0], masks[0])
    for frame in frames[1:6]:
        segmenter.step(frame)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for frame in frames[6:]:
            segmenter.step(frame)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert segmenter.report("no sync").frames == len(frames)
