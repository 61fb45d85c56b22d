"""`remn demo`: the whole pipeline on a built-in default, with nothing to download.

1. Writes synthetic training videos (moving textured shapes, look-alike distractors,
   occlusions) and trains the tiny model on them (`remn.train.LEARNING_RECIPE`).
2. Writes held-out synthetic videos in DAVIS layout, from seeds training never saw.
3. Segments them with the inference engine (`Segmenter`, adaptive memory update, gated
   dynamic bank, local attention), writing palette PNGs as `remn segment` does.
4. Evaluates them with the DAVIS protocol (`remn.evaluate`) against the trivial baseline
   of copying the first-frame mask to every frame, and prints both.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from remn.build import build_model
from remn.data import write_annotation
from remn.data.davis import DavisDataset
from remn.data.synthetic import write_davis_dataset
from remn.evaluate import evaluate_davis, write_result_csvs
from remn.inference import Segmenter, resolve_inference_config
from remn.inference.runner import davis_jobs, run_video
from remn.train.config import TrainConfig
from remn.train.trainer import LEARNING_RECIPE, cpu_threads, train

HELD_OUT_SEED = 1_000_003  # training sequences come from seed 0; these never overlap them


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=Path, default=Path("runs/demo"), help="run folder (default: runs/demo)")
    parser.add_argument("--iterations", type=int, default=LEARNING_RECIPE["iterations"],
                        help=f"training iterations (default {LEARNING_RECIPE['iterations']})")
    parser.add_argument("--heldout", type=int, default=8, help="held-out synthetic videos to evaluate (default 8)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="skip training and evaluate these tiny-model weights (e.g. an earlier demo's model.pt)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def copy_first_mask(dataset: DavisDataset, output: Path) -> None:
    """The baseline: every frame gets the first frame's annotation."""
    for sequence in dataset:
        first = sequence.annotation(0)  # ids uint8 [H, W]
        for name in sequence.frame_names:
            write_annotation(output / sequence.name / f"{name}.png", first, sequence.palette)


def run(args: argparse.Namespace) -> int:
    output: Path = args.output
    if output.exists() and any(output.iterdir()):
        if not args.overwrite:
            print(f"remn demo: error: {output} already holds a run; pass --overwrite to replace it", file=sys.stderr)
            return 2
        shutil.rmtree(output)
    if args.iterations < 1 or args.heldout < 1:
        print("remn demo: error: --iterations and --heldout must be >= 1", file=sys.stderr)
        return 2
    progress = not args.no_progress
    started = time.perf_counter()

    weights = args.weights
    if weights is None:
        print(f"[1/4] training the tiny model on synthetic videos for {args.iterations} iterations …", flush=True)
        # LEARNING_RECIPE trains from scratch, so BatchNorm trains (freeze_batchnorm=False)
        # where the published recipes freeze it on pretrained weights; it says why.
        config = TrainConfig(**{**LEARNING_RECIPE, "output": output / "train", "iterations": args.iterations,
                                "progress": progress, "tensorboard": False})
        weights = train(config)
    else:
        print(f"[1/4] using weights {weights} (no training)")
    train_seconds = time.perf_counter() - started

    height, width = LEARNING_RECIPE["synthetic_size"]
    heldout_root = output / "heldout"
    print(f"[2/4] writing {args.heldout} held-out synthetic videos to {heldout_root} …", flush=True)
    write_davis_dataset(heldout_root, args.heldout, seed=HELD_OUT_SEED, num_frames=LEARNING_RECIPE["synthetic_frames"],
                        height=height, width=width)

    print("[3/4] segmenting them with the inference engine …", flush=True)
    model = build_model(config="tiny", weights=weights, device="cpu")
    segmenter = Segmenter(model, resolve_inference_config("tiny", size=None))
    results = output / "results"
    reports = []
    with cpu_threads(LEARNING_RECIPE["threads"]):
        for job in davis_jobs(heldout_root, "val", 2017, results):
            reports.append(run_video(segmenter, job, progress=progress))
    baseline = output / "baseline"
    copy_first_mask(DavisDataset(heldout_root, "val", 2017), baseline)

    print("[4/4] evaluating with the DAVIS protocol …", flush=True)
    scores = {}
    for name, folder in (("remn tiny (trained)", results), ("copy first mask", baseline)):
        global_table, sequence_table = evaluate_davis(heldout_root, folder, split="val", year=2017)
        write_result_csvs(folder, "val", global_table, sequence_table)
        scores[name] = {column: float(global_table[column][0]) for column in ("J&F-Mean", "J-Mean", "F-Mean")}

    frames = sum(r.frames for r in reports)
    seconds = sum(r.seconds for r in reports)
    memory = np.mean([r.peak_memory_frames for r in reports])
    print(f"\nHeld-out synthetic videos: {args.heldout}, {frames} frames at {width}x{height}; "
          f"segmentation {frames / seconds:.1f} FPS on CPU, {memory:.1f} memory frames at peak on average")
    print(f"{'':22s}{'J&F':>8s}{'J':>8s}{'F':>8s}")
    for name, values in scores.items():
        print(f"{name:22s}" + "".join(f"{values[c]:8.3f}" for c in ("J&F-Mean", "J-Mean", "F-Mean")))
    margin = scores["remn tiny (trained)"]["J&F-Mean"] - scores["copy first mask"]["J&F-Mean"]
    print(f"margin over the baseline: {margin:+.3f} J&F; training {train_seconds:.0f} s, "
          f"total {time.perf_counter() - started:.0f} s")
    print(f"masks: {results}, per-sequence scores: {results / 'per-sequence_results-val.csv'}, weights: {weights}")
    return 0
