"""Deterministic synthetic VOS clips and DAVIS-layout datasets for tests and smoke runs.

A clip is textured shapes (ellipses and star-shaped polygons, each with its own noise
texture that turns with it) moving over a textured, slowly panning background. It has:
  - look-alike distractors: shapes with an annotated object's texture, labelled 0;
  - occlusions: all shapes are layered in a random depth order;
  - objects leaving and entering: about half the clips (by seed) send one object fully
    out of the frame for the middle third of the clip and bring it back;
  - any frame size (odd sizes included).
Every annotated object is visible in the first frame. Same arguments → same clip.

`make_clip`'s hard cases (exact twins passing close by, still stretches, sudden appearance
changes, a sweeping occluder, a forced leaver) and the named suites built from them
(`SUITES`: "hard", at 128×192 so the key map is 8×12 and a radius-2 or -3 window is
local) test what REMN claims: `write_suite` writes one as a DAVIS-layout tree.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from remn.data.palette import write_annotation, write_frame

MIN_SIDE = 8


@dataclass
class _Layer:
    """One shape: object id (0 for a distractor), geometry, texture and motion."""

    label: int
    kind: str  # "ellipse" or "polygon"
    radius: float  # bounding radius, px
    axes: tuple[float, float]  # ellipse semi-axes (u, v)
    vertices: np.ndarray  # polygon vertices [K, 2] as (u, v), star-shaped around 0
    texture: np.ndarray  # float [S, S, 3], S = 2 * ceil(radius) + 1
    start: np.ndarray  # (y, x) at t = 0
    velocity: np.ndarray  # (vy, vx) px/frame
    angle: float
    spin: float  # rad/frame
    exit_point: np.ndarray | None = None  # where a leaving object goes, fully outside
    bounces: bool = True  # False: moves in a straight line, leaving the frame (the occluder)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Bilinearly upsampled random grid: float [H, W, 3] in [-1, 1]."""
    grid_h, grid_w = int(height / cell) + 2, int(width / cell) + 2
    grid = rng.uniform(-1.0, 1.0, size=(grid_h, grid_w, 3))
    y = np.arange(height) / cell
    x = np.arange(width) / cell
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = (y - y0)[:, None, None], (x - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx  # [H, W, 3]
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _texture(rng, height, width, base_colour, contrast, cell) -> np.ndarray:
    """Noise texture around `base_colour`: float [H, W, 3] in [0, 255]."""
    coarse = _smooth_noise(rng, height, width, cell) * contrast
    fine = rng.uniform(-contrast / 3, contrast / 3, size=(height, width, 3))
    return np.clip(np.asarray(base_colour)[None, None, :] + coarse + fine, 0, 255).astype(np.float32)


def _inside(layer: _Layer, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether local coordinates (u, v) [...] fall inside the shape: bool [...]."""
    if layer.kind == "ellipse":
        a, b = layer.axes
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    inside = np.zeros(u.shape, dtype=bool)  # even-odd rule over the polygon's edges
    vu, vv = layer.vertices[:, 0], layer.vertices[:, 1]
    for i in range(len(vu)):
        u1, v1, u2, v2 = vu[i - 1], vv[i - 1], vu[i], vv[i]
        crosses = (v1 > v) != (v2 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = u1 + (v - v1) * (u2 - u1) / (v2 - v1)
        inside ^= crosses & (u < at)
    return inside


def _position(layer: _Layer, t: float, num_frames: int, height: int, width: int) -> np.ndarray:
    """Centre (y, x) at scene time t: bouncing inside the frame, or out-and-back for a leaver."""
    if layer.exit_point is not None:
        phase = 1.0 - abs(2.0 * t / max(num_frames - 1, 1) - 1.0)  # 0 → 1 → 0
        reach = min(1.0, 1.5 * phase)  # fully outside during the middle third
        return layer.start + (layer.exit_point - layer.start) * reach
    position = layer.start + layer.velocity * t
    if not layer.bounces:
        return position
    for axis, size in enumerate((height, width)):  # reflect into [0, size - 1]
        period = 2.0 * (size - 1)
        folded = np.mod(position[axis], period)
        position[axis] = folded if folded <= size - 1 else period - folded
    return position


def _render(layers, t, num_frames, background, height, width, textures=None):
    """Paint layers back to front at scene time t: (frame float [H, W, 3], ids uint8 [H, W]).
    textures: per layer, the texture to paint (default: each layer's own)."""
    frame = background.copy()
    ids = np.zeros((height, width), dtype=np.uint8)
    for index, layer in enumerate(layers):
        texture = layer.texture if textures is None else textures[index]
        cy, cx = _position(layer, t, num_frames, height, width)
        angle = layer.angle + layer.spin * t
        reach = int(np.ceil(layer.radius)) + 1
        y0, y1 = max(0, int(cy) - reach), min(height, int(cy) + reach + 2)
        x0, x1 = max(0, int(cx) - reach), min(width, int(cx) + reach + 2)
        if y0 >= y1 or x0 >= x1:
            continue  # entirely outside the frame
        dy = np.arange(y0, y1)[:, None] - cy
        dx = np.arange(x0, x1)[None, :] - cx
        cos, sin = np.cos(angle), np.sin(angle)
        u = cos * dx + sin * dy  # shape-local coordinates, [h, w]
        v = -sin * dx + cos * dy
        inside = _inside(layer, u, v)
        half = (layer.texture.shape[0] - 1) // 2
        tu = np.clip(np.rint(u).astype(int) + half, 0, 2 * half)
        tv = np.clip(np.rint(v).astype(int) + half, 0, 2 * half)
        window = frame[y0:y1, x0:x1]
        window[inside] = texture[tv, tu][inside]
        ids[y0:y1, x0:x1][inside] = layer.label
    return frame, ids


def _area(layer: _Layer) -> int:
    """Pixel count of the shape drawn whole (no clipping, no occlusion)."""
    reach = int(np.ceil(layer.radius)) + 1
    grid = np.arange(-reach, reach + 1, dtype=float)
    cos, sin = np.cos(layer.angle), np.sin(layer.angle)
    u = cos * grid[None, :] + sin * grid[:, None]
    v = -sin * grid[None, :] + cos * grid[:, None]
    return int(_inside(layer, u, v).sum())


def _make_layer(rng, label, radius, texture, kind=None) -> _Layer:
    kind = kind or ("ellipse" if rng.random() < 0.5 else "polygon")
    axes = (radius, radius * rng.uniform(0.55, 1.0))
    count = int(rng.integers(5, 9))
    angles = (np.arange(count) + rng.uniform(-0.3, 0.3, count)) * (2 * np.pi / count)
    radii = radius * rng.uniform(0.6, 1.0, count)
    vertices = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    return _Layer(
        label=label, kind=kind, radius=radius, axes=axes, vertices=vertices, texture=texture,
        start=np.zeros(2), velocity=np.zeros(2), angle=float(rng.uniform(0, 2 * np.pi)), spin=0.0,
    )


def _check_args(num_frames, height, width, num_objects, distractors):
    for name, value, low in (
        ("num_frames", num_frames, 1), ("height", height, MIN_SIDE), ("width", width, MIN_SIDE),
        ("num_objects", num_objects, 1), ("distractors", distractors, 0),
    ):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if num_objects > 254:
        raise ValueError(f"num_objects must be at most 254 (ids 1..254), got {num_objects}")


def make_clip(
    seed: int,
    num_frames: int = 10,
    height: int = 64,
    width: int = 96,
    num_objects: int = 2,
    *,
    distractors: int = 1,
    static: bool = False,
    twins: int = 0,
    still: tuple[tuple[int, int], ...] = (),
    appearance_changes: tuple[int, ...] = (),
    occluder: bool = False,
    leaver: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic clip: (frames uint8 [T, H, W, 3], masks uint8 [T, H, W]).

    masks hold ids 0 (background, distractors, twins, the occluder) and 1..num_objects
    (visible parts). static=True: nothing moves and there is no sensor noise, so all T
    frames are identical. The hard cases (each off by default; with all defaults the clip
    is what earlier versions made from the same seed):
      twins: per object, this many exact copies (shape, texture, size, spin), unannotated,
        starting elsewhere, each heading for a close pass by its object (about 2.3 radii
        between centres) somewhere in the middle of the clip, behind every object;
      still: frame ranges [start, end) where the scene stops (no motion, no pan; only
        sensor noise differs between frames);
      appearance_changes: frames from which every object wears a new texture of another
        colour (sudden appearance change; the masks do not change);
      occluder: a large textured shape, in front of everything, sweeping across the frame
        over the clip;
      leaver: True sends one object out of the frame for the middle third of the clip and
        back, False never; None (default) decides by the seed, for about half the clips.
    """
    _check_args(num_frames, height, width, num_objects, distractors)
    _check_hard_args(num_frames, twins, still, appearance_changes)
    rng = np.random.default_rng(seed)
    hard_rng = np.random.default_rng([seed, 7919])  # the hard cases draw here: the base clip is unchanged
    side = min(height, width)
    pan = np.zeros(2) if static else rng.uniform(-0.6, 0.6, size=2)  # px/frame
    margin = int(np.ceil(np.abs(pan).max() * num_frames)) + 1
    background = _texture(
        rng, height + 2 * margin, width + 2 * margin, rng.uniform(60, 190, size=3), 45, max(side / 4, 2)
    )
    hues = rng.permutation(num_objects) / num_objects
    layers = []
    scale = 1.0 / np.sqrt(max(1.0, num_objects / 3))
    for label in range(1, num_objects + 1):
        radius = max(3.0, side * rng.uniform(0.11, 0.2) * scale)
        hue = hues[label - 1] * 2 * np.pi
        colour = 128 + 100 * np.cos(hue + np.array([0.0, 2.1, 4.2]))
        size = 2 * int(np.ceil(radius)) + 1
        texture = _texture(rng, size, size, colour, 40, max(radius / 2, 1.5))
        layers.append(_make_layer(rng, label, radius, texture))
    for _ in range(distractors):  # same texture and kind as an object, similar size
        twin = layers[int(rng.integers(num_objects))]
        radius = twin.radius * rng.uniform(0.85, 1.1)
        size = 2 * int(np.ceil(radius)) + 1
        half, twin_half = size // 2, twin.texture.shape[0] // 2
        index = np.clip(np.arange(size) - half + twin_half, 0, 2 * twin_half)
        layers.append(_make_layer(rng, 0, radius, twin.texture[index][:, index], kind=twin.kind))
    speed_limit = 0.0 if static else max(1.0, 0.06 * side)
    leaves = None if static or num_frames < 4 else rng.random() >= 0.5
    if leaver is not None and not static and num_frames >= 4:
        leaves = leaver
    leaver = int(rng.integers(num_objects)) if leaves else None
    for layer in layers:
        heading = rng.uniform(0, 2 * np.pi)
        layer.velocity = rng.uniform(0.3, 1.0) * speed_limit * np.array([np.sin(heading), np.cos(heading)])
        layer.spin = 0.0 if static else float(rng.uniform(-0.12, 0.12))

    full_areas = np.array([_area(layer) for layer in layers[:num_objects]])
    for _attempt in range(100):  # place shapes so every object shows in frame 0
        depth = rng.permutation(len(layers))
        for layer in layers:
            layer.start = rng.uniform([0, 0], [height - 1, width - 1])
        ordered = [layers[i] for i in depth]
        _, ids0 = _render(ordered, 0, num_frames, background[:height, :width], height, width)
        areas = np.bincount(ids0.ravel(), minlength=num_objects + 1)[1:]
        if np.all(areas >= np.maximum(0.4 * full_areas, 4)):
            break
    else:
        raise ValueError(
            f"cannot place {num_objects} visible objects and {distractors} distractors in a "
            f"{height}x{width} frame; use fewer objects or a larger frame"
        )
    if leaver is not None:
        layer = layers[leaver]
        gaps = [layer.start[0], height - 1 - layer.start[0], layer.start[1], width - 1 - layer.start[1]]
        side_index = int(np.argmin(gaps))  # leave by the nearest side: 0 top, 1 bottom, 2 left, 3 right
        out = layer.radius * 1.5 + 2
        exit_point = layer.start.copy()
        axis, far_side = side_index // 2, side_index % 2
        exit_point[axis] = (height, width)[axis] - 1 + out if far_side else -out
        layer.exit_point = exit_point

    scene_time = _scene_time(num_frames, still)  # [T]: frame → scene time (flat where still)
    scene_frames = int(scene_time[-1]) + 1
    back = [_twin_of(hard_rng, layers[label - 1], scene_frames, height, width, speed_limit)
            for label in range(1, num_objects + 1) for _ in range(twins)]
    front = [_occluder(hard_rng, scene_frames, height, width)] if occluder else []
    ordered = back + ordered + front
    changed = _changed_textures(hard_rng, ordered, appearance_changes)  # (frame, textures) in time order
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    masks = np.empty((num_frames, height, width), dtype=np.uint8)
    for t in range(num_frames):
        scene_t = scene_time[t]
        oy, ox = np.rint(margin + pan * scene_t).astype(int)
        view = background[oy:oy + height, ox:ox + width]
        textures = None
        for start, worn in changed:
            if t >= start:
                textures = worn
        frame, ids = _render(ordered, scene_t, scene_frames, view, height, width, textures)
        if not static:
            frame += 2.0 * rng.standard_normal(size=frame.shape, dtype=np.float32)
        np.clip(frame, 0, 255, out=frame)
        frames[t] = np.rint(frame, out=frame)
        masks[t] = ids
    return frames, masks


def _check_hard_args(num_frames, twins, still, appearance_changes) -> None:
    if not isinstance(twins, (int, np.integer)) or twins < 0:
        raise ValueError(f"twins must be an integer >= 0, got {twins!r}")
    for start, end in still:
        if not 0 <= start < end <= num_frames:
            raise ValueError(f"still range ({start}, {end}) must satisfy 0 <= start < end <= num_frames={num_frames}")
    for frame in appearance_changes:
        if not 0 < frame < num_frames:
            raise ValueError(f"appearance change at frame {frame} must lie in 1..{num_frames - 1}")


def _scene_time(num_frames: int, still) -> np.ndarray:
    """Scene time of each frame: int [T], advancing by 1 per frame except inside `still` ranges."""
    advancing = np.ones(num_frames, dtype=np.int64)
    advancing[0] = 0
    for start, end in still:
        advancing[max(start, 1):end] = 0
    return np.cumsum(advancing)


def _twin_of(rng, target: _Layer, num_frames: int, height: int, width: int, speed_limit: float) -> _Layer:
    """An exact, unannotated copy of `target` that starts elsewhere and passes close by it."""
    meet = rng.uniform(0.3, 0.7) * max(num_frames - 1, 1)
    around = rng.uniform(0, 2 * np.pi)
    gap = 2.3 * target.radius
    meeting = _position(target, meet, num_frames, height, width) + gap * np.array([np.sin(around), np.cos(around)])
    heading = rng.uniform(0, 2 * np.pi)
    reach = min(max(speed_limit, 1.0) * meet, 0.6 * max(height, width))
    start = np.clip(meeting + reach * np.array([np.sin(heading), np.cos(heading)]), [0, 0], [height - 1, width - 1])
    return _Layer(
        label=0, kind=target.kind, radius=target.radius, axes=target.axes, vertices=target.vertices,
        texture=target.texture, start=start, velocity=(meeting - start) / meet, angle=target.angle, spin=target.spin,
    )


def _occluder(rng, num_frames: int, height: int, width: int) -> _Layer:
    """A large shape with its own texture crossing the frame once, in front of everything."""
    radius = 0.3 * min(height, width)
    size = 2 * int(np.ceil(radius)) + 1
    texture = _texture(rng, size, size, rng.uniform(40, 220, size=3), 50, max(radius / 3, 1.5))
    layer = _make_layer(rng, 0, radius, texture)
    y = rng.uniform(0.3, 0.7) * (height - 1)
    start, end = np.array([y, -radius]), np.array([height - 1 - y, width - 1 + radius])
    if rng.random() < 0.5:
        start, end = end, start
    layer.start, layer.bounces = start, False  # from just outside one side to just outside the other
    layer.velocity = (end - start) / max(num_frames - 1, 1)
    layer.spin = float(rng.uniform(-0.05, 0.05))
    return layer


def _changed_textures(rng, ordered: list[_Layer], frames) -> list[tuple[int, list[np.ndarray]]]:
    """At each frame of `frames`, every object (label > 0) takes a new texture of another hue."""
    changes, current = [], [layer.texture for layer in ordered]
    for frame in sorted(frames):
        current = list(current)
        for index, layer in enumerate(ordered):
            if layer.label > 0:
                size = layer.texture.shape[0]
                colour = 128 + 100 * np.cos(rng.uniform(0, 2 * np.pi) + np.array([0.0, 2.1, 4.2]))
                current[index] = _texture(rng, size, size, colour, 40, max(layer.radius / 2, 1.5))
        changes.append((frame, current))
    return changes


def sequence_seed(seed: int, index: int) -> int:
    """The clip seed of sequence `index` in a dataset written with `seed`."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def write_davis_dataset(
    root,
    num_sequences: int = 4,
    *,
    seed: int = 0,
    num_frames: int = 10,
    height: int = 64,
    width: int = 96,
    num_objects: int = 2,
    split: str = "val",
    year: int = 2017,
) -> list[str]:
    """Write a complete DAVIS-layout tree of synthetic clips; returns the sequence names.

    Writes JPEGImages/480p/SEQ/%05d.jpg (quality 95), Annotations/480p/SEQ/%05d.png
    (DAVIS-palette PNGs for every frame) and ImageSets/{year}/{split}.txt. Refuses to
    overwrite a split file that lists sequences it did not write.
    """
    if not isinstance(num_sequences, (int, np.integer)) or num_sequences < 1:
        raise ValueError(f"num_sequences must be an integer >= 1, got {num_sequences!r}")
    root = Path(root)
    names = [f"synthetic-{index:03d}" for index in range(num_sequences)]
    split_file = _checked_split_file(root, year, split, lambda name: name.startswith("synthetic-"), "synthetic")
    for index, name in enumerate(names):
        frames, masks = make_clip(
            sequence_seed(seed, index), num_frames, height, width, num_objects, distractors=1
        )
        _write_sequence(root, name, frames, masks)
    _write_split(split_file, names)
    return names


# ----------------------------------------------------------------------------- suites
HARD_SIZE = (128, 192)  # (H, W): a key map of 8 × 12, where a local window of radius 2-3 is local


@dataclass(frozen=True)
class SuitePart:
    """`count` videos of one kind: `make_clip` with these options."""

    kind: str  # the sequence names' prefix: what the videos test
    count: int
    num_frames: int
    options: tuple[tuple[str, object], ...]  # make_clip keyword arguments


# What each suite's parts test (the same kinds in both splits; the train split has more,
# shorter videos):
#   twins      each object has an exact, unannotated twin that passes close by it; global
#              matching cannot tell them apart by appearance;
#   long       300 frames with two still stretches of 70 frames (memorising every frame
#              there is pure redundancy) and two sudden appearance changes (where it is not);
#   occlusion  a large occluder sweeps across; one object leaves the frame and comes back.
SUITES: dict[str, dict[str, tuple[SuitePart, ...]]] = {
    "hard": {
        "val": (
            SuitePart("twins", 6, 60, (("num_objects", 2), ("twins", 1), ("distractors", 0))),
            SuitePart("long", 2, 300, (("num_objects", 2), ("distractors", 1), ("still", ((40, 110), (170, 240))),
                                       ("appearance_changes", (130, 260)))),
            SuitePart("occlusion", 3, 60, (("num_objects", 2), ("distractors", 1), ("occluder", True),
                                           ("leaver", True))),
        ),
        "train": (
            SuitePart("twins", 32, 40, (("num_objects", 2), ("twins", 1), ("distractors", 0))),
            SuitePart("long", 8, 120, (("num_objects", 2), ("distractors", 1), ("still", ((20, 50), (70, 100))),
                                       ("appearance_changes", (60, 105)))),
            SuitePart("occlusion", 16, 40, (("num_objects", 2), ("distractors", 1), ("occluder", True),
                                            ("leaver", True))),
        ),
    },
}


def suite_clips(suite: str, split: str = "val", *, seed: int = 0, size: tuple[int, int] = HARD_SIZE):
    """The videos of a suite's split, in order: yields (name, frames uint8 [T, H, W, 3],
    masks uint8 [T, H, W]). Seeds differ between splits, so train never sees a val video."""
    parts = _suite_parts(suite, split)
    height, width = size
    split_code = sum(ord(c) << (8 * i) for i, c in enumerate(split))
    for part in parts:
        for index in range(part.count):
            clip_seed = int(np.random.SeedSequence([seed, split_code, index, len(part.kind)]).generate_state(1)[0])
            frames, masks = make_clip(clip_seed, part.num_frames, height, width, **dict(part.options))
            yield f"{part.kind}-{index:03d}", frames, masks


def write_suite(root, suite: str, *, seed: int = 0, split: str = "val", size: tuple[int, int] = HARD_SIZE,
                year: int = 2017) -> list[str]:
    """Write a suite's split (`SUITES`) as a DAVIS-layout tree under `root`; returns the names.

    The same files as `write_davis_dataset` writes (JPEG frames, palette PNG masks of every
    frame, ImageSets/{year}/{split}.txt listing them); refuses to overwrite a split file
    that lists sequences it did not write.
    """
    root = Path(root)
    kinds = {part.kind for part in _suite_parts(suite, split)}
    split_file = _checked_split_file(root, year, split, lambda name: name.rsplit("-", 1)[0] in kinds,
                                     f"of suite {suite!r}")
    names = []
    for name, frames, masks in suite_clips(suite, split, seed=seed, size=size):
        _write_sequence(root, name, frames, masks)
        names.append(name)
    _write_split(split_file, names)
    return names


def _suite_parts(suite: str, split: str) -> tuple[SuitePart, ...]:
    """SUITES[suite][split], or ValueError naming what exists."""
    if suite not in SUITES:
        raise ValueError(f"unknown synthetic suite {suite!r}; suites: {sorted(SUITES)}")
    if split not in SUITES[suite]:
        raise ValueError(f"synthetic suite {suite!r} has no split {split!r}; splits: {sorted(SUITES[suite])}")
    return SUITES[suite][split]


def _checked_split_file(root: Path, year, split: str, ours, what: str) -> Path:
    """ImageSets/{year}/{split}.txt under root; ValueError when it exists and lists a
    sequence `ours(name)` does not claim (another dataset's split file is never overwritten)."""
    if int(year) not in (2016, 2017):
        raise ValueError(f"year must be 2016 or 2017, got {year}")
    split_file = root / "ImageSets" / str(int(year)) / f"{split}.txt"
    if split_file.is_file():
        foreign = [name for name in split_file.read_text().split() if not ours(name)]
        if foreign:
            raise ValueError(f"{split_file} lists sequences that are not {what} ({', '.join(foreign[:3])}); "
                             "refusing to overwrite another dataset's split file")
    return split_file


def _write_split(split_file: Path, names: list[str]) -> None:
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text("".join(f"{name}\n" for name in names))


def _write_sequence(root: Path, name: str, frames: np.ndarray, masks: np.ndarray) -> None:
    """JPEGImages/480p/NAME/%05d.jpg (quality 95) and Annotations/480p/NAME/%05d.png."""
    frame_dir = root / "JPEGImages" / "480p" / name
    mask_dir = root / "Annotations" / "480p" / name
    for folder, suffix in ((frame_dir, ".jpg"), (mask_dir, ".png")):
        if folder.is_dir():  # drop frames left by an earlier, longer clip
            for stale in folder.glob(f"*{suffix}"):
                os.unlink(stale)
    for t in range(len(frames)):
        write_frame(frame_dir / f"{t:05d}.jpg", frames[t], quality=95)
        write_annotation(mask_dir / f"{t:05d}.png", masks[t])
