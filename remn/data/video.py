"""One video given on its own (`remn segment FRAMES --mask MASK`) as a `Sequence`.

    FRAMES   a folder of frames (any of `FRAME_SUFFIXES`, in name order; results are named
             like them) or a video file, decoded with PyAV or imageio when one of them is
             importable (frames named 00000, 00001, ...)
    MASK     the first frame's annotation PNG (or, with `mask_frame`, that frame's), or a
             folder of annotation PNGs named like the frames: objects that first appear
             on later frames start there

Frames load lazily, one at a time, and a video file's frames stream from the decoder
(`pip install remn[video]` brings PyAV). Every annotation starts objects with the ids in
it (`ObjectStart.object_ids` None); the first frame must be annotated unless
`first_annotated=False` (propagation both ways, `remn.inference.bidirectional`).
"""
from __future__ import annotations

import importlib.util
import os
from contextlib import closing
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from remn.data.palette import ANNOTATION_SUFFIXES, FRAME_SUFFIXES, list_images
from remn.data.sequence import FileSequence, ObjectStart, Sequence


def video_backend() -> str | None:
    """The video decoder that is importable: "av" (preferred), "imageio", or None."""
    for name in ("av", "imageio"):
        if importlib.util.find_spec(name) is not None:
            return name
    return None


def open_video(frames: str | os.PathLike, annotations: str | os.PathLike, mask_frame: int | str | None = None,
               first_annotated: bool = True) -> Sequence:
    """A folder of frames (a `FileSequence`) or a video file (a `VideoFileSequence`) with
    its annotations: one PNG for the first frame (or for frame `mask_frame`, its index or
    its name), or a folder of PNGs named like the frames. first_annotated: the first frame
    must have an annotation (forward-only propagation starts there)."""
    frames = Path(frames)
    if mask_frame is not None and Path(annotations).is_dir():
        raise ValueError("mask_frame names the frame of a single annotation PNG; a folder's PNGs are named like their frames")
    if frames.is_dir():
        return _frame_folder(frames, Path(annotations), mask_frame, first_annotated)
    if frames.is_file():
        if frames.suffix.lower() in FRAME_SUFFIXES:
            raise ValueError(f"{frames} is a single image; pass the folder that holds the video's frames")
        return VideoFileSequence(frames, annotations, mask_frame, first_annotated)
    raise FileNotFoundError(f"input {frames} does not exist (want a folder of frames or a video file)")


def _annotation_files(annotations: Path, first_frame: str) -> dict[str, Path]:
    """Frame name → annotation PNG: a single file annotates `first_frame`."""
    if annotations.is_dir():
        found = {p.stem: p for p in list_images(annotations, ANNOTATION_SUFFIXES)}
        if not found:
            raise FileNotFoundError(f"annotation folder {annotations} holds no PNG")
        return found
    if annotations.is_file():
        return {first_frame: annotations}
    raise FileNotFoundError(f"annotation {annotations} does not exist")


def _single_mask_frame(mask_frame: int | str | None, name_of: Callable[[int], str], count: int | None) -> str | None:
    """The name of the frame a single annotation PNG belongs to (None: the first frame)."""
    if mask_frame is None:
        return None
    if isinstance(mask_frame, int) and not isinstance(mask_frame, bool):
        if mask_frame < 0 or (count is not None and mask_frame >= count):
            raise ValueError(f"mask frame {mask_frame} is not a frame index of the video ({count} frames)")
        return name_of(mask_frame)
    return str(mask_frame)


def _starts(name: str, files: dict[str, Path], index_of: Callable[[str], int | None],
            first_frame: str, first_annotated: bool = True) -> dict[int, Path]:
    """Frame index → annotation file, checked: every file names a frame, the first is
    annotated (when `first_annotated`)."""
    unknown = sorted(stem for stem in files if index_of(stem) is None)
    if unknown:
        raise ValueError(f"{name}: annotations {unknown[:5]} name no frame of the video")
    if first_annotated and first_frame not in files:
        raise ValueError(f"{name}: the first frame {first_frame} has no annotation")
    return dict(sorted((index_of(stem), path) for stem, path in files.items()))


def _frame_folder(folder: Path, annotations: Path, mask_frame=None, first_annotated: bool = True) -> FileSequence:
    frame_paths = list_images(folder)
    if not frame_paths:
        raise FileNotFoundError(f"{folder} holds no frames ({', '.join(FRAME_SUFFIXES)})")
    position = {p.stem: index for index, p in enumerate(frame_paths)}
    first = frame_paths[0].stem
    single = _single_mask_frame(mask_frame, lambda i: frame_paths[i].stem, len(frame_paths)) or first
    by_index = _starts(folder.name, _annotation_files(annotations, single), position.get, first, first_annotated)
    starts = [ObjectStart(index, frame_paths[index].stem, None, path) for index, path in by_index.items()]
    return FileSequence(folder.name, frame_paths, [by_index.get(i) for i in range(len(frame_paths))], starts)


class VideoFileSequence(Sequence):
    """A video file, decoded with PyAV (preferred) or imageio; frames named 00000, 00001, ...

    The frame count is only known by decoding the whole file, so `frame_names` is None;
    `frame(i)` decodes from the start. annotations: as for `open_video`, named like the frames.
    """

    frame_names = None

    def __init__(self, path: str | os.PathLike, annotations: str | os.PathLike, mask_frame: int | str | None = None,
                 first_annotated: bool = True):
        self.path = Path(path)
        self.name = self.path.stem
        self.backend = video_backend()
        if self.backend is None:
            raise ValueError(f"{self.path} is a video file; reading one needs PyAV (`pip install remn[video]`) or imageio "
                             "(`pip install imageio[pyav]`), or pass a folder of frames instead")
        with closing(self._decode()) as decoded:
            first = next(decoded, None)
        if first is None:
            raise ValueError(f"video {self.path} has no frames")
        self.size = first.shape[:2]
        single = _single_mask_frame(mask_frame, self.frame_name, None) or self.frame_name(0)
        files = _annotation_files(Path(annotations), single)
        self.annotation_paths = _starts(self.name, files, self._index_of, self.frame_name(0), first_annotated)
        self.starts = tuple(ObjectStart(index, self.frame_name(index), None, path)
                            for index, path in self.annotation_paths.items())
        self.annotated_indices = tuple(self.annotation_paths)

    def __repr__(self) -> str:
        return f"VideoFileSequence({str(self.path)!r}, size={self.size})"

    def frame_name(self, index: int) -> str:
        return f"{index:05d}"

    def _index_of(self, frame_name: str) -> int | None:
        """The index of the frame named `frame_name`, or None where no frame has that name."""
        if not frame_name.isdigit() or self.frame_name(int(frame_name)) != frame_name:
            return None
        return int(frame_name)

    def _decode(self) -> Iterator[np.ndarray]:
        try:
            if self.backend == "av":
                import av

                with av.open(str(self.path)) as container:
                    for frame in container.decode(video=0):
                        yield frame.to_ndarray(format="rgb24")
            else:
                import imageio.v3 as iio

                for frame in iio.imiter(self.path):
                    yield np.ascontiguousarray(np.asarray(frame)[..., :3], dtype=np.uint8)
        except (OSError, ValueError, RuntimeError) as err:
            raise ValueError(f"cannot decode video {self.path}: {err}") from err

    def frames(self) -> Iterator[np.ndarray]:
        """The decoded frames in order: uint8 [H, W, 3] each."""
        with closing(self._decode()) as decoded:
            for frame in decoded:
                if frame.shape[:2] != self.size:
                    raise ValueError(f"video {self.path} changes frame size mid-stream")
                yield frame

    def frame(self, index: int) -> np.ndarray:
        """Frame `index`, decoded from the start of the file: uint8 [H, W, 3]."""
        count = 0
        with closing(self.frames()) as frames:
            for count, frame in enumerate(frames, start=1):
                if count - 1 == index:
                    return frame
        raise IndexError(f"video {self.path} has no frame {index} (it has {count})")

    def annotation(self, index: int) -> np.ndarray:
        """Ground truth of frame `index` (its annotation PNG): ids uint8 [H, W]."""
        return self._read_annotation(self.annotation_paths.get(index), index)
