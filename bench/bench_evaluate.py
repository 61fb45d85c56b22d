"""Evaluation speed: the vectorised DAVIS J&F against a naive per-frame loop, same masks."""
from __future__ import annotations

import time

import numpy as np

from remn.evaluate import evaluate_predictions
from remn.evaluate.metrics_ref import f_measure_ref


def naive_sequence(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Per object, per frame (first and last excluded): IoU and the literal boundary F."""
    j_values, f_values = [], []
    for object_id in [i for i in np.unique(gt) if i not in (0, 255)]:
        for t in range(1, gt.shape[0] - 1):
            g, p = gt[t] == object_id, pred[t] == object_id
            union = np.logical_or(g, p).sum()
            j_values.append(1.0 if union == 0 else np.logical_and(g, p).sum() / union)
            f_values.append(f_measure_ref(p, g))
    return float(np.mean(j_values)), float(np.mean(f_values))


def run(quick: bool) -> dict:
    sequences, frames, (height, width) = (2, 6, (60, 107)) if quick else (6, 30, (480, 854))
    rng = np.random.default_rng(0)
    ground_truth, predictions = {}, {}
    for index in range(sequences):
        gt = np.zeros((frames, height, width), np.uint8)
        for object_id, (y, x) in enumerate([(0.3, 0.3), (0.6, 0.6)], start=1):
            cy, cx = int(y * height), int(x * width)
            gt[:, cy - height // 6: cy + height // 6, cx - width // 8: cx + width // 8] = object_id
        pred = np.roll(gt, shift=(int(rng.integers(1, 4)), int(rng.integers(1, 4))), axis=(1, 2))
        ground_truth[f"seq{index}"], predictions[f"seq{index}"] = gt, pred
    started = time.perf_counter()
    global_table, _ = evaluate_predictions(predictions, ground_truth, task="semi-supervised")
    fast_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for name in ground_truth:
        naive_sequence(ground_truth[name], predictions[name])
    naive_seconds = time.perf_counter() - started
    object_frames = sequences * 2 * (frames - 2)
    return {"sequences": sequences, "frames": frames, "size": f"{width}x{height}", "object_frames": object_frames,
            "vectorised_s": fast_seconds, "naive_s": naive_seconds, "speedup": naive_seconds / fast_seconds}
