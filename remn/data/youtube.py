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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from remn.data.atomic import atomic_path
from remn.data.collection import SequenceCollection
from remn.data.palette import VOID_ID, read_annotation, read_frame


@dataclass(frozen=True)
class ObjectStart:
    """Objects that first appear in one frame: ids and the annotation holding their masks."""

    frame_index: int
    frame_name: str
    object_ids: tuple[int, ...]
    annotation_path: Path

    def load_mask(self) -> np.ndarray:
        """The annotation with only these objects kept: ids uint8 [H, W], others set to 0."""
        ids, _ = read_annotation(self.annotation_path)
        return np.where(np.isin(ids, self.object_ids), ids, 0).astype(np.uint8)


@dataclass(frozen=True)
class YouTubeSequence:
    """One video: frames in order and where each object starts."""

    name: str
    frame_names: tuple[str, ...]
    frame_paths: tuple[Path, ...]
    starts: tuple[ObjectStart, ...]  # ordered by frame
    object_frames: dict  # object id → frame names the meta file lists for it

    def __len__(self) -> int:
        return len(self.frame_paths)

    @property
    def object_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self.object_frames))

    def start_at(self, frame_index: int) -> ObjectStart | None:
        """The objects that first appear in frame `frame_index`, or None."""
        for start in self.starts:
            if start.frame_index == frame_index:
                return start
        return None

    def frame(self, index: int) -> np.ndarray:
        """Frame `index` as RGB uint8 [H, W, 3]."""
        return read_frame(self.frame_paths[index])

    def frames(self) -> Iterator[np.ndarray]:
        for index in range(len(self)):
            yield self.frame(index)


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
        frame_paths = sorted(frame_dir.glob("*.jpg")) if frame_dir.is_dir() else []
        if not frame_paths:
            raise FileNotFoundError(f"video {name} is in {meta_path.name} but {frame_dir} has no JPEG frames")
        frame_names = tuple(p.stem for p in frame_paths)
        position = {stem: i for i, stem in enumerate(frame_names)}
        objects = _parse_objects(name, video, meta_path)
        by_frame: dict[str, list[int]] = {}
        for obj_id, frames in objects.items():
            by_frame.setdefault(frames[0], []).append(obj_id)
        starts = []
        for frame_name, ids in sorted(by_frame.items()):
            if frame_name not in position:
                raise ValueError(
                    f"video {name}: objects {sorted(ids)} start at frame {frame_name}, "
                    f"which is not in {frame_dir}"
                )
            annotation = base / "Annotations" / name / f"{frame_name}.png"
            if not annotation.is_file():
                raise FileNotFoundError(
                    f"video {name}: objects {sorted(ids)} start at {frame_name} but {annotation} is missing"
                )
            starts.append(ObjectStart(position[frame_name], frame_name, tuple(sorted(ids)), annotation))
        return YouTubeSequence(name, frame_names, tuple(frame_paths), tuple(starts), objects)

    def _describe(self) -> str:
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
