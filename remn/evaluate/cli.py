"""Command line: ``remn evaluate`` / ``python -m remn.evaluate --davis-root ROOT --results RESULTS --set val``.

Evaluates RESULTS/SEQ/*.png with the DAVIS semi-supervised protocol, writes
``global_results-SET.csv`` and ``per-sequence_results-SET.csv`` into RESULTS and prints
both tables as the official evaluation_method.py does. Unlike that script it always
recomputes: CSVs already in RESULTS are overwritten, never reused.
"""
from __future__ import annotations

import argparse
import sys
import time

from remn.evaluate.davis import evaluate_davis, write_result_csvs
from remn.evaluate.protocol import TASKS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--davis-root", required=True, help="folder with JPEGImages/, Annotations/, ImageSets/"
    )
    parser.add_argument("--results", required=True, help="folder with one sub-folder of PNGs per sequence")
    parser.add_argument("--set", default="val", help="split to evaluate (ImageSets/YEAR/SET.txt)")
    parser.add_argument("--task", default="semi-supervised", choices=TASKS)
    parser.add_argument("--year", type=int, default=2017, choices=(2016, 2017))
    parser.add_argument("--resolution", default="480p")
    parser.add_argument("--workers", type=int, default=0, help="processes for scoring sequences (0: none)")


def run(args: argparse.Namespace) -> int:
    start = time.time()
    print(f"Evaluating sequences for the {args.task} task...")
    try:
        global_table, sequence_table = evaluate_davis(
            args.davis_root, args.results, split=args.set, year=args.year, task=args.task,
            workers=args.workers, resolution=args.resolution,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"python -m remn.evaluate: error: {error}", file=sys.stderr)
        return 1
    global_path, sequence_path = write_result_csvs(args.results, args.set, global_table, sequence_table)
    print(f"Global results saved in {global_path}")
    print(f"Per-sequence results saved in {sequence_path}")
    rule = "-" * 27
    sys.stdout.write(f"{rule} Global results for {args.set} {rule}\n")
    print(global_table.to_string())
    sys.stdout.write(f"\n---------- Per sequence results for {args.set} ----------\n")
    print(sequence_table.to_string())
    sys.stdout.write(f"\nTotal time:{time.time() - start}\n")
    return 0



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m remn.evaluate",
        description="Evaluate VOS results on DAVIS with the official semi-supervised protocol.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
