"""Geometric and photometric augmentation of training clips, driven by a seeded `random.Random`.

Every random draw comes from the `rng` the caller passes (one per sample, seeded from the
sample's position in the run), so a sample is a pure function of its seed: no global
random state is read, which keeps data loading reproducible with any number of workers
and across a resume.

Geometry is one affine map per frame from output (crop) pixel coordinates to input pixel
coordinates (pixel-index coordinates), applied with `grid_sample` (bilinear for images,
nearest for id maps; outside the image is black / background). It is a random resized
crop with a horizontal flip (`random_crop_affine`: p_in = c_in + diag(±s, s)·(p_out − c_out),
s the input pixels per output pixel) composed with a random rotation / shear / zoom / shift
of the crop about its centre (`random_jitter_affine`).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


def warp_image(image: torch.Tensor, affine: Affine, out_size: tuple[int, int]) -> torch.Tensor:
    """image float [C, H, W] → [C, h, w] (bilinear; black outside)."""
    grid = F.affine_grid(_theta(affine, image.shape[-2:], out_size), [1, 1, *out_size], align_corners=False)
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def warp_ids(ids: torch.Tensor, affine: Affine, out_size: tuple[int, int]) -> torch.Tensor:
    """ids uint8 [H, W] → uint8 [h, w] (nearest; background 0 outside)."""
    grid = F.affine_grid(_theta(affine, ids.shape[-2:], out_size), [1, 1, *out_size], align_corners=False)
    warped = F.grid_sample(ids[None, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return warped[0, 0].round().to(torch.uint8)


@dataclass(frozen=True)
class ColourJitter:
    """Brightness, contrast and saturation factors in [1 − x, 1 + x]; grayscale with a probability."""

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    grayscale: float = 0.0

    def sample(self, rng: random.Random) -> tuple[float, float, float, bool]:
        return (
            _uniform(rng, 1 - self.brightness, 1 + self.brightness),
            _uniform(rng, 1 - self.contrast, 1 + self.contrast),
            _uniform(rng, 1 - self.saturation, 1 + self.saturation),
            rng.random() < self.grayscale,
        )


def _gray(image: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] → luma [..., 1, H, W] (ITU-R 601)."""
    r, g, b = image.unbind(dim=-3)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)


def apply_colour(image: torch.Tensor, factors: tuple[float, float, float, bool]) -> torch.Tensor:
    """image float [..., 3, H, W] in [0, 1] with (brightness, contrast, saturation, grayscale) → same shape."""
    brightness, contrast, saturation, grayscale = factors
    image = (image * brightness).clamp(0, 1)
    mean = _gray(image).mean(dim=(-3, -2, -1), keepdim=True)
    image = ((image - mean) * contrast + mean).clamp(0, 1)
    gray = _gray(image)
    image = ((image - gray) * saturation + gray).clamp(0, 1)
    if grayscale:
        image = _gray(image).expand_as(image).clone()
    return image


# STCN-like settings: a clip-level jitter plus a small per-frame one.
CLIP_JITTER = ColourJitter(brightness=0.1, contrast=0.05, saturation=0.05, grayscale=0.05)
FRAME_JITTER = ColourJitter(brightness=0.05, contrast=0.02, saturation=0.02)
