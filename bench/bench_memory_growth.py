"""Memory vs video length: REMN's bounded, preallocated bank and RDE's recurrent embedding
against a naive keep-every-5th memory (STCN's policy, unbounded) on the same frames.

Peak device memory (`torch.cuda.max_memory_allocated`), the device-level figure from NVML
and the host's resident set size, for each length. A short synthetic clip is played back
and forth to make long videos; the tiny model at a small size keeps 10,000 frames quick.
"""
from __future__ import annotations

import time

import numpy as np
import torch

import remn
from common import NvmlSampler, host_rss_bytes, progress, synchronize
from remn.data.synthetic import make_clip
from remn.inference import Segmenter, resolve_inference_config

# policy → (model overrides, inference preset or None for the model's own, inference overrides)
POLICIES = {
    "remn dynamic bank": ({}, None, {}),
    "rde recurrent embedding": ({"memory": "rde", "gate": False, "local_attention": False}, "rde", {}),
    "every 5th, unbounded (STCN)": ({}, None, {"update": "every", "mem_every": 5, "capacity": None, "gate": False}),
}


def run(device: torch.device, quick: bool) -> list[dict]:
    lengths = (10, 40) if quick else (100, 1000, 10000)
    config, size = ("tiny", (32, 48)) if quick else ("remn", (240, 432))
    frames, masks = make_clip(seed=5, num_frames=24, height=size[0], width=size[1], num_objects=2)
    clip = [torch.from_numpy(np.ascontiguousarray(f)).to(device) for f in frames]
    clip = clip + clip[-2:0:-1]  # back and forth: no jump at the loop point
    nvml = NvmlSampler(device)
    results = []
    for policy, (model_overrides, preset, overrides) in POLICIES.items():
        torch.manual_seed(0)
        model = remn.build_model(config=config, device=device, **model_overrides)
        for length in lengths:
            segmenter = Segmenter(model, resolve_inference_config(preset or config, size=None, **overrides))
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            started = time.perf_counter()
            segmenter.step(clip[0], masks[0])
            for index in progress(range(1, length), f"{policy}, {length} frames"):
                segmenter.step(clip[index % len(clip)])
            synchronize(device)
            elapsed = time.perf_counter() - started
            report = segmenter.report(policy)
            results.append({
                "policy": policy, "config": config, "size": f"{size[1]}x{size[0]}", "frames": length,
                "memory_frames": report.memory_frames, "peak_memory_frames": report.peak_memory_frames,
                "peak_allocated": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
                "nvml_used": nvml.used_bytes(), "host_rss": host_rss_bytes(), "fps": length / elapsed,
            })
            del segmenter
    return results
