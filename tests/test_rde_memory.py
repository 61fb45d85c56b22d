"""memory="rde": RDE-VOS's recurrent dynamic embedding as a memory manager of the engine."""
import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import remn
from remn.cli import main
from remn.data.palette import read_annotation, write_annotation, write_frame
from remn.data.synthetic import make_clip
from remn.inference import InferenceConfig, RDEMemory, RDESettings, Segmenter, resolve_inference_config
from remn.inference.cli import add_arguments, config_from_args
from remn.inference.memory import make_memory_manager
from remn.inference.memory.rde import ANNOTATED, ANNOTATED_AGAIN, EMBEDDING, LAST, RDESlots

HEIGHT, WIDTH = 48, 40  # not powers of two; keys at 3 × 3 (padded to 48 × 48 / 16)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    """The tiny model with RDE's compressor, without gate and local branch, like the rde preset."""
    torch.manual_seed(0)
    return remn.build_model(config="tiny", memory="rde", gate=False, local_attention=False, fused=False, device="cpu")


@pytest.fixture(scope="module")
def clip():
    return make_clip(5, num_frames=12, height=HEIGHT, width=WIDTH, num_objects=3)


def rde(**overrides) -> InferenceConfig:
    return resolve_inference_config("rde", size=None, **overrides)


def run(segmenter, frames, masks_by_frame):
    return [segmenter.step(frame, masks_by_frame.get(t)) for t, frame in enumerate(frames)]


def image(frame: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255  # [1, 3, H, W]


# ----------------------------------------------------------------------------- outputs
def test_outputs_ids_sizes_and_schedule(model, clip):
    frames, masks = clip
    first = np.select([masks[0] == 1, masks[0] == 2, masks[0] == 3], [4, 9, 17], 0)  # non-contiguous ids
    segmenter = Segmenter(model, rde())
    assert isinstance(segmenter.memory, RDEMemory)
    results = run(segmenter, frames[:8], {0: first})
    for t, result in enumerate(results):
        assert result.index == t and result.object_ids == (4, 9, 17)
        assert result.labels.shape == (HEIGHT, WIDTH) and result.labels.dtype == torch.int64
        assert result.probs.shape == (4, HEIGHT, WIDTH)
        torch.testing.assert_close(result.probs.sum(0), torch.ones(HEIGHT, WIDTH))
        assert set(torch.unique(result.labels).tolist()) <= {0, 4, 9, 17}
    assert torch.equal(results[0].labels, torch.from_numpy(first).long())  # the given mask wins on its frame
    assert [r.memorised for r in results] == [True, False, False, True, False, False, True, False]  # every 3rd
    report = segmenter.report("clip")
    assert (report.memorised, report.skipped, report.memory_frames, report.peak_memory_frames) == (3, 5, 3, 3)
    assert (report.gate_dropped, report.evicted) == (0, 0)


def test_published_order_of_operations(model, clip):
    """On a memorised frame F: embedding ← mem_compress(embedding, F), then last ← F."""
    frames, masks = clip
    segmenter = Segmenter(model, rde())
    memory = segmenter.memory
    run(segmenter, frames[:4], {0: masks[0]})  # frame 3 is chosen, not yet written
    slots = memory.slots[0]
    assert (slots.used, slots.frames, slots.absorbed, slots.last_frame) == (2, 1, 0, None)
    assert torch.equal(slots.keys[:, :, EMBEDDING], slots.keys[:, :, ANNOTATED])  # starts from the annotated frame
    with torch.inference_mode():
        key = {t: model.encode_key(image(frames[t])).key for t in (0, 3, 6)}  # [1, Ck, h, w]
        # The published [embedding, annotated] before the first memorised frame: the annotated frame twice.
        torch.testing.assert_close(slots.read()[0], key[0][:, :, None].expand(-1, -1, 2, -1, -1))

        segmenter.step(frames[4])  # frame 3 is written before frame 4's read
        assert (slots.used, slots.frames, slots.absorbed, slots.last_frame) == (4, 3, 1, 3)
        torch.testing.assert_close(slots.keys[:, :, ANNOTATED], key[0])
        torch.testing.assert_close(slots.keys[:, :, ANNOTATED_AGAIN], key[0])  # read twice, as published
        torch.testing.assert_close(slots.keys[:, :, LAST], key[3])
        torch.testing.assert_close(slots.keys[:, :, EMBEDDING], model.mem_compress.update_key(key[0], key[3]))
        torch.testing.assert_close(
            slots.values[:, :, :, EMBEDDING],
            model.mem_compress.update_value(slots.values[:, :, :, ANNOTATED], slots.values[:, :, :, LAST]),
        )
        embedding = slots.keys[:, :, EMBEDDING].clone()
        for t in (5, 6, 7):
            segmenter.step(frames[t])
        assert (slots.used, slots.absorbed, slots.last_frame) == (4, 2, 6)
        torch.testing.assert_close(slots.keys[:, :, LAST], key[6])
        torch.testing.assert_close(slots.keys[:, :, EMBEDDING], model.mem_compress.update_key(embedding, key[6]))


def test_constant_storage_over_a_long_video(model):
    frames, masks = make_clip(3, num_frames=200, height=32, width=32, num_objects=2)
    segmenter = Segmenter(model, rde())
    memory = segmenter.memory
    run(segmenter, frames[:5], {0: masks[0]})  # warm-up: the first memorised frame is written
    slots = memory.slots[0]
    pointers = (slots.keys.data_ptr(), slots.values.data_ptr())
    shapes = (slots.keys.shape, slots.values.shape)
    assert shapes == ((1, 16, 4, 2, 2), (1, 2, 64, 4, 2, 2))  # [1, Ck, 4, h, w], [1, O, Cv, 4, h, w]
    for frame in frames[5:]:
        segmenter.step(frame)
        assert memory.stats.frames <= 3
    assert len(memory.slots) == 1 and memory.slots[0] is slots
    assert (slots.keys.data_ptr(), slots.values.data_ptr()) == pointers
    assert (slots.keys.shape, slots.values.shape) == shapes
    assert (slots.absorbed, slots.last_frame) == (66, 198)  # frames 3, 6, ..., 198 (written at frame 199's read)
    report = segmenter.report()
    assert report.peak_memory_frames == 3 and report.memorised == 67 and report.skipped == 133


def test_slots_outside_inference_mode_carry_gradients_and_keep_earlier_reads(model):
    """The training pass holds its embedding in the same RDESlots: with autograd, a fold
    writes new tensors, so the compressor gets gradients through two folds and a read taken
    before a fold still holds what it read."""
    torch.manual_seed(0)
    key = torch.randn(2, 3, 16, 2, 3, requires_grad=True)  # 3 frames × [2, Ck, h, w]
    values = torch.randn(2, 3, 2, 64, 2, 3)  # 3 frames × [2, O, Cv, h, w]
    slots = RDESlots.enter(key[:, 0], values[:, 0], 0)
    first_read = slots.read_embedding()[0].clone()
    early = slots.read_embedding()[0]
    for t in (1, 2):
        slots.absorb(model.mem_compress, key[:, t], values[:, t], t)
    assert torch.equal(early, first_read)
    slots.read()[0].sum().backward()
    assert key.grad[:, 0].abs().sum() > 0  # frame 0 reaches the read through both folds
    compress = model.mem_compress.compress_key.weight
    assert compress.grad is not None and compress.grad.abs().sum() > 0
    model.zero_grad()


# ----------------------------------------------------------------------------- objects
def test_object_added_mid_video(model, clip):
    frames, masks = clip
    entry = 4
    first = np.where(masks[0] == 3, 0, masks[0])  # object 3 is not annotated yet
    late = np.where(masks[entry] == 3, 3, 0)  # its own mask, given on its entry frame only
    segmenter = Segmenter(model, rde())
    results = run(segmenter, frames[:10], {0: first, entry: late})
    for result in results[:entry]:
        assert result.object_ids == (1, 2) and 3 not in result.labels
    for result in results[entry:]:
        assert result.object_ids == (1, 2, 3) and set(torch.unique(result.labels).tolist()) <= {0, 1, 2, 3}
    assert torch.equal(results[entry].labels == 3, torch.from_numpy(late == 3))  # the given mask wins
    assert [r.memorised for r in results] == [True, False, False, True, True, False, False, True, False, False]
    old, new = segmenter.memory.slots
    assert old.values.shape[1] == 2 and new.values.shape[1] == 1  # each group's own objects
    assert (old.entry_frame, old.absorbed, old.last_frame) == (0, 3, 7)  # frames 3, 4 (the annotation) and 7
    assert (new.entry_frame, new.absorbed, new.last_frame, new.used) == (entry, 1, 7, 4)  # its own embedding
    with torch.inference_mode():
        torch.testing.assert_close(new.keys[:, :, ANNOTATED], model.encode_key(image(frames[entry])).key)
    torch.testing.assert_close(new.keys[:, :, LAST], old.keys[:, :, LAST])  # the same memorised frame 7


def test_deterministic(model, clip):
    frames, masks = clip
    late = np.where(masks[4] == 3, 3, 0)
    a = run(Segmenter(model, rde()), frames, {0: np.where(masks[0] == 3, 0, masks[0]), 4: late})
    b = run(Segmenter(model, rde()), frames, {0: np.where(masks[0] == 3, 0, masks[0]), 4: late})
    for x, y in zip(a, b):
        assert torch.equal(x.probs, y.probs) and torch.equal(x.labels, y.labels)


# ----------------------------------------------------------------------------- config
def test_preset_and_validation(model):
    preset = resolve_inference_config("rde")
    assert (preset.model, preset.memory.policy, preset.memory.mem_every, preset.top_k) == ("rde", "rde", 3, 40)
    assert isinstance(preset.memory, RDESettings) and not preset.local_attention
    for overrides, message in [  # the frame bank's settings are not RDE's: one check, in the settings
        (dict(update="adaptive"), "update: not settings of memory='rde'"),
        (dict(capacity=5), "capacity: not settings of memory='rde'"),
        (dict(gate=True), "gate: not settings of memory='rde'"),
    ]:
        with pytest.raises(ValueError, match=message):
            resolve_inference_config(preset, **overrides)
    with pytest.raises(ValueError, match="memory compressor"):
        dataclasses.replace(preset, model="remn")
    with pytest.raises(ValueError, match="memory compressor"):
        resolve_inference_config("tiny", memory="rde")
    frame_bank_model = remn.build_model(config="tiny", gate=False, local_attention=False, fused=False, device="cpu")
    with pytest.raises(ValueError, match="mem_compress"):
        make_memory_manager(frame_bank_model, preset.memory)


def test_memory_flag_maps_onto_the_config():
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    def config(*flags):
        return config_from_args(parser.parse_args(["v", "--output", "o", *flags]))

    assert (config().name, config().memory.policy) == ("remn", "remn")
    assert (config("--memory", "rde").name, config("--memory", "rde").memory.policy) == ("rde", "rde")
    assert config("--memory", "rde", "--mem-every", "5", "--top-k", "0").memory.mem_every == 5
    frame_bank = config("--config", "rde", "--memory", "remn")  # the rde model with the frame bank
    assert (frame_bank.model, frame_bank.memory.policy) == ("rde", "remn")
    with pytest.raises(ValueError, match=r"memory='rde' needs a model .*model preset 'remn'"):
        config("--config", "remn", "--memory", "rde")
    with pytest.raises(ValueError, match=r"capacity, gate_threshold: not settings of memory='rde'"):
        config("--memory", "rde", "--capacity", "5", "--gate-threshold", "0.1")


# ----------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def video(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    frames, masks = make_clip(7, num_frames=5, height=32, width=48, num_objects=2)
    for t, frame in enumerate(frames):
        write_frame(root / "frames" / f"{t:05d}.jpg", frame)
    write_annotation(root / "first.png", masks[0])
    return root


def test_cli_memory_rde_end_to_end(video, tmp_path):
    """`python -m remn segment ... --memory rde` (no --config: the rde preset, full-size model)."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "remn", "segment", video / "frames", "--mask", video / "first.png",
               "--output", out, "--memory", "rde", "--size", "0", "--no-fused", "--no-progress", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(list(map(str, command)), capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "frames: 5 frames" in done.stdout and "memory 3 frames" in done.stdout
    files = sorted(Path(out).glob("*.png"))
    assert [p.stem for p in files] == [f"{t:05d}" for t in range(5)]
    given = read_annotation(video / "first.png")[0]
    assert np.array_equal(read_annotation(files[0])[0], given)
    assert all(set(np.unique(read_annotation(p)[0])) <= {0, 1, 2} for p in files)


def test_cli_mismatch_is_a_clear_error(video, tmp_path, capsys):
    code = main(["segment", str(video / "frames"), "--mask", str(video / "first.png"), "--output", str(tmp_path / "o"),
                 "--config", "remn", "--memory", "rde", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("remn segment: error: memory='rde' needs a model with RDE's memory compressor")
    assert "Traceback" not in err and not (tmp_path / "o").exists()
