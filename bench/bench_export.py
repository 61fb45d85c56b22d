"""PyTorch eager, torch.compile and ONNX Runtime side by side: per-frame time of one step.

Per object count (1, 2) each engine gets its own `Segmenter` on the same synthetic clip
and the same random-weight model, with memory written every frame and capped at T = 5
frames (`update="every", mem_every=1, capacity=5`), top-20 and local attention, as the
`remn` preset reads, at 480p (480×854, padded to 480×864). Once every engine's memory holds
5 frames and 3 more frames have warmed them up (torch.compile recompiles for a full bank's
strides), the engines step the following frames in turn, one frame each per round
(interleaved, so load from other processes falls on all alike); a figure is the median
of its rounds. Each frame's probabilities and labels are compared with eager's.

Engines:
- `eager`: plain eager fp32 (`fast_path=False`), the model's step functions;
- `torch.compile`: the same model with `encode_key`, `encode_value` and `segment` each
  `torch.compile(fullgraph=True)` (Inductor); the memory frames fill while it compiles
  (the untimed first frames' time, its compile time included, is reported apart);
- `onnxruntime <provider>`: the graphs `remn.export.export_onnx` wrote, run by
  `OnnxRuntimeEngine` (CPU execution provider; CUDA / TensorRT where ONNX Runtime has them
  and the device is CUDA);
- `eager, BN folded`: eager fp32 with BatchNorm folded into the convolutions (the same
  function, rounded differently). Its max |Δp| against eager is PyTorch's own fp32 rounding
  spread: an engine whose difference is of that size is as close as fp32 allows.
Every engine runs `torch.get_num_threads()` = `threads` intra-op threads (ONNX Runtime too).

Top-k makes the read discontinuous: where a query's k-th and (k+1)-th memory keys are
nearly tied, a rounding difference swaps which one it reads. With random weights the
softmax over the k keys is flat, so a swap moves the probabilities by up to ~1e-4–1e-3.
`all_keys` therefore repeats the comparison (not the timing) with graphs exported for
top_k=None, the continuous function, where every fp32 engine should agree to ~1e-5.
"""
from __future__ import annotations

import copy
import statistics
import tempfile
import time

import torch

import remn
from common import progress
from remn.data.synthetic import make_clip
from remn.inference import Segmenter, resolve_inference_config
from remn.inference.fast_path import FastPathSettings
from remn.train.trainer import cpu_threads

MEMORY_FRAMES = 5
WARMUP = 3  # frames after the memory is full, untimed: torch.compile recompiles once the bank is at capacity
STEPS = ("encode_key", "encode_value", "segment")
BN_FOLDED = FastPathSettings(share_inputs=False, channels_last=False, fuse_pointwise=False, winograd=False,
                             bf16="none")  # BatchNorm folding alone
AGREEMENT_FRAMES = 6  # frames of the all-keys comparison (memory full from frame 5 on)


def settings(quick: bool):
    """(model preset, (H, W), object counts, timed rounds)."""
    if quick:
        return "tiny", (64, 96), (1, 2), 2
    return "remn", (480, 854), (1, 2), 3


def compiled_model(model):
    """A copy of `model` whose three step functions are torch.compile(fullgraph=True)."""
    compiled = copy.deepcopy(model)
    for name in STEPS:
        setattr(compiled, name, torch.compile(getattr(compiled, name), fullgraph=True))
    return compiled


def onnx_providers(device: torch.device) -> list[str]:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    wanted = ["CPUExecutionProvider"]
    if device.type == "cuda":
        wanted += [p for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") if p in available]
    return wanted


def run(device: torch.device, quick: bool, repeats: int | None = None, threads: int = 2) -> dict:
    with cpu_threads(threads):
        return _run(device, quick, repeats, threads)


def _run(device: torch.device, quick: bool, repeats: int | None, threads: int) -> dict:
    from remn.export import export_onnx
    from remn.inference.onnx_engine import OnnxRuntimeEngine

    preset, (height, width), object_counts, rounds = settings(quick)
    rounds = repeats or rounds
    torch.manual_seed(0)
    model = remn.build_model(config=preset, device="cpu")
    inference = resolve_inference_config(preset, size=None, update="every", mem_every=1, capacity=MEMORY_FRAMES)
    torch_device = device if device.type == "cuda" else torch.device("cpu")
    eager_model = model.to(torch_device)
    compiled = compiled_model(eager_model)
    rows, extra = [], {}
    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        manifest = export_onnx(model, directory, inference, size=(height, width), max_objects=max(2, *object_counts))
        extra["export_s"] = time.perf_counter() - started
        extra["opset"] = manifest["opset"]
        engines = {"eager": lambda: Segmenter(eager_model, inference, fast_path=False),
                   "torch.compile": lambda: Segmenter(compiled, inference, fast_path=False),
                   "eager, BN folded": lambda: Segmenter(eager_model, inference, fast_path=BN_FOLDED)}
        for provider in onnx_providers(device):
            engine = OnnxRuntimeEngine(directory, providers=[provider], threads=threads)
            engines[f"onnxruntime {provider.removesuffix('ExecutionProvider')}"] = (
                lambda engine=engine: Segmenter(engine, inference))
        for objects in object_counts:
            frames, masks = make_clip(seed=7, num_frames=MEMORY_FRAMES + WARMUP + rounds, height=height, width=width,
                                      num_objects=objects)
            segmenters = {name: make() for name, make in engines.items()}
            times = {name: [] for name in segmenters}
            fill_seconds = dict.fromkeys(segmenters, 0.0)
            agree = {name: [] for name in segmenters}
            prob_error = dict.fromkeys(segmenters, 0.0)
            for index in progress(range(MEMORY_FRAMES + WARMUP + rounds), f"export, {objects} objects"):
                timed = index >= MEMORY_FRAMES + WARMUP
                mask = masks[0] if index == 0 else None
                results = {}
                for name, segmenter in segmenters.items():
                    started = time.perf_counter()
                    results[name] = segmenter.step(frames[index], mask)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    elapsed = time.perf_counter() - started
                    if timed:
                        times[name].append(elapsed * 1e3)
                    else:
                        fill_seconds[name] += elapsed
                if timed:
                    base = results["eager"]
                    for name, result in results.items():
                        agree[name].append((result.labels.cpu() == base.labels.cpu()).double().mean().item())
                        error = (result.probs.cpu() - base.probs.cpu()).abs().max().item()
                        prob_error[name] = max(prob_error[name], error)
            base_ms = statistics.median(times["eager"])
            for name, segmenter in segmenters.items():
                report = segmenter.report()
                ms = statistics.median(times[name])
                rows.append({
                    "engine": name, "objects": objects, "size": f"{width}x{height}", "memory_frames": report.memory_frames,
                    "ms_per_frame": ms, "ms_samples": times[name], "x_eager": ms / base_ms,
                    "untimed_frames_s": fill_seconds[name], "max_prob_diff": prob_error[name],
                    "labels_identical_pct": 100.0 * statistics.fmean(agree[name]),
                })
    fastest = {}
    for objects in object_counts:
        mine = [row for row in rows if row["objects"] == objects and row["engine"] != "eager, BN folded"]
        fastest[str(objects)] = min(mine, key=lambda row: row["ms_per_frame"])["engine"]
    all_keys = agreement_without_top_k(model, inference, (height, width), max(object_counts), threads)
    return {"model": preset, "threads": threads, "rounds": rounds, "top_k": inference.top_k,
            "device": str(torch_device), "fastest": fastest, **extra, "rows": rows, "all_keys": all_keys}


def agreement_without_top_k(model, inference, size, objects: int, threads: int) -> dict:
    """max |Δp| and identical labels against eager of ONNX Runtime (CPU) and of eager with BN
    folded, on graphs exported with top_k=None, over AGREEMENT_FRAMES frames, on the CPU."""
    from remn.export import export_onnx
    from remn.inference.onnx_engine import OnnxRuntimeEngine

    model = model.cpu()
    inference = resolve_inference_config(inference, top_k=None)
    frames, masks = make_clip(seed=7, num_frames=AGREEMENT_FRAMES, height=size[0], width=size[1], num_objects=objects)
    with tempfile.TemporaryDirectory() as directory:
        export_onnx(model, directory, inference, size=size, max_objects=max(2, objects))
        segmenters = {"eager": Segmenter(model, inference, fast_path=False),
                      "eager, BN folded": Segmenter(model, inference, fast_path=BN_FOLDED),
                      "onnxruntime CPU": Segmenter(OnnxRuntimeEngine(directory, threads=threads), inference)}
        worst = dict.fromkeys(segmenters, 0.0)
        same = dict.fromkeys(segmenters, 0)
        for index in progress(range(AGREEMENT_FRAMES), f"export, all keys, {objects} objects"):
            results = {name: s.step(frames[index], masks[0] if index == 0 else None) for name, s in segmenters.items()}
            for name, result in results.items():
                worst[name] = max(worst[name], (result.probs - results["eager"].probs).abs().max().item())
                same[name] += int((result.labels == results["eager"].labels).sum())
    pixels = AGREEMENT_FRAMES * size[0] * size[1]
    return {"objects": objects, "frames": AGREEMENT_FRAMES, "top_k": None,
            "rows": [{"engine": name, "max_prob_diff": worst[name], "labels_identical_pct": 100.0 * same[name] / pixels}
                     for name in segmenters if name != "eager"]}
