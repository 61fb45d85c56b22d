"""Batched multi-video inference: videos/s and frames/s of `BatchSegmenter` at B = 1, 2, 4, 8
short videos, against the same videos segmented one at a time in the same run.

Synthetic 480p videos (`make_clip`, two objects each, all the same length: 2 frames on the
CPU, 12 on CUDA) at the working size (no resize); the remn preset's model and inference;
the reference path on the CPU, the fused kernels on CUDA. Per B, the same B videos one at
a time (one `Segmenter`, reset per video) and then batched (one `BatchSegmenter`), so on a
shared machine both see the same load; wall clock with synchronisation around the steps
only (frames are in memory; no file I/O). Each row also says how many pixels' labels
differ from the one-at-a-time run (expected: none, or a handful at exact ties of an
untrained model).
"""
from __future__ import annotations

import time

import torch

import remn
from common import progress, synchronize
from remn.data.synthetic import make_clip
from remn.inference import Segmenter, resolve_inference_config
from remn.inference.batch import BatchSegmenter, FrameInput

BATCH_SIZES = (1, 2, 4, 8)


def run(device: torch.device, quick: bool, frames: int | None = None) -> list[dict]:
    config_name, (height, width) = ("tiny", (64, 112)) if quick else ("remn", (480, 854))
    num_frames = frames or (12 if device.type == "cuda" and not quick else 2)
    videos = [make_clip(seed=20 + i, num_frames=num_frames, height=height, width=width, num_objects=2)
              for i in range(max(BATCH_SIZES))]
    precision = "bf16" if device.type == "cuda" else "fp32"
    config = resolve_inference_config(config_name, precision=precision, size=None)  # frames already at size
    torch.manual_seed(0)
    model = remn.build_model(config=config_name, fused=device.type == "cuda", device=device)
    batch = BatchSegmenter(model, config)  # built once: on a CPU it prepares the Segmenter's fast copy
    segmenter = Segmenter(batch.model, config)  # the same prepared model

    def one_at_a_time(count: int) -> tuple[float, list[torch.Tensor]]:
        labels = []
        synchronize(device)
        started = time.perf_counter()
        for clip, masks in videos[:count]:
            segmenter.reset()
            for t, frame in enumerate(clip):
                labels.append(segmenter.step(frame, masks[0] if t == 0 else None).labels)
        synchronize(device)
        return time.perf_counter() - started, [x.cpu() for x in labels]

    def batched(count: int) -> tuple[float, list[torch.Tensor]]:
        per_video: list[list[torch.Tensor]] = [[] for _ in range(count)]
        synchronize(device)
        started = time.perf_counter()
        for index in range(count):
            batch.add(index)
        for t in range(num_frames):
            results = batch.step({i: FrameInput(videos[i][0][t], videos[i][1][0] if t == 0 else None) for i in range(count)})
            for i, result in results.items():
                per_video[i].append(result.labels)
        for index in range(count):
            batch.remove(index)
        synchronize(device)
        return time.perf_counter() - started, [x.cpu() for labels in per_video for x in labels]

    batched(1)  # warm-up: allocator, kernels' compilation and autotuning
    rows = []
    for count in progress(BATCH_SIZES, "batched videos"):
        # The baseline right before each batched run: on a shared machine both see the same load.
        alone_seconds, reference = one_at_a_time(count)
        seconds, labels = batched(count)
        differing = sum(int((a != b).sum()) for a, b in zip(labels, reference))
        total_frames = count * num_frames
        rows.append({
            "config": config_name, "size": f"{width}x{height}", "precision": precision, "fused": model.fused,
            "batch": count, "frames_per_video": num_frames,
            "videos_per_s": count / seconds, "fps": total_frames / seconds,
            "one_at_a_time_videos_per_s": count / alone_seconds, "one_at_a_time_fps": total_frames / alone_seconds,
            "x_one_at_a_time": alone_seconds / seconds,
            "label_pixels_differing": differing, "label_pixels": sum(x.numel() for x in reference),
        })
    return rows
