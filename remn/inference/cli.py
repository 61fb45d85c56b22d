"""`remn segment`: one video, or a DAVIS / YouTube-VOS split, optionally sharded under torchrun.

    remn segment FRAMES_DIR_OR_VIDEO --mask FIRST.png --output OUT_DIR
    remn segment FRAMES_DIR --mask-frame K --mask K.png --output OUT_DIR   # both ways from frame K
    remn segment FRAMES_DIR --mask MASKS_DIR --both-ways --output OUT_DIR  # every annotation seeds both ways
    remn segment --davis-root ROOT --set val [--year 2017] --output OUT_DIR [--batch-videos N] [--resume]
    remn segment --youtube-root ROOT --set valid --output OUT_DIR
    torchrun --nproc_per_node N -m remn segment --davis-root ROOT --set val --output OUT_DIR

Flags map onto `InferenceConfig` (remn.inference.config); bad input is reported as one
line on stderr with exit code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from remn.inference.config import PRESETS, inference_preset, resolve_inference_config
from remn.inference.fast_path import COMPILE_MODES, FastPathSettings
from remn.inference.memory import MEMORY_POLICIES
from remn.precision import PRECISIONS

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number, as a shell reports it
RANDOM_WEIGHTS_WARNING = (
    "WARNING: no --weights given: the model has random weights and the masks it writes are "
    "meaningless; pass trained weights (--weights FILE) for real results"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    inputs = parser.add_argument_group("input (one video, or a dataset split)")
    inputs.add_argument("input", nargs="?", help="a folder of frames or a video file")
    inputs.add_argument("--mask", help="the first frame's annotation PNG, or a folder of annotation PNGs named like the frames "
                        "(objects first appearing on later frames: only their new ids are taken)")
    inputs.add_argument("--mask-frame", metavar="K",
                        help="the frame (index from 0, or name) the --mask PNG annotates; propagates both ways from it")
    inputs.add_argument("--both-ways", action="store_true",
                        help="each annotation of a --mask folder seeds its objects forward and backward, on any frames "
                             "(where runs overlap, each object's nearest annotation wins)")
    inputs.add_argument("--davis-root", help="DAVIS root (JPEGImages/, Annotations/, ImageSets/)")
    inputs.add_argument("--youtube-root", help="YouTube-VOS root (SET/JPEGImages, SET/Annotations, SET/meta.json)")
    inputs.add_argument("--set", dest="split", help="dataset split (DAVIS: val; YouTube-VOS: valid)")
    inputs.add_argument("--year", type=int, default=2017, choices=(2016, 2017), help="DAVIS year (default 2017)")
    inputs.add_argument("--sequences", nargs="+", metavar="NAME", help="only these sequences of the split")

    outputs = parser.add_argument_group("output")
    outputs.add_argument("--output", "-o", required=True, help="output folder (dataset: one sub-folder per sequence)")
    outputs.add_argument("--overwrite", action="store_true", help="replace results already in the output folder")
    outputs.add_argument("--resume", action="store_true",
                         help="skip videos whose results are complete (a finished run's marker) and redo the rest")
    outputs.add_argument("--overlay", action="store_true", help="also write overlay JPEGs under OUTPUT/overlays")
    outputs.add_argument("--no-progress", action="store_true", help="no progress bar")

    model = parser.add_argument_group("model")
    model.add_argument("--config", choices=sorted(PRESETS),
                       help="inference preset and model config (default: remn; rde with --memory rde)")
    model.add_argument("--weights", help="trained weights (a remn checkpoint or STCN's stcn.pth)")
    model.add_argument("--fused", dest="fused", action="store_true", default=True,
                       help="Triton kernels for the memory read and local attention on CUDA (default)")
    model.add_argument("--no-fused", dest="fused", action="store_false", help="the PyTorch reference ops")
    model.add_argument("--engine", choices=("pytorch", "onnxruntime"), default="pytorch",
                       help="onnxruntime: run the graphs `remn export` wrote to --onnx DIR (pip install remn[onnx])")
    model.add_argument("--onnx", metavar="DIR", help="the export folder --engine onnxruntime runs (its weights are in the graphs)")
    model.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when available; torchrun: cuda:LOCAL_RANK)")
    model.add_argument("--batch-videos", type=int, default=1, metavar="N",
                       help="segment N videos of a dataset at once in one batch (default 1)")
    model.add_argument("--precision", choices=PRECISIONS,
                       help="default auto: bf16 autocast on CUDA (fp16 without bf16); on the CPU fp32 with the fast "
                            "path's key encoder in bf16 where the CPU has native bf16, its value encoder too with "
                            "at most 2 objects (the stcn and rde presets: fp32, as published); bf16 on the CPU runs "
                            "the fast path's encoders and decoder in bf16; fp16 is CUDA only")
    model.add_argument("--no-fast-path", dest="fast_path", action="store_false", default=None,
                       help="on a CPU, run the model as built (no BatchNorm folding, shared inputs, channels-last)")
    model.add_argument("--compile", choices=COMPILE_MODES, metavar="MODE",
                       help="torch.compile the network's fixed-shape parts in this mode (one of "
                            f"{', '.join(COMPILE_MODES)}; reduce-overhead replays CUDA graphs on CUDA); it takes the "
                            "fast path on any device. Default off: it does not pay on a CPU and is not yet measured "
                            "on a GPU")
    model.add_argument("--size", type=int, help="shorter side frames are resized to (default 480; 0 keeps the input size)")

    memory = parser.add_argument_group("memory (defaults from the preset)")
    memory.add_argument("--memory", choices=sorted(MEMORY_POLICIES),
                        help="remn: the gated frame bank; rde: RDE-VOS's recurrent embedding in three fixed slots "
                             "(needs an rde model; without --config it picks the rde preset)")
    memory.add_argument("--mem-every", type=int, help="memorise every N-th frame (switches to the fixed schedule)")
    memory.add_argument("--change-threshold", type=float, help="adaptive update: memorise when 1 − IoU exceeds this")
    memory.add_argument("--appearance-threshold", type=float,
                        help="adaptive update: memorise when an object's mean key turns by more than this (1 − cos)")
    memory.add_argument("--max-gap", type=int, help="adaptive update: memorise at least every N frames")
    memory.add_argument("--capacity", type=int, help="memory frames at most (0: unbounded)")
    memory.add_argument("--gate-threshold", type=float, help="drop memory frames whose gate score falls below this")
    memory.add_argument("--keep-unused", action="store_true",
                        help="the gate drops no frame it predicts unused (only those below --gate-threshold)")
    memory.add_argument("--top-k", type=int, help="keys each query reads from (0: all)")


def config_from_args(args):
    """The InferenceConfig the flags describe; the config and the memory policy's settings
    validate them (a flag the chosen policy has no setting for raises ValueError)."""
    overrides = {}
    if args.size is not None:
        overrides["size"] = None if args.size == 0 else args.size
    if args.precision is not None:
        overrides["precision"] = args.precision
    if args.top_k is not None:
        overrides["top_k"] = None if args.top_k == 0 else args.top_k
    preset = args.config or ("rde" if args.memory == "rde" else "remn")
    if args.memory is not None:
        overrides["memory"] = args.memory
    policy = MEMORY_POLICIES[args.memory or inference_preset(preset).memory.policy].settings_type
    if args.mem_every is not None:
        overrides["mem_every"] = args.mem_every
        if "update" in {f.name for f in dataclasses.fields(policy)}:  # the frame bank: the fixed schedule
            overrides["update"] = "every"
    if args.keep_unused:
        overrides["drop_unused"] = False
    for flag in ("change_threshold", "appearance_threshold", "max_gap", "gate_threshold"):
        if getattr(args, flag) is not None:
            overrides[flag] = getattr(args, flag)
    if args.capacity is not None:
        overrides["capacity"] = None if args.capacity == 0 else args.capacity
    return resolve_inference_config(preset, **overrides)


def _plan(args):
    from remn.inference import runner

    datasets = [flag for flag, value in (("--davis-root", args.davis_root), ("--youtube-root", args.youtube_root)) if value]
    if len(datasets) > 1:
        raise ValueError("give either --davis-root or --youtube-root, not both")
    if datasets and args.input:
        raise ValueError(f"give either an input video or {datasets[0]}, not both")
    if datasets and (args.mask_frame is not None or args.both_ways):
        raise ValueError("--mask-frame and --both-ways apply to one video; dataset runs keep their first-frame protocol")
    if args.davis_root:
        return runner.davis_jobs(args.davis_root, args.split or "val", args.year, args.output, args.sequences, args.overlay)
    if args.youtube_root:
        return runner.youtube_jobs(args.youtube_root, args.split or "valid", args.output, args.sequences, args.overlay)
    if not args.input:
        raise ValueError("give an input video (folder of frames or video file) with --mask, or --davis-root / --youtube-root")
    if not args.mask:
        raise ValueError("one video needs --mask with its first frame's annotation")
    if args.sequences:
        raise ValueError("--sequences selects sequences of a dataset; it does not apply to one video")
    mask_frame = args.mask_frame
    if mask_frame is not None and mask_frame.isdigit():
        mask_frame = int(mask_frame)  # an index; else a frame name
    return [runner.single_video_job(args.input, args.mask, args.output, args.overlay, mask_frame, args.both_ways)]


def run(args) -> int:
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"remn segment: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _run(args) -> int:
    import torch

    from remn.build import build_model
    from remn.distributed import close_distributed
    from remn.inference import runner

    config = config_from_args(args)
    if (args.engine == "onnxruntime") != (args.onnx is not None):
        raise ValueError("--engine onnxruntime runs the graphs in --onnx DIR (written by remn export): give both")
    if args.onnx is not None and (args.batch_videos > 1 or args.both_ways or args.weights):
        raise ValueError("--engine onnxruntime runs one video at a time, one way, with the exported weights: "
                         "drop --batch-videos, --both-ways and --weights")
    fast_path = args.fast_path
    if args.compile is not None:
        if args.fast_path is False or args.onnx is not None:
            raise ValueError("--compile compiles the fast path's PyTorch model: drop --no-fast-path / --engine onnxruntime")
        fast_path = FastPathSettings(compile_mode=args.compile)
    jobs = _plan(args)
    context = runner.init_distributed(args.device)
    try:
        runner.check_jobs(jobs, context, args.overwrite, args.resume)  # before any work, on every rank
        if context.is_main and args.weights is None and args.onnx is None:
            print(RANDOM_WEIGHTS_WARNING, file=sys.stderr)
        if context.is_main and config.precision == "fp16" and context.device.type != "cuda":
            print(f"remn segment: --precision fp16 applies on CUDA only; running in float32 on {context.device}",
                  file=sys.stderr)

        def make_model(device):
            if args.onnx is not None:
                from remn.inference.onnx_engine import OnnxRuntimeEngine

                return OnnxRuntimeEngine(args.onnx)
            torch.manual_seed(0)  # without --weights: the same random model on every rank and every run
            return build_model(fused=args.fused, config=config.model, weights=args.weights, device=device)

        untrained = " (random weights: not results)" if args.weights is None and args.onnx is None else ""
        try:
            outcomes = runner.run_jobs(jobs, make_model, config, context, progress=not args.no_progress and context.is_main,
                                       batch_videos=args.batch_videos, resume=args.resume, fast_path=fast_path)
        except runner.RunInterrupted as stopped:
            print(f"summary{untrained}: " + runner.summarise_outcomes(stopped.outcomes))
            print(f"remn segment: interrupted by {stopped}", file=sys.stderr)
            return EXIT_INTERRUPTED[stopped.signal_name]
        if context.is_main and outcomes is not None:
            print(f"summary{untrained}: " + runner.summarise_outcomes(outcomes))
            if any(o.status == "failed" for o in outcomes):
                return EXIT_BAD_INPUT  # each failed video's error was reported as it failed
    finally:
        close_distributed(context)
    return 0
