"""Writing the results of `remn segment`: one indexed palette PNG per frame, named like its
frame (stem + .png), written atomically by `remn.data.palette.write_annotation`, and
optional overlay JPEGs for viewing. (The input, a folder of frames or a video file with its
annotations, is read by `remn.data.video.open_video`.)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from remn.data.palette import DAVIS_PALETTE, write_annotation, write_frame

OVERLAY_FOLDER = "overlays"


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
