"""3×3 convolutions by Winograd's minimal filtering F(4×4, 3×3), for the CPU fast path's fp32 trunks.

A 3×3, stride-1 convolution computes each 4×4 output tile from a 6×6 input tile. Winograd's
algorithm (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) writes
it as

    Y = Aᵀ [ Σ_c (G g_oc Gᵀ) ⊙ (Bᵀ d_c B) ] A        (per output channel o)

with the constant matrices Bᵀ (6×6), G (6×3) and Aᵀ (4×6) below. With the transformed
filters U = G g Gᵀ computed once and the transformed input tiles V = Bᵀ d B, the channel sum
becomes 36 independent matrix products [P tiles, Cin] @ [Cin, Cout], one per tile position:
36·P·Cin·Cout multiply-adds where the direct convolution takes 9·16·P·Cin·Cout, a quarter.
The input and output transforms are small matrix products over the 36 positions. Rounding
differs from the direct sum (the transform matrices hold 4, 5 and fractions of 6 and 24):
in fp32 the error stays near 1e-5 of the output's scale (tests), against 1e-6 for the
direct convolution, far below bf16's 4e-3.

The transforms touch 2.25× the input and output in memory, so the batch is processed in
bands of tile rows (of one image or several, `band_shape`) small enough to stay in cache
and large enough for the 36 products to run near peak, each band through the whole
pipeline: pad, gather tiles, Bᵀ·B, the 36 products, Aᵀ·A, bias, add and ReLU into the
output. `WinogradConv2d` has `FusedConv`'s call: relu?(conv(x) + add?). A call on few tiles
(a small frame) runs the direct convolution instead, as a `FusedConv` (on the CPU post-ops
inside, small calls on packed weights): there reading the 4× larger transformed filters
costs more than the quarter of the multiplications saves (`WinogradConv2d.pays_on`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from remn.inference.onednn import FusedConv

OUTPUT_TILE, INPUT_TILE = 4, 6  # F(4×4, 3×3): 4×4 outputs from 6×6 inputs
POSITIONS = INPUT_TILE * INPUT_TILE  # 36 products per tile
# A band's tiles P are the M of its 36 products [P, Cin] @ [Cin, Cout]: below ~100 tiles the
# products run far from peak, and past ~16-24 MiB of gathered input tiles [36, P, Cin] (fp32)
# the transforms leave the cache. On this project's CPU at the decoder's shapes at 480p
# (1-4 images), bands of 128-384 tiles within 16-32 MiB all took 0.59× the direct time in
# sum, where bands of ≤ 2 MiB (one tile row, often 14-54 tiles) took 0.78×.
MIN_BAND_TILES = 128
MAX_BAND_BYTES = 16 << 20
# Below this many input or output channels the transforms cost more than the products save
# (on this project's CPU at 480p: 64 → 64 channels 1.3× the direct time, 128 → 128 0.78×,
# 256 → 256 0.6×, 256 → 1 2.9×).
MIN_CHANNELS = 128
# On fewer tiles than this a call (N images of ⌈H/4⌉·⌈W/4⌉ tiles) runs the direct convolution:
# the transformed filters are 4× the weight's bytes, read from memory on every call as a step
# cycles through the model, and on few tiles that read outweighs the multiplications saved.
# On this project's CPU, the two sides interleaved (cold weights, as in a step), each width
# from 256 → 256 to 1024 → 512 took 1.04-1.37× the direct time by Winograd on 8 tiles,
# 0.72-0.95× on 16, 0.47-0.74× on 32 and 0.30-0.56× on 405; 128 → 128 1.36× on 16 tiles and
# 0.88× on 405, which this uniform rule leaves as before (`bench/bench_winograd.py --tiles`,
# bench/results/cpu-winograd-tiles-2026-12-03.json).
MIN_TILES = 16

# Lavin & Gray's F(4×4, 3×3) matrices (points 0, ±1, ±2, ∞)
_B_T = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
        (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
_A_T = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))


def winograd_applies(conv: nn.Module) -> bool:
    """Whether `conv` is an nn.Conv2d F(4×4, 3×3) computes: 3×3, stride 1, zero padding 1,
    no dilation or groups, fp32 weights."""
    return (isinstance(conv, nn.Conv2d) and tuple(conv.kernel_size) == (3, 3) and tuple(conv.stride) == (1, 1)
            and conv.padding == (1, 1) and tuple(conv.dilation) == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and conv.weight.dtype == torch.float32)


def winograd_pays(conv: nn.Module) -> bool:
    """`winograd_applies` and both channel counts at least MIN_CHANNELS."""
    return winograd_applies(conv) and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS


def band_shape(batch: int, tile_rows: int, tile_cols: int, channels: int) -> tuple[int, int]:
    """(images, tile rows) of a band over N = `batch` images of tile_rows × tile_cols tiles
    with `channels` input channels: at least MIN_BAND_TILES tiles where MAX_BAND_BYTES of
    gathered input tiles allows it, and at least one tile row of one image."""
    most = max(tile_cols, MAX_BAND_BYTES // (4 * POSITIONS * channels))  # tiles a band may hold
    images = max(1, min(batch, most // tile_cols))
    row_tiles = images * tile_cols
    return images, max(1, min(tile_rows, -(-MIN_BAND_TILES // row_tiles), most // row_tiles))


class WinogradConv2d(nn.Module):
    """`conv` (see `winograd_applies`) computed by F(4×4, 3×3), in bands of tile rows; it
    holds the transformed filters U [36, Cin, Cout] (4× the weight) beside the weight.

    x [N, Cin, H, W] fp32 (any memory format), add [N, Cout, H, W] → relu?(conv(x) + add?)
    [N, Cout, H, W], channels-last, fp32. The direct convolution runs instead under an
    autocast of x's device, as the Conv2d would under it (autocast's dtypes), and where
    F(4×4, 3×3) does not pay on x's tiles (`pays_on`).
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not winograd_applies(conv):
            raise ValueError(f"WinogradConv2d computes 3×3, stride-1, padding-1 fp32 convolutions without groups, "
                             f"got kernel {conv.kernel_size}, stride {conv.stride}, padding {conv.padding}, "
                             f"dilation {conv.dilation}, groups {conv.groups}, {conv.weight.dtype}")
        weight = conv.weight.detach().double()  # [Cout, Cin, 3, 3]
        g = torch.tensor(_G, dtype=torch.float64)  # [6, 3]
        filters = torch.einsum("ai,ocij,bj->abco", g, weight, g)  # U = G g Gᵀ: [6, 6, Cin, Cout]
        self.register_buffer("filters", filters.reshape(POSITIONS, *filters.shape[2:]).float().contiguous())
        b_t, a_t = torch.tensor(_B_T, dtype=torch.float64), torch.tensor(_A_T, dtype=torch.float64)
        self.register_buffer("input_transform", torch.kron(b_t, b_t).float())  # Bᵀ ⊗ Bᵀ: [36, 36]
        self.register_buffer("output_transform", torch.kron(a_t, a_t).float())  # Aᵀ ⊗ Aᵀ: [16, 36]
        # the conv's own fp32 weight [Cout, Cin, 3, 3] and bias [Cout] or None (the bands add
        # it), not copies; the direct convolution relu?(conv(x) + add?) shares both
        self.weight, self.bias = conv.weight, conv.bias
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.direct = FusedConv(conv)

    @staticmethod
    def pays_on(tiles: int) -> bool:
        """Whether F(4×4, 3×3) pays on a call over `tiles` output tiles (N·⌈H/4⌉·⌈W/4⌉):
        from MIN_TILES up."""
        return tiles >= MIN_TILES

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            return self.direct(x, add, relu)
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.dtype != torch.float32:
            raise ValueError(f"WinogradConv2d needs fp32 [N, {self.in_channels}, H, W], got {x.dtype} {tuple(x.shape)}")
        batch, _, height, width = x.shape
        if add is not None and add.shape != (batch, self.out_channels, height, width):
            raise ValueError(f"add must be [N, Cout, H, W] = {(batch, self.out_channels, height, width)}, "
                             f"got {tuple(add.shape)}")
        tile_rows, tile_cols = -(-height // OUTPUT_TILE), -(-width // OUTPUT_TILE)
        if not self.pays_on(batch * tile_rows * tile_cols):
            return self.direct(x, add, relu)
        image = x.permute(0, 2, 3, 1)  # [N, H, W, Cin] (a view when x is channels-last)
        padded = torch.empty(batch, OUTPUT_TILE * tile_rows, OUTPUT_TILE * tile_cols, self.out_channels,
                             dtype=x.dtype, device=x.device)  # [N, 4·tiles, 4·tiles, Cout]: the output, whole tiles
        added = None if add is None else add.permute(0, 2, 3, 1)  # [N, H, W, Cout]
        images, band = band_shape(batch, tile_rows, tile_cols, self.in_channels)
        for start in range(0, batch, images):
            chunk = slice(start, start + images)
            for first in range(0, tile_rows, band):
                rows = min(band, tile_rows - first)
                band_rows = slice(OUTPUT_TILE * first, OUTPUT_TILE * (first + rows))
                self._band(image[chunk], first, rows, tile_cols, padded[chunk, band_rows])
                valid = padded[chunk, band_rows][:, :height - OUTPUT_TILE * first, :width]  # [n, h, W, Cout]
                if added is not None:
                    valid.add_(added[chunk, OUTPUT_TILE * first:OUTPUT_TILE * first + valid.shape[1]])
                if relu:
                    valid.relu_()
        out = padded[:, :height, :width].permute(0, 3, 1, 2)  # [N, Cout, H, W]
        return out.contiguous(memory_format=torch.channels_last)  # a copy only where H or W is not a multiple of 4

    def _band(self, image: torch.Tensor, first: int, rows: int, tile_cols: int, target: torch.Tensor) -> None:
        """Tile rows [first, first + rows) of image [N, H, W, Cin] → target [N, 4·rows, 4·tile_cols, Cout],
        bias included."""
        batch, height, width, channels = image.shape
        top = OUTPUT_TILE * first - 1  # the band's first input row, in image rows (−1: the zero padding)
        bottom = top + OUTPUT_TILE * rows + 2  # one past its last
        piece = image[:, max(top, 0):min(bottom, height)]  # [N, ≤ 4·rows + 2, W, Cin]
        piece = F.pad(piece, (0, 0, 1, OUTPUT_TILE * tile_cols + 1 - width,
                              max(-top, 0), max(bottom - height, 0)))  # [N, 4·rows + 2, 4·tile_cols + 2, Cin]
        # d: [6, 6, N, rows, cols, Cin], the band's input tiles by position
        tiles = piece.new_empty(INPUT_TILE, INPUT_TILE, batch, rows, tile_cols, channels)
        for u in range(INPUT_TILE):
            for v in range(INPUT_TILE):
                tiles[u, v] = piece[:, u:u + OUTPUT_TILE * rows:OUTPUT_TILE, v:v + OUTPUT_TILE * tile_cols:OUTPUT_TILE]
        count = batch * rows * tile_cols  # P, the band's tiles
        transformed = torch.mm(self.input_transform, tiles.view(POSITIONS, -1)).view(POSITIONS, count, channels)  # V
        products = torch.bmm(transformed, self.filters)  # [36, P, Cout]
        outputs = torch.mm(self.output_transform, products.view(POSITIONS, -1))  # Y: [16, P·Cout]
        outputs = outputs.view(OUTPUT_TILE, OUTPUT_TILE, batch, rows, tile_cols, self.out_channels)
        target = target.view(batch, rows, OUTPUT_TILE, tile_cols, OUTPUT_TILE, self.out_channels)
        within = outputs.permute(2, 3, 0, 4, 1, 5)  # [N, rows, 4, cols, 4, Cout]
        if self.bias is None:
            target.copy_(within)
        else:
            torch.add(within, self.bias, out=target)
