"""Image I/O for VOS data: annotation PNGs (ids + palette), RGB frames, and listing them.

An annotation is a uint8 id map [H, W]: 0 is background, 1..254 are objects and 255 is
void (DAVIS marks uncertain pixels with it). On disk it is an indexed ("P" mode) PNG whose
pixel values are the ids and whose palette only colours them. Colour (RGB) masks are
accepted with a warning and mapped back to ids; writes are atomic (temp file + rename).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from remn.data.atomic import atomic_path

VOID_ID = 255
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")  # what a frame or image file may end in, any case
ANNOTATION_SUFFIXES = (".png",)


def list_images(folder: str | os.PathLike, suffixes: tuple[str, ...] = FRAME_SUFFIXES) -> list[Path]:
    """The files of `folder` ending in one of `suffixes` (any case), in name order.

    Hidden files and sub-folders are skipped; a folder that does not exist holds none (the
    caller says what was expected there). Two files with the same stem (00000.jpg and
    00000.png) raise ValueError: a frame or mask is found by its stem.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    with os.scandir(folder) as entries:
        names = sorted(entry.name for entry in entries
                       if not entry.name.startswith(".") and entry.name.lower().endswith(suffixes)
                       and entry.is_file())
    by_stem: dict[str, str] = {}
    for name in names:
        stem = Path(name).stem
        if stem in by_stem:
            raise ValueError(f"{folder} holds two files with the stem {stem!r}: {by_stem[stem]}, {name}; keep one")
        by_stem[stem] = name
    return [folder / name for name in names]


def _voc_palette() -> np.ndarray:
    """The PASCAL VOC colour map that DAVIS annotations use: uint8 [256, 3].

    Id i spreads its bits over the channels, three at a time from the high bit down:
    bit 0 of each triple goes to red, bit 1 to green, bit 2 to blue.
    """
    ids = np.arange(256)
    palette = np.zeros((256, 3), dtype=np.int64)
    for level in range(8):  # level 0 sets each channel's bit 7, level 7 its bit 0
        triple = (ids >> (3 * level)) & 7
        for channel in range(3):
            palette[:, channel] |= ((triple >> channel) & 1) << (7 - level)
    return palette.astype(np.uint8)


DAVIS_PALETTE = _voc_palette()
"""The DAVIS default palette, uint8 [256, 3]: id 0 black, 1 (128, 0, 0), 2 (0, 128, 0),
..., 255 (void) (224, 224, 192)."""
DAVIS_PALETTE.flags.writeable = False


def _palette_array(palette) -> np.ndarray:
    """Check and pad a palette to uint8 [256, 3]."""
    array = np.asarray(palette)
    if array.ndim == 1:
        if array.size % 3:
            raise ValueError(f"a flat palette must hold RGB triples, got {array.size} values")
        array = array.reshape(-1, 3)
    if array.ndim != 2 or array.shape[1] != 3 or not 1 <= array.shape[0] <= 256:
        raise ValueError(f"palette must have shape [N <= 256, 3], got {array.shape}")
    if array.dtype.kind not in "iu" or array.min() < 0 or array.max() > 255:
        raise ValueError("palette entries must be integers in [0, 255]")
    full = np.zeros((256, 3), dtype=np.uint8)
    full[: array.shape[0]] = array
    return full


def _colours_to_ids(rgb: np.ndarray, path) -> np.ndarray:
    """Map an RGB colour mask [H, W, 3] to ids [H, W] (see `read_annotation`)."""
    height, width, _ = rgb.shape
    packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    colours, first_index, inverse = np.unique(packed.ravel(), return_index=True, return_inverse=True)
    palette_packed = (
        (DAVIS_PALETTE[:, 0].astype(np.int64) << 16)
        | (DAVIS_PALETTE[:, 1].astype(np.int64) << 8)
        | DAVIS_PALETTE[:, 2]
    )
    lookup = {int(colour): index for index, colour in enumerate(palette_packed)}
    if all(int(colour) in lookup for colour in colours):
        colour_ids = np.array([lookup[int(colour)] for colour in colours], dtype=np.uint8)
        how = "by the DAVIS default palette"
    else:
        foreground = [i for i in np.argsort(first_index, kind="stable") if colours[i] != 0]
        if len(foreground) > VOID_ID - 1:
            raise ValueError(
                f"{path}: RGB mask has {len(colours)} distinct colours that are not all in the "
                f"DAVIS palette; at most {VOID_ID - 1} object colours plus black fit in ids "
                "1..254 (anti-aliased or JPEG-compressed masks are ambiguous: save an "
                "indexed PNG instead)"
            )
        colour_ids = np.zeros(len(colours), dtype=np.uint8)
        colour_ids[foreground] = np.arange(1, len(foreground) + 1)
        how = "black to 0, other colours to 1, 2, ... in raster order of first appearance"
    warnings.warn(
        f"{path}: annotation is an RGB colour mask, not an indexed PNG; mapped {len(colours)} "
        f"colours to ids {how}",
        stacklevel=3,
    )
    return colour_ids[inverse].reshape(height, width)


def read_annotation(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read an annotation PNG: (ids uint8 [H, W], palette uint8 [256, 3] or None).

    - indexed ("P") PNG: the pixel values are the ids, the palette is returned;
    - grayscale ("L"/"1"): the values are the ids, no palette;
    - RGB(A) colour mask: converted with a warning; colours map to their DAVIS palette ids
      when every colour is in that palette, else black to 0 and other colours to 1, 2, ...
      in raster order of first appearance. More than 254 non-black colours (anti-aliased
      edges) raise ValueError, as does a non-opaque alpha channel.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation {path} does not exist")
    with Image.open(path) as image:
        mode = image.mode
        if mode == "P":
            ids = np.array(image, dtype=np.uint8)
            raw = image.getpalette() or []
            palette = _palette_array(np.array(raw, dtype=np.int64)) if raw else None
            return ids, palette
        if mode in ("L", "1"):
            return np.array(image.convert("L"), dtype=np.uint8), None
        if mode in ("RGB", "RGBA"):
            pixels = np.array(image)
        else:
            raise ValueError(f"{path}: unsupported annotation image mode {mode!r} (want P, L or RGB)")
    if mode == "RGBA":
        if (pixels[..., 3] != 255).any():
            raise ValueError(f"{path}: RGBA mask with transparent pixels is ambiguous as an annotation")
        pixels = pixels[..., :3]
    return _colours_to_ids(pixels, path), DAVIS_PALETTE.copy()


def _atomic_save(image: Image.Image, path: Path, **save_args) -> None:
    """Save through a temp file in the same folder and rename it over `path`."""
    with atomic_path(path) as temp:
        image.save(temp, **save_args)


def write_annotation(path: str | os.PathLike, ids: np.ndarray, palette=None) -> None:
    """Write ids [H, W] (integers in 0..255) as an indexed PNG, atomically.

    palette: [N <= 256, 3] colours for ids 0..N-1 (default `DAVIS_PALETTE`).
    """
    array = np.asarray(ids)
    if array.ndim != 2:
        raise ValueError(f"ids must have shape [H, W], got {array.shape}")
    if array.dtype.kind not in "uib":
        raise TypeError(f"ids must be an integer array, got {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"ids must lie in 0..255, got range [{array.min()}, {array.max()}]")
    image = Image.fromarray(array.astype(np.uint8))  # "L"; putpalette makes it "P"
    image.putpalette(_palette_array(DAVIS_PALETTE if palette is None else palette).ravel().tolist())
    _atomic_save(image, Path(path), format="PNG")


def read_frame(path: str | os.PathLike) -> np.ndarray:
    """Read a JPEG/PNG frame as RGB uint8 [H, W, 3]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"frame {path} does not exist")
    with Image.open(path) as image:
        return np.array(image.convert("RGB"), dtype=np.uint8)


def write_frame(path: str | os.PathLike, frame: np.ndarray, quality: int = 95) -> None:
    """Write an RGB uint8 frame [H, W, 3], atomically; JPEG (at `quality`) or PNG by suffix."""
    array = np.asarray(frame)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"frame must be uint8 [H, W, 3], got {array.dtype} {array.shape}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        args = {"format": "JPEG", "quality": quality}
    elif suffix == ".png":
        args = {"format": "PNG"}
    else:
        raise ValueError(f"frame path must end in .jpg, .jpeg or .png, got {path.name}")
    _atomic_save(Image.fromarray(array), path, **args)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image file, read from its header only."""
    with Image.open(path) as image:
        width, height = image.size
    return height, width
