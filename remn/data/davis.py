"""DAVIS dataset reader (2016 single-object and 2017 multi-object layouts).

    ROOT/JPEGImages/480p/SEQ/00000.jpg       frames
    ROOT/Annotations/480p/SEQ/00000.png      indexed PNGs: 0 background, 1.. objects, 255 void
    ROOT/ImageSets/2016|2017/{train,val}.txt one sequence name per line

Frames and annotations load lazily. DAVIS 2016 is single-object: every non-zero,
non-void id is merged into object 1 (void stays 255).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from remn.data.palette import ANNOTATION_SUFFIXES, FRAME_SUFFIXES, image_size, list_images
from remn.data.sequence import FileSequence, ObjectStart, SequenceCollection

YEARS = (2016, 2017)


class DavisSequence(FileSequence):
    """One DAVIS sequence: T frames, their annotations (where present) and object ids.

    The first frame's annotation gives the objects (`starts` holds that one start); its
    size is checked against the frames' here. DAVIS 2016 (single_object): every non-zero,
    non-void id is object 1.
    """

    def __init__(self, name: str, frame_paths, annotation_paths, single_object: bool = False):
        frame_paths = tuple(Path(p) for p in frame_paths)
        annotation_paths = tuple(None if p is None else Path(p) for p in annotation_paths)
        if not frame_paths:
            raise ValueError(f"sequence {name} has no frames")
        if not annotation_paths or annotation_paths[0] is None:
            raise FileNotFoundError(
                f"sequence {name} has no first-frame annotation ({frame_paths[0].stem}.png is missing)"
            )
        start = ObjectStart(0, frame_paths[0].stem, None, annotation_paths[0], merge=single_object)
        super().__init__(name, frame_paths, annotation_paths, [start], single_object=single_object)
        self._check_size(annotation_paths[0], image_size(annotation_paths[0]))

    def first_annotation(self) -> np.ndarray:
        """First-frame annotation: ids uint8 [H, W]."""
        return self.annotation(0)


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
        frames = list_images(frame_root / name)
        if not frames:
            raise FileNotFoundError(f"sequence {name} is listed but {frame_root / name} has no JPEG frames "
                                    f"(nor any other {'/'.join(FRAME_SUFFIXES)} image)")
        annotations = {p.stem: p for p in list_images(annotation_root / name, ANNOTATION_SUFFIXES)}
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

    def describe(self) -> str:
        return f"DAVIS {self.year} {self.split}"

    def __repr__(self) -> str:
        return (
            f"DavisDataset({str(self.root)!r}, split={self.split!r}, year={self.year}, "
            f"sequences={len(self)})"
        )
