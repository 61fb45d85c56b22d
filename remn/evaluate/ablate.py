"""`remn ablate`: the paper's ablation of REMN's three ideas, on any DAVIS-layout data, with any weights.

    remn ablate --weights W --davis-root D [--set val] [--year 2017] --output DIR
    remn ablate --weights W --synthetic hard --output DIR

Five variants (`VARIANTS`), each an `InferenceConfig` built by
`resolve_inference_config(preset, **overrides)` from the model's preset (--config, else the
name of the config saved in the checkpoint when it names a preset, else "remn"):

    stcn-baseline  update="every", mem_every=5, capacity=None, gate=False, local_attention=False
    +local         stcn-baseline with local_attention=True
    +adaptive      stcn-baseline with update="adaptive" (the preset's change_threshold, max_gap)
    +bank          stcn-baseline with the preset's capacity and gate=True (the dynamic bank)
    remn           the preset as it is: all three

The weights decide the model: the config saved in a remn checkpoint, or the preset's model
for a file without one (STCN's stcn.pth). Each variant segments every video through the
dataset runner of `remn segment` (`remn.inference.runner.run_video`, the same `Segmenter`),
writing DIR/masks/VARIANT/SEQ/FRAME.png, and `remn evaluate`'s evaluator (`evaluate_davis`)
scores them, its two CSVs written beside the masks: `remn evaluate --results
DIR/masks/VARIANT` gives the same numbers. `--synthetic hard` first writes the hard
synthetic suite (`remn.data.synthetic.write_suite`) to DIR/data in DAVIS layout.

Per variant, DIR/ablation.json holds:
- J&F, J, F: the DAVIS semi-supervised protocol's global J&F-Mean, J-Mean and F-Mean (means
  over all objects of all sequences, as the official toolkit averages);
- memory_frames_peak: max over videos of the most frames in memory at once
  (`VideoReport.peak_memory_frames`);
- memorised_fraction: frames written into memory / frames stepped, over all videos;
- ms_per_frame: time in `Segmenter.step` / frames, over all videos (file I/O excluded);
- peak_rss_mb: the peak resident host memory of the variant's process, in MiB (2^20 bytes).
Per sequence the same figures and each object's J and F are kept under "sequences".

Each variant runs in a fresh process (multiprocessing's forkserver, torch and remn preloaded
in the server, so a variant starts in a fraction of a second), and peak_rss_mb is that
process's high-water mark (`getrusage` ru_maxrss: the interpreter, torch, the model, frame
decoding and the memory bank). In one process the allocator keeps pages an earlier variant
freed — stcn-baseline's unbounded bank runs first — and they would count for every later
variant. ablation.json is rewritten (atomically) after each variant, "complete": false until
the last one.
"""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import queue as queue_module
import statistics
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from remn.build import build_model
from remn.checkpoint import read_checkpoint
from remn.config import PRESETS, ModelConfig, resolve_config
from remn.data import synthetic as synthetic_data
from remn.distributed import choose_device
from remn.evaluate.davis import evaluate_davis, write_result_csvs
from remn.evaluate.table import ResultsTable, write_text_atomic
from remn.inference.config import InferenceConfig, resolve_inference_config
from remn.inference.memory import FrameBankSettings
from remn.inference.runner import VideoJob, davis_jobs, run_video
from remn.inference.segmenter import Segmenter, VideoReport

VARIANTS = ("stcn-baseline", "+local", "+adaptive", "+bank", "remn")
STCN_BASELINE = {"update": "every", "mem_every": 5, "capacity": None, "gate": False, "local_attention": False}
RESULT_FILE = "ablation.json"
MASKS_FOLDER = "masks"
DATA_FOLDER = "data"
SYNTHETIC_SEED = 0
SYNTHETIC_SPLIT, SYNTHETIC_YEAR = "val", 2017
TABLE_COLUMNS = ("variant", "J&F", "J", "F", "memory frames (peak)", "memorised", "ms/frame", "peak RSS MiB")


def variant_configs(preset: str | InferenceConfig = "remn", variants=VARIANTS, **overrides) -> dict[str, InferenceConfig]:
    """The InferenceConfig of each named variant (in `VARIANTS` order), from `preset` with
    `overrides` (InferenceConfig fields or the frame bank's settings, e.g. size=None) applied
    to all of them first.

    The preset must hold all three ideas (adaptive update, a bounded gated bank, local
    attention) on the frame bank (memory="remn"), else ValueError: its "remn" variant is the
    preset as it is, and the others switch the ideas off from it.
    """
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"unknown variants {unknown}; variants: {', '.join(VARIANTS)}" if unknown
                         else f"no variants chosen; variants: {', '.join(VARIANTS)}")
    full = resolve_inference_config(preset, **overrides)
    memory = full.memory
    if not isinstance(memory, FrameBankSettings):
        raise ValueError(f"remn ablate ablates the gated frame bank (memory='remn'); preset {full.name!r} "
                         f"uses memory={memory.policy!r}")
    off = [idea for idea, on in (("the adaptive update", memory.update == "adaptive"),
                                 ("a bounded bank (capacity)", memory.capacity is not None),
                                 ("the gate", memory.gate), ("local attention", full.local_attention)) if not on]
    if off:
        raise ValueError(f"preset {full.name!r} has {', '.join(off)} off: its 'remn' variant would not hold "
                         "all three ideas; choose a preset that does (--config)")
    changes = {
        "stcn-baseline": STCN_BASELINE,
        "+local": {**STCN_BASELINE, "local_attention": True},
        "+adaptive": {**STCN_BASELINE, "update": "adaptive"},
        "+bank": {**STCN_BASELINE, "capacity": memory.capacity, "gate": True},
        "remn": {},
    }
    return {name: resolve_inference_config(full, name=name, **changes[name]) for name in VARIANTS if name in variants}


def resolve_model(weights, config: str | InferenceConfig | None = None) -> tuple[str | InferenceConfig, ModelConfig]:
    """(inference preset, model config) for `weights`.

    The model is the config saved in the checkpoint, or, for a file without one, the
    preset's model. The preset is `config`, else the saved config's name where it names a
    preset, else "remn". The weights are loaded once here (strictly, `remn.build_model`), so
    a file that does not fit fails before any variant runs; a model without the gate or the
    local attention branch raises ValueError (+bank and +local would change nothing).
    """
    _, saved = read_checkpoint(weights)  # FileNotFoundError / ValueError naming the file
    if config is None:
        config = saved["name"] if saved is not None and saved.get("name") in PRESETS else "remn"
    model_name = config.model if isinstance(config, InferenceConfig) else config
    model_config = ModelConfig.from_dict(saved) if saved is not None else resolve_config(model_name)
    build_model(config=model_config, weights=weights, device="cpu")
    missing = [part for part, present in (("the gate", model_config.gate),
                                          ("the local attention branch", model_config.local_attention)) if not present]
    if missing:
        raise ValueError(f"weights {weights} hold a model ({model_config.name!r}) without {' and '.join(missing)}: "
                         "the ablation's variants would not differ there")
    return config, model_config


def write_synthetic(root: Path, suite: str) -> list[str]:
    """Write the val split of the synthetic `suite` (`remn.data.synthetic.SUITES`, e.g. "hard")
    to `root` in DAVIS layout (ImageSets/2017/val.txt); returns the sequence names."""
    return synthetic_data.write_suite(root, suite, seed=SYNTHETIC_SEED, split=SYNTHETIC_SPLIT, year=SYNTHETIC_YEAR)


# ----------------------------------------------------------------------------- one variant, in its own process
@dataclass(frozen=True)
class VariantTask:
    """What a variant's process needs: the model, its settings, the videos, where masks go."""

    name: str
    config: InferenceConfig
    model: ModelConfig
    weights: str
    device: str
    threads: int
    davis_root: str
    split: str
    year: int
    masks: str  # DIR/masks/VARIANT


@dataclass
class VariantRun:
    reports: list[dict]  # asdict(VideoReport) per video, in dataset order
    peak_rss_bytes: int | None


_progress: multiprocessing.Queue | None = None  # set in a variant's process: one put per video done


def _set_progress_queue(progress) -> None:
    global _progress
    _progress = progress


def _run_variant(task: VariantTask) -> VariantRun:
    """In the variant's process: build the model, segment every video, report."""
    torch.set_num_threads(task.threads)
    model = build_model(config=task.model, weights=task.weights, device=task.device)
    segmenter = Segmenter(model, task.config)
    reports = []
    for job in davis_jobs(task.davis_root, task.split, task.year, task.masks):
        reports.append(asdict(run_video(segmenter, job, progress=False)))
        if _progress is not None:
            _progress.put(job.name)
    return VariantRun(reports, peak_rss_bytes())


def peak_rss_bytes() -> int | None:
    """This process's peak resident set size (getrusage ru_maxrss), None where unavailable."""
    try:
        import resource
    except ImportError:  # not a Unix
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def _process_context():
    """forkserver (torch and remn imported once, in the server) where the platform has it, else spawn.

    torch._dynamo is preloaded too: torch imports it lazily when a model is first built under
    a device context (the inference fast path builds one on "meta"), ~2.5 s per process."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__, "torch._dynamo"])
        return context
    return multiprocessing.get_context("spawn")


def run_variant_process(task: VariantTask, bar: tqdm) -> VariantRun:
    """Run one variant in a fresh process, advancing `bar` by one per video done."""
    context = _process_context()
    progress = context.Queue()
    seen = 0
    with ProcessPoolExecutor(1, mp_context=context, initializer=_set_progress_queue, initargs=(progress,)) as pool:
        future = pool.submit(_run_variant, task)
        while not future.done():
            try:
                progress.get(timeout=0.2)
            except queue_module.Empty:
                continue
            seen += 1
            bar.update(1)
        try:
            run = future.result()  # the variant's exception, if it raised, with its traceback as the cause
        except BrokenProcessPool as err:
            raise RuntimeError(f"variant {task.name}: its process ended abruptly (killed, e.g. out of memory?)") from err
    bar.update(len(run.reports) - seen)  # puts still in flight when the process ended
    progress.close()
    return run


# ----------------------------------------------------------------------------- the ablation
def check_output(output: Path, overwrite: bool) -> None:
    """Refuse an output folder that already holds an ablation unless `overwrite`."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"output {output} exists and is not a folder")
    if (output / RESULT_FILE).exists() and not overwrite:
        raise ValueError(f"{output / RESULT_FILE} already exists; pass --overwrite to replace it")


def summarise_variant(name: str, config: InferenceConfig, reports: list[VideoReport], global_table: ResultsTable,
                      sequence_table: ResultsTable, peak_rss: int | None, masks: Path) -> dict:
    """One variant's row of ablation.json (see the module docstring), per-sequence rows included."""
    frames = sum(r.frames for r in reports)
    scores = global_table.to_dicts()[0]
    objects: dict[str, list[dict]] = {}
    for row in sequence_table.to_dicts():  # "SEQ_k": object k of sequence SEQ
        sequence, obj = row["Sequence"].rsplit("_", 1)
        objects.setdefault(sequence, []).append({"object": int(obj), "J": row["J-Mean"], "F": row["F-Mean"]})
    sequences = []
    for report in reports:
        rows = objects[report.name]  # every sequence has an object (`VideoJob.check`)
        j, f = statistics.fmean(o["J"] for o in rows), statistics.fmean(o["F"] for o in rows)
        sequences.append({
            "name": report.name, "frames": report.frames, "J&F": (j + f) / 2, "J": j, "F": f,
            "memory_frames_peak": report.peak_memory_frames, "memorised": report.memorised,
            "skipped": report.skipped, "gate_dropped": report.gate_dropped, "evicted": report.evicted,
            "ms_per_frame": 1000.0 * report.seconds / report.frames, "objects": rows,
        })
    return {
        "name": name,
        "J&F": scores["J&F-Mean"],
        "J": scores["J-Mean"],
        "F": scores["F-Mean"],
        "memory_frames_peak": max(r.peak_memory_frames for r in reports),
        "memorised_fraction": sum(r.memorised for r in reports) / frames,
        "ms_per_frame": 1000.0 * sum(r.seconds for r in reports) / frames,
        "peak_rss_mb": None if peak_rss is None else peak_rss / 2**20,
        "frames": frames,
        "videos": len(reports),
        "gate_dropped": sum(r.gate_dropped for r in reports),
        "evicted": sum(r.evicted for r in reports),
        "masks": str(masks),
        "config": config.to_dict(),
        "sequences": sequences,
    }


def git_commit() -> tuple[str | None, bool | None]:
    """(commit, whether tracked files differ from it) of the git checkout remn runs from, or
    (None, None) for an installed copy."""
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / ".git").exists():
        return None, None
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None, None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=checkout,
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None, None
    return head.stdout.strip() or None, bool(status.stdout.strip()) if status.returncode == 0 else None


def environment(device: torch.device, threads: int) -> dict:
    """Where and with what the ablation ran: date, machine, versions, commit."""
    commit, dirty = git_commit()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": threads,
        },
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": commit,
        "git_dirty": dirty,
    }


def format_table(rows: list[dict]) -> str:
    """The variants as a table: one row each, the columns of `TABLE_COLUMNS`."""
    def number(value, digits):
        return "-" if value is None else f"{value:.{digits}f}"

    return ResultsTable(TABLE_COLUMNS, tuple(
        (row["name"], number(row["J&F"], 3), number(row["J"], 3), number(row["F"], 3), str(row["memory_frames_peak"]),
         number(row["memorised_fraction"], 3), number(row["ms_per_frame"], 1), number(row["peak_rss_mb"], 0))
        for row in rows)).to_string()


def run_ablation(
    weights,
    output,
    *,
    davis_root=None,
    synthetic: str | None = None,
    split: str = "val",
    year: int = 2017,
    config: str | InferenceConfig | None = None,
    variants=VARIANTS,
    overrides: dict | None = None,
    device: str | None = None,
    threads: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log=print,
) -> dict:
    """Run the ablation and write OUTPUT/ablation.json; returns what it holds.

    weights: a checkpoint file; davis_root (with split, year) or synthetic (a suite name,
    its val split written to OUTPUT/data and run at its own frame size unless overrides
    set "size"): the videos; config: the inference preset (a name or an
    InferenceConfig; default from the checkpoint, see `resolve_model`); overrides: applied
    to every variant (`variant_configs`); device: default CUDA when available; threads: CPU
    threads per variant (default: this process's count). Bad input raises ValueError or
    FileNotFoundError before any variant runs.
    """
    output = Path(output)
    if (davis_root is None) == (synthetic is None):
        raise ValueError("give either a DAVIS root (--davis-root) or a synthetic suite (--synthetic), not both or neither")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    if synthetic is not None and synthetic not in synthetic_data.SUITES:
        raise ValueError(f"unknown synthetic suite {synthetic!r}; suites: {', '.join(sorted(synthetic_data.SUITES))}")
    check_output(output, overwrite)
    device = choose_device(device, local_rank=0, world_size=1)  # CUDA asked for but missing: ValueError
    preset, model_config = resolve_model(weights, config)
    overrides = dict(overrides or {})
    if synthetic is not None:
        overrides.setdefault("size", None)  # the suite's own frame size, which its videos are made for
    configs = variant_configs(preset, variants, **overrides)
    if synthetic is not None:
        davis_root, split, year = output / DATA_FOLDER, SYNTHETIC_SPLIT, SYNTHETIC_YEAR
        log(f"writing the synthetic suite {synthetic!r} to {davis_root} …")
        write_synthetic(davis_root, synthetic)
    plans: dict[str, list[VideoJob]] = {}
    for name in configs:
        plans[name] = davis_jobs(davis_root, split, year, output / MASKS_FOLDER / name)
        for job in plans[name]:
            job.check(overwrite)
    threads = threads or torch.get_num_threads()
    data = ({"kind": "synthetic", "suite": synthetic, "seed": SYNTHETIC_SEED} if synthetic is not None
            else {"kind": "davis"})
    data.update(root=str(Path(davis_root).resolve()), split=split, year=year,
                sequences=[job.name for job in next(iter(plans.values()))])
    result = {
        "weights": str(Path(weights).resolve()),
        "data": data,
        "preset": preset if isinstance(preset, str) else preset.name,
        "model": model_config.to_dict(),
        **environment(device, threads),
        "peak_rss": "each variant in its own process: its getrusage ru_maxrss",
        "complete": False,
        "variants": [],
    }
    total = sum(len(jobs) for jobs in plans.values())
    with tqdm(total=total, desc="ablate", unit="video", disable=not progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
        for name, variant_config in configs.items():
            bar.set_postfix_str(name)
            masks = output / MASKS_FOLDER / name
            task = VariantTask(name, variant_config, model_config, str(weights), str(device), threads,
                               str(davis_root), split, year, str(masks))
            run = run_variant_process(task, bar)
            reports = [VideoReport(**r) for r in run.reports]
            global_table, sequence_table = evaluate_davis(davis_root, masks, split=split, year=year)
            write_result_csvs(masks, split, global_table, sequence_table)
            result["variants"].append(summarise_variant(name, variant_config, reports, global_table, sequence_table,
                                                        run.peak_rss_bytes, masks))
            write_result(output, result)
    result["complete"] = True
    write_result(output, result)
    log(format_table(result["variants"]))
    log(f"written: {output / RESULT_FILE}")
    return result


def write_result(output: Path, result: dict) -> Path:
    """OUTPUT/ablation.json, written through a temp file and a rename."""
    return write_text_atomic(output / RESULT_FILE, json.dumps(result, indent=2) + "\n")


# ----------------------------------------------------------------------------- command line
EXIT_BAD_INPUT = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="trained weights (a remn checkpoint or STCN's stcn.pth)")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--davis-root", help="DAVIS-layout root (JPEGImages/, Annotations/, ImageSets/)")
    data.add_argument("--synthetic", choices=sorted(synthetic_data.SUITES),
                      help="write this synthetic suite's val split to OUTPUT/data and use it (frames at the suite's size)")
    parser.add_argument("--set", dest="split", default="val", help="DAVIS split (default val)")
    parser.add_argument("--year", type=int, default=2017, choices=(2016, 2017), help="DAVIS year (default 2017)")
    parser.add_argument("--output", "-o", required=True, help="folder for ablation.json, masks/VARIANT/ and data/")
    parser.add_argument("--overwrite", action="store_true", help="replace an ablation already in the output folder")
    parser.add_argument("--config", choices=sorted(PRESETS),
                        help="inference preset (default: the checkpoint's config when it names one, else remn)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), metavar="NAME",
                        help=f"variants to run (default all: {' '.join(VARIANTS)})")
    parser.add_argument("--size", type=int, help="shorter side frames are resized to (0 keeps the input size; "
                                                 "default: the preset's, with --synthetic the suite's)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when available)")
    parser.add_argument("--threads", type=int, help="CPU threads per variant (default: PyTorch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    overrides = {} if args.size is None else {"size": None if args.size == 0 else args.size}
    try:
        run_ablation(
            args.weights, args.output, davis_root=args.davis_root, synthetic=args.synthetic, split=args.split,
            year=args.year, config=args.config, variants=args.variants, overrides=overrides, device=args.device,
            threads=args.threads, overwrite=args.overwrite, progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"remn ablate: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0
