"""The `remn` command line: one sub-command per job, each defined beside the code it drives.

Sub-command modules expose `add_arguments(parser)` and `run(args) -> int`; they are
imported only when chosen, so `remn --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "segment": ("remn.inference.cli", "segment videos or a dataset with a trained model"),
    "evaluate": ("remn.evaluate.cli", "DAVIS J&F evaluation, identical to the official toolkit"),
    "train": ("remn.train.cli", "train REMN on DAVIS / YouTube-VOS layouts or synthetic videos"),
    "demo": ("remn.train.demo", "synthetic videos → short training → segmentation → evaluation"),
    "ablate": ("remn.evaluate.ablate", "ablation of local attention, adaptive update and the gated bank (J&F, memory, time)"),
    "export": ("remn.export.cli", "the per-frame step graphs as ONNX, for the onnxruntime engine"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="remn", description="REMN video object segmentation")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    sub_parser = argparse.ArgumentParser(prog=f"remn {argv[0]}", description=SUBCOMMANDS[argv[0]][1])
    module.add_arguments(sub_parser)
    return int(module.run(sub_parser.parse_args(argv[1:])) or 0)


if __name__ == "__main__":
    sys.exit(main())
