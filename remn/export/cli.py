"""`remn export`: the three step graphs and their manifest for ONNX Runtime.

    remn export --onnx DIR --weights FILE [--config remn] [--size 480x854] [--objects 8] [--overwrite]

Then `remn segment VIDEO --mask M.png --output OUT --engine onnxruntime --onnx DIR`.
Bad input (an unsupported config, no weights, a non-empty output folder without
--overwrite) is reported as one line on stderr with exit code 2.
"""
from __future__ import annotations

import argparse
import sys

EXIT_BAD_INPUT = 2


def parse_size(text: str) -> tuple[int, int]:
    """"HxW" → (H, W)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"size must be HxW (e.g. 480x854), got {text!r}")
    return int(parts[0]), int(parts[1])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from remn.inference.config import PRESETS

    parser.add_argument("--onnx", required=True, metavar="DIR", help="output folder for the .onnx graphs and manifest.json")
    parser.add_argument("--config", default="remn", choices=sorted(PRESETS),
                        help="model and inference preset: its top_k and local attention are fixed in the graphs (default remn)")
    parser.add_argument("--weights", help="trained weights (a remn checkpoint or STCN's stcn.pth)")
    parser.add_argument("--random-weights", action="store_true",
                        help="export the untrained random weights instead (benchmarks and tests only)")
    parser.add_argument("--size", type=parse_size, default=(480, 854), metavar="HxW",
                        help="working frame size the graphs take: the Segmenter's resized frames (default 480x854)")
    parser.add_argument("--objects", type=int, default=8, metavar="N",
                        help="the most objects the graphs take (a dynamic axis 1..N; default 8)")
    parser.add_argument("--top-k", type=int, help="keys each query reads from, fixed in the graph (default: the preset's; 0: all)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an export already in the output folder")


def run(args) -> int:
    from remn.export.onnx import ExportError

    try:
        return _run(args)
    except (ExportError, ValueError, FileNotFoundError, ImportError) as err:
        print(f"remn export: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _run(args) -> int:
    import torch

    from remn.build import build_model
    from remn.export.onnx import ExportError, check_exportable, export_onnx
    from remn.inference.config import resolve_inference_config

    if (args.weights is None) == (not args.random_weights):
        raise ExportError("give --weights FILE (trained weights), or --random-weights to export an untrained model"
                          if args.weights is None else "give either --weights or --random-weights, not both")
    overrides = {} if args.top_k is None else {"top_k": None if args.top_k == 0 else args.top_k}
    config = resolve_inference_config(args.config, **overrides)
    torch.manual_seed(0)  # --random-weights: the same model every run
    model = build_model(fused=True, config=config.model, weights=args.weights, device="cpu")
    check_exportable(model.config, config, args.size, args.objects)  # before the slow part
    manifest = export_onnx(model, args.onnx, config, size=args.size, max_objects=args.objects,
                           weights=args.weights, overwrite=args.overwrite, opset=args.opset)
    graphs = ", ".join(graph["file"] for graph in manifest["graphs"].values())
    print(f"remn export: wrote {graphs} and manifest.json to {args.onnx} (opset {manifest['opset']}, "
          f"{manifest['size'][0]}x{manifest['size'][1]}, 1..{manifest['max_objects']} objects)")
    return 0
