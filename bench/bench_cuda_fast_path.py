"""The fast path's routes on CUDA: frames per second of whole steps against the plain model.

On CUDA a `Segmenter` runs the model as it is (fast_path=None) until this section has
measured the routes there. Per object count (1, 4) at 854×480, the `remn` preset with
random weights and its inference preset (precision "auto": bf16 where the GPU has it),
each variant segments the same clip:
- `plain`: fast_path=False, the model as it is;
- `fast path`: FastPathSettings(): BatchNorm folded, per-frame inputs shared by the
  objects, channels-last (on CUDA the Segmenter's autocast applies the precision);
- `fast path + reduce-overhead`: the same with compile_mode="reduce-overhead": the
  trunks (key encoder, value encoder, decoder) torch.compile'd and replayed as CUDA graphs.
Each variant runs the clip once untimed (compiles, autotuning and graph capture happen
here: `warmup_s`), then once timed: FPS from the Segmenter's own step time (its report
waits for the GPU). Labels of every frame after the first are compared with `plain`'s.

--quick on a CPU (CI, gpu_check.sh --dry-run): the tiny model at 64×96 without the
compiled variant (Inductor takes minutes on a CPU): it runs this section's code, not a GPU.
"""
from __future__ import annotations

import time

import numpy as np
import torch

import remn
from common import progress
from remn.data.synthetic import make_clip
from remn.inference import Segmenter, resolve_inference_config
from remn.inference.fast_path import FastPathSettings

PLAIN = "plain"


def settings(device: torch.device, quick: bool):
    """(model preset, (H, W), object counts, frames, {variant: fast_path})."""
    variants = {PLAIN: False, "fast path": FastPathSettings()}
    if device.type == "cuda":
        variants["fast path + reduce-overhead"] = FastPathSettings(compile_mode="reduce-overhead")
    if quick:
        return "tiny", (64, 96), (1, 2), 6, variants
    return "remn", (480, 854), (1, 4), 40, variants


def run(device: torch.device, quick: bool) -> dict:
    if device.type != "cuda" and not quick:
        return {"skipped": f"the CUDA fast path section runs on CUDA (or --quick on a CPU), not {device}"}
    preset, (height, width), object_counts, num_frames, variants = settings(device, quick)
    torch.manual_seed(0)
    model = remn.build_model(config=preset, device=device)
    inference = resolve_inference_config(preset, size=None)
    rows = []
    for objects in object_counts:
        frames, masks = make_clip(seed=3, num_frames=num_frames, height=height, width=width, num_objects=objects)
        frames = [torch.from_numpy(np.ascontiguousarray(frame)).to(device) for frame in frames]
        labels = {}
        for name, fast_path in progress(variants.items(), f"cuda fast path, {objects} objects"):
            segmenter = Segmenter(model, inference, fast_path=fast_path)
            started = time.perf_counter()
            segment(segmenter, frames, masks[0])
            segmenter.report()  # waits for the GPU
            warmup_s = time.perf_counter() - started
            labels[name] = segment(segmenter, frames, masks[0])
            report = segmenter.report()
            same = [(got == want).double().mean().item() for got, want in zip(labels[name][1:], labels[PLAIN][1:])]
            rows.append({
                "variant": name, "objects": objects, "size": f"{width}x{height}", "precision": inference.precision,
                "fps": report.fps, "warmup_s": warmup_s, "memory_frames": report.peak_memory_frames,
                "labels_identical_pct": 100.0 * sum(same) / len(same),
            })
        plain_fps = next(row["fps"] for row in rows if row["objects"] == objects and row["variant"] == PLAIN)
        for row in rows:
            if row["objects"] == objects:
                row["x_plain"] = row["fps"] / plain_fps
    return {"model": preset, "weights": "random", "frames": num_frames, "rows": rows}


def segment(segmenter: Segmenter, frames, first_mask) -> list[torch.Tensor]:
    """The clip from its first frame (the memory emptied first) → each frame's labels [H, W]."""
    segmenter.reset()
    return [segmenter.step(frame, first_mask if index == 0 else None).labels for index, frame in enumerate(frames)]
