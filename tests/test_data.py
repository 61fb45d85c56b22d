"""remn.data: annotation/frame I/O, DAVIS and YouTube-VOS readers, synthetic clips."""
import json
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from remn.data import (
    DAVIS_PALETTE,
    DavisDataset,
    YouTubeVOSDataset,
    make_clip,
    read_annotation,
    read_frame,
    write_annotation,
    write_davis_dataset,
    write_frame,
    write_youtube_submission,
)

# ---------------------------------------------------------------- palette and I/O


def test_davis_palette_is_the_voc_colour_map():
    assert DAVIS_PALETTE.shape == (256, 3) and DAVIS_PALETTE.dtype == np.uint8
    assert DAVIS_PALETTE[:5].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
    assert DAVIS_PALETTE[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in DAVIS_PALETTE.tolist()}) == 256  # colours identify ids


def test_annotation_round_trip_keeps_ids_and_palette_and_leaves_no_temp_file(tmp_path):
    ids = np.random.default_rng(0).integers(0, 4, size=(13, 29)).astype(np.uint8)
    ids[0, :5] = 255
    path = tmp_path / "sub" / "00000.png"
    write_annotation(path, ids)
    with Image.open(path) as image:
        assert image.mode == "P"
    read_ids, palette = read_annotation(path)
    np.testing.assert_array_equal(read_ids, ids)
    np.testing.assert_array_equal(palette, DAVIS_PALETTE)
    custom = np.array([[0, 0, 0], [1, 2, 3], [250, 251, 252]])
    write_annotation(path, np.minimum(ids, 2), palette=custom)  # overwrite in place
    _, palette = read_annotation(path)
    assert palette[:3].tolist() == custom.tolist()
    assert os.listdir(path.parent) == ["00000.png"]


def test_interrupted_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    old = np.ones((4, 6), np.uint8)
    write_annotation(path, old)

    def fail(self, *args, **kwargs):
        raise KeyboardInterrupt("interrupted mid-write")

    monkeypatch.setattr(Image.Image, "save", fail)
    with pytest.raises(KeyboardInterrupt):
        write_annotation(path, np.zeros((4, 6), np.uint8))
    monkeypatch.undo()
    np.testing.assert_array_equal(read_annotation(path)[0], old)
    assert os.listdir(tmp_path) == ["a.png"]


@pytest.mark.parametrize(
    "ids, error",
    [
        (np.zeros((2, 2, 2), np.uint8), ValueError),
        (np.full((2, 2), 256), ValueError),
        (np.full((2, 2), -1), ValueError),
        (np.zeros((2, 2), np.float32), TypeError),
    ],
)
def test_write_annotation_rejects_bad_ids(tmp_path, ids, error):
    with pytest.raises(error):
        write_annotation(tmp_path / "x.png", ids)
    assert os.listdir(tmp_path) == []


def test_rgb_mask_in_davis_colours_maps_to_palette_ids_with_warning(tmp_path):
    ids = np.array([[0, 1, 1], [2, 0, 255]], np.uint8)
    Image.fromarray(DAVIS_PALETTE[ids]).save(tmp_path / "rgb.png")
    with pytest.warns(UserWarning, match="RGB colour mask.*DAVIS default palette"):
        read_ids, _ = read_annotation(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_ids, ids)


def test_rgb_mask_in_other_colours_maps_by_first_appearance(tmp_path):
    rgb = np.zeros((2, 4, 3), np.uint8)
    rgb[0, 1] = rgb[1, 3] = (10, 200, 30)  # first seen at (0, 1) → 1
    rgb[0, 2] = (250, 5, 5)  # → 2
    rgb[1, 0] = (10, 200, 30)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with pytest.warns(UserWarning, match="first appearance"):
        read_ids, _ = read_annotation(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_ids, [[0, 1, 2, 0], [1, 0, 0, 1]])


def test_anti_aliased_rgb_mask_is_ambiguous(tmp_path):
    ramp = np.arange(16 * 20).reshape(16, 20)
    rgb = np.stack([ramp % 256, ramp // 256, np.full_like(ramp, 7)], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "aa.png")
    with pytest.raises(ValueError, match="anti-aliased"):
        read_annotation(tmp_path / "aa.png")


def test_read_annotation_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_annotation(tmp_path / "missing.png")
    Image.fromarray(np.zeros((3, 3), np.uint16)).save(tmp_path / "i16.png")  # 16-bit grey
    with pytest.raises(ValueError, match="mode"):
        read_annotation(tmp_path / "i16.png")


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_frames_read_as_rgb_uint8(tmp_path, suffix):
    frame = np.random.default_rng(1).integers(0, 256, size=(11, 17, 3)).astype(np.uint8)
    write_frame(tmp_path / f"f{suffix}", frame)
    read = read_frame(tmp_path / f"f{suffix}")
    assert read.shape == (11, 17, 3) and read.dtype == np.uint8
    if suffix == ".png":
        np.testing.assert_array_equal(read, frame)
    Image.fromarray(frame[..., 0]).save(tmp_path / "gray.png")
    assert read_frame(tmp_path / "gray.png").shape == (11, 17, 3)


# ---------------------------------------------------------------- synthetic clips


def test_make_clip_is_deterministic_with_the_promised_shapes():
    frames, masks = make_clip(3, num_frames=6, height=61, width=93, num_objects=3, distractors=2)
    assert frames.shape == (6, 61, 93, 3) and frames.dtype == np.uint8
    assert masks.shape == (6, 61, 93) and masks.dtype == np.uint8
    again = make_clip(3, num_frames=6, height=61, width=93, num_objects=3, distractors=2)
    np.testing.assert_array_equal(frames, again[0])
    np.testing.assert_array_equal(masks, again[1])
    assert not np.array_equal(frames, make_clip(4, num_frames=6, height=61, width=93, num_objects=3)[0])
    assert set(np.unique(masks[0])) == {0, 1, 2, 3}  # every object visible in frame 0


def test_static_clip_does_not_change():
    frames, masks = make_clip(7, num_frames=5, static=True)
    assert (frames == frames[0]).all() and (masks == masks[0]).all()
    moving, _ = make_clip(7, num_frames=5)
    assert not (moving == moving[0]).all()


def test_some_clips_have_objects_leave_and_come_back():
    def leaves(seed):
        _, masks = make_clip(seed, num_frames=10, num_objects=2)
        present = np.stack([(masks == k).any(axis=(1, 2)) for k in (1, 2)])  # [objects, T]
        return bool((present[:, 0] & ~present.all(axis=1) & present[:, -1]).any())

    assert any(leaves(seed) for seed in range(10))
    assert not all(leaves(seed) for seed in range(10))


def lookalike_pixels(frame, ids):
    """Unlabelled pixels whose colour lies inside an object's central (5-95%) colour box."""
    count = 0
    for obj in np.unique(ids[ids > 0]):
        colours = frame[ids == obj].astype(float)
        lo, hi = np.percentile(colours, 5, axis=0), np.percentile(colours, 95, axis=0)
        count += int((((frame >= lo) & (frame <= hi)).all(axis=-1) & (ids == 0)).sum())
    return count


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distractors_share_an_object_texture_but_are_not_labelled(seed):
    frames, masks = make_clip(seed, num_frames=1, distractors=0)
    assert lookalike_pixels(frames[0], masks[0]) < 20
    frames, masks = make_clip(seed, num_frames=1, distractors=3)
    assert masks.max() == 2
    assert lookalike_pixels(frames[0], masks[0]) > 150


@pytest.mark.parametrize(
    "kwargs", [{"num_frames": 0}, {"height": 4}, {"num_objects": 0}, {"num_objects": 255}, {"distractors": -1}]
)
def test_make_clip_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        make_clip(0, **kwargs)


# ---------------------------------------------------------------- DAVIS


def test_synthetic_davis_round_trip(tmp_path):
    names = write_davis_dataset(tmp_path, 4, seed=2, num_frames=5, height=37, width=45, num_objects=2)
    dataset = DavisDataset(tmp_path, split="val", year=2017)
    assert dataset.names == names and len(dataset) == 4
    sequence = dataset[1]
    assert dataset[names[1]] is sequence
    assert sequence.frame_names == ("00000", "00001", "00002", "00003", "00004")
    assert sequence.size == (37, 45) and sequence.object_ids == (1, 2)
    from remn.data.synthetic import sequence_seed

    frames, masks = make_clip(sequence_seed(2, 1), 5, 37, 45, 2)
    np.testing.assert_array_equal(sequence.annotations(), masks)
    np.testing.assert_array_equal(sequence.first_annotation(), masks[0])
    loaded = np.stack(list(sequence.frames()))
    assert loaded.shape == frames.shape
    error = np.abs(loaded.astype(int) - frames).mean()  # JPEG (quality 95, 4:2:0 chroma)
    other = np.abs(loaded.astype(int) - make_clip(sequence_seed(2, 0), 5, 37, 45, 2)[0]).mean()
    assert error < 10 < 2 * error < other


def test_davis_2016_merges_objects_and_keeps_void(tmp_path):
    write_davis_dataset(tmp_path, 1, num_frames=3, year=2016)
    sequence = DavisDataset(tmp_path, year=2016)[0]
    path = sequence.annotation_paths[0]
    ids, _ = read_annotation(path)
    ids[0, 0] = 255
    write_annotation(path, ids)
    first = sequence.first_annotation()
    assert set(np.unique(first)) == {0, 1, 255}
    assert sequence.object_ids == (1,)


def test_write_davis_dataset_refuses_to_clobber_a_real_split_file(tmp_path):
    split = tmp_path / "ImageSets" / "2017" / "val.txt"
    split.parent.mkdir(parents=True)
    split.write_text("bike-packing\n")
    with pytest.raises(ValueError, match="not synthetic"):
        write_davis_dataset(tmp_path, 1)
    assert split.read_text() == "bike-packing\n"


@pytest.fixture
def small_davis(tmp_path):
    names = write_davis_dataset(tmp_path, 2, num_frames=3, height=20, width=24)
    return tmp_path, names


def test_davis_errors(small_davis):
    root, names = small_davis
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DavisDataset(root / "nowhere")
    with pytest.raises(FileNotFoundError, match="train.txt.*splits there: val"):
        DavisDataset(root, split="train")
    with pytest.raises(ValueError, match="year"):
        DavisDataset(root, year=2019)
    orphan = root / "Annotations" / "480p" / names[0] / "00009.png"
    write_annotation(orphan, np.zeros((20, 24), np.uint8))
    with pytest.raises(ValueError, match="annotations without a frame: 00009"):
        DavisDataset(root)
    orphan.unlink()
    split = root / "ImageSets" / "2017" / "val.txt"
    split.write_text(split.read_text() + "ghost\n")
    with pytest.raises(FileNotFoundError, match="ghost.*no JPEG frames"):
        DavisDataset(root)
    (root / "JPEGImages" / "480p" / "ghost").mkdir()
    write_frame(root / "JPEGImages" / "480p" / "ghost" / "00000.jpg", np.zeros((20, 24, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="ghost.*no PNG annotations"):
        DavisDataset(root)


def test_davis_missing_first_annotation_and_size_mismatch(small_davis):
    root, names = small_davis
    annotations = root / "Annotations" / "480p" / names[0]
    write_annotation(annotations / "00000.png", np.zeros((19, 24), np.uint8))
    with pytest.raises(ValueError, match=r"00000.png is 19x24 .* frames are 20x24"):
        DavisDataset(root)
    (annotations / "00000.png").unlink()
    with pytest.raises(FileNotFoundError, match="first-frame annotation"):
        DavisDataset(root)


def test_davis_later_size_mismatch_and_missing_annotation_fail_on_load(small_davis):
    root, names = small_davis
    annotations = root / "Annotations" / "480p" / names[1]
    write_annotation(annotations / "00002.png", np.zeros((20, 25), np.uint8))
    sequence = DavisDataset(root)[1]
    with pytest.raises(ValueError, match="00002.png is 20x25"):
        sequence.annotations()
    (annotations / "00002.png").unlink()
    sequence = DavisDataset(root)[1]
    assert not sequence.has_all_annotations
    with pytest.raises(FileNotFoundError, match="00002"):
        sequence.annotations()


# ---------------------------------------------------------------- YouTube-VOS


@pytest.fixture
def youtube_root(tmp_path):
    base = tmp_path / "valid"
    videos = {"vid_a": {"1": ["00000", "00005", "00010"], "2": ["00010"], "3": ["00010", "00015"]},
              "vid_b": {"1": ["00005"]}}
    for name, objects in videos.items():
        for stem in ("00000", "00005", "00010", "00015"):
            write_frame(base / "JPEGImages" / name / f"{stem}.jpg", np.zeros((8, 10, 3), np.uint8))
        firsts = {}
        for obj, frames in objects.items():
            firsts.setdefault(frames[0], []).append(int(obj))
        for stem, ids in firsts.items():
            mask = np.zeros((8, 10), np.uint8)
            for k, obj in enumerate(ids):
                mask[k, :] = obj
            mask[7, :] = 1  # an earlier object drawn again: not new in this frame
            write_annotation(base / "Annotations" / name / f"{stem}.png", mask)
    meta = {"videos": {n: {"objects": {k: {"frames": f} for k, f in o.items()}} for n, o in videos.items()}}
    (base / "meta.json").write_text(json.dumps(meta))
    return tmp_path


def test_youtube_objects_start_at_their_first_frame(youtube_root):
    dataset = YouTubeVOSDataset(youtube_root, "valid")
    assert dataset.names == ["vid_a", "vid_b"]
    video = dataset["vid_a"]
    assert video.frame_names == ("00000", "00005", "00010", "00015")
    assert [(s.frame_index, s.frame_name, s.object_ids) for s in video.starts] == [
        (0, "00000", (1,)),
        (2, "00010", (2, 3)),
    ]
    assert video.start_at(1) is None and video.object_ids == (1, 2, 3)
    mask = video.start_at(2).load_mask()
    assert set(np.unique(mask)) == {0, 2, 3}  # object 1's repeated mask is dropped
    assert dataset["vid_b"].starts[0].frame_index == 1


def test_youtube_errors(youtube_root):
    with pytest.raises(FileNotFoundError):
        YouTubeVOSDataset(youtube_root, "train")
    meta_path = youtube_root / "valid" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["videos"]["vid_b"]["objects"]["1"]["frames"] = ["00003"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="00003, which is not in"):
        YouTubeVOSDataset(youtube_root)
    meta["videos"]["vid_b"]["objects"]["1"]["frames"] = ["00015"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match="00015.png is missing"):
        YouTubeVOSDataset(youtube_root)


def test_youtube_submission_zip_layout(tmp_path):
    results = tmp_path / "results"
    for name in ("vid_a", "vid_b"):
        for stem in ("00000", "00005"):
            write_annotation(results / name / f"{stem}.png", np.full((4, 5), 1, np.uint8))
    out = write_youtube_submission(results, tmp_path / "out" / "submission.zip")
    with zipfile.ZipFile(out) as archive:
        assert sorted(archive.namelist()) == [
            f"Annotations/{n}/{s}.png" for n in ("vid_a", "vid_b") for s in ("00000", "00005")
        ]
        assert archive.read("Annotations/vid_b/00005.png") == (results / "vid_b" / "00005.png").read_bytes()
    assert os.listdir(out.parent) == ["submission.zip"]
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(results / "vid_a" / "00010.png")
    with pytest.raises(ValueError, match="00010.png.*indexed"):
        write_youtube_submission(results, tmp_path / "other.zip")
    assert not (tmp_path / "other.zip").exists()
