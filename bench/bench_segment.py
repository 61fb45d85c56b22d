"""`remn segment` on files: frames/s with decoding and PNG writing, against the model alone.

A synthetic 480p video is written as JPEG frames; the dataset runner (`run_video`: frames
decoded on a prefetch thread, PNGs and overlays written by a thread pool) segments it.
Per setting: the wall-clock rate over the whole video, the model's own rate (the
Segmenter's step time) and, as the ceiling the file I/O alone allows, the rate of the
same runner around a model that costs nothing (`InstantSegmenter`).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

import remn
from common import progress
from remn.data.palette import write_annotation, write_frame
from remn.data.synthetic import make_clip
from remn.inference import Segmenter, resolve_inference_config
from remn.inference.runner import run_video, single_video_job
from remn.inference.segmenter import VideoReport


class InstantSegmenter:
    """Stands in for the Segmenter in `run_video` and returns a fixed label map at no cost:
    what remains of the runner's time is its file I/O."""

    def __init__(self, labels: torch.Tensor, object_ids: tuple[int, ...]):
        self.labels = labels  # [H, W] ids
        self.objects = SimpleNamespace(num_objects=len(object_ids), ids=object_ids)
        self.frames = 0

    def reset(self) -> None:
        self.frames = 0

    def step(self, frame, mask=None, object_ids=None):
        self.frames += 1
        return SimpleNamespace(labels=self.labels)

    def report(self, name: str) -> VideoReport:
        return VideoReport(name, self.frames, 0, 0, 0, 0, 0, 0, seconds=0.0)


def run(device: torch.device, quick: bool) -> list[dict]:
    config, (height, width), num_frames = ("tiny", (64, 112), 6) if quick else ("remn", (480, 854), 60)
    precision = "bf16" if device.type == "cuda" else "fp32"
    results = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        frames, masks = make_clip(seed=9, num_frames=num_frames, height=height, width=width, num_objects=2)
        for index, frame in enumerate(frames):
            write_frame(root / "frames" / f"{index:05d}.jpg", frame)
        write_annotation(root / "first.png", masks[0].astype(np.uint8))
        torch.manual_seed(0)
        model = remn.build_model(config=config, device=device)
        segmenter = Segmenter(model, resolve_inference_config(config, precision=precision, size=None))  # frames already at size
        instant = InstantSegmenter(torch.from_numpy(masks[num_frames // 2].astype(np.int64)), (1, 2))
        for overlay in progress((False, True), "segment on files"):
            row = {"config": config, "size": f"{width}x{height}", "frames": num_frames, "precision": precision,
                   "overlay": overlay}
            for name, stepper in (("model", segmenter), ("io_only", instant)):
                job = single_video_job(root / "frames", root / "first.png", root / f"out-{name}-{overlay}", overlay)
                job.check(overwrite=True)
                run_video(stepper, job, progress=False)  # warm-up: compilation, autotuning, file cache
                started = time.perf_counter()
                report = run_video(stepper, job, progress=False)
                elapsed = time.perf_counter() - started
                row[f"{name}_wall_fps"] = num_frames / elapsed
                if name == "model":
                    row["model_step_fps"] = report.fps
            results.append(row)
    return results
