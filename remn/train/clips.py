"""Training samples: T-frame clips from static images (stage 0) and from videos (stage 1).

A sample is a pure function of a `SampleSpec` (which item, a seed, the curriculum's maximum
frame gap): every random choice comes from `random.Random(spec.seed)`. `ClipBatchSampler`
yields the specs of each iteration, sharded over distributed ranks, from any starting
iteration, so a resumed run draws exactly the samples the uninterrupted run would have.

Sample (one clip, O = `max_objects` slots, (h, w) = `crop_size`):

    frames        float32 [T, 3, h, w] RGB in [0, 1]
    first_masks   float32 [O, h, w]    frame 0's mask of each slot (zero for padding slots)
    labels        int64   [T, h, w]    0 background, k+1 the object in slot k, IGNORE_INDEX void
    object_valid  bool    [O]
    perturbed_first_masks  float32 [O, h, w]  RDE models only (`perturb_iou`): first_masks
                                       corrupted to an IoU target drawn per clip
                                       (`augment.perturb_mask`), what RDE-VOS's memory
                                       starts from

Objects are chosen at random among those visible (≥ `min_object_pixels`) in the first
sampled frame after cropping; objects not chosen are background.

Static images (`StaticImageClips`), for `--images-root ROOT`:

    ROOT/images/NAME.jpg | .jpeg | .png    RGB images
    ROOT/masks/NAME.png                    the mask of the image with the same stem:
                                           an indexed (palette) PNG holds object ids (0
                                           background, 255 void); any other PNG is a
                                           foreground mask (pixels above half its maximum
                                           value are the one object)

One image becomes a clip of T views as in STCN's dataset/static_dataset.py: a shared zoom
and flip, then per frame a rotation, zoom and shear, a random crop and, for a third of the
frames, a thin-plate-spline warp (`augment.random_static_views`, `augment.random_thin_plate`).
(`geometric_jitter` scales these ranges and the video ones.)

Videos (`VideoClips`) are `remn.data.Sequence`s (the DAVIS and YouTube-VOS readers). Clips use
annotated frames only; T of them are picked in order with gaps of 1..max_skip frames
(YouTube-VOS annotates every 5th frame, so its gaps are max_skip / 5 annotated frames),
in reverse order half the time. The whole clip shares one crop, flip, rotation (±15°) and
shear (±10°). STCN's dataset/vos_dataset.py differs: its random resized crop also varies
the aspect ratio (3/4..4/3), each frame gets its own rotation and shear, gaps reach
max_skip + 1, and outside the image is the mean colour; remn keeps its own video geometry,
with which remn demo and the learning check were measured.
"""
from __future__ import annotations

import os
import random
import warnings
from bisect import bisect_right
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from remn.data.davis import DavisDataset
from remn.data.palette import ANNOTATION_SUFFIXES, FRAME_SUFFIXES, VOID_ID, list_images, read_annotation, read_frame
from remn.data.sequence import Sequence as VideoSequence
from remn.data.youtube import YouTubeVOSDataset
from remn.train import augment
from remn.train.losses import IGNORE_INDEX

CROP_TRIES = 5  # crops tried per frame selection before picking new frames
FRAME_TRIES = 3  # frame selections tried before accepting a clip with no visible object
YOUTUBE_FRAME_STEP = 5


class SampleSpec(NamedTuple):
    """What to load: item `index` of the ClipDataset, with `seed` and the current max frame gap."""

    index: int
    seed: int
    max_skip: int


class RawClip(NamedTuple):
    frames: list[np.ndarray]  # T × uint8 [H, W, 3]
    ids: list[np.ndarray]  # T × uint8 [H, W] object ids (255 void)


# ----------------------------------------------------------------- static images
def foreground_ids(path: Path) -> np.ndarray:
    """A static mask PNG → ids uint8 [H, W]: palette PNGs keep their ids, other masks are
    thresholded at half their maximum into object 1."""
    ids, palette = read_annotation(path)
    if palette is not None:
        return ids
    top = int(ids.max())
    return (ids > top / 2).astype(np.uint8) if top > 0 else np.zeros_like(ids)


class StaticImageClips:
    """Clips made from single images and their masks (see the module docstring for the layout)."""

    static = True  # augmented into a clip of different views (augment.random_static_views)

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"images root {self.root} does not exist or is not a folder")
        images = {p.stem: p for p in list_images(self.root / "images")}
        masks = {p.stem: p for p in list_images(self.root / "masks", ANNOTATION_SUFFIXES)}
        if not images:
            raise ValueError(f"{self.root / 'images'} holds no {'/'.join(FRAME_SUFFIXES)} images (expected "
                             "ROOT/images/*.jpg and ROOT/masks/*.png with the same stems)")
        unmasked = sorted(set(images) - set(masks))
        if unmasked:
            raise ValueError(f"{len(unmasked)} images in {self.root / 'images'} have no mask "
                             f"{self.root / 'masks'}/STEM.png (first: {', '.join(unmasked[:5])})")
        orphans = sorted(set(masks) - set(images))
        if orphans:
            raise ValueError(f"{len(orphans)} masks in {self.root / 'masks'} have no image "
                             f"(first: {', '.join(orphans[:5])})")
        self.items = [(images[stem], masks[stem]) for stem in sorted(images)]

    def __len__(self) -> int:
        return len(self.items)

    def name(self, index: int) -> str:
        return self.items[index][0].stem

    def load(self, index: int, rng: random.Random, num_frames: int, max_skip: int) -> RawClip:
        image_path, mask_path = self.items[index]
        image, ids = read_frame(image_path), foreground_ids(mask_path)
        if ids.shape != image.shape[:2]:
            raise ValueError(f"mask {mask_path} is {ids.shape[0]}x{ids.shape[1]} but image {image_path} is "
                             f"{image.shape[0]}x{image.shape[1]}")
        return RawClip([image] * num_frames, [ids] * num_frames)


# ----------------------------------------------------------------- videos
def pick_frames(rng: random.Random, length: int, num_frames: int, max_skip: int) -> list[int]:
    """num_frames increasing indices into `length` frames with gaps in [1, max_skip] (the
    last frame repeats only when the video is shorter than the clip)."""
    room = length - 1
    start = rng.randint(0, room - min(room, num_frames - 1))
    picked = [start]
    for remaining in range(num_frames - 1, 0, -1):  # picks still to make, this one included
        current = picked[-1]
        space = room - current - (remaining - 1)  # leave a frame for each later pick
        if space < 1:
            picked.append(min(current + 1, room))
        else:
            picked.append(current + rng.randint(1, min(max_skip, space)))
    return picked


class VideoClips:
    """Clips from the annotated frames (`annotated_indices`) of `remn.data.Sequence`s.

    frame_step: the frame spacing of the annotations (1 for DAVIS, 5 for YouTube-VOS train);
    repeat: how many times each sequence counts per epoch.
    """

    static = False

    def __init__(self, sequences: Sequence[VideoSequence], *, label: str, frame_step: int = 1, repeat: int = 1):
        self.label = label
        self.frame_step = frame_step
        self.repeat = repeat
        self.sequences = []
        self.annotated: list[list[int]] = []
        short = []
        for sequence in sequences:
            indices = list(sequence.annotated_indices)
            if len(indices) < 2:
                short.append(sequence.name)
                continue
            self.sequences.append(sequence)
            self.annotated.append(indices)
        if not self.sequences:
            detail = f" (sequences with fewer than 2 annotated frames: {', '.join(short[:5])})" if short else ""
            raise ValueError(f"{label}: no sequence with at least 2 annotated frames{detail}")
        if short:
            warnings.warn(f"{label}: skipping {len(short)} sequences with fewer than 2 annotated frames "
                          f"(first: {', '.join(short[:5])})", stacklevel=2)

    def __len__(self) -> int:
        return len(self.sequences) * self.repeat

    def name(self, index: int) -> str:
        return self.sequences[index % len(self.sequences)].name

    def load(self, index: int, rng: random.Random, num_frames: int, max_skip: int) -> RawClip:
        index %= len(self.sequences)
        sequence, annotated = self.sequences[index], self.annotated[index]
        gap = max(1, max_skip // self.frame_step)
        picked = [annotated[i] for i in pick_frames(rng, len(annotated), num_frames, gap)]
        if rng.random() < 0.5:
            picked.reverse()
        return RawClip([sequence.frame(i) for i in picked], [sequence.annotation(i) for i in picked])


def davis_clips(root, split: str = "train", year: int = 2017, repeat: int = 1) -> VideoClips:
    """A DAVIS training split; every frame of a training sequence must be annotated."""
    dataset = DavisDataset(root, split=split, year=year)
    partial = [seq.name for seq in dataset if len(seq.annotated_indices) != seq.num_frames]
    if partial:
        raise ValueError(f"DAVIS {split} sequences with frames that have no mask: {', '.join(partial[:5])} "
                         f"(training on DAVIS needs every frame annotated)")
    return VideoClips(list(dataset), label=f"DAVIS {year} {split} at {root}", repeat=repeat)


def youtube_clips(root) -> VideoClips:
    """The YouTube-VOS train split (ROOT/train/{JPEGImages,Annotations}/VIDEO, meta.json);
    clips use the annotated frames, every 5th frame of the video."""
    dataset = YouTubeVOSDataset(root, split="train")
    return VideoClips(list(dataset), label=f"YouTube-VOS train at {root}", frame_step=YOUTUBE_FRAME_STEP)


# ----------------------------------------------------------------- the dataset
class ClipDataset(Dataset):
    """The concatenation of clip sources, indexed by `SampleSpec` (see the module docstring)."""

    def __init__(self, sources: Sequence, *, num_frames: int = 3, max_objects: int = 2,
                 crop_size: tuple[int, int] = (384, 384), min_crop_area: float = 0.36, min_object_pixels: int = 16,
                 geometric_jitter: float = 1.0, perturb_iou: tuple[float, float] | None = None):
        self.sources = [s for s in sources if len(s) > 0]
        if not self.sources:
            raise ValueError("the training data is empty: no source holds a usable clip")
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources]).tolist()
        self.num_frames = num_frames
        self.max_objects = max_objects
        self.crop_size = tuple(crop_size)
        self.min_crop_area = min_crop_area
        self.min_object_pixels = min_object_pixels
        self.jitter = geometric_jitter
        self.perturb_iou = perturb_iou

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int):
        """(source, index within it) of a dataset index."""
        if not 0 <= index < len(self):
            raise IndexError(f"clip index {index} out of range for {len(self)} clips")
        which = bisect_right(self.offsets, index) - 1
        return self.sources[which], index - self.offsets[which]

    def __getitem__(self, spec: SampleSpec) -> dict[str, torch.Tensor]:
        source, index = self.locate(spec.index)
        rng = random.Random(spec.seed)
        best = None
        for _ in range(FRAME_TRIES):
            raw = source.load(index, rng, self.num_frames, spec.max_skip)
            for _ in range(CROP_TRIES):
                frames, ids = self._transform(raw, rng, source.static)
                visible = self._visible_objects(ids[0])
                if visible:
                    return self._finish(frames, ids, visible, rng)
                best = (frames, ids)
        return self._finish(*best, [], rng)  # nothing visible anywhere: an all-background clip

    def _transform(self, raw: RawClip, rng: random.Random, static: bool):
        in_size = raw.frames[0].shape[:2]
        count, j = len(raw.frames), self.jitter
        if static:  # STCN's static-image views: a different view per frame, a third of them TPS-warped
            maps = augment.random_static_views(rng, in_size, self.crop_size, count, jitter=j)
            warps = [augment.random_thin_plate(rng, self.crop_size, scale=augment.TPS_SCALE * j).displacement_field(
                self.crop_size) if j > 0 and rng.random() < augment.TPS_PROBABILITY else None for _ in range(count)]
            clip_jitter, frame_jitter, fill = augment.STATIC_CLIP_JITTER, augment.STATIC_FRAME_JITTER, augment.STATIC_FILL
        else:  # videos: one geometry for the whole clip
            crop = augment.random_crop_affine(rng, in_size, self.crop_size, min_area=self.min_crop_area)
            maps = [augment.compose(crop, augment.random_jitter_affine(
                rng, self.crop_size, rotation=15 * j, shear=10 * j))] * count
            warps = [None] * count
            clip_jitter, frame_jitter, fill = augment.CLIP_JITTER, augment.FRAME_JITTER, None
        clip_colour = clip_jitter.sample(rng)
        frames, ids = [], []
        for frame, frame_ids, affine, warp in zip(raw.frames, raw.ids, maps, warps):
            if frame.shape[:2] != in_size or frame_ids.shape != in_size:
                raise ValueError(f"clip frames and masks must share one size, got {frame.shape[:2]} and "
                                 f"{frame_ids.shape} vs {in_size}")
            image = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float() / 255  # [3, H, W]
            image = augment.warp_image(image, affine, self.crop_size, displacement=warp, fill=fill)  # [3, h, w]
            image = augment.apply_colour(image, clip_colour)
            image = augment.apply_colour(image, frame_jitter.sample(rng))
            frames.append(image)
            frame_ids = torch.from_numpy(np.ascontiguousarray(frame_ids))
            ids.append(augment.warp_ids(frame_ids, affine, self.crop_size, displacement=warp))  # same grid as the image
        return torch.stack(frames), torch.stack(ids)  # [T, 3, h, w], uint8 [T, h, w]

    def _visible_objects(self, first_ids: torch.Tensor) -> list[int]:
        counts = torch.bincount(first_ids.flatten().long(), minlength=256)
        return [i for i in range(1, VOID_ID) if counts[i] >= self.min_object_pixels]

    def _finish(self, frames, ids, visible: list[int], rng: random.Random) -> dict[str, torch.Tensor]:
        chosen = rng.sample(visible, min(len(visible), self.max_objects))
        lookup = torch.zeros(256, dtype=torch.int64)  # id → class index
        for slot, object_id in enumerate(chosen):
            lookup[object_id] = slot + 1
        lookup[VOID_ID] = IGNORE_INDEX
        labels = lookup[ids.long()]  # [T, h, w]
        slots = torch.arange(1, self.max_objects + 1)
        first_masks = (labels[0][None] == slots[:, None, None]).float()  # [O, h, w]
        object_valid = torch.arange(self.max_objects) < len(chosen)
        sample = {"frames": frames, "first_masks": first_masks, "labels": labels, "object_valid": object_valid}
        if self.perturb_iou is not None:  # RDE-VOS: one IoU target per clip, U[perturb_min, perturb_max]
            target = rng.uniform(*self.perturb_iou)
            sample["perturbed_first_masks"] = torch.stack([
                augment.perturb_mask(mask, rng, target) if valid else mask for mask, valid in zip(first_masks, object_valid)
            ])  # [O, h, w]
        return sample


# ----------------------------------------------------------------- sampling
def _seed(*values: int) -> int:
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1, dtype=np.uint64)[0])


class ClipBatchSampler:
    """The per-rank batches of iterations [start, end): lists of `SampleSpec`.

    Global sample position p = (iteration · world_size + rank) · batch_size + k walks
    through one seeded permutation of the dataset per epoch (epoch = p // len); the
    sample's seed is derived from (seed, p). Ranks thus see disjoint shards of each global
    batch, and any iteration's batches can be rebuilt without replaying earlier ones.
    """

    def __init__(self, num_items: int, batch_size: int, *, seed: int, start: int, end: int,
                 max_skip_at: Callable[[int], int], rank: int = 0, world_size: int = 1):
        if num_items < 1:
            raise ValueError("cannot sample from an empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        self.num_items, self.batch_size = num_items, batch_size
        self.seed, self.start, self.end = seed, start, end
        self.max_skip_at = max_skip_at
        self.rank, self.world_size = rank, world_size
        self._epoch, self._order = None, None

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def _permutation(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(_seed(self.seed, 0, epoch) & ((1 << 63) - 1))
            self._epoch, self._order = epoch, torch.randperm(self.num_items, generator=generator).tolist()
        return self._order

    def batch(self, iteration: int) -> list[SampleSpec]:
        max_skip = self.max_skip_at(iteration)
        first = (iteration * self.world_size + self.rank) * self.batch_size
        specs = []
        for position in range(first, first + self.batch_size):
            epoch, offset = divmod(position, self.num_items)
            specs.append(SampleSpec(self._permutation(epoch)[offset], _seed(self.seed, 1, position), max_skip))
        return specs

    def __iter__(self):
        for iteration in range(self.start, self.end):
            yield self.batch(iteration)


def build_clip_dataset(config) -> ClipDataset:
    """The ClipDataset of a TrainConfig's sources (synthetic data must already be written)."""
    sources = []
    if config.images_root is not None:
        sources.append(StaticImageClips(config.images_root))
    if config.davis_root is not None:
        repeat = config.davis_repeat if config.youtube_root is not None else 1
        sources.append(davis_clips(config.davis_root, config.davis_split, config.davis_year, repeat))
    if config.youtube_root is not None:
        sources.append(youtube_clips(config.youtube_root))
    if config.synthetic:
        sources.append(davis_clips(Path(config.output) / "data", "train", 2017))
    return ClipDataset(sources, num_frames=config.num_frames, max_objects=config.max_objects,
                       crop_size=config.crop_size, min_crop_area=config.min_crop_area,
                       min_object_pixels=config.min_object_pixels, geometric_jitter=config.geometric_jitter,
                       perturb_iou=config.rde_perturb_iou if config.model_config.memory == "rde" else None)
