"""remn.data.sequence: the one `Sequence` interface, as every reader implements it; the one
frame lister; the one distributed context."""
import json

import numpy as np
import pytest
import torch

from remn.data import (
    DavisDataset,
    FileSequence,
    Sequence,
    VideoFileSequence,
    YouTubeVOSDataset,
    list_images,
    make_clip,
    open_video,
    read_annotation,
    write_annotation,
    write_davis_dataset,
    write_frame,
)
from remn.data import video as video_module
from remn.distributed import DistributedContext, init_distributed

HEIGHT, WIDTH, FRAMES = 20, 28, 4
PALETTE = np.array([[0, 0, 0], [10, 200, 30], [250, 20, 90]], dtype=np.uint8)


def davis_sequence(root):
    write_davis_dataset(root, 1, num_frames=FRAMES, height=HEIGHT, width=WIDTH)
    return DavisDataset(root)[0]


def youtube_sequence(root):
    frames, masks = make_clip(1, num_frames=FRAMES, height=HEIGHT, width=WIDTH)
    base = root / "valid"
    for t in range(FRAMES):
        write_frame(base / "JPEGImages" / "vid" / f"{5 * t:05d}.jpg", frames[t])
    write_annotation(base / "Annotations" / "vid" / "00005.png", np.where(masks[1] == 1, 1, 0), PALETTE)
    write_annotation(base / "Annotations" / "vid" / "00010.png", masks[2], PALETTE)
    meta = {"videos": {"vid": {"objects": {"1": {"frames": ["00005", "00010"]}, "2": {"frames": ["00010"]}}}}}
    (base / "meta.json").write_text(json.dumps(meta))
    return YouTubeVOSDataset(root)["vid"]


def folder_sequence(root):
    frames, masks = make_clip(2, num_frames=FRAMES, height=HEIGHT, width=WIDTH)
    for t in range(FRAMES):
        write_frame(root / "frames" / f"f{t}.png", frames[t])
    write_annotation(root / "masks" / "f0.png", np.where(masks[0] == 1, 1, 0), PALETTE)
    write_annotation(root / "masks" / "f2.png", masks[2], PALETTE)
    return open_video(root / "frames", root / "masks")


@pytest.mark.parametrize("reader", [davis_sequence, youtube_sequence, folder_sequence])
def test_every_reader_implements_the_sequence_interface(reader, tmp_path):
    sequence = reader(tmp_path)
    assert isinstance(sequence, Sequence)
    assert sequence.size == (HEIGHT, WIDTH) and sequence.num_frames == FRAMES == len(sequence.frame_names)
    assert [sequence.frame_name(i) for i in range(FRAMES)] == list(sequence.frame_names)
    frames = sequence.frames()
    assert not isinstance(frames, (list, tuple))  # read one at a time
    loaded = list(frames)
    assert len(loaded) == FRAMES and all(f.shape == (HEIGHT, WIDTH, 3) and f.dtype == np.uint8 for f in loaded)
    np.testing.assert_array_equal(sequence.frame(2), loaded[2])
    indices = [s.frame_index for s in sequence.starts]
    assert indices and indices == sorted(indices)
    for start in sequence.starts:
        assert sequence.start_at(start.frame_index) is start
        assert start.frame_name == sequence.frame_name(start.frame_index)
        mask = start.load_mask()
        assert mask.shape == sequence.size and mask.any() and 255 not in mask
    assert sequence.object_ids and all(1 <= i < 255 for i in sequence.object_ids)
    first = sequence.starts[0].annotation_path
    np.testing.assert_array_equal(sequence.palette, read_annotation(first)[1])
    for index in sequence.annotated_indices:
        assert sequence.annotation(index).shape == sequence.size
    unannotated = sorted(set(range(FRAMES)) - set(sequence.annotated_indices))
    if unannotated:
        with pytest.raises(FileNotFoundError, match="has no annotation"):
            sequence.annotation(unannotated[0])


def test_starts_say_where_objects_first_appear(tmp_path):
    youtube = youtube_sequence(tmp_path / "yt")
    assert [(s.frame_index, s.object_ids) for s in youtube.starts] == [(1, (1,)), (2, (2,))]
    assert youtube.object_ids == (1, 2) and youtube.start_at(0) is None
    assert set(np.unique(youtube.starts[1].load_mask())) == {0, 2}  # object 1 again: not started here
    folder = folder_sequence(tmp_path / "folder")
    assert [(s.frame_index, s.object_ids) for s in folder.starts] == [(0, None), (2, None)]  # the ids in them
    assert folder.object_ids == (1, 2) and folder.annotated_indices == (0, 2)


def test_frames_load_lazily(tmp_path):
    sequence = davis_sequence(tmp_path)
    frames = sequence.frames()
    next(frames)
    sequence.frame_paths[2].unlink()  # not read yet
    next(frames)
    with pytest.raises(FileNotFoundError, match="00002"):
        next(frames)


def test_annotations_stack_needs_every_frame(tmp_path):
    sequence = youtube_sequence(tmp_path)
    with pytest.raises(FileNotFoundError, match="2 frames have no annotation"):
        sequence.annotations()
    davis = davis_sequence(tmp_path / "davis")
    assert davis.annotations().shape == (FRAMES, HEIGHT, WIDTH)


def test_single_video_checks_its_annotations_name_its_frames(tmp_path):
    folder_sequence(tmp_path)
    write_annotation(tmp_path / "masks" / "f9.png", np.ones((HEIGHT, WIDTH), np.uint8))
    with pytest.raises(ValueError, match=r"annotations \['f9'\] name no frame"):
        open_video(tmp_path / "frames", tmp_path / "masks")
    (tmp_path / "masks" / "f9.png").unlink()
    (tmp_path / "masks" / "f0.png").unlink()
    with pytest.raises(ValueError, match="first frame f0 has no annotation"):
        open_video(tmp_path / "frames", tmp_path / "masks")
    single = open_video(tmp_path / "frames", tmp_path / "masks" / "f2.png")  # one file: the first frame's
    assert [(s.frame_index, s.annotation_path.name) for s in single.starts] == [(0, "f2.png")]
    with pytest.raises(FileNotFoundError, match="annotation .* does not exist"):
        open_video(tmp_path / "frames", tmp_path / "nowhere.png")


@pytest.fixture
def decoded_video(tmp_path, monkeypatch):
    """A video file whose decoder is stood in for (no PyAV or imageio needed): FRAMES frames."""
    frames, masks = make_clip(3, num_frames=FRAMES, height=HEIGHT, width=WIDTH)
    decoded = []

    def decode(self):
        for frame in frames:
            decoded.append(1)
            yield frame

    monkeypatch.setattr(video_module, "video_backend", lambda: "av")
    monkeypatch.setattr(VideoFileSequence, "_decode", decode)
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"stands in for a video")
    write_annotation(tmp_path / "masks" / "00000.png", np.where(masks[0] == 1, 1, 0))
    write_annotation(tmp_path / "masks" / "00002.png", masks[2])
    return path, frames, decoded


def test_video_file_sequence(decoded_video, tmp_path):
    path, frames, decoded = decoded_video
    sequence = open_video(path, tmp_path / "masks")
    assert isinstance(sequence, VideoFileSequence) and isinstance(sequence, Sequence)
    assert sequence.name == "clip" and sequence.size == (HEIGHT, WIDTH)
    assert sequence.frame_names is None and sequence.num_frames is None  # known only by decoding it all
    assert [sequence.frame_name(i) for i in (0, 12)] == ["00000", "00012"]
    assert [s.frame_index for s in sequence.starts] == [0, 2] and sequence.annotated_indices == (0, 2)
    decoded.clear()
    np.testing.assert_array_equal(sequence.frame(1), frames[1])
    assert len(decoded) == 2  # decoded from the start up to frame 1, no further
    np.testing.assert_array_equal(np.stack(list(sequence.frames())), frames)
    assert sequence.annotation(2).shape == (HEIGHT, WIDTH)
    with pytest.raises(IndexError, match="no frame 9"):
        sequence.frame(9)
    with pytest.raises(ValueError, match="frame count of a video file"):
        sequence.annotations()
    write_annotation(tmp_path / "masks" / "first.png", np.ones((HEIGHT, WIDTH), np.uint8))
    with pytest.raises(ValueError, match=r"\['first'\] name no frame"):
        open_video(path, tmp_path / "masks")


@pytest.mark.parametrize("folder_kind", ["missing", "empty"])
def test_frame_folder_errors(folder_kind, tmp_path):
    frames = tmp_path / "frames"
    if folder_kind == "empty":
        frames.mkdir()
    with pytest.raises(FileNotFoundError, match="does not exist" if folder_kind == "missing" else "holds no frames"):
        open_video(frames, tmp_path / "mask.png")


def test_file_sequence_needs_a_start_and_one_annotation_slot_per_frame(tmp_path):
    with pytest.raises(ValueError, match="no annotation to start from"):
        FileSequence("x", [tmp_path / "a.jpg"], [None], [])
    with pytest.raises(ValueError, match="one annotation path"):
        FileSequence("x", [tmp_path / "a.jpg"], [], [])


def test_collection_selects_sequences_by_name_in_split_order(tmp_path):
    names = write_davis_dataset(tmp_path, 3, num_frames=2, height=HEIGHT, width=WIDTH)
    dataset = DavisDataset(tmp_path)
    assert [s.name for s in dataset.select([names[2], names[0]])] == [names[0], names[2]]
    assert dataset.select(None) == dataset.sequences
    with pytest.raises(ValueError, match=r"DAVIS 2017 val has no sequences \['nope'\]"):
        dataset.select(["nope"])
    with pytest.raises(KeyError, match="no sequence 'nope' in DAVIS 2017 val"):
        dataset["nope"]


# ---------------------------------------------------------------- the frame lister


def test_list_images_one_suffix_set_any_case_no_hidden_no_folders(tmp_path):
    for name in ("b.JPG", "a.png", "c.bmp", "d.jpeg", ".hidden.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "e.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG", "c.bmp", "d.jpeg"]
    assert [p.name for p in list_images(tmp_path, (".png",))] == ["a.png"]
    assert list_images(tmp_path / "missing") == []
    (tmp_path / "a.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="two files with the stem 'a': a.jpg, a.png"):
        list_images(tmp_path)


# ---------------------------------------------------------------- the distributed context


def test_single_process_context(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    context = init_distributed("cpu")
    assert context == DistributedContext(device=torch.device("cpu"))
    assert context.is_main and not context.distributed and not context.initialised
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            init_distributed("cuda")
