"""remn's benchmark: throughput and memory profiling, every figure a ratio measured in the same run.

    python bench/run.py            # the full run (meant for a GPU)
    python bench/run.py --quick    # reference path, tiny sizes: under a minute on a 2-core CPU

    # the full run split over calls (each under 10 minutes), into one results file:
    python bench/run.py --sections memory_read local_attention end_to_end
    python bench/run.py --sections high_resolution segment memory_growth evaluate --merge

Sections: kernel microbenchmarks (memory read, local attention), end-to-end segmentation
speed, 1080p with T = 20 memory frames, `remn segment` on files (with decoding and PNG
writing), memory vs video length, evaluation speed, several videos batched against one at a time. Prints
tables, writes a JSON with every figure (device, versions, git commit and date, per
section) and a plot under bench/results/.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_batched  # noqa: E402
import bench_cpu  # noqa: E402
import bench_cuda_fast_path  # noqa: E402
import bench_end_to_end  # noqa: E402
import bench_evaluate  # noqa: E402
import bench_export  # noqa: E402
import bench_high_resolution  # noqa: E402
import bench_local_attention  # noqa: E402
import bench_memory_growth  # noqa: E402
import bench_memory_read  # noqa: E402
import bench_segment  # noqa: E402
from common import REPO, environment  # noqa: E402
from remn.data.atomic import atomic_path  # noqa: E402
from report import print_tables, write_plot  # noqa: E402

SECTIONS = ("memory_read", "local_attention", "end_to_end", "high_resolution", "segment", "memory_growth", "evaluate",
            "batched", "cuda_fast_path", "cpu", "export")
# "cpu" (the CPU fast path at 480p, about 15 minutes on 2 cores) and "export" (eager vs torch.compile vs
# ONNX Runtime, with an export and Inductor compiles of the full model) run when named.
DEFAULT_SECTIONS = SECTIONS[:-2]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, reference path: a CI-sized smoke run")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="kernel dtype (default bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(DEFAULT_SECTIONS))
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per CPU measurement")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results",
                        help="folder for the JSON and the plot")
    parser.add_argument("--tag", default=None, help="name for the result files (default: device and date)")
    parser.add_argument("--weights", default=None,
                        help="trained weights of the full-size preset for the cpu section (default: random weights, "
                             "seeded); its label agreement only means something with trained weights")
    parser.add_argument("--merge", action="store_true",
                        help="fold the sections measured now into an existing results file of the same tag, keeping "
                             "its other sections (a full run split over several calls)")
    return parser.parse_args(argv)


def check_mergeable(previous: dict, current: dict) -> None:
    """Results from another device, dtype or mode must not share one file (ValueError)."""
    for field in ("device", "quick", "dtype"):
        before = previous["environment"]["device"] if field == "device" else previous.get(field)
        now = current["environment"]["device"] if field == "device" else current[field]
        if before != now:
            raise ValueError(f"cannot merge: the existing results have {field} {before!r}, this run {now!r}")


def merge_results(previous: dict, current: dict, sections: list[str]) -> dict:
    """`previous` with the sections measured in `current` (and their environments) replaced."""
    merged = dict(previous, environment=current["environment"])
    for key in ("section_environments", "section_seconds"):
        merged[key] = {**previous.get(key, {}), **current[key]}
    for section in sections:
        merged[section] = current[section]
    return merged


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    repeats = args.repeats or (3 if args.quick else 10)
    env = environment(device)
    results = {"environment": env, "quick": args.quick, "dtype": str(dtype).removeprefix("torch."),
               "section_environments": {}, "section_seconds": {}}
    runners = {
        "memory_read": lambda: bench_memory_read.run(device, dtype, args.quick, repeats),
        "local_attention": lambda: bench_local_attention.run(device, dtype, args.quick, repeats),
        "end_to_end": lambda: bench_end_to_end.run(device, args.quick),
        "high_resolution": lambda: bench_high_resolution.run(device, args.quick),
        "segment": lambda: bench_segment.run(device, args.quick),
        "memory_growth": lambda: bench_memory_growth.run(device, args.quick),
        "evaluate": lambda: bench_evaluate.run(args.quick),
        "batched": lambda: bench_batched.run(device, args.quick),
        "cuda_fast_path": lambda: bench_cuda_fast_path.run(device, args.quick),
        "cpu": lambda: bench_cpu.run(device, args.quick, args.repeats, weights=args.weights),
        "export": lambda: bench_export.run(device, args.quick, args.repeats),
    }
    tag = args.tag or "{}-{}{}".format("cuda" if device.type == "cuda" else "cpu", env["date"][:10],
                                       "-quick" if args.quick else "")
    json_path = args.output / f"{tag}.json"
    previous = None
    if args.merge and json_path.is_file():  # checked before measuring anything
        try:
            previous = json.loads(json_path.read_text())
            check_mergeable(previous, results)
        except (ValueError, KeyError, json.JSONDecodeError) as err:
            print(f"error: {json_path}: {err}", file=sys.stderr)
            return 2

    for section in args.sections:
        print(f"[bench] {section} …", file=sys.stderr, flush=True)
        section_started = time.perf_counter()
        results[section] = runners[section]()
        results["section_environments"][section] = env
        results["section_seconds"][section] = time.perf_counter() - section_started
    if previous is not None:
        results = merge_results(previous, results, args.sections)
    print_tables(results)
    with atomic_path(json_path) as temp:
        temp.write_text(json.dumps(results, indent=1, default=str) + "\n")
    plot_path = write_plot(results, args.output / f"{tag}.png")
    print(f"results: {json_path}" + (f", plot: {plot_path}" if plot_path else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
