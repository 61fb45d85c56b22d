"""`remn segment` runs that survive interruption: atomic per video, --resume, bad frames,
SIGINT / SIGTERM, and --batch-videos giving the same results as one video at a time."""
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from remn.cli import main
from remn.data.palette import read_annotation
from remn.data.sequence import FileSequence
from remn.data.synthetic import write_davis_dataset
from remn.inference.runner import COMPLETE_MARKER, PARTIAL_INFIX

FRAMES = 5
FAST = ["--config", "tiny", "--no-fused", "--size", "0", "--no-progress", "--device", "cpu"]
NAMES = ("synthetic-000", "synthetic-001", "synthetic-002")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis")
    write_davis_dataset(root, 3, num_frames=FRAMES, height=40, width=56)
    return root


def segment(root, out, *extra) -> int:
    return main(["segment", "--davis-root", str(root), "--set", "val", "--output", str(out), *FAST, *map(str, extra)])


def results(out: Path) -> dict[str, list[np.ndarray]]:
    """Every complete video's label maps, by name; asserts nothing partial is left."""
    assert not [p for p in out.rglob(f"*{PARTIAL_INFIX}*")], "a partial folder was left behind"
    found = {}
    for folder in sorted(p for p in out.iterdir() if p.is_dir() and p.name != "overlays"):
        marker = json.loads((folder / COMPLETE_MARKER).read_text())  # every folder there is complete
        files = sorted(folder.glob("*.png"))
        assert marker == {"video": folder.name, "frames": FRAMES} and len(files) == FRAMES
        found[folder.name] = [read_annotation(path)[0] for path in files]
    return found


@pytest.fixture(scope="module")
def reference(davis_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    assert segment(davis_root, out) == 0
    return results(out)


def interrupt_at(monkeypatch, sequence_name: str, frame_index: int, raise_it) -> None:
    """Reading frame `frame_index` of `sequence_name` calls raise_it() (on the reader thread)."""
    original = FileSequence.frame

    def frame(self, index):
        if self.name == sequence_name and index == frame_index:
            raise_it()
        return original(self, index)

    monkeypatch.setattr(FileSequence, "frame", frame)


@pytest.mark.parametrize("batch", [1, 2])
def test_sigint_leaves_only_complete_videos_and_resume_finishes(davis_root, reference, tmp_path, monkeypatch,
                                                                capsys, batch):
    out = tmp_path / "out"

    def stop():
        raise KeyboardInterrupt

    interrupt_at(monkeypatch, NAMES[1], 3, stop)
    assert segment(davis_root, out, "--batch-videos", batch) == 130
    captured = capsys.readouterr()
    assert "interrupted by SIGINT" in captured.err and "--resume" in captured.err
    done = results(out)
    # One at a time the first video was complete; two at a time it was running beside the second.
    assert set(done) == ({NAMES[0]} if batch == 1 else set())
    assert "remaining: " + " ".join(name for name in NAMES if name not in done) in captured.out
    monkeypatch.undo()

    assert segment(davis_root, out, "--resume", "--batch-videos", batch) == 0
    summary = capsys.readouterr().out
    skipped = len(done)
    assert f"{3 - skipped} done, 0 redone, {skipped} skipped, 0 failed" in summary
    assert_same(results(out), reference, exact=batch == 1)


def test_resume_redoes_incomplete_and_killed_videos(davis_root, reference, tmp_path, capsys):
    out = tmp_path / "out"
    assert segment(davis_root, out, "--sequences", NAMES[0], NAMES[1]) == 0
    (out / NAMES[1] / COMPLETE_MARKER).unlink()  # results without a marker: not known to be complete
    killed = out / f".{NAMES[2]}{PARTIAL_INFIX}0123abcd"  # what a hard kill leaves
    killed.mkdir()
    (killed / "00000.png").write_bytes(b"half")
    capsys.readouterr()
    assert segment(davis_root, out) == 2  # without --resume the existing results are refused
    assert "--overwrite" in capsys.readouterr().err
    assert segment(davis_root, out, "--resume") == 0
    captured = capsys.readouterr().out
    assert f"{NAMES[0]}: complete, skipped" in captured
    assert sum(line.endswith("(redone: earlier results replaced)") for line in captured.splitlines()) == 2
    assert "0 done, 2 redone, 1 skipped, 0 failed" in captured
    assert_same(results(out), reference, exact=True)


@pytest.mark.parametrize("batch", [1, 2])
def test_a_bad_frame_fails_its_video_alone(davis_root, reference, tmp_path, capsys, batch):
    root = tmp_path / "davis"
    write_davis_dataset(root, 3, num_frames=FRAMES, height=40, width=56)
    (root / "JPEGImages" / "480p" / NAMES[1] / "00002.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert segment(root, out, "--batch-videos", batch) == 2
    captured = capsys.readouterr()
    error = next(line for line in captured.err.splitlines() if line.startswith("remn segment: error:"))
    assert NAMES[1] in error and "cannot read frame" in error and "results were removed" in error
    assert "2 done, 0 redone, 0 skipped, 1 failed" in captured.out and f"failed: {NAMES[1]}" in captured.out
    done = results(out)
    assert set(done) == {NAMES[0], NAMES[2]}
    assert_same(done, {name: reference[name] for name in done}, exact=batch == 1)


def test_sigterm_stops_between_steps(davis_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    interrupt_at(monkeypatch, NAMES[1], 1, lambda: os.kill(os.getpid(), signal.SIGTERM))
    assert segment(davis_root, out) == 143
    captured = capsys.readouterr()
    assert "interrupted by SIGTERM" in captured.err
    done = results(out)
    assert NAMES[0] in done and NAMES[2] not in done
    remaining = [name for name in NAMES if name not in done]
    assert f"remaining: {' '.join(remaining)}" in captured.out
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the run's only


def test_batch_videos_must_be_positive(davis_root, tmp_path, capsys):
    assert segment(davis_root, tmp_path / "out", "--batch-videos", 0) == 2
    assert "batch_videos must be an int >= 1" in capsys.readouterr().err


def assert_same(got: dict, want: dict, exact: bool) -> None:
    """The same label maps; batched (not exact): a batched convolution sums in another order,
    so an untrained model's exact ties may break the other way at a few pixels."""
    assert set(got) == set(want)
    for name in want:
        for mine, theirs in zip(got[name], want[name]):
            if exact:
                assert np.array_equal(mine, theirs), name
            else:
                assert (mine != theirs).mean() < 0.01, name


def test_batched_youtube_videos_whose_objects_start_late(tmp_path, capsys):
    """--batch-videos on YouTube-VOS: frames before a video's first object get empty PNGs
    while the other videos in the batch step on; results as one at a time."""
    from remn.data.palette import write_annotation, write_frame
    from remn.data.synthetic import make_clip

    root = tmp_path / "yt"
    meta = {"videos": {}}
    for seed, (video, start) in enumerate((("a", 0), ("b", 2), ("c", 1))):
        frames, masks = make_clip(40 + seed, num_frames=FRAMES, height=40, width=56, num_objects=2)
        names = [f"{5 * t:05d}" for t in range(FRAMES)]
        for t, name in enumerate(names):
            write_frame(root / "valid" / "JPEGImages" / video / f"{name}.jpg", frames[t])
        write_annotation(root / "valid" / "Annotations" / video / f"{names[start]}.png", masks[start])
        meta["videos"][video] = {"objects": {"1": {"frames": names[start:]}, "2": {"frames": names[start:]}}}
    (root / "valid" / "meta.json").write_text(json.dumps(meta))
    outputs = {}
    for batch in (1, 3):
        out = tmp_path / f"out{batch}"
        args = ["segment", "--youtube-root", str(root), "--set", "valid", "--output", str(out), *FAST]
        assert main([*args, "--batch-videos", str(batch)]) == 0
        outputs[batch] = {v: [read_annotation(p)[0] for p in sorted((out / v).glob("*.png"))] for v in "abc"}
    assert "3 done, 0 redone, 0 skipped, 0 failed" in capsys.readouterr().out
    assert not outputs[3]["b"][0].any() and not outputs[3]["b"][1].any() and outputs[3]["b"][2].any()
    for video in "abc":
        assert len(outputs[3][video]) == FRAMES
        for mine, theirs in zip(outputs[3][video], outputs[1][video]):
            assert (mine != theirs).mean() < 0.01
