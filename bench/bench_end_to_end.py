"""End-to-end segmentation speed on a synthetic clip: FPS and where the time goes.

Each setting runs twice: once untouched for FPS (the Segmenter's own step time), once
with the model's stages wrapped in synchronised timers for the split into encoder,
memory read, local attention and decoder. The model has random weights: the speed of a
step does not depend on them, but the adaptive update's choices do, so the number of
memory frames is reported beside each figure.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import torch

import remn
from common import NvmlSampler, progress, synchronize
from remn.data.synthetic import make_clip
from remn.inference import Segmenter, resolve_inference_config


# memory mode → (model preset, model overrides, inference preset) for the full and the quick run
MEMORY_MODES = {
    "remn": {"full": ("remn", {}, "remn"), "quick": ("tiny", {}, "tiny")},
    "rde": {"full": ("rde", {}, "rde"),
            "quick": ("tiny", {"memory": "rde", "gate": False, "local_attention": False}, "rde")},
}


def settings(device: torch.device, quick: bool):
    """(memory mode, (H, W), objects, precision, fused, adaptive); RDE memorises every 3rd frame."""
    if quick:
        rows = [("remn", (64, 96), o, "fp32", True, adaptive) for o in (1, 2) for adaptive in (True, False)]
        return rows + [("remn", (64, 96), 1, "fp32", False, True), ("rde", (64, 96), 2, "fp32", True, False)]
    precisions = ("fp32", "bf16") if device.type == "cuda" else ("fp32",)
    rows = [("remn", (480, 854), o, precision, fused, adaptive)
            for o in (1, 2, 4) for precision in precisions for fused in (True, False) for adaptive in (True, False)]
    return rows + [("rde", (480, 854), o, precision, fused, False) for o in (1, 2, 4) for precision in precisions
                   for fused in (True, False)]


@contextmanager
def stage_timers(model, device):
    """Wrap the model's stages; yields a dict stage → milliseconds accumulated."""
    totals = {"encode": 0.0, "read": 0.0, "local": 0.0, "decode": 0.0}
    wrapped = {"encode_key": "encode", "encode_value": "encode", "read_memory": "read", "decode": "decode"}
    originals = {}

    def timed(fn, stage):
        def run(*args, **kwargs):
            synchronize(device)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            synchronize(device)
            totals[stage] += (time.perf_counter() - start) * 1e3
            return out
        return run

    for name, stage in wrapped.items():
        originals[name] = getattr(model, name)
        setattr(model, name, timed(originals[name], stage))
    if model.local_branch is not None:
        originals["local"] = model.local_branch.forward
        model.local_branch.forward = timed(originals["local"], "local")
    try:
        yield totals
    finally:
        for name in wrapped:
            delattr(model, name)  # back to the class's method
        if "local" in originals:
            del model.local_branch.forward


def segment_clip(segmenter, frames, first_mask):
    segmenter.reset()
    segmenter.step(frames[0], first_mask)
    for frame in frames[1:]:
        segmenter.step(frame)
    return segmenter.report("bench")


def run(device: torch.device, quick: bool) -> list[dict]:
    num_frames = 6 if quick else 60
    results = []
    models = {}
    nvml = NvmlSampler(device)  # utilisation and power during each timed pass
    for memory, size, objects, precision, fused, adaptive in progress(settings(device, quick), "end to end"):
        frames, masks = make_clip(seed=3, num_frames=num_frames, height=size[0], width=size[1], num_objects=objects)
        frames_on_device = [torch.from_numpy(np.ascontiguousarray(f)).to(device) for f in frames]
        config, model_overrides, preset = MEMORY_MODES[memory]["quick" if quick else "full"]
        key = (memory, fused)
        if key not in models:
            torch.manual_seed(0)
            models[key] = remn.build_model(fused=fused, config=config, device=device, **model_overrides)
        model = models[key]
        policy = {} if adaptive or memory == "rde" else {"update": "every", "mem_every": 5}
        inference = resolve_inference_config(preset, size=None, precision=precision, **policy)
        segmenter = Segmenter(model, inference)
        # Warm-up over the whole clip: every memory size the timed pass meets has its kernels
        # compiled (Triton specialises sizes divisible by 16) and tuned before the clock runs.
        segment_clip(segmenter, frames_on_device, masks[0])
        with nvml:
            report = segment_clip(segmenter, frames_on_device, masks[0])
        with stage_timers(segmenter.model, device) as totals:  # the model the Segmenter runs (on a CPU, its fast copy)
            segment_clip(segmenter, frames_on_device, masks[0])
        results.append({
            "memory": memory, "config": config, "size": f"{size[1]}x{size[0]}", "objects": objects, "precision": precision,
            "fused": fused, "adaptive": adaptive, "frames": report.frames, "fps": report.fps,
            "memory_frames": report.peak_memory_frames, "nvml": nvml.summary(),
            **{f"{stage}_ms": total / num_frames for stage, total in totals.items()},
        })
    add_fused_speedups(results)
    return results


def add_fused_speedups(results: list[dict]) -> None:
    """Each fused row gets `x_reference`: its FPS over the same setting's on the reference path."""
    def setting(row):
        return tuple(row[k] for k in ("memory", "config", "size", "objects", "precision", "adaptive"))

    reference_fps = {setting(row): row["fps"] for row in results if not row["fused"]}
    for row in results:
        if row["fused"] and setting(row) in reference_fps:
            row["x_reference"] = row["fps"] / reference_fps[setting(row)]
