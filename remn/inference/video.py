"""Reading the frames to segment and writing the results.

Input: a folder of frames (JPEG/PNG, in name order) or a video file (decoded with PyAV or
imageio when one of them is importable). Frames load lazily, one at a time.
Output: one indexed palette PNG per frame, named like its frame (stem + .png), written
atomically by `remn.data.palette.write_annotation`; optional overlay JPEGs for viewing.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from remn.data.palette import DAVIS_PALETTE, image_size, read_frame, write_annotation, write_frame

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
OVERLAY_FOLDER = "overlays"


def list_frames(folder: str | os.PathLike) -> list[Path]:
    """The frame files of a folder, in name order (hidden files skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"frame folder {folder} does not exist")
    paths = sorted(
        (folder / name for name in os.listdir(folder)
         if not name.startswith(".") and name.lower().endswith(FRAME_SUFFIXES)),
        key=lambda p: p.name,
    )
    if not paths:
        raise FileNotFoundError(f"{folder} holds no frames ({', '.join(FRAME_SUFFIXES)})")
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise ValueError(f"{folder} holds frames with the same name in two formats; keep one")
    return paths


class FrameSource:
    """Frames of one video: `size` (H, W); iteration yields (name, uint8 [H, W, 3]) where name
    is the output stem; `len()` is the frame count when known up front (folders)."""

    size: tuple[int, int]

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        raise NotImplementedError

    @property
    def count(self) -> int | None:
        return None


class FolderFrames(FrameSource):
    def __init__(self, paths: list[Path]):
        self.paths = [Path(p) for p in paths]
        try:
            self.size = image_size(self.paths[0])
        except OSError as err:
            raise ValueError(f"cannot read frame {self.paths[0]}: {err}") from err

    @property
    def count(self) -> int:
        return len(self.paths)

    @property
    def names(self) -> list[str]:
        return [p.stem for p in self.paths]

    def __iter__(self):
        for path in self.paths:
            try:
                frame = read_frame(path)
            except FileNotFoundError:
                raise FileNotFoundError(f"frame {path} disappeared while segmenting") from None
            except OSError as err:
                raise ValueError(f"cannot read frame {path}: {err}") from err
            if frame.shape[:2] != self.size:
                raise ValueError(f"frame {path} is {frame.shape[0]}x{frame.shape[1]} but the first frame is "
                                 f"{self.size[0]}x{self.size[1]} (HxW)")
            yield path.stem, frame


class VideoFileFrames(FrameSource):
    """A video file, decoded with PyAV (preferred) or imageio; frames named 00000, 00001, ..."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.backend = video_backend()
        if self.backend is None:
            raise ValueError(f"{self.path} is a video file; reading one needs PyAV (`pip install av`) or imageio "
                             "(`pip install imageio[pyav]`), or pass a folder of frames instead")
        first = next(iter(self._decode()), None)
        if first is None:
            raise ValueError(f"video {self.path} has no frames")
        self.size = first.shape[:2]

    def _decode(self):
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

    def __iter__(self):
        for index, frame in enumerate(self._decode()):
            if frame.shape[:2] != self.size:
                raise ValueError(f"video {self.path} changes frame size mid-stream")
            yield f"{index:05d}", frame


def video_backend() -> str | None:
    for name in ("av", "imageio"):
        if importlib.util.find_spec(name) is not None:
            return name
    return None


def open_frames(path: str | os.PathLike) -> FrameSource:
    """A folder of frames or a video file → FrameSource."""
    path = Path(path)
    if path.is_dir():
        return FolderFrames(list_frames(path))
    if path.is_file():
        if path.suffix.lower() in FRAME_SUFFIXES:
            raise ValueError(f"{path} is a single image; pass the folder that holds the video's frames")
        return VideoFileFrames(path)
    raise FileNotFoundError(f"input {path} does not exist (want a folder of frames or a video file)")


# ----------------------------------------------------------------------------- output
def existing_results(folder: Path) -> list[Path]:
    """Result PNGs already in `folder` (empty when the folder does not exist)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))


def check_output(folder: Path, overwrite: bool) -> None:
    """Refuse a folder that already holds results unless `overwrite`."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"output {folder} exists and is not a folder")
    found = existing_results(folder)
    if found and not overwrite:
        raise ValueError(f"output folder {folder} already holds {len(found)} result PNGs "
                         f"(e.g. {found[0].name}); pass --overwrite to replace them")


def write_labels(path: Path, labels: np.ndarray, palette: np.ndarray | None) -> None:
    """labels uint8 [H, W] of ids → indexed PNG with `palette` (DAVIS default when None), atomically."""
    write_annotation(path, labels, DAVIS_PALETTE if palette is None else palette)


def write_overlay(path: Path, frame: np.ndarray, labels: np.ndarray, palette: np.ndarray | None) -> None:
    """The frame with each object blended half and half with its palette colour, as JPEG, atomically."""
    colours = np.asarray(DAVIS_PALETTE if palette is None else palette, dtype=np.uint8)  # [256, 3]
    tint = colours[labels]  # [H, W, 3]
    blended = ((frame.astype(np.uint16) + tint + 1) >> 1).astype(np.uint8)  # rounded mean, in integers
    write_frame(path, np.where((labels > 0)[..., None], blended, frame), quality=90)
