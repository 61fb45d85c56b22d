"""YouTube-VOS reader and submission writer.

    ROOT/{train,valid}/JPEGImages/SEQ/*.jpg
    ROOT/{train,valid}/Annotations/SEQ/*.png
    ROOT/{train,valid}/meta.json
        {"videos": {SEQ: {"objects": {"1": {"frames": ["00000", "00005", ...]}, ...}}}}

Objects start at different frames: an object's masks come from the annotation of the
first frame its `frames` list names. Each sequence exposes, per starting frame, the ids
that first appear there and the annotation file to take their masks from.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from PIL import Image

from remn.data.atomic import atomic_path
from remn.data.palette import ANNOTATION_SUFFIXES, FRAME_SUFFIXES, VOID_ID, list_images
from remn.data.sequence import FileSequence, ObjectStart, SequenceCollection


class YouTubeSequence(FileSequence):
    """One video: frames in order and where each object starts (`starts`, ordered by frame).

    objects: object id → the frame names meta.json lists for it; each object's masks come
    from the annotation of the first of them, which must be a frame with an annotation PNG.
    Frames before the first start have no object yet.
    """

    def __init__(self, name: str, frame_paths, annotation_paths, objects: dict[int, tuple[str, ...]],
                 meta_path: Path):
        frame_paths = tuple(Path(p) for p in frame_paths)
        annotation_paths = tuple(None if p is None else Path(p) for p in annotation_paths)
        if not frame_paths:
            raise ValueError(f"video {name} has no frames")
        position = {p.stem: i for i, p in enumerate(frame_paths)}
        by_frame: dict[str, list[int]] = {}
        for obj_id, frames in objects.items():
            by_frame.setdefault(frames[0], []).append(obj_id)
        starts = []
        for frame_name, ids in sorted(by_frame.items()):
            if frame_name not in position:
                raise ValueError(f"video {name}: objects {sorted(ids)} start at frame {frame_name}, "
                                 f"which is not in {frame_paths[0].parent}")
            annotation = annotation_paths[position[frame_name]]
            if annotation is None:
                missing = meta_path.parent / "Annotations" / name / f"{frame_name}.png"
                raise FileNotFoundError(
                    f"video {name}: objects {sorted(ids)} start at {frame_name} but {missing} is missing"
                )
            starts.append(ObjectStart(position[frame_name], frame_name, tuple(sorted(ids)), annotation))
        super().__init__(name, frame_paths, annotation_paths, starts)


def _parse_objects(name: str, video: dict, meta_path: Path) -> dict[int, tuple[str, ...]]:
    objects = video.get("objects") if isinstance(video, dict) else None
    if not isinstance(objects, dict) or not objects:
        raise ValueError(f"{meta_path}: video {name} has no objects")
    parsed = {}
    for key, info in objects.items():
        try:
            obj_id = int(key)
        except ValueError:
            raise ValueError(f"{meta_path}: video {name} has a non-integer object id {key!r}") from None
        if not 1 <= obj_id < VOID_ID:
            raise ValueError(f"{meta_path}: video {name} object id {obj_id} is outside 1..{VOID_ID - 1}")
        frames = info.get("frames") if isinstance(info, dict) else None
        if not frames:
            raise ValueError(f"{meta_path}: video {name} object {obj_id} lists no frames")
        parsed[obj_id] = tuple(sorted(str(f) for f in frames))
    return parsed


class YouTubeVOSDataset(SequenceCollection[YouTubeSequence]):
    """The videos of one YouTube-VOS split (sorted by name): indexing, iteration, by name."""

    def __init__(self, root, split: str = "valid"):
        self.root = Path(root)
        self.split = split
        base = self.root / split
        if not base.is_dir():
            raise FileNotFoundError(f"YouTube-VOS split folder {base} does not exist")
        meta_path = base / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} does not exist")
        with open(meta_path) as stream:
            meta = json.load(stream)
        videos = meta.get("videos") if isinstance(meta, dict) else None
        if not isinstance(videos, dict):
            raise ValueError(f"{meta_path} has no 'videos' mapping")
        self._set_sequences([self._scan(base, name, videos[name], meta_path) for name in sorted(videos)])

    @staticmethod
    def _scan(base: Path, name: str, video: dict, meta_path: Path) -> YouTubeSequence:
        frame_dir = base / "JPEGImages" / name
        frame_paths = list_images(frame_dir)
        if not frame_paths:
            raise FileNotFoundError(f"video {name} is in {meta_path.name} but {frame_dir} has no JPEG frames "
                                    f"(nor any other {'/'.join(FRAME_SUFFIXES)} image)")
        objects = _parse_objects(name, video, meta_path)
        annotations = {p.stem: p for p in list_images(base / "Annotations" / name, ANNOTATION_SUFFIXES)}
        annotation_paths = [annotations.get(p.stem) for p in frame_paths]
        return YouTubeSequence(name, frame_paths, annotation_paths, objects, meta_path)

    def describe(self) -> str:
        return f"YouTube-VOS {self.split}"


def write_youtube_submission(results_dir, zip_path) -> Path:
    """Zip RESULTS/SEQ/FRAME.png as Annotations/SEQ/FRAME.png for the evaluation server.

    Every PNG must be indexed (palette) — the server reads ids from pixel values. The zip
    is written to a temp file beside zip_path and renamed into place.
    """
    results_dir, zip_path = Path(results_dir), Path(zip_path)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results folder {results_dir} does not exist")
    entries = []
    for seq_dir in sorted(p for p in results_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for png in sorted(seq_dir.glob("*.png")):
            with Image.open(png) as image:
                if image.mode != "P":
                    raise ValueError(f"{png} is a {image.mode!r} image; the server needs indexed (P) PNGs")
            entries.append((png, f"Annotations/{seq_dir.name}/{png.name}"))
    if not entries:
        raise ValueError(f"{results_dir} holds no SEQ/*.png results")
    with atomic_path(zip_path) as temp:
        with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_STORED) as archive:
            for png, arcname in entries:
                archive.write(png, arcname)
    return zip_path
