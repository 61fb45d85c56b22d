"""Geometric and photometric augmentation of training clips, driven by a seeded `random.Random`.

Every random draw comes from the `rng` the caller passes (one per sample, seeded from the
sample's position in the run), so a sample is a pure function of its seed: no global
random state is read, which keeps data loading reproducible with any number of workers
and across a resume.

Geometry is one affine map per frame from output (crop) pixel coordinates to input pixel
coordinates (pixel-index coordinates), applied with `grid_sample` (bilinear for images,
nearest for id maps), optionally after a thin-plate-spline warp of the crop
(`ThinPlateSpline`): output pixel p reads input pixel A(p + d(p)). Image and ids share
the sampling grid, so they stay aligned.

Videos: a random resized crop with a horizontal flip (`random_crop_affine`) composed with
a random rotation / shear of the crop about its centre (`random_jitter_affine`); outside
the image is black / background.

Static images follow STCN's dataset/static_dataset.py (RDE-VOS's is the same)
(`random_static_views`): for the whole clip a zoom in [0.8, 1.5] about the centre and a
horizontal flip; per frame a rotation of ±20°, a zoom in [0.9, 1.1] and a shear of ±10°
about the centre, a resize that makes the image just cover the crop and a random crop
position; then, for a third of the frames, a thin-plate-spline warp through 12 random
control points moved by N(0, 0.02) of the crop size (`random_thin_plate`, STCN's
dataset/tps.py); outside the image is the ImageNet mean colour / background. Colour:
`STATIC_CLIP_JITTER` for the clip, `STATIC_FRAME_JITTER` per frame. Where remn departs from
that code: the spline is composed with the affine map into one resampling (STCN remaps the
finished crop again, bilinear, so pixels the spline pulls from beyond the crop are black
there and real image here); torchvision's ColorJitter applies its four adjustments in a
random order, `apply_colour` in a fixed one; masks are resampled nearest where STCN
resamples its 0/255 masks bicubic and thresholds them at half.

RDE-VOS's first-mask perturbation (`perturb_mask`) is here too: the memory of an RDE clip
is built from a corrupted first mask.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from remn.model.network import IMAGENET_MEAN


@dataclass(frozen=True)
class Affine:
    """Output pixel → input pixel: p_in = matrix · p_out + offset (both (x, y))."""

    matrix: tuple[tuple[float, float], tuple[float, float]]
    offset: tuple[float, float]


def _uniform(rng: random.Random, low: float, high: float) -> float:
    return low + (high - low) * rng.random()


def compose(outer: Affine, inner: Affine) -> Affine:
    """The map p → outer(inner(p))."""
    (a, b), (c, d) = outer.matrix
    (e, f), (g, h) = inner.matrix
    matrix = ((a * e + b * g, a * f + b * h), (c * e + d * g, c * f + d * h))
    x, y = inner.offset
    offset = (a * x + b * y + outer.offset[0], c * x + d * y + outer.offset[1])
    return Affine(matrix, offset)


def random_crop_affine(
    rng: random.Random,
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    *,
    min_area: float = 0.36,
    flip: bool = True,
) -> Affine:
    """A random resized crop of `in_size` (H, W) to `out_size`, mirrored with probability 1/2.

    The crop covers a fraction in [min_area, 1] of the largest output-shaped window that
    fits the image, at a random position inside it.
    """
    in_h, in_w = in_size
    out_h, out_w = out_size
    fit = min(in_h / out_h, in_w / out_w)  # input px per output px for the largest window
    scale = fit * math.sqrt(_uniform(rng, min_area, 1.0))
    half_h, half_w = scale * out_h / 2, scale * out_w / 2
    centre_x = _uniform(rng, half_w, in_w - half_w)  # continuous image coordinates
    centre_y = _uniform(rng, half_h, in_h - half_h)
    mirror = -1.0 if flip and rng.random() < 0.5 else 1.0
    a, d = mirror * scale, scale
    # pixel index x sits at continuous x + 0.5; the crop's centre pixel maps to the centre
    offset = (centre_x - 0.5 - a * (out_w - 1) / 2, centre_y - 0.5 - d * (out_h - 1) / 2)
    return Affine(((a, 0.0), (0.0, d)), offset)


def random_jitter_affine(
    rng: random.Random,
    out_size: tuple[int, int],
    *,
    rotation: float = 0.0,
    shear: float = 0.0,
    scale: float = 0.0,
    translate: float = 0.0,
) -> Affine:
    """A random map of the crop onto itself about its centre: rotation and shear of ± degrees,
    zoom by a factor in [1 − scale, 1 + scale], shift by ± translate of the crop size.

        p ↦ c + R(θ) · Shear(φ) · z · (p − c) + δ,    Shear(φ) = [[1, tan φ], [0, 1]]
    """
    out_h, out_w = out_size
    theta = math.radians(_uniform(rng, -rotation, rotation))
    phi = math.radians(_uniform(rng, -shear, shear))
    zoom = _uniform(rng, 1.0 - scale, 1.0 + scale)
    shift_x = translate * out_w * _uniform(rng, -1.0, 1.0)
    shift_y = translate * out_h * _uniform(rng, -1.0, 1.0)
    cos, sin, tan = math.cos(theta), math.sin(theta), math.tan(phi)
    a, b = cos * zoom, (cos * tan - sin) * zoom
    c, d = sin * zoom, (sin * tan + cos) * zoom
    cx, cy = (out_w - 1) / 2, (out_h - 1) / 2
    offset = (cx - (a * cx + b * cy) + shift_x, cy - (c * cx + d * cy) + shift_y)
    return Affine(((a, b), (c, d)), offset)


def _theta(affine: Affine, in_size, out_size) -> torch.Tensor:
    """The affine map in `affine_grid`'s normalised coordinates (align_corners=False): [1, 2, 3]."""
    in_h, in_w = in_size
    out_h, out_w = out_size
    # pixel index x ↔ normalised u: x = ((u + 1)·W − 1) / 2
    denorm_out = torch.tensor([[out_w / 2, 0, (out_w - 1) / 2], [0, out_h / 2, (out_h - 1) / 2], [0, 0, 1]],
                              dtype=torch.float64)
    norm_in = torch.tensor([[2 / in_w, 0, 1 / in_w - 1], [0, 2 / in_h, 1 / in_h - 1], [0, 0, 1]], dtype=torch.float64)
    (a, b), (c, d) = affine.matrix
    pixel = torch.tensor([[a, b, affine.offset[0]], [c, d, affine.offset[1]], [0, 0, 1]], dtype=torch.float64)
    return (norm_in @ pixel @ denorm_out)[None, :2].float()  # [1, 2, 3]


def about_centre(matrix: tuple[tuple[float, float], tuple[float, float]], size: tuple[int, int]) -> Affine:
    """The map p ↦ c + M (p − c) about the centre c of an (H, W) pixel grid."""
    height, width = size
    cx, cy = (width - 1) / 2, (height - 1) / 2
    (a, b), (c, d) = matrix
    return Affine(matrix, (cx - (a * cx + b * cy), cy - (c * cx + d * cy)))


def invert(affine: Affine) -> Affine:
    """The inverse map (ValueError for a singular matrix)."""
    (a, b), (c, d) = affine.matrix
    det = a * d - b * c
    if det == 0:
        raise ValueError(f"cannot invert the singular affine map {affine}")
    inverse = ((d / det, -b / det), (-c / det, a / det))
    x, y = affine.offset
    return Affine(inverse, (-(inverse[0][0] * x + inverse[0][1] * y), -(inverse[1][0] * x + inverse[1][1] * y)))


def _rotate_shear_zoom(theta_deg: float, shear_deg: float, zoom: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """R(θ) · Shear_x(φ) · zoom, torchvision RandomAffine's forward matrix with a shear along x."""
    theta, phi = math.radians(theta_deg), math.radians(shear_deg)
    cos, sin, tan = math.cos(theta), math.sin(theta), math.tan(phi)
    return ((cos * zoom, (cos * tan - sin) * zoom), (sin * zoom, (sin * tan + cos) * zoom))


def random_static_views(
    rng: random.Random, in_size: tuple[int, int], out_size: tuple[int, int], num_frames: int, *, jitter: float = 1.0
) -> list[Affine]:
    """STCN's static-image views of one image: num_frames output → input maps.

    Forward, per frame: shared zoom z ∈ [1 − 0.2j, 1 + 0.5j] and flip, then the frame's own
    rotation ±20j°, zoom [1 − 0.1j, 1 + 0.1j] and shear ±10j° (all about the image centre),
    then a resize by s = max(h / H, w / W) (STCN: the shorter side to 384) and a crop of
    `out_size` (h, w) at a random integer position; j = `jitter` (0: the crop and the flip
    only). The returned maps are the inverses, crop pixel → input pixel.
    """
    zoom = _uniform(rng, 1.0 - 0.2 * jitter, 1.0 + 0.5 * jitter)
    mirror = -1.0 if rng.random() < 0.5 else 1.0
    shared = about_centre(((mirror * zoom, 0.0), (0.0, zoom)), in_size)  # flip ∘ zoom (they commute)
    in_h, in_w = in_size
    out_h, out_w = out_size
    scale = max(out_h / in_h, out_w / in_w)
    resized_h, resized_w = max(out_h, round(in_h * scale)), max(out_w, round(in_w * scale))
    views = []
    for _ in range(num_frames):
        own = about_centre(_rotate_shear_zoom(_uniform(rng, -20 * jitter, 20 * jitter),
                                              _uniform(rng, -10 * jitter, 10 * jitter),
                                              _uniform(rng, 1.0 - 0.1 * jitter, 1.0 + 0.1 * jitter)), in_size)
        top, left = rng.randint(0, resized_h - out_h), rng.randint(0, resized_w - out_w)
        # crop pixel p → resized pixel p + (left, top) → image pixel ((p + offset) + 0.5) / s − 0.5
        crop = Affine(((1 / scale, 0.0), (0.0, 1 / scale)), ((left + 0.5) / scale - 0.5, (top + 0.5) / scale - 0.5))
        views.append(compose(invert(shared), compose(invert(own), crop)))
    return views


@dataclass(frozen=True)
class ThinPlateSpline:
    """A smooth warp of a crop onto itself: output pixel p reads the crop at p + d(p).

    d is the thin-plate spline (kernel U(r) = r² log r plus an affine part) through the
    control points with the given displacements, exact at the points. Points and
    displacements are in crop units (x / W, y / H), as in the `thinplate` package STCN uses.
    """

    points: tuple[tuple[float, float], ...]  # (x, y) where the displacement is prescribed
    displacements: tuple[tuple[float, float], ...]  # (dx, dy) at each point

    def displacement_field(self, out_size: tuple[int, int]) -> torch.Tensor:
        """The warp at every output pixel centre of (H, W): float32 [H, W, 2], (dx, dy) in pixels."""
        height, width = out_size
        points = torch.tensor(self.points, dtype=torch.float64)  # [n, 2]
        targets = torch.tensor(self.displacements, dtype=torch.float64)  # [n, 2]
        count = points.shape[0]
        affine_part = torch.cat([torch.ones(count, 1, dtype=torch.float64), points], dim=1)  # [n, 3]
        system = torch.zeros(count + 3, count + 3, dtype=torch.float64)
        system[:count, :count] = _tps_kernel(torch.cdist(points, points))
        system[:count, count:] = affine_part
        system[count:, :count] = affine_part.T
        right = torch.cat([targets, torch.zeros(3, 2, dtype=torch.float64)])  # [n + 3, 2]
        coefficients = torch.linalg.solve(system, right)  # [n + 3, 2]: kernel weights, then (1, x, y)
        ys = (torch.arange(height, dtype=torch.float64) + 0.5) / height
        xs = (torch.arange(width, dtype=torch.float64) + 0.5) / width
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).view(-1, 2)  # [H·W, 2] (x, y)
        basis = torch.cat([_tps_kernel(torch.cdist(grid, points)), torch.ones(grid.shape[0], 1, dtype=torch.float64),
                           grid], dim=1)  # [H·W, n + 3]
        field = (basis @ coefficients).view(height, width, 2)  # crop units
        return (field * torch.tensor([width, height], dtype=torch.float64)).float()


def _tps_kernel(distance: torch.Tensor) -> torch.Tensor:
    """U(r) = r² log r, with U(0) = 0."""
    return distance.square() * torch.log(distance.clamp_min(1e-12))


TPS_PROBABILITY = 0.33  # STCN: "Use TPS only some of the times", np.random.rand() < 0.33 per frame
TPS_POINTS = 12  # random_tps_warp(n_ctrl_pts=12)
TPS_SCALE = 0.02  # random_tps_warp(scale=0.02): the control points move by N(0, 0.02) of the crop


def random_thin_plate(
    rng: random.Random, out_size: tuple[int, int], *, scale: float = TPS_SCALE, num_points: int = TPS_POINTS
) -> ThinPlateSpline:
    """STCN's random TPS warp: control points at distinct random rows and columns, each moved
    by N(0, scale) crop units; the crop content at a point's old place appears at its new one."""
    height, width = out_size
    if height < num_points or width < num_points:
        raise ValueError(f"a {num_points}-point thin-plate warp needs a crop of at least {num_points} px a side, "
                         f"got {height}x{width}")
    xs = [x / width for x in rng.sample(range(width), num_points)]
    ys = [y / height for y in rng.sample(range(height), num_points)]
    moves = [(rng.gauss(0.0, scale), rng.gauss(0.0, scale)) for _ in range(num_points)]
    moved = tuple((x + dx, y + dy) for x, y, (dx, dy) in zip(xs, ys, moves))
    return ThinPlateSpline(moved, tuple((-dx, -dy) for dx, dy in moves))


def sampling_grid(
    affine: Affine, in_size, out_size, displacement: torch.Tensor | None = None
) -> torch.Tensor:
    """`grid_sample`'s grid [1, h, w, 2] for output pixel p reading input pixel
    A(p + displacement(p)); displacement [h, w, 2] (dx, dy) in output pixels, or None."""
    theta = _theta(affine, in_size, out_size)  # [1, 2, 3]
    grid = F.affine_grid(theta, [1, 1, *out_size], align_corners=False)  # [1, h, w, 2]
    if displacement is None:
        return grid
    out_h, out_w = out_size
    shift = displacement * torch.tensor([2 / out_w, 2 / out_h])  # [h, w, 2] in normalised output units
    return grid + (shift @ theta[0, :, :2].T)[None]  # the linear part carries the shift to the input


def warp_image(image: torch.Tensor, affine: Affine, out_size: tuple[int, int], *,
               displacement: torch.Tensor | None = None, fill: tuple[float, ...] | None = None) -> torch.Tensor:
    """image float [C, H, W] → [C, h, w] (bilinear; outside the image `fill` per channel, black when None)."""
    grid = sampling_grid(affine, image.shape[-2:], out_size, displacement)
    if fill is None:
        return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    colour = torch.tensor(fill, dtype=image.dtype).view(-1, 1, 1)  # [C, 1, 1]
    shifted = F.grid_sample((image - colour)[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return shifted[0] + colour


def warp_ids(ids: torch.Tensor, affine: Affine, out_size: tuple[int, int], *,
             displacement: torch.Tensor | None = None) -> torch.Tensor:
    """ids uint8 [H, W] → uint8 [h, w] (nearest; background 0 outside)."""
    grid = sampling_grid(affine, ids.shape[-2:], out_size, displacement)
    warped = F.grid_sample(ids[None, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return warped[0, 0].round().to(torch.uint8)


class ColourFactors(NamedTuple):
    brightness: float
    contrast: float
    saturation: float
    grayscale: bool
    hue: float  # shift of the hue, a fraction of the colour circle


@dataclass(frozen=True)
class ColourJitter:
    """Brightness, contrast and saturation factors in [1 − x, 1 + x], a hue shift in ±hue,
    grayscale with a probability (torchvision's ColorJitter and RandomGrayscale ranges)."""

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    grayscale: float = 0.0
    hue: float = 0.0

    def sample(self, rng: random.Random) -> ColourFactors:
        brightness = _uniform(rng, 1 - self.brightness, 1 + self.brightness)
        contrast = _uniform(rng, 1 - self.contrast, 1 + self.contrast)
        saturation = _uniform(rng, 1 - self.saturation, 1 + self.saturation)
        grayscale = rng.random() < self.grayscale
        hue = _uniform(rng, -self.hue, self.hue) if self.hue > 0 else 0.0  # no draw without hue jitter
        return ColourFactors(brightness, contrast, saturation, grayscale, hue)


def _gray(image: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] → luma [..., 1, H, W] (ITU-R 601)."""
    r, g, b = image.unbind(dim=-3)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)


def shift_hue(image: torch.Tensor, shift: float) -> torch.Tensor:
    """image float [..., 3, H, W] in [0, 1] → same, with the HSV hue rotated by `shift` turns
    (torchvision's adjust_hue): h' = (h + shift) mod 1, saturation and value kept."""
    maximum, _ = image.max(dim=-3)
    minimum, _ = image.min(dim=-3)
    chroma = maximum - minimum  # [..., H, W]
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    r, g, b = image.unbind(dim=-3)
    hue = torch.where(maximum == r, ((g - b) / safe) % 6,
                      torch.where(maximum == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6  # [..., H, W] turns
    hue = torch.where(chroma > 0, hue, torch.zeros_like(hue))
    hue = (hue + shift) % 1.0
    sector = hue * 6  # the standard HSV → RGB: channel n takes v − c·clamp(min(k, 4 − k), 0, 1), k = (n + 6h) mod 6
    channels = [maximum - chroma * torch.clamp(torch.minimum((n + sector) % 6, 4 - (n + sector) % 6), 0, 1)
                for n in (5, 3, 1)]
    return torch.stack(channels, dim=-3)


def apply_colour(image: torch.Tensor, factors: ColourFactors) -> torch.Tensor:
    """image float [..., 3, H, W] in [0, 1] with ColourFactors → same shape: brightness, contrast,
    saturation, hue, then grayscale."""
    image = (image * factors.brightness).clamp(0, 1)
    mean = _gray(image).mean(dim=(-3, -2, -1), keepdim=True)
    image = ((image - mean) * factors.contrast + mean).clamp(0, 1)
    gray = _gray(image)
    image = ((image - gray) * factors.saturation + gray).clamp(0, 1)
    if factors.hue != 0.0:
        image = shift_hue(image, factors.hue)
    if factors.grayscale:
        image = _gray(image).expand_as(image).clone()
    return image


# Videos: a clip-level jitter plus a small per-frame one. STCN's dataset/vos_dataset.py uses
# ColorJitter(0.1, 0.03, 0.03, 0) + RandomGrayscale(0.05) per clip and ColorJitter(0.01, 0.01,
# 0.01, 0) per frame; remn's are somewhat stronger (kept: remn demo and the learning check
# were measured with them).
CLIP_JITTER = ColourJitter(brightness=0.1, contrast=0.05, saturation=0.05, grayscale=0.05)
FRAME_JITTER = ColourJitter(brightness=0.05, contrast=0.02, saturation=0.02)
# Static images, STCN's dataset/static_dataset.py: ColorJitter(0.1, 0.05, 0.05, 0.05) +
# RandomGrayscale(0.05) for the clip, ColorJitter(0.1, 0.05, 0.05, 0) per frame.
STATIC_CLIP_JITTER = ColourJitter(brightness=0.1, contrast=0.05, saturation=0.05, grayscale=0.05, hue=0.05)
STATIC_FRAME_JITTER = ColourJitter(brightness=0.1, contrast=0.05, saturation=0.05)
STATIC_FILL = IMAGENET_MEAN  # STCN fills with im_mean = (124, 116, 104) / 255, the ImageNet mean


# ------------------------------------------------------------ RDE-VOS's mask perturbation
PERTURB_ROUNDS = 250  # perturb_mask: at most this many rounds of 4 box operations
PERTURB_KERNEL_SIZES = (3, 9)  # random_dilate / random_erode: np.random.randint(3, 10)


def structuring_element(shape: int, size: int) -> torch.Tensor:
    """RDE-VOS's get_random_structure, choice `shape` 1..4: a size×size square, a disc, an
    ellipse half as tall, or one half as wide → float [kh, kw] of 0/1."""
    if shape == 1:
        return torch.ones(size, size)
    height, width = {2: (size, size), 3: (size // 2, size), 4: (size, size // 2)}[shape]
    ys = (torch.arange(height) - (height - 1) / 2) / (height / 2)
    xs = (torch.arange(width) - (width - 1) / 2) / (width / 2)
    return ((ys[:, None] ** 2 + xs[None, :] ** 2) <= 1).float()


def dilate(mask: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Binary dilation of mask [H, W] (0/1) by kernel [kh, kw], anchored at its centre
    (kh // 2, kw // 2) as OpenCV's; nothing grows in from outside the mask's box."""
    height, width = kernel.shape
    padded = F.pad(mask[None, None], (width // 2, width - 1 - width // 2, height // 2, height - 1 - height // 2))
    return (F.conv2d(padded, kernel[None, None]) > 0.5)[0, 0].to(mask.dtype)


def erode(mask: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Binary erosion, the complement of dilating the complement: the box edge does not erode."""
    return 1 - dilate(1 - mask, kernel)


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """IoU of two 0/1 masks as RDE-VOS computes it: (|a ∩ b| + 1e-6) / (|a ∪ b| + 1e-6)."""
    a, b = a > 0.5, b > 0.5
    return (float((a & b).sum()) + 1e-6) / (float((a | b).sum()) + 1e-6)


def perturb_mask(mask: torch.Tensor, rng: random.Random, iou_target: float) -> torch.Tensor:
    """RDE-VOS's perturb_mask (dataset/vos_dataset.py): a corrupted copy of mask [H, W] (0/1).

    Each round picks 4 random boxes; in a tenth of them the centre pixel is set to 0 or 1,
    then the box is dilated or eroded (even odds) by a random structuring element of 3..9
    px. Rounds stop once the IoU with the mask falls below iou_target, after 250 at most.
    iou_target >= 1, or a side of 2 px or less, returns the mask unchanged.
    """
    height, width = mask.shape
    if iou_target >= 1.0 or height <= 2 or width <= 2:
        return mask.clone()
    corrupted = (mask > 0.5).float()
    for _ in range(PERTURB_ROUNDS):
        for _ in range(4):
            left, top = rng.randrange(width), rng.randrange(height)
            right, bottom = rng.randint(left + 1, width), rng.randint(top + 1, height)  # exclusive ends
            if rng.random() < 0.1:
                corrupted[(top + bottom) // 2, (left + right) // 2] = float(rng.randrange(2))
            operation = dilate if rng.random() < 0.5 else erode
            kernel = structuring_element(rng.randint(1, 4), rng.randint(*PERTURB_KERNEL_SIZES))
            corrupted[top:bottom, left:right] = operation(corrupted[top:bottom, left:right], kernel)
        if mask_iou(corrupted, mask) < iou_target:
            break
    return corrupted
