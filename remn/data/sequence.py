"""The one interface every dataset reader implements: a `Sequence` is one video and its
annotations, read lazily; a `SequenceCollection` is a split of them.

`remn segment`, `remn train`, `remn evaluate` and the benchmarks read videos only through
these members, so adding a dataset is one reader whose sequences implement `Sequence`:

    name               the video's name (its results go to a folder of that name)
    size               (H, W) of every frame
    frame_names        frame stems in order (a frame's result is STEM.png), or None where the
                       count is only known by decoding the whole video (a video file)
    frame_name(i)      the stem of frame i (also where `frame_names` is None)
    num_frames         len(frame_names), or None
    frames()           the frames one at a time, uint8 [H, W, 3] each, never all in memory
    frame(i)           frame i alone, uint8 [H, W, 3]
    starts             `ObjectStart`s ordered by frame: where objects first appear and the
                       annotation to take their masks from (what semi-supervised VOS is given)
    start_at(i)        the start on frame i, or None
    object_ids         the ids of the annotated objects
    palette            the first start's annotation palette, uint8 [256, 3], or None: results
                       are written in the colours they were given in
    annotated_indices  frames with a ground-truth annotation (training and evaluation read them)
    annotation(i)      frame i's ground truth: ids uint8 [H, W], 0 background, 255 void
    annotations()      every frame's ground truth, ids uint8 [T, H, W]
    single_object      True where the ground truth merges every object into id 1 (DAVIS 2016)

`FileSequence` implements it for a video stored as files (one image per frame, annotation
PNGs named like their frames): the DAVIS, YouTube-VOS and frame-folder readers build one.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Generic, Iterable, Iterator, TypeVar

import numpy as np

from remn.data.palette import VOID_ID, image_size, read_annotation, read_frame


def merge_objects(ids: np.ndarray) -> np.ndarray:
    """DAVIS 2016 convention: ids [..., H, W] → 0 background, 1 object, 255 void kept."""
    merged = (ids > 0).astype(np.uint8)
    merged[ids == VOID_ID] = VOID_ID
    return merged


def object_ids_in(ids: np.ndarray) -> tuple[int, ...]:
    """The object ids present in ids [..., H, W], without background (0) and void (255)."""
    return tuple(int(i) for i in np.unique(ids) if i not in (0, VOID_ID))


def load_annotation_file(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """`read_annotation`, with an unreadable file reported as ValueError naming it."""
    try:
        return read_annotation(path)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise ValueError(f"cannot read annotation {path}: {err}") from err


@dataclass(frozen=True)
class ObjectStart:
    """Objects that start on one frame: the annotation holding their masks and their ids.

    object_ids: the ids this annotation introduces; None: the ids in it (on a later frame
    the segmenter then takes only those it does not track yet). merge: DAVIS 2016, every
    object merged into id 1.
    """

    frame_index: int
    frame_name: str
    object_ids: tuple[int, ...] | None
    annotation_path: Path
    merge: bool = False

    def load_mask(self) -> np.ndarray:
        """The annotation as given: ids uint8 [H, W], void and ids not introduced here set to 0."""
        ids, _ = load_annotation_file(self.annotation_path)
        if self.merge:
            ids = merge_objects(ids)
        ids = np.where(ids == VOID_ID, 0, ids)  # void is "don't care", not an object
        if self.object_ids is not None:
            ids = np.where(np.isin(ids, self.object_ids), ids, 0)
        return ids.astype(np.uint8)


class Sequence(ABC):
    """One video and its annotations (members in the module docstring).

    A reader sets `name`, `size`, `frame_names`, `starts` (at least one, ordered by frame
    index) and `annotated_indices`, and implements `frames`, `frame` and `annotation`.
    """

    name: str
    size: tuple[int, int]
    frame_names: tuple[str, ...] | None
    starts: tuple[ObjectStart, ...]
    annotated_indices: tuple[int, ...]
    single_object: bool = False

    @abstractmethod
    def frames(self) -> Iterator[np.ndarray]:
        """The frames in order, loaded one at a time: uint8 [H, W, 3] each."""

    @abstractmethod
    def frame(self, index: int) -> np.ndarray:
        """Frame `index`: uint8 [H, W, 3]."""

    @abstractmethod
    def annotation(self, index: int) -> np.ndarray:
        """Ground truth of frame `index`: ids uint8 [H, W]; FileNotFoundError where it has none."""

    @property
    def num_frames(self) -> int | None:
        return None if self.frame_names is None else len(self.frame_names)

    def frame_name(self, index: int) -> str:
        return self.frame_names[index]

    def start_at(self, frame_index: int) -> ObjectStart | None:
        """The objects that first appear in frame `frame_index`, or None."""
        for start in self.starts:
            if start.frame_index == frame_index:
                return start
        return None

    @cached_property
    def object_ids(self) -> tuple[int, ...]:
        """The ids of all starts (a start without listed ids: the ids in its annotation)."""
        ids: set[int] = set()
        for start in self.starts:
            ids.update(start.object_ids if start.object_ids is not None else object_ids_in(start.load_mask()))
        return tuple(sorted(ids))

    @cached_property
    def palette(self) -> np.ndarray | None:
        """The palette of the first start's annotation: uint8 [256, 3], or None (not indexed)."""
        return load_annotation_file(self.starts[0].annotation_path)[1]

    def annotations(self) -> np.ndarray:
        """Ground truth of every frame: ids uint8 [T, H, W]; every frame must be annotated."""
        if self.num_frames is None:
            raise ValueError(f"sequence {self.name}: the frame count of a video file is only known by decoding "
                             "it; ground truth for every frame needs a folder of frames")
        annotated = set(self.annotated_indices)
        missing = [self.frame_name(i) for i in range(self.num_frames) if i not in annotated]
        if missing:
            raise FileNotFoundError(
                f"sequence {self.name}: {len(missing)} frames have no annotation (first: {', '.join(missing[:5])})"
            )
        stack = np.empty((self.num_frames, *self.size), dtype=np.uint8)
        for index in range(self.num_frames):
            stack[index] = self.annotation(index)
        return stack

    def _check_size(self, path: Path, size: tuple[int, int]) -> None:
        if tuple(size) != tuple(self.size):
            raise ValueError(
                f"sequence {self.name}: {path} is {size[0]}x{size[1]} (HxW) but the frames are "
                f"{self.size[0]}x{self.size[1]}"
            )

    def _read_annotation(self, path: Path | None, index: int) -> np.ndarray:
        """The ground truth in `path`, frame `index`'s annotation file: ids uint8 [H, W]."""
        if path is None:
            raise FileNotFoundError(f"sequence {self.name}: frame {self.frame_name(index)} has no annotation")
        ids, _ = load_annotation_file(path)
        self._check_size(path, ids.shape)
        return merge_objects(ids) if self.single_object else ids


class FileSequence(Sequence):
    """A video stored as files: one image per frame, annotation PNGs named like their frames.

    frame_paths: T image files in order; annotation_paths: T paths, None for a frame without
    an annotation; starts: see `ObjectStart`; single_object: DAVIS 2016, every annotated
    object merged into id 1 (void stays 255). The frame size is read from the first frame's
    header when first asked for.
    """

    def __init__(self, name: str, frame_paths: Iterable, annotation_paths: Iterable,
                 starts: Iterable[ObjectStart], single_object: bool = False):
        self.name = name
        self.frame_paths = tuple(Path(p) for p in frame_paths)
        self.annotation_paths = tuple(None if p is None else Path(p) for p in annotation_paths)
        self.starts = tuple(starts)
        self.single_object = single_object
        if not self.frame_paths:
            raise ValueError(f"sequence {name} has no frames")
        if len(self.annotation_paths) != len(self.frame_paths):
            raise ValueError(f"sequence {name}: one annotation path (or None) per frame is needed")
        if not self.starts:
            raise ValueError(f"sequence {name}: no annotation to start from")
        self.frame_names = tuple(p.stem for p in self.frame_paths)
        self.annotated_indices = tuple(i for i, p in enumerate(self.annotation_paths) if p is not None)

    def __len__(self) -> int:
        return len(self.frame_paths)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, frames={len(self)})"

    @cached_property
    def size(self) -> tuple[int, int]:
        try:
            return image_size(self.frame_paths[0])
        except FileNotFoundError:
            raise FileNotFoundError(f"sequence {self.name}: frame {self.frame_paths[0]} does not exist") from None
        except OSError as err:
            raise ValueError(f"sequence {self.name}: cannot read frame {self.frame_paths[0]}: {err}") from err

    @property
    def has_all_annotations(self) -> bool:
        return len(self.annotated_indices) == len(self)

    def frame(self, index: int) -> np.ndarray:
        """Frame `index` as RGB uint8 [H, W, 3]."""
        path = self.frame_paths[index]
        try:
            frame = read_frame(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"sequence {self.name}: frame {path} no longer exists") from None
        except OSError as err:
            raise ValueError(f"sequence {self.name}: cannot read frame {path}: {err}") from err
        self._check_size(path, frame.shape[:2])
        return frame

    def frames(self) -> Iterator[np.ndarray]:
        """Frames one at a time, loaded lazily: uint8 [H, W, 3] each."""
        for index in range(len(self)):
            yield self.frame(index)

    def annotation(self, index: int) -> np.ndarray:
        """Annotation of frame `index`: ids uint8 [H, W] (single_object: objects merged to 1)."""
        return self._read_annotation(self.annotation_paths[index], index)


SequenceT = TypeVar("SequenceT", bound=Sequence)


class SequenceCollection(ABC, Generic[SequenceT]):
    """The sequences of one split: `dataset[i]`, `dataset["name"]`, `len`, iteration, `names`.

    Subclasses call `_set_sequences` once and name themselves in `describe()` for errors.
    """

    sequences: list[SequenceT]

    def _set_sequences(self, sequences: Iterable[SequenceT]) -> None:
        self.sequences = list(sequences)
        self._by_name = {seq.name: seq for seq in self.sequences}

    @abstractmethod
    def describe(self) -> str:
        """The split in words, for messages: "DAVIS 2017 val"."""

    @property
    def names(self) -> list[str]:
        return [seq.name for seq in self.sequences]

    def __len__(self) -> int:
        return len(self.sequences)

    def __iter__(self) -> Iterator[SequenceT]:
        return iter(self.sequences)

    def __getitem__(self, key: int | str) -> SequenceT:
        if isinstance(key, str):
            if key not in self._by_name:
                raise KeyError(f"no sequence {key!r} in {self.describe()}")
            return self._by_name[key]
        return self.sequences[key]

    def select(self, names: Iterable[str] | None) -> list[SequenceT]:
        """The sequences named (all when `names` is empty or None), in the split's order."""
        if not names:
            return list(self.sequences)
        names = list(names)
        unknown = [name for name in names if name not in self._by_name]
        if unknown:
            raise ValueError(f"{self.describe()} has no sequences {unknown}")
        wanted = set(names)
        return [seq for seq in self.sequences if seq.name in wanted]
