"""Running the Segmenter over one video or a dataset, on one device or sharded under torchrun.

A `VideoJob` is one `remn.data.Sequence` (its frames, and the annotations that start its
objects) and where its results go. Jobs are planned and checked before the model is built
(the readers check their layout; `VideoJob.check` that the first annotation is readable,
non-empty and the frames' size, and that the output folder holds no results), so bad input
fails fast.

Under `torchrun` (WORLD_SIZE > 1, `remn.distributed`) rank r takes jobs r, r + world, ... on
its own device; all ranks write into the same output folder (one sub-folder per video, so
they never collide) and rank 0 gathers the per-video reports and prints the summary.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from remn.data.davis import DavisDataset
from remn.data.sequence import Sequence, SequenceCollection
from remn.data.video import open_video
from remn.data.youtube import YouTubeVOSDataset
from remn.distributed import DistributedContext, init_distributed  # noqa: F401 (remn.inference.cli calls it here)
from remn.inference.host import HostCopy
from remn.inference.pipeline import BackgroundWriter, Prefetcher
from remn.inference.segmenter import Segmenter, VideoReport
from remn.inference.video import OVERLAY_FOLDER, check_output, existing_results, write_labels, write_overlay

PREFETCH_FRAMES = 4  # frames decoded ahead of the model
WRITER_THREADS = min(4, os.cpu_count() or 1)  # threads encoding result PNGs and overlays


@dataclass
class VideoJob:
    sequence: Sequence
    output: Path  # folder for NAME.png per frame
    overlay_output: Path | None = None  # folder for overlay JPEGs, or None
    palette: np.ndarray | None = field(default=None, repr=False)  # the results' colours, set by `check`

    @property
    def name(self) -> str:
        return self.sequence.name

    def check(self, overwrite: bool) -> None:
        """Everything that can be checked before segmenting: the first annotation is readable,
        non-empty and the frames' size; the output folder is free."""
        sequence, start = self.sequence, self.sequence.starts[0]
        labels = start.load_mask()
        if labels.shape != tuple(sequence.size):
            raise ValueError(
                f"{self.name}: annotation {start.annotation_path} is {labels.shape[0]}x{labels.shape[1]} but the "
                f"frames are {sequence.size[0]}x{sequence.size[1]} (HxW)"
            )
        if not labels.any():
            raise ValueError(f"{self.name}: annotation {start.annotation_path} is empty (no object pixel)")
        self.palette = sequence.palette
        check_output(self.output, overwrite)
        if sequence.frame_names is not None:
            names = set(sequence.frame_names)
            stale = [p.name for p in existing_results(self.output) if p.stem not in names]
            if stale:  # never deleted: they may be the user's; an evaluation would still read them
                print(f"remn segment: warning: {self.output} holds {len(stale)} PNGs that name no frame of "
                      f"{self.name} and stay as they are (e.g. {stale[0]})", file=sys.stderr)


# ----------------------------------------------------------------------------- planning
def single_video_job(frames: str | os.PathLike, mask: str | os.PathLike, output: str | os.PathLike,
                     overlay: bool = False) -> VideoJob:
    """One video: a frame folder or a video file; `mask` the first frame's annotation PNG, or
    a folder of annotation PNGs named like the frames, for objects that first appear on later
    frames (from a later annotation only the ids not tracked yet are taken)."""
    output = Path(output)
    return VideoJob(open_video(frames, mask), output, output / OVERLAY_FOLDER if overlay else None)


def sequence_jobs(dataset: SequenceCollection, output, sequences: list[str] | None = None,
                  overlay: bool = False) -> list[VideoJob]:
    """A dataset split (or the named `sequences` of it): OUTPUT/SEQ/FRAME.png per sequence."""
    output = Path(output)
    return [VideoJob(seq, output / seq.name, output / OVERLAY_FOLDER / seq.name if overlay else None)
            for seq in dataset.select(sequences)]


def davis_jobs(root, split: str, year: int, output, sequences: list[str] | None = None,
               overlay: bool = False) -> list[VideoJob]:
    """DAVIS: OUTPUT/SEQ/FRAME.png per sequence (what the DAVIS evaluation reads); the
    first frame's annotation gives the objects (2016: merged into one)."""
    return sequence_jobs(DavisDataset(root, split, year), output, sequences, overlay)


def youtube_jobs(root, split: str, output, sequences: list[str] | None = None,
                 overlay: bool = False) -> list[VideoJob]:
    """YouTube-VOS: each object's masks come from the first frame meta.json lists for it;
    every frame gets a PNG (empty before the first annotation), as the server expects."""
    return sequence_jobs(YouTubeVOSDataset(root, split), output, sequences, overlay)


# ----------------------------------------------------------------------------- running
def run_video(segmenter: Segmenter, job: VideoJob, progress: bool = True) -> VideoReport:
    """Segment one planned (and checked) job; writes one PNG per frame; returns its report.

    Frames decode on a background thread a few frames ahead and the PNGs (and overlays)
    are written by background threads (`remn.inference.pipeline`) once each frame's ids
    reach the host, so file I/O overlaps with the model's steps and the main thread never
    waits for the GPU; every write has finished when this returns.
    """
    started = time.perf_counter()
    segmenter.reset()
    if job.palette is None:
        job.check(overwrite=True)
    job.output.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=job.sequence.num_frames, desc=job.name, unit="frame", leave=False, disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    try:
        with Prefetcher(_indexed_frames(job.sequence), depth=PREFETCH_FRAMES) as frames, \
                BackgroundWriter(WRITER_THREADS) as writer:
            for index, frame in frames:
                name = job.sequence.frame_name(index)
                labels = _segment_frame(segmenter, job, index, frame)
                writer.submit(_write_results, job, name, frame, labels)
                bar.update(1)
    finally:
        bar.close()
    report = segmenter.report(job.name)
    report.wall_seconds = time.perf_counter() - started
    return report


def _write_results(job: VideoJob, name: str, frame: np.ndarray, labels: HostCopy) -> None:
    """On a writer thread: the frame's ids as a palette PNG (and its overlay), once on the host."""
    ids = labels.get().numpy()  # uint8 [H, W]
    write_labels(job.output / f"{name}.png", ids, job.palette)
    if job.overlay_output is not None:
        write_overlay(job.overlay_output / f"{name}.jpg", frame, ids, job.palette)


def _indexed_frames(sequence: Sequence) -> Iterator[tuple[int, np.ndarray]]:
    """(index, frame uint8 [H, W, 3]) in order; closing it closes the sequence's reader (a video file)."""
    frames = sequence.frames()
    try:
        yield from enumerate(frames)
    finally:
        frames.close()


def _segment_frame(segmenter: Segmenter, job: VideoJob, index: int, frame: np.ndarray) -> HostCopy:
    """Frame `index` of `job` through the segmenter (with the objects that start there, if
    any) → its ids uint8 [H, W], on their way to the host. Frames before the first object
    starts (YouTube-VOS) get no object."""
    start = job.sequence.start_at(index)
    mask = ids = None
    if start is not None:
        mask, ids = start.load_mask(), start.object_ids
        if mask.shape != frame.shape[:2]:
            raise ValueError(f"{job.name}: annotation {start.annotation_path} is {mask.shape[0]}x{mask.shape[1]} "
                             f"but the frames are {frame.shape[0]}x{frame.shape[1]} (HxW)")
        if ids is None and segmenter.objects.num_objects:
            # A later annotation introduces objects; the tracked ones keep their prediction
            # (a folder of ground truth for every frame must not leak into the results).
            mask = np.where(np.isin(mask, segmenter.objects.ids), 0, mask).astype(np.uint8)
            if not mask.any():
                mask = None
    if segmenter.objects.num_objects == 0 and (mask is None or not mask.any()):
        return HostCopy(torch.zeros(frame.shape[:2], dtype=torch.uint8))  # no object has started yet
    try:
        result = segmenter.step(frame, mask, ids)
    except ValueError as err:
        raise ValueError(f"{job.name}, frame {job.sequence.frame_name(index)}: {err}") from err
    return HostCopy(result.labels.to(torch.uint8))  # ids are ≤ 254 (PNG annotations)


def summarise(reports: list[VideoReport]) -> str:
    frames = sum(r.frames for r in reports)
    seconds = sum(r.seconds for r in reports)
    wall = sum(r.wall_seconds or 0.0 for r in reports)
    fps = frames / seconds if seconds > 0 else float("nan")
    with_io = f" ({frames / wall:.1f} with file I/O)" if wall > 0 else ""
    peak = max((r.peak_memory_frames for r in reports), default=0)
    return (f"{len(reports)} video{'s' if len(reports) != 1 else ''}, {frames} frames, {fps:.1f} FPS overall{with_io}; "
            f"memory peak {peak} frames; "
            f"{sum(r.skipped for r in reports)} frames skipped by the update policy, "
            f"{sum(r.gate_dropped for r in reports)} dropped by the gate, {sum(r.evicted for r in reports)} evicted")


# ----------------------------------------------------------------------------- torchrun
def gather_reports(context: DistributedContext, reports: list[VideoReport]) -> list[VideoReport] | None:
    """All ranks' reports on rank 0 (in job order), None on the others; single process: as is."""
    if not context.distributed:
        return reports
    gathered = [None] * context.world_size if context.is_main else None
    dist.gather_object([asdict(r) for r in reports], gathered, dst=0)
    if not context.is_main:
        return None
    # Rank r ran jobs r, r + world, ...: interleave back into job order.
    per_rank = [[VideoReport(**r) for r in part] for part in gathered]
    ordered = []
    for index in range(max(len(p) for p in per_rank)):
        ordered.extend(p[index] for p in per_rank if index < len(p))
    return ordered


def check_jobs(jobs: list[VideoJob], context: DistributedContext, overwrite: bool) -> None:
    """Check this rank's jobs (a sequence's folder is only ever touched by its own rank);
    under torchrun the ranks then share their verdicts, so either every rank starts or every
    rank stops with the same error."""
    error = None
    try:
        for job in jobs[context.rank::context.world_size]:
            job.check(overwrite)
    except (ValueError, OSError) as err:
        error = str(err)
    if context.distributed:
        errors = [None] * context.world_size
        dist.all_gather_object(errors, error)
        error = next((e for e in errors if e is not None), None)
    if error is not None:
        raise ValueError(error)


def run_jobs(
    jobs: list[VideoJob],
    make_segmenter: Callable[[torch.device], Segmenter],
    context: DistributedContext,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[VideoReport] | None:
    """Run this rank's share of `jobs` (rank r: r, r + world, ...; `check_jobs` first);
    returns all reports on rank 0, None on the other ranks."""
    mine = jobs[context.rank::context.world_size]
    prefix = f"[rank {context.rank}] " if context.world_size > 1 else ""
    reports = []
    if mine:
        segmenter = make_segmenter(context.device)
        for job in mine:
            report = run_video(segmenter, job, progress=progress)
            log(prefix + report.summary())
            reports.append(report)
    return gather_reports(context, reports)
