"""High resolution with a full memory: 1080p and T = 20 memory frames, fused vs reference.

The frames go through the engine at their own size (no resizing): 1920×1080 is padded to
1920×1088, so a query holds h·w = 68·120 = 8,160 keys and the memory T·h·w = 163,200. The
reference read materialises the [8,160, 163,200] affinity (5.3 GB in fp32 per batch entry,
before the softmax's own copies); the fused read streams it. Every frame is memorised and
the bank is capped at T, so after the first T frames the memory stays full; the timed
frames all read T frames. Gate dropping is off so nothing leaves the memory early.

Per setting: FPS over the frames read at full memory, peak device memory over the whole
run (`torch.cuda.max_memory_allocated`), or "out of memory" when the device had too little.
"""
from __future__ import annotations

import time

import numpy as np
import torch

import remn
from common import progress, synchronize
from remn.data.synthetic import make_clip
from remn.inference import Segmenter, resolve_inference_config


def cases(device: torch.device, quick: bool):
    """(config, (H, W), memory frames T, objects, precisions)."""
    if quick:
        return "tiny", (64, 112), 3, (2,), ("fp32",)
    precisions = ("fp32", "bf16") if device.type == "cuda" else ("fp32",)
    return "remn", (1080, 1920), 20, (1, 4), precisions


def run(device: torch.device, quick: bool) -> list[dict]:
    config, size, memory_frames, object_counts, precisions = cases(device, quick)
    timed_frames = 3 if quick else 10
    results = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = remn.build_model(fused=fused, config=config, device=device)
        for objects in object_counts:
            frames, masks = make_clip(seed=11, num_frames=memory_frames + timed_frames, height=size[0], width=size[1],
                                      num_objects=objects)
            clip = [torch.from_numpy(np.ascontiguousarray(f)).to(device) for f in frames]
            for precision in precisions:
                inference = resolve_inference_config(
                    config, size=None, precision=precision, update="every", mem_every=1, capacity=memory_frames, gate_threshold=0.0,
                )
                row = {"config": config, "size": f"{size[1]}x{size[0]}", "memory_frames": memory_frames,
                       "objects": objects, "precision": precision, "fused": fused}
                row.update(_segment_at_full_memory(Segmenter(model, inference), clip, masks[0], memory_frames, device))
                results.append(row)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def _segment_at_full_memory(segmenter, clip, first_mask, memory_frames, device) -> dict:
    """Fill the memory with `memory_frames` frames, then time the remaining frames."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        segmenter.step(clip[0], first_mask)
        for frame in clip[1:memory_frames]:
            segmenter.step(frame)
        synchronize(device)
        started = time.perf_counter()
        for frame in progress(clip[memory_frames:], "high resolution, timed frames"):
            segmenter.step(frame)
        synchronize(device)
        elapsed = time.perf_counter() - started
    except torch.OutOfMemoryError:
        return {"error": "out of memory"}
    report = segmenter.report("high resolution")
    return {
        "fps": (len(clip) - memory_frames) / elapsed,
        "memory_frames_read": report.memory_frames,
        "peak_allocated": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }
