"""The CPU fast path's labels on several clips: what each bf16 choice keeps of eager fp32's.

    python bench/bench_cpu_labels.py --weights FILE --output bench/results/FILE.json \
        [--seeds 1 2 3 7] [--objects 1 2 4] [--threads 2]   # 7: bench_cpu's clip
    python bench/bench_cpu_labels.py --quick --output FILE.json   # bench_cpu's --quick setting, random weights

bench_cpu (`bench/run.py --sections cpu`) times every route on one synthetic clip (seed
bench_cpu.CLIP_SEED, 7), and how many labels a bf16 route flips varies from clip to clip.
This runs bench_cpu's setting (the `remn` preset at 864×480, T = 5 memory frames, top-20, local
attention, 5 + 3 frames per clip) with trained weights (`weights`: random weights tie the
objects' logits on many pixels, so any rounding flips labels) on one `make_clip` per seed
and object count, and compares with plain eager fp32 (bench_cpu's `eager fp32`) the fast
path with every FastPathSettings(bf16=...) choice (bench_cpu.FAST_PATH), stepped
interleaved by `bench_cpu.run_phase`. Its rows are bench_cpu's, one per clip and variant:
labels identical over all pixels, on the worst frame and on the pixels eager fp32 decides
(top probability ahead of the runner-up by more than bench_cpu.DECIDED_MARGIN). `summary`
gives per object count and variant the mean over the clips and the lowest clip. Seed
CLIP_SEED with 5 + 3 frames is bench_cpu's clip, so its rows repeat bench_cpu's label
figures.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import remn
from bench_cpu import BASELINE, CLIP_SEED, FAST_PATH, KEPT, MEMORY_FRAMES, run_phase, settings
from common import environment
from remn.data.atomic import atomic_path
from remn.data.synthetic import make_clip
from remn.inference import resolve_inference_config
from remn.inference.fast_path import FastPathSettings, keep_freed_memory
from remn.train.trainer import cpu_threads

LABEL_FIELDS = ("labels_identical_pct", "labels_identical_worst_frame_pct", "labels_identical_decided_pct")


def measure(weights: str | None, seeds: list[int], object_counts: list[int], quick: bool = False) -> dict:
    """bench_cpu's label rows for every (object count, seed) clip, and their summary."""
    preset, (height, width), _, rounds = settings(quick)
    torch.manual_seed(0)  # the random weights of --quick
    model = remn.build_model(config=preset, weights=weights, device="cpu")
    inference = resolve_inference_config(preset, size=None, update="every", mem_every=1, capacity=MEMORY_FRAMES)
    fast_paths = {BASELINE: False} | {name: FastPathSettings(bf16=parts) for parts, name in FAST_PATH.items()}
    keep_freed_memory()  # as the fast path does on its first Segmenter; labels do not depend on it
    rows = []
    for objects in object_counts:
        for seed in seeds:
            frames, masks = make_clip(seed=seed, num_frames=MEMORY_FRAMES + rounds, height=height, width=width,
                                      num_objects=objects)
            clip_rows = run_phase(KEPT, fast_paths, model, inference, frames, masks, objects, rounds, baseline={})
            rows += [{"seed": seed, **row} for row in clip_rows]
    summary = []
    for objects in object_counts:
        for name in fast_paths:
            clips = [row for row in rows if row["objects"] == objects and row["variant"] == name]
            entry = {"objects": objects, "variant": name, "clips": len(clips)}
            for field in LABEL_FIELDS:
                values = [row[field] for row in clips if row[field] is not None]
                entry[f"mean_{field}"] = statistics.fmean(values) if values else None
                entry[f"lowest_{field}"] = min(values) if values else None
            summary.append(entry)
    return {"model": preset, "weights": weights or "random", "size": f"{width}x{height}", "top_k": inference.top_k,
            "frames_per_clip": MEMORY_FRAMES + rounds, "seeds": seeds, "summary": summary, "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="a trained checkpoint of the remn preset (needed but for --quick)")
    parser.add_argument("--quick", action="store_true", help="bench_cpu's --quick setting: the tiny preset at 96×64")
    parser.add_argument("--output", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, CLIP_SEED])
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if min(args.objects) < 1:
        parser.error("--objects must be at least 1")
    if args.weights is None and not args.quick:
        parser.error("--weights is needed: with random weights the labels say little (--quick runs without)")
    if args.weights is not None and (args.quick or not Path(args.weights).is_file()):
        parser.error(f"--weights {args.weights}: " + ("a remn checkpoint is not for --quick's tiny model"
                                                       if args.quick else "no such file"))
    with cpu_threads(args.threads):
        results = {"environment": environment(torch.device("cpu")), "threads": args.threads,
                   **measure(args.weights, args.seeds, args.objects, args.quick)}
    with atomic_path(args.output) as temp:
        temp.write_text(json.dumps(results, indent=1) + "\n")
    for entry in results["summary"]:
        print(f"{entry['objects']} objects  {entry['variant']:32s} labels {entry['mean_labels_identical_pct']:.3f} % "
              f"(lowest clip {entry['lowest_labels_identical_pct']:.3f} %, lowest frame "
              f"{entry['lowest_labels_identical_worst_frame_pct']:.3f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
