"""The fast CPU path, route by route: per-frame time at 480p against plain eager fp32.

Per object count (1, 2, 4) every variant gets its own `Segmenter` on the same synthetic
clip and the same random-weight model, with memory written every frame and capped at
T = 5 frames (`update="every", mem_every=1, capacity=5`), top-20 and local attention, as
the `remn` preset reads. Once every variant's memory holds 5 frames, the variants step
the following frames in turn, one frame each per round (interleaved, so that load from
other processes falls on all of them alike); a variant's figure is the median of its
rounds. Every frame's labels after the annotated one are compared with plain eager fp32's
labels of the same frame, over all pixels and over the pixels eager fp32 decides: those
whose top probability leads the runner-up by more than DECIDED_MARGIN. Where two classes
are closer than that, the label is settled by rounding: every route, the exact-math fp32
ones included, flips such pixels. The model has random weights unless `weights` names a trained
checkpoint of the preset (`python bench/run.py --sections cpu --weights FILE`): with random
weights the objects' logits are nearly tied on many pixels, so any change of rounding flips
some labels, and only trained weights say what a route keeps.

The section runs in a fresh Python process, in two phases, every variant's labels compared
with eager fp32's of the first:
1. glibc's default allocator (as a new process has it):
   - `eager fp32, ops before #17`: plain eager fp32 with the reference ops as they were
     before issue 17 (a dense read: the whole N×M affinity, top-k by masking, a dense
     product; local attention as (2r+1)² shifted elementwise passes). Its memory is filled
     with the current ops; only its timed frames run the old ones.
   - `eager fp32`: plain eager fp32 (`fast_path=False`) with the current reference ops:
     the baseline every `x_eager` divides by;
   - one row per compute route alone on top of `eager fp32`: `fold BN`, `share inputs`,
     `channels-last`, `bf16 key encoder`, `bf16 encoders`, `bf16 encoders + decoder`
     (`remn.inference.fast_path.FastPathSettings`); fused ops need folded BatchNorm and
     channels-last, so they are `fold BN + channels-last + fused ops` beside `fold BN +
     channels-last`; `Winograd` computes the fp32 trunks' wide 3×3 convolutions by
     F(4×4, 3×3);
   - `fast path fp32, glibc's default allocator`, `fast path + bf16 key encoder, …`,
     `fast path + bf16 encoders, …`, `fast path + bf16, …`, `fast path + bf16 by object
     count, …`: every compute route, bf16= "none", "key", "encoders", "all", "by_objects"
     (the key encoder, and the value encoder up to 2 objects), without the allocator route.
2. freed memory kept (`keep_freed_memory`, which cannot be undone in a process):
   - `reuse freed memory`: plain eager fp32 again, the allocator route alone;
   - `fast path fp32`, `fast path + bf16 key encoder`, `fast path + bf16 encoders`, `fast
     path + bf16`, `fast path + bf16 by object count`: the fast path as a Segmenter runs
     it, every route (FastPathSettings(bf16=...); InferenceConfig.precision "bf16" gives
     `fast path + bf16`), and `fast path + bf16 by object count, separate ops`, the
     default without fused ops (`fuse_pointwise=False`), and `…, direct convolutions`, the
     default without Winograd: what each adds on top of the rest.
The phases do not interleave, so the machine should be idle; where its speed drifts between
the phases, `x_phase_eager` (each row against plain eager fp32 of its own phase, stepped
interleaved with it) is immune to the drift, while `x_eager` across phases is not. The
result's `default` names the one `Segmenter` runs on this CPU by default (precision "auto",
`FastPathSettings().resolved_bf16`): `fast path + bf16 by object count` where the CPU has
native bf16, else `fast path fp32`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch

import remn
from common import progress
from remn import reference
from remn.data.atomic import atomic_path
from remn.data.synthetic import make_clip
from remn.inference import Segmenter, resolve_inference_config
from remn.inference.fast_path import FastPathSettings, cpu_has_native_bf16, keep_freed_memory
from remn.train.trainer import cpu_threads

MEMORY_FRAMES = 5
CLIP_SEED = 7  # make_clip's seed of the clip every variant steps
DECIDED_MARGIN = 1e-3  # a pixel eager fp32 decides: top probability − runner-up > this
NO_ROUTE = FastPathSettings(fold_batchnorm=False, share_inputs=False, channels_last=False, fuse_pointwise=False,
                            winograd=False, bf16="none", reuse_freed_memory=False)
ROUTES = {
    "fold BN": dataclasses.replace(NO_ROUTE, fold_batchnorm=True),
    "share inputs": dataclasses.replace(NO_ROUTE, share_inputs=True),
    "channels-last": dataclasses.replace(NO_ROUTE, channels_last=True),
    # fusing needs channels-last outputs and folded BatchNorm: read it against those two together
    "fold BN + channels-last": dataclasses.replace(NO_ROUTE, fold_batchnorm=True, channels_last=True),
    "fold BN + channels-last + fused ops": dataclasses.replace(NO_ROUTE, fold_batchnorm=True, channels_last=True,
                                                               fuse_pointwise=True),
    "Winograd": dataclasses.replace(NO_ROUTE, winograd=True),
    "bf16 key encoder": dataclasses.replace(NO_ROUTE, bf16="key"),
    "bf16 encoders": dataclasses.replace(NO_ROUTE, bf16="encoders"),
    "bf16 encoders + decoder": dataclasses.replace(NO_ROUTE, bf16="all"),
}
BASELINE = "eager fp32"
PRE_ISSUE = "eager fp32, ops before #17"
FAST_PATH = {"none": "fast path fp32", "key": "fast path + bf16 key encoder", "encoders": "fast path + bf16 encoders",
             "all": "fast path + bf16", "by_objects": "fast path + bf16 by object count"}
GLIBC_DEFAULT, KEPT = "glibc's default allocator", "freed memory kept"
PHASES = (GLIBC_DEFAULT, KEPT)  # in this order: keeping freed memory cannot be undone in a process
REUSE_ALONE = "reuse freed memory"  # eager fp32 in the second phase: the allocator route alone
DEFAULT_BF16 = "by_objects"  # precision "auto" where the CPU has native bf16
SEPARATE_OPS = f"{FAST_PATH[DEFAULT_BF16]}, separate ops"  # the default but for fuse_pointwise
DIRECT_CONVOLUTIONS = f"{FAST_PATH[DEFAULT_BF16]}, direct convolutions"  # the default but for winograd


def dense_memory_read(query_key, memory_key, memory_value, key_bias=None, *, scale=None, top_k=None):
    """The reference memory read as it was before issue 17: logits [B, M, N] at once, top-k
    by masking them, then a dense product with the (mostly zero) softmax."""
    with torch.autocast(device_type=query_key.device.type, enabled=False):
        scale = 1.0 / math.sqrt(memory_key.shape[1]) if scale is None else scale
        keys = memory_key.float()
        logits = scale * (2.0 * torch.einsum("bcm,bcn->bmn", keys, query_key.float())
                          - reference.key_square_norms(keys)[:, :, None])  # [B, M, N]
        if key_bias is not None:
            logits = logits + key_bias.float()[:, :, None]
        if top_k is not None and top_k < memory_key.shape[2]:
            logits = logits.masked_fill(~reference.top_k_mask(logits, top_k), float("-inf"))
        probs = reference._safe_softmax(logits, dim=1)  # [B, M, N]
        return torch.einsum("bocm,bmn->bocn", memory_value.float(), probs).to(memory_value.dtype)  # [B, O, Cv, N]


def shifted_local_attention(query_key, key, value, radius, key_bias=None, *, scale=None):
    """The reference local attention as it was before issue 17: one elementwise pass per
    window offset, (2r+1)² of them, over zero-padded keys and values."""
    with torch.autocast(device_type=query_key.device.type, enabled=False):
        batch, key_dim, height, width = query_key.shape
        num_objects, value_dim = value.shape[1:3]
        scale = 1.0 / math.sqrt(key_dim) if scale is None else scale
        pad = (radius,) * 4
        query = query_key.float()
        keys_padded = torch.nn.functional.pad(key.float(), pad)  # [B, Ck, H+2r, W+2r]
        values_padded = torch.nn.functional.pad(value.float(), pad)  # [B, O, Cv, H+2r, W+2r]
        inside = torch.nn.functional.pad(query.new_ones(height, width), pad)  # [H+2r, W+2r]
        bias = query.new_zeros(batch, num_objects, height, width)
        if key_bias is not None:
            bias = bias + key_bias.float()
        bias_padded = torch.nn.functional.pad(bias, pad)  # [B, O, H+2r, W+2r]
        offsets = [(dy, dx) for dy in range(2 * radius + 1) for dx in range(2 * radius + 1)]
        window_logits = []
        for dy, dx in offsets:
            shifted_key = keys_padded[:, :, dy:dy + height, dx:dx + width]  # [B, Ck, H, W]
            affinity = scale * (2.0 * (query * shifted_key).sum(1) - shifted_key.pow(2).sum(1))  # [B, H, W]
            logit = affinity[:, None] + bias_padded[:, :, dy:dy + height, dx:dx + width]  # [B, O, H, W]
            window_logits.append(logit.masked_fill(inside[dy:dy + height, dx:dx + width] == 0, float("-inf")))
        weights = reference._safe_softmax(torch.stack(window_logits, dim=2), dim=2)  # [B, O, K, H, W]
        out = value.new_zeros((batch, num_objects, value_dim, height, width), dtype=torch.float32)
        for index, (dy, dx) in enumerate(offsets):
            out = out + weights[:, :, index, None] * values_padded[..., dy:dy + height, dx:dx + width]
        return out.to(value.dtype)


@contextmanager
def pre_issue_ops():
    """Route remn.ops' reference calls to the pre-issue-17 ops; fails if they were not called."""
    with mock.patch.object(reference, "memory_read", side_effect=dense_memory_read) as read, \
            mock.patch.object(reference, "local_attention", side_effect=shifted_local_attention) as local:
        yield
    if not (read.called and local.called):
        raise RuntimeError("the pre-issue ops were not reached: remn.ops no longer calls remn.reference by attribute")


def variants(phase: str) -> dict[str, FastPathSettings | bool]:
    """name → the Segmenter's fast_path argument, for an allocator phase (PHASES)."""
    if phase == GLIBC_DEFAULT:
        rows = {PRE_ISSUE: False, BASELINE: False}
        rows.update(ROUTES)
        rows.update({f"{name}, {GLIBC_DEFAULT}": FastPathSettings(bf16=parts, reuse_freed_memory=False)
                     for parts, name in FAST_PATH.items()})
        return rows
    rows = {REUSE_ALONE: False}  # plain eager fp32, in a process that keeps freed memory
    rows.update({name: FastPathSettings(bf16=parts) for parts, name in FAST_PATH.items()})
    rows[SEPARATE_OPS] = FastPathSettings(bf16=DEFAULT_BF16, fuse_pointwise=False)
    rows[DIRECT_CONVOLUTIONS] = FastPathSettings(bf16=DEFAULT_BF16, winograd=False)
    return rows


def default_variant(precision: str) -> str:
    """The variant a Segmenter with `precision` runs on this CPU by default (fast_path=None)."""
    return FAST_PATH[FastPathSettings().resolved_bf16(precision)]


def settings(quick: bool):
    """(model preset, (H, W), object counts, timed rounds)."""
    if quick:
        return "tiny", (64, 96), (1, 2), 2
    return "remn", (480, 864), (1, 2, 4), 3


def run(device: torch.device, quick: bool, repeats: int | None = None, threads: int = 2,
        weights: str | None = None) -> dict:
    """The section, measured in a fresh Python process: its first phase needs glibc's
    allocator as a new process has it, and an earlier section may have changed it for good."""
    if device.type != "cpu":
        return {"skipped": f"the CPU section runs on a CPU, not {device}"}
    if weights is not None and quick:
        raise ValueError("--weights is for the full-size cpu section (the remn preset), not --quick's tiny model")
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "cpu.json"
        command = [sys.executable, __file__, "--output", str(output), "--threads", str(threads)]
        command += (["--quick"] if quick else []) + (["--repeats", str(repeats)] if repeats else [])
        command += ["--weights", weights] if weights else []
        subprocess.run(command, check=True)
        return json.loads(output.read_text())


def _run(quick: bool, repeats: int | None, threads: int, weights: str | None) -> dict:
    if keep_freed_memory.cache_info().currsize:
        raise RuntimeError(f"the {GLIBC_DEFAULT} phase needs a process whose allocator is untouched")
    preset, (height, width), object_counts, rounds = settings(quick)
    rounds = repeats or rounds
    torch.manual_seed(0)
    model = remn.build_model(config=preset, weights=weights, device="cpu")
    inference = resolve_inference_config(preset, size=None, update="every", mem_every=1, capacity=MEMORY_FRAMES)
    clips = {objects: make_clip(seed=CLIP_SEED, num_frames=MEMORY_FRAMES + rounds, height=height, width=width,
                                num_objects=objects) for objects in object_counts}
    baseline = {}  # objects → eager fp32's (labels, decided) per frame after the first, from the first phase
    rows = []
    for phase in PHASES:
        if phase == KEPT:
            freed_memory_kept = keep_freed_memory()
        for objects, (frames, masks) in clips.items():
            rows += run_phase(phase, variants(phase), model, inference, frames, masks, objects, rounds, baseline)
    def time_of(variant, objects):
        return next(r["ms_per_frame"] for r in rows if r["objects"] == objects and r["variant"] == variant)

    for objects in object_counts:
        base, pre = time_of(BASELINE, objects), time_of(PRE_ISSUE, objects)
        phase_eager = {GLIBC_DEFAULT: base, KEPT: time_of(REUSE_ALONE, objects)}  # plain eager fp32 in each phase
        for row in rows:
            if row["objects"] == objects:
                row["x_eager"] = row["ms_per_frame"] / base
                row["x_phase_eager"] = row["ms_per_frame"] / phase_eager[row["allocator"]]
                row["x_pre_issue"] = row["ms_per_frame"] / pre
    return {
        "model": preset, "weights": weights or "random", "threads": threads, "rounds": rounds,
        "top_k": inference.top_k, "default": default_variant(inference.precision),
        "labels_compared_frames": MEMORY_FRAMES + rounds - 1, "decided_margin": DECIDED_MARGIN,
        "native_bf16": cpu_has_native_bf16(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "freed_memory_kept": freed_memory_kept, "rows": rows,
    }


def run_phase(phase, fast_paths, model, inference, frames, masks, objects, rounds, baseline) -> list[dict]:
    """The variants `fast_paths` (name → Segmenter's fast_path) of an allocator phase on one
    clip, interleaved frame by frame; where `baseline[objects]` is empty the BASELINE
    variant's labels fill it, and every row is compared with them. frames: [T, H, W, 3]
    (make_clip's), T = MEMORY_FRAMES + rounds."""
    segmenters, prepare_seconds = {}, {}
    for name, fast_path in fast_paths.items():
        started = time.perf_counter()
        segmenters[name] = Segmenter(model, inference, fast_path=fast_path)
        prepare_seconds[name] = time.perf_counter() - started
    times = {name: [] for name in segmenters}
    agree = {name: [] for name in segmenters}
    agree_decided = {name: 0 for name in segmenters}  # decided pixels whose label matches, over all frames
    reference_frames = baseline.setdefault(objects, [])
    for index in progress(range(MEMORY_FRAMES + rounds), f"cpu, {phase}, {objects} objects"):
        timed = index >= MEMORY_FRAMES
        mask = masks[0] if index == 0 else None
        labels = {}
        for name, segmenter in segmenters.items():
            old_ops = pre_issue_ops() if timed and name == PRE_ISSUE else contextlib.nullcontext()
            with old_ops:
                started = time.perf_counter()
                result = segmenter.step(frames[index], mask)
                elapsed = time.perf_counter() - started
            labels[name] = result.labels
            if timed:
                times[name].append(elapsed * 1e3)
            if name == BASELINE and index > len(reference_frames):
                top_two = result.probs.topk(2, dim=0).values  # [2, H, W]
                reference_frames.append((result.labels, top_two[0] - top_two[1] > DECIDED_MARGIN))  # [H, W] each
        if index > 0:
            want, decided = reference_frames[index - 1]
            for name in segmenters:
                same = labels[name] == want  # [H, W]
                agree[name].append(same.double().mean().item())
                agree_decided[name] += int(same[decided].sum())
    decided_pixels = sum(int(decided.sum()) for _, decided in reference_frames)
    compared_pixels = sum(decided.numel() for _, decided in reference_frames)
    rows = []
    for name, segmenter in segmenters.items():
        report = segmenter.report()
        rows.append({
            "variant": name, "objects": objects, "allocator": phase, "size": f"{frames.shape[2]}x{frames.shape[1]}",
            "memory_frames": report.memory_frames,
            "ms_per_frame": statistics.median(times[name]), "ms_samples": times[name],
            "labels_identical_pct": 100.0 * statistics.fmean(agree[name]),
            "labels_identical_worst_frame_pct": 100.0 * min(agree[name]),
            # None where eager fp32 decides no pixel (random weights can tie every pixel)
            "labels_identical_decided_pct": 100.0 * agree_decided[name] / decided_pixels if decided_pixels else None,
            "decided_pixels_pct": 100.0 * decided_pixels / compared_pixels, "prepare_s": prepare_seconds[name],
        })
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="the cpu section in this process (bench/run.py --sections cpu)")
    parser.add_argument("--output", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights")
    args = parser.parse_args(argv)
    with cpu_threads(args.threads):
        results = _run(args.quick, args.repeats, args.threads, args.weights)
    with atomic_path(args.output) as temp:
        temp.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
