"""DAVIS dataset reader (2016 single-object and 2017 multi-object layouts).

    ROOT/JPEGImages/480p/SEQ/00000.jpg       frames
    ROOT/Annotations/480p/SEQ/00000.png      indexed PNGs: 0 background, 1.. objects, 255 void
    ROOT/ImageSets/2016|2017/{train,val}.txt one sequence name per line

Frames and annotations load lazily. DAVIS 2016 is single-object: every non-zero,
non-void id is merged into object 1 (void stays 255).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from remn.data.collection import SequenceCollection
from remn.data.palette import VOID_ID, image_size, read_annotation, read_frame

YEARS = (2016, 2017)
FRAME_SUFFIXES = (".jpg", ".jpeg")


def merge_objects(ids: np.ndarray) -> np.ndarray:
    """DAVIS 2016 convention: ids [..., H, W] → 0 background, 1 object, 255 void kept."""
    merged = (ids > 0).astype(np.uint8)
    merged[ids == VOID_ID] = VOID_ID
    return merged


class DavisSequence:
    """One DAVIS sequence: T frames, their annotations (where present) and object ids.

    frame_names: stems ("00000", ...) in order; size: (H, W) of every frame.
    """

    def __init__(self, name: str, frame_paths, annotation_paths, single_object: bool = False):
        self.name = name
        self.frame_paths = tuple(Path(p) for p in frame_paths)
        self.annotation_paths = tuple(None if p is None else Path(p) for p in annotation_paths)
        self.single_object = single_object
        if not self.frame_paths:
            raise ValueError(f"sequence {name} has no frames")
        if len(self.annotation_paths) != len(self.frame_paths):
            raise ValueError(f"sequence {name}: one annotation path (or None) per frame is needed")
        if self.annotation_paths[0] is None:
            raise FileNotFoundError(
                f"sequence {name} has no first-frame annotation "
                f"({self.frame_paths[0].stem}.png is missing)"
            )
        self.frame_names = tuple(p.stem for p in self.frame_paths)
        self.size = image_size(self.frame_paths[0])
        self._check_size(self.annotation_paths[0], image_size(self.annotation_paths[0]))
        self._object_ids: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.frame_paths)

    def __repr__(self) -> str:
        return f"DavisSequence({self.name!r}, frames={len(self)}, size={self.size})"

    def _check_size(self, path: Path, size: tuple[int, int]) -> None:
        if size != self.size:
            raise ValueError(
                f"sequence {self.name}: {path} is {size[0]}x{size[1]} (HxW) but the frames are "
                f"{self.size[0]}x{self.size[1]}"
            )

    def frame(self, index: int) -> np.ndarray:
        """Frame `index` as RGB uint8 [H, W, 3]."""
        frame = read_frame(self.frame_paths[index])
        self._check_size(self.frame_paths[index], frame.shape[:2])
        return frame

    def frames(self) -> Iterator[np.ndarray]:
        """Frames one at a time, loaded lazily: uint8 [H, W, 3] each."""
        for index in range(len(self)):
            yield self.frame(index)

    @property
    def has_all_annotations(self) -> bool:
        return all(p is not None for p in self.annotation_paths)

    def annotation(self, index: int) -> np.ndarray:
        """Annotation of frame `index`: ids uint8 [H, W] (2016: objects merged to 1)."""
        path = self.annotation_paths[index]
        if path is None:
            raise FileNotFoundError(
                f"sequence {self.name}: frame {self.frame_names[index]} has no annotation"
            )
        ids, _ = read_annotation(path)
        self._check_size(path, ids.shape)
        return merge_objects(ids) if self.single_object else ids

    def first_annotation(self) -> np.ndarray:
        """First-frame annotation: ids uint8 [H, W]."""
        return self.annotation(0)

    def annotations(self) -> np.ndarray:
        """All annotations: ids uint8 [T, H, W]; every frame must be annotated."""
        missing = [n for n, p in zip(self.frame_names, self.annotation_paths) if p is None]
        if missing:
            raise FileNotFoundError(
                f"sequence {self.name}: {len(missing)} frames have no annotation "
                f"(first: {', '.join(missing[:5])})"
            )
        stack = np.empty((len(self), *self.size), dtype=np.uint8)
        for index in range(len(self)):
            stack[index] = self.annotation(index)
        return stack

    @property
    def object_ids(self) -> tuple[int, ...]:
        """Ids present in the first-frame annotation, without background and void."""
        if self._object_ids is None:
            present = np.unique(self.first_annotation())
            self._object_ids = tuple(int(i) for i in present if i not in (0, VOID_ID))
        return self._object_ids


def _list_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        (folder / name for name in os.listdir(folder)
         if not name.startswith(".") and name.lower().endswith(suffixes)),
        key=lambda p: p.name,
    )


class DavisDataset(SequenceCollection[DavisSequence]):
    """The sequences of one DAVIS split: `dataset[i]`, `dataset["bike-packing"]`, iteration.

    root: folder holding JPEGImages/, Annotations/ and ImageSets/; year: 2016 or 2017.
    """

    def __init__(self, root, split: str = "val", year: int = 2017, resolution: str = "480p"):
        year = int(year)
        if year not in YEARS:
            raise ValueError(f"year must be one of {YEARS}, got {year}")
        self.root = Path(root)
        self.split, self.year, self.resolution = split, year, resolution
        if not self.root.is_dir():
            raise FileNotFoundError(f"DAVIS root {self.root} does not exist or is not a folder")
        split_file = self.root / "ImageSets" / str(year) / f"{split}.txt"
        if not split_file.is_file():
            folder = split_file.parent
            known = sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []
            raise FileNotFoundError(
                f"split file {split_file} does not exist"
                + (f" (splits there: {', '.join(known)})" if known else "")
            )
        names = []
        for line in split_file.read_text().splitlines():
            name = line.strip()
            if name and name not in names:
                names.append(name)
        if not names:
            raise ValueError(f"split file {split_file} lists no sequences")
        frame_root = self.root / "JPEGImages" / resolution
        annotation_root = self.root / "Annotations" / resolution
        self._set_sequences([self._scan(name, frame_root, annotation_root) for name in names])

    def _scan(self, name: str, frame_root: Path, annotation_root: Path) -> DavisSequence:
        frames = _list_files(frame_root / name, FRAME_SUFFIXES)
        if not frames:
            raise FileNotFoundError(f"sequence {name} is listed but {frame_root / name} has no JPEG frames")
        annotations = {p.stem: p for p in _list_files(annotation_root / name, (".png",))}
        if not annotations:
            raise FileNotFoundError(
                f"sequence {name} is listed but {annotation_root / name} has no PNG annotations"
            )
        stems = {p.stem for p in frames}
        orphans = sorted(set(annotations) - stems)
        if orphans:
            raise ValueError(
                f"sequence {name}: annotations without a frame: {', '.join(orphans[:5])}"
            )
        return DavisSequence(
            name, frames, [annotations.get(p.stem) for p in frames], single_object=self.year == 2016
        )

    def _describe(self) -> str:
        return f"DAVIS {self.year} {self.split}"

    def __repr__(self) -> str:
        return (
            f"DavisDataset({str(self.root)!r}, split={self.split!r}, year={self.year}, "
            f"sequences={len(self)})"
        )
