"""WinogradConv2d against oneDNN's direct fp32 convolution on the decoder's shapes, on a CPU.

    python bench/bench_winograd.py --output bench/results/FILE.json [--objects 1 2 4] [--rounds 6] [--bands]
    python bench/bench_winograd.py --output bench/results/FILE.json --tiles [--rounds 6]

Every 3×3 convolution of the `remn` decoder that the fast path computes by F(4×4, 3×3)
(`winograd_pays`) at 864×480 (the 1/16, 1/8 and 1/4 grids: 30×54, 60×108, 120×216), at its
batch: the frame's shared skip convolutions and key_comp halves once (batch 1), the
per-object ones over every object. Both sides are channels-last fp32 with random weights
(a convolution's time does not depend on them), with freed memory kept for reuse as the
fast path runs them (`keep_freed_memory`); within a round direct and Winograd run in turn, and each side's figure is its median over the rounds after the first; a shape that
recurs (a shared half and a 1-object one) runs once. `--bands` adds rows with bands
within 2 MiB of gathered tiles (SMALL_BANDS: about a core's L2, as bands were sized
before `band_shape`), to show what the band size buys. Each row also holds Winograd's
largest error against the fp64 convolution, relative to the output's largest magnitude,
next to the direct convolution's; the summary sums a step's Winograd convolutions per
object count. Winograd is timed on every call here, also where `WinogradConv2d.pays_on`
would hand it to the direct convolution.

`--tiles` times instead the widths TILE_WIDTHS on one image's grids of 1 to 405 tiles
(TILE_GRIDS), the calls of small frames and 480p's 1/8 grid: the rows show from how many
tiles each width pays, the figures behind MIN_TILES, each row with the choice the fast path
makes for it (`winograd_pays` and `WinogradConv2d.pays_on`).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

import remn
from common import environment
from remn.data.atomic import atomic_path
from remn.inference import winograd
from remn.inference.fast_path import FastPathSettings, keep_freed_memory, prepare_fast_model
from remn.inference.winograd import WinogradConv2d, winograd_pays
from remn.train.trainer import cpu_threads

SMALL_BANDS = {"MIN_BAND_TILES": 1, "MAX_BAND_BYTES": 2 << 20}  # `--bands`: within about a core's L2
TILE_WIDTHS = ((128, 128), (256, 256), (512, 256), (512, 512), (1024, 512))  # `--tiles`: (Cin, Cout)
TILE_GRIDS = ((4, 4), (8, 8), (8, 16), (16, 16), (16, 32), (32, 32), (30, 54), (60, 108))  # 1 … 405 tiles

def winograd_decoder() -> torch.nn.Module:
    """The `remn` decoder (random weights) as the fp32 fast path prepares it."""
    model = remn.build_model(config="remn").eval()
    return prepare_fast_model(model, FastPathSettings(bf16="none", fuse_pointwise=False)).decoder


def decoder_convolutions(decoder, objects: int, height: int, width: int) -> list[tuple[str, torch.nn.Conv2d, int, int, int]]:
    """(name, fp32 Conv2d, batch, grid height, grid width) of each convolution of `decoder`
    (winograd_decoder) computed by Winograd, in a step of `objects` objects at height × width."""
    grids = {"compress": 16, "up_16_8": 8, "up_8_4": 4}
    shared = ("compress.conv1_s", "compress.down_s", "skip_conv")  # the frame's, once per step
    rows = []
    for name, module in decoder.named_modules():
        if isinstance(module, WinogradConv2d):
            stride = grids[name.split(".")[0]]
            batch = 1 if name.endswith(shared) else objects
            conv = torch.nn.Conv2d(module.in_channels, module.out_channels, 3, padding=1)
            rows.append((name, conv.eval().requires_grad_(False), batch, -(-height // stride), -(-width // stride)))
    return rows


def measure(conv, batch, height, width, rounds: int, band_choices) -> dict:
    """Direct and Winograd (once per band choice) in turn within each round, `rounds` rounds."""
    conv = conv.to(memory_format=torch.channels_last)
    fast = WinogradConv2d(conv)
    x = torch.randn(batch, conv.in_channels, height, width).contiguous(memory_format=torch.channels_last)

    def bands(choice):  # Winograd on every call, with the bands of `choice`
        return mock.patch.multiple(winograd, MIN_TILES=0, **(SMALL_BANDS if choice != "band_shape" else {}))

    sides = {"direct": (lambda: conv(x), contextlib.nullcontext)}
    sides.update({choice: (lambda: fast(x), lambda choice=choice: bands(choice)) for choice in band_choices})
    seconds = {side: [] for side in sides}
    for _ in range(rounds):
        for side, (call, context) in sides.items():
            with context():
                started = time.perf_counter()
                call()
                seconds[side].append(time.perf_counter() - started)
    exact = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
    scale = exact.abs().max().item()
    tiles = batch * -(-height // 4) * -(-width // 4)  # the call's output tiles of 4×4
    direct_ms = 1e3 * statistics.median(seconds["direct"][1:])
    row = {"batch": batch, "in_channels": conv.in_channels, "out_channels": conv.out_channels,
           "grid": f"{width}x{height}", "direct_ms": direct_ms,
           "direct_rel_error": ((conv(x).double() - exact).abs().max() / scale).item(),
           "direct_ms_samples": [1e3 * t for t in seconds["direct"]],
           "tiles": tiles, "fast_path_winograd": winograd_pays(conv) and fast.pays_on(tiles), "winograd": {}}
    for choice in band_choices:
        with bands(choice):
            images, band_rows = winograd.band_shape(batch, -(-height // 4), -(-width // 4), conv.in_channels)
            error = ((fast(x).double() - exact).abs().max() / scale).item()
        winograd_ms = 1e3 * statistics.median(seconds[choice][1:])
        row["winograd"][choice] = {"band_images": images, "band_tile_rows": band_rows, "ms": winograd_ms,
                                   "x_direct": winograd_ms / direct_ms, "rel_error": error,
                                   "ms_samples": [1e3 * t for t in seconds[choice]]}
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 864), metavar=("H", "W"))
    parser.add_argument("--bands", action="store_true", help="also time bands within 2 MiB (SMALL_BANDS)")
    parser.add_argument("--tiles", action="store_true",
                        help="time TILE_WIDTHS on one image's TILE_GRIDS instead of the decoder's convolutions")
    args = parser.parse_args(argv)
    if min(args.objects) < 1 or args.rounds < 2 or args.threads < 1:
        parser.error("--objects and --threads must be at least 1, --rounds at least 2 (the first is a warm-up)")
    if args.tiles and args.bands:
        parser.error("--tiles times band_shape's bands only; leave out --bands")
    torch.manual_seed(0)
    keep_freed_memory()  # as the fast path runs (FastPathSettings.reuse_freed_memory)
    band_choices = ("band_shape", "within 2 MiB") if args.bands else ("band_shape",)
    if args.tiles:
        return tile_sweep(args.output, args.rounds, args.threads)
    measured, steps = {}, []  # shape → row; per object count, the shapes of the step's convolutions
    with cpu_threads(args.threads), torch.inference_mode():
        decoder = winograd_decoder()
        for objects in args.objects:
            step = []
            for name, conv, batch, height, width in decoder_convolutions(decoder, objects, *args.size):
                shape = (conv.in_channels, conv.out_channels, batch, height, width)
                step.append(shape)
                if shape not in measured:  # equal shapes (e.g. shared and 1-object halves) run once
                    measured[shape] = measure(conv, batch, height, width, args.rounds, band_choices) | {
                        "convolutions": []}
                    report(measured[shape], name)
                if name not in measured[shape]["convolutions"]:
                    measured[shape]["convolutions"].append(name)
            steps.append((objects, step))
    summary = []
    for objects, step in steps:
        direct = sum(measured[shape]["direct_ms"] for shape in step)
        for choice in band_choices:
            each = [measured[shape]["winograd"][choice] for shape in step]
            fast = sum(entry["ms"] for entry in each)
            summary.append({"objects": objects, "bands": choice, "convolutions": len(step), "direct_ms": direct,
                            "winograd_ms": fast, "x_direct": fast / direct,
                            "x_direct_range": [min(e["x_direct"] for e in each), max(e["x_direct"] for e in each)]})
    results = {"environment": environment(torch.device("cpu")), "threads": args.threads, "rounds": args.rounds,
               "size": f"{args.size[1]}x{args.size[0]}", "min_band_tiles": winograd.MIN_BAND_TILES,
               "max_band_bytes": winograd.MAX_BAND_BYTES, "small_bands": SMALL_BANDS, "summary": summary,
               "rows": list(measured.values())}
    with atomic_path(args.output) as temp:
        temp.write_text(json.dumps(results, indent=1) + "\n")
    for entry in summary:
        low, high = entry["x_direct_range"]
        print(f"{entry['objects']} objects, {entry['bands']}: the step's {entry['convolutions']} Winograd convolutions "
              f"take {entry['winograd_ms']:.0f} ms against {entry['direct_ms']:.0f} ms direct "
              f"({entry['x_direct']:.2f}x; {low:.2f}-{high:.2f}x each)")
    return 0


def tile_sweep(output: Path, rounds: int, threads: int) -> int:
    """`--tiles`: each of TILE_WIDTHS on each of TILE_GRIDS (one image), into `output`."""
    rows = []
    with cpu_threads(threads), torch.inference_mode():
        for in_channels, out_channels in TILE_WIDTHS:
            for height, width in TILE_GRIDS:
                conv = torch.nn.Conv2d(in_channels, out_channels, 3, padding=1).eval().requires_grad_(False)
                row = measure(conv, 1, height, width, rounds, ("band_shape",))
                report(row, f"{row['tiles']} tiles")
                rows.append(row)
    results = {"environment": environment(torch.device("cpu")), "threads": threads, "rounds": rounds,
               "min_channels": winograd.MIN_CHANNELS, "min_tiles": winograd.MIN_TILES, "rows": rows}
    with atomic_path(output) as temp:
        temp.write_text(json.dumps(results, indent=1) + "\n")
    return 0


def report(row: dict, name: str) -> None:
    for choice, entry in row["winograd"].items():
        print(f"{name} ×{row['batch']} {row['in_channels']}→{row['out_channels']} at {row['grid']} ({choice}: "
              f"{entry['band_images']} images × {entry['band_tile_rows']} tile rows): direct {row['direct_ms']:.1f} ms, "
              f"Winograd {entry['ms']:.1f} ms ({entry['x_direct']:.2f}x), error {entry['rel_error']:.1e} "
              f"(direct {row['direct_rel_error']:.1e}); the fast path runs it "
              f"{'by Winograd' if row['fast_path_winograd'] else 'directly'}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
