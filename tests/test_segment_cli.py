"""`remn segment` end to end: one video, DAVIS and YouTube-VOS layouts, bad input, torchrun."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import remn
from remn.checkpoint import save_weights
from remn.cli import main
from remn.data.palette import read_annotation, write_annotation, write_frame
from remn.data.synthetic import make_clip, write_davis_dataset

HEIGHT, WIDTH, FRAMES = 48, 64, 6
FAST = ["--config", "tiny", "--no-fused", "--size", "0", "--no-progress", "--device", "cpu"]
CUSTOM_PALETTE = np.array([[0, 0, 0], [10, 200, 30], [250, 20, 90], [0, 90, 255]], dtype=np.uint8)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis")
    write_davis_dataset(root, 3, num_frames=FRAMES, height=HEIGHT, width=WIDTH)
    return root


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A frame folder (names not starting at 0) and its first annotation with a custom palette."""
    root = tmp_path_factory.mktemp("video")
    frames, masks = make_clip(12, num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_objects=2)
    for t, frame in enumerate(frames):
        write_frame(root / "frames" / f"frame_{10 + t:03d}.jpg", frame)
    write_annotation(root / "first.png", np.where(masks[0] == 2, 3, masks[0]), CUSTOM_PALETTE)  # ids 1 and 3
    return root


def segment(*args) -> int:
    return main(["segment", *map(str, args)])


def pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


def test_single_video(video, tmp_path, capsys):
    out = tmp_path / "out"
    assert segment(video / "frames", "--mask", video / "first.png", "--output", out, "--overlay", *FAST) == 0
    captured = capsys.readouterr()
    assert "random weights" in captured.err and "meaningless" in captured.err
    assert "frames: 6 frames" in captured.out and "summary" in captured.out and "with file I/O" in captured.out
    files = pngs(out)
    assert [p.stem for p in files] == [f"frame_{10 + t:03d}" for t in range(FRAMES)]
    for path in files:
        ids, palette = read_annotation(path)
        assert Image.open(path).mode == "P" and ids.shape == (HEIGHT, WIDTH)
        assert set(np.unique(ids)) <= {0, 1, 3}
        assert np.array_equal(palette[:4], CUSTOM_PALETTE)
    assert len(list((out / "overlays").glob("*.jpg"))) == FRAMES


def test_single_video_with_an_annotation_folder(video, tmp_path):
    _, masks = make_clip(12, num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_objects=2)
    annotations = tmp_path / "annotations"
    write_annotation(annotations / "frame_010.png", np.where(masks[0] == 1, 1, 0))
    for t in range(1, FRAMES):  # ground truth on every later frame: only the new id 2 may be taken
        write_annotation(annotations / f"frame_{10 + t:03d}.png", masks[t] if t >= 2 else np.where(masks[t] == 1, 1, 0))
    out = tmp_path / "out"
    assert segment(video / "frames", "--mask", annotations, "--output", out, *FAST) == 0
    labels = [read_annotation(p)[0] for p in pngs(out)]
    assert all(2 not in x for x in labels[:2])
    assert np.array_equal(labels[2] == 2, masks[2] == 2)


def test_davis_dataset_and_determinism(davis_root, tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        assert segment("--davis-root", davis_root, "--set", "val", "--output", out, *FAST) == 0
    captured = capsys.readouterr().out
    assert captured.count("synthetic-00") == 6 and "3 videos" in captured
    for name in ("synthetic-000", "synthetic-001", "synthetic-002"):
        files = pngs(first / name)
        assert len(files) == FRAMES
        given = read_annotation(davis_root / "Annotations" / "480p" / name / "00000.png")[0]
        for path in files:
            ids = read_annotation(path)[0]
            assert set(np.unique(ids)) <= set(np.unique(given))
            assert np.array_equal(ids, read_annotation(second / name / path.name)[0])
        assert np.array_equal(read_annotation(files[0])[0], given)


def test_davis_subset_with_memory_flags(davis_root, tmp_path):
    out = tmp_path / "out"
    assert segment("--davis-root", davis_root, "--set", "val", "--sequences", "synthetic-001", "--output", out,
                   "--mem-every", "2", "--top-k", "0", "--capacity", "3", *FAST) == 0
    assert [p.name for p in out.iterdir()] == ["synthetic-001"]
    assert segment("--davis-root", davis_root, "--sequences", "nope", "--output", tmp_path / "x", *FAST) == 2


def test_flags_map_onto_the_inference_config():
    import argparse

    from remn.inference.cli import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args(["v", "--output", "o", "--config", "stcn", "--capacity", "50"]))
    assert (config.name, config.model, config.memory.update, config.memory.mem_every, config.top_k,
            config.memory.capacity) == ("stcn", "stcn", "every", 5, 20, 50)
    config = config_from_args(parser.parse_args([
        "v", "--output", "o", "--size", "0", "--change-threshold", "0.3", "--max-gap", "7", "--gate-threshold", "0.2",
        "--capacity", "0", "--top-k", "0", "--precision", "bf16"]))
    bank = config.memory
    assert (config.name, config.size, bank.change_threshold, bank.max_gap, bank.gate_threshold) == (
        "remn", None, 0.3, 7, 0.2)
    assert bank.capacity is None and config.top_k is None and config.precision == "bf16"
    config = config_from_args(parser.parse_args([
        "v", "--output", "o", "--appearance-threshold", "0.3", "--keep-unused"]))
    assert (config.memory.appearance_threshold, config.memory.drop_unused) == (0.3, False)


def test_no_fast_path_runs_the_model_as_built(monkeypatch, tmp_path, video):
    """--no-fast-path reaches every engine the runner builds: each runs the built model itself."""
    from remn.inference import BatchSegmenter, BothWaysSegmenter, Segmenter
    from remn.inference import runner

    model = remn.build_model(config="tiny", fused=False, device="cpu")
    assert Segmenter(model, "tiny", fast_path=False).model is model
    assert Segmenter(model, "tiny").model is not model  # the CPU default: a prepared copy
    assert BatchSegmenter(model, "tiny", fast_path=False).model is model
    assert BothWaysSegmenter(model, "tiny", fast_path=False).batch.model is model
    from remn.inference.fast_path import FastREMN

    prepared = []  # per run: whether the Segmenter the runner built runs a prepared copy

    class RecordingSegmenter(Segmenter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            prepared.append(isinstance(self.model, FastREMN))

    monkeypatch.setattr(runner, "Segmenter", RecordingSegmenter)
    frames, mask = video / "frames", video / "first.png"
    assert segment(frames, "--mask", mask, "--output", tmp_path / "a", "--no-fast-path", *FAST) == 0
    assert segment(frames, "--mask", mask, "--output", tmp_path / "b", *FAST) == 0
    assert prepared == [False, True]


def test_compile_flag_hands_the_runner_a_compiled_fast_path(monkeypatch, tmp_path, video, capsys):
    """--compile MODE: the runner's engines get FastPathSettings(compile_mode=MODE); with
    --no-fast-path it is refused before any work."""
    from remn.inference import runner
    from remn.inference.fast_path import FastPathSettings

    handed = []
    monkeypatch.setattr(runner, "run_jobs", lambda *args, fast_path, **kwargs: handed.append(fast_path))
    frames, mask = video / "frames", video / "first.png"
    assert segment(frames, "--mask", mask, "--output", tmp_path / "a", "--compile", "reduce-overhead", *FAST) == 0
    assert handed == [FastPathSettings(compile_mode="reduce-overhead")]
    assert segment(frames, "--mask", mask, "--output", tmp_path / "b", "--compile", "default", "--no-fast-path",
                   *FAST) == 2
    assert "--compile compiles the fast path" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_youtube_layout(tmp_path, capsys):
    root = tmp_path / "yt"
    frames, masks = make_clip(12, num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_objects=2)
    names = [f"{5 * t:05d}" for t in range(FRAMES)]
    for t, name in enumerate(names):
        write_frame(root / "valid" / "JPEGImages" / "vid" / f"{name}.jpg", frames[t])
    write_annotation(root / "valid" / "Annotations" / "vid" / f"{names[1]}.png", np.where(masks[1] == 1, 1, 0))
    write_annotation(root / "valid" / "Annotations" / "vid" / f"{names[3]}.png", masks[3])  # object 1 again: ignored
    meta = {"videos": {"vid": {"objects": {"1": {"frames": names[1:]}, "2": {"frames": names[3:]}}}}}
    (root / "valid" / "meta.json").write_text(json.dumps(meta))
    out = tmp_path / "out"
    assert segment("--youtube-root", root, "--set", "valid", "--output", out, *FAST) == 0
    files = pngs(out / "vid")
    assert [p.stem for p in files] == names  # every frame, as the server expects
    labels = [read_annotation(p)[0] for p in files]
    assert not labels[0].any()  # before the first object starts
    assert set(np.unique(labels[1])) <= {0, 1} and set(np.unique(labels[2])) <= {0, 1}
    assert np.array_equal(labels[3] == 2, masks[3] == 2)  # object 2's own mask on its first frame
    assert "2 objects" in capsys.readouterr().out


def test_trained_weights_silence_the_warning_and_mismatched_weights_fail(video, tmp_path, capsys):
    good, bad = tmp_path / "good.pth", tmp_path / "bad.pth"
    save_weights(remn.build_model(config="tiny", fused=False, device="cpu"), good)
    save_weights(remn.build_model(config="tiny", fused=False, device="cpu", key_dim=8), bad)
    base = [video / "frames", "--mask", video / "first.png", *FAST]
    assert segment(*base, "--output", tmp_path / "a", "--weights", good) == 0
    assert "random weights" not in capsys.readouterr().err
    assert segment(*base, "--output", tmp_path / "b", "--weights", bad) == 2
    err = capsys.readouterr().err
    assert err.startswith("remn segment: error:") and "key_dim" in err and "Traceback" not in err


def _corrupt(folder: Path, name: str) -> None:
    (folder / name).write_bytes(b"not an image")


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_frames", "does not exist"),
        ("empty_folder", "holds no frames"),
        ("unreadable_frame", "cannot read frame"),
        ("annotation_size", "but the frames are"),
        ("empty_annotation", "is empty"),
        ("existing_output", "--overwrite"),
        ("no_mask", "needs --mask"),
        ("missing_davis", "does not exist"),
    ],
)
def test_bad_input(case, message, video, tmp_path, capsys):
    frames_dir, mask, out = video / "frames", video / "first.png", tmp_path / "out"
    if case == "missing_frames":
        frames_dir = tmp_path / "nowhere"
    elif case == "empty_folder":
        frames_dir = tmp_path / "empty"
        frames_dir.mkdir()
    elif case == "unreadable_frame":
        frames_dir = tmp_path / "frames"
        frames_dir.mkdir()
        for path in sorted((video / "frames").iterdir()):
            (frames_dir / path.name).write_bytes(path.read_bytes())
        _corrupt(frames_dir, sorted(os.listdir(frames_dir))[3])
    elif case == "annotation_size":
        mask = tmp_path / "small.png"
        write_annotation(mask, np.ones((HEIGHT - 1, WIDTH), np.uint8))
    elif case == "empty_annotation":
        mask = tmp_path / "empty.png"
        write_annotation(mask, np.zeros((HEIGHT, WIDTH), np.uint8))
    elif case == "existing_output":
        write_annotation(out / "old.png", np.zeros((4, 4), np.uint8))
    if case == "no_mask":
        code = segment(frames_dir, "--output", out, *FAST)
    elif case == "missing_davis":
        code = segment("--davis-root", tmp_path / "nodavis", "--output", out, *FAST)
    else:
        code = segment(frames_dir, "--mask", mask, "--output", out, *FAST)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "remn segment: error:" in err and message in err and "Traceback" not in err
    if case == "existing_output":  # --overwrite lets the run through, and says old.png stays
        assert segment(frames_dir, "--mask", mask, "--output", out, "--overwrite", *FAST) == 0
        err = capsys.readouterr().err
        assert "1 PNGs that name no frame" in err and "old.png" in err
        assert (out / "old.png").exists()


def test_torchrun_shards_sequences_over_two_gloo_processes(davis_root, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "remn", "segment", "--davis-root", str(davis_root), "--set", "val", "--output", str(out), *FAST]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("[rank 0] synthetic-000") for line in lines)
    assert any(line.startswith("[rank 1] synthetic-001") for line in lines)
    assert any(line.startswith("[rank 0] synthetic-002") for line in lines)
    summaries = [line for line in lines if line.startswith("summary")]
    assert len(summaries) == 1 and "3 videos" in summaries[0]  # rank 0 alone, over every rank's reports
    for name in ("synthetic-000", "synthetic-001", "synthetic-002"):
        assert len(pngs(out / name)) == FRAMES
