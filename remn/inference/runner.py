"""Running the Segmenter over one video or a dataset, on one device or sharded under torchrun.

A `VideoJob` is one `remn.data.Sequence` (its frames, and the annotations that start its
objects) and where its results go. Jobs are planned and checked before the model is built
(the readers check their layout; `VideoJob.check` that the first annotation is readable,
non-empty and the frames' size, and that the output folder holds no results), so bad input
fails fast.

Under `torchrun` (WORLD_SIZE > 1, `remn.distributed`) rank r takes jobs r, r + world, ... on
its own device; all ranks write into the same output folder (one sub-folder per video, so
they never collide) and rank 0 gathers the per-video outcomes and prints the summary.

Runs are atomic per video and resumable (`staged_output`): a video's results are written
into a hidden folder beside its output (`.NAME.partial-XXXXXXXX`), then a marker
(`COMPLETE_MARKER`, the video's name and frame count) is written there and the folder is
renamed into place. When the output folder already exists (`--overwrite`, or a redo of an
incomplete one) the files are moved into it one by one, its old marker removed first and
the new one moved last, so a folder with a marker is always complete. With `resume` a job
whose marker is there is skipped; the others are (re)done, leftovers of a killed run
(partial folders) removed first. A bad frame fails its video alone (its partial folder is
removed; the other videos go on); SIGINT or SIGTERM stops the run between two steps,
removes the partial folders of the videos in flight and reports which videos remain
(`RunInterrupted`). Each job's `VideoOutcome` says done, redone, skipped or failed.

With `batch_videos` N > 1 the videos run N at a time in one `BatchSegmenter`
(`remn.inference.batch`): when one finishes the next job takes its place at once.
"""
from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import signal
import sys
import threading
import time
from collections import deque
from contextlib import ExitStack, contextmanager
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
from remn.inference.batch import BatchSegmenter, FrameInput, VideoStepError
from remn.inference.bidirectional import BothWaysSegmenter
from remn.inference.host import HostCopy
from remn.inference.pipeline import BackgroundWriter, Prefetcher
from remn.inference.segmenter import Segmenter, VideoReport
from remn.inference.video import OVERLAY_FOLDER, check_output, existing_results, write_labels, write_overlay

PREFETCH_FRAMES = 4  # frames decoded ahead of the model
WRITER_THREADS = min(4, os.cpu_count() or 1)  # threads encoding result PNGs and overlays
COMPLETE_MARKER = ".remn-complete.json"  # in a video's output folder: its results are complete
PARTIAL_INFIX = ".partial-"  # .NAME.partial-XXXXXXXX: a video's results while it runs


@dataclass
class VideoJob:
    sequence: Sequence
    output: Path  # folder for NAME.png per frame
    overlay_output: Path | None = None  # folder for overlay JPEGs, or None
    palette: np.ndarray | None = field(default=None, repr=False)  # the results' colours, set by `check`
    both_ways: bool = False  # every annotation seeds its objects forward and backward (`remn.inference.bidirectional`)

    @property
    def name(self) -> str:
        return self.sequence.name

    def is_complete(self) -> bool:
        """A finished run left its marker in the output folder."""
        return (self.output / COMPLETE_MARKER).is_file()

    def has_earlier_results(self) -> bool:
        """Results in the output folder, or partial folders a killed run left beside it."""
        return bool(existing_results(self.output)) or bool(_partial_folders(self.output))

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
                     overlay: bool = False, mask_frame: int | str | None = None, both_ways: bool = False) -> VideoJob:
    """One video: a frame folder or a video file; `mask` the first frame's annotation PNG, or
    a folder of annotation PNGs named like the frames, for objects that first appear on later
    frames (from a later annotation only the ids not tracked yet are taken).

    both_ways (implied by `mask_frame`, the frame index or name `mask` annotates): every
    annotation seeds its objects both ways, on any frames (`remn.inference.bidirectional`);
    that needs a folder of frames (frames are read in both directions)."""
    output = Path(output)
    both_ways = both_ways or mask_frame is not None
    sequence = open_video(frames, mask, mask_frame, first_annotated=not both_ways)
    if both_ways and sequence.frame_names is None:
        raise ValueError(f"{frames}: propagating both ways reads frames backward, which a video file cannot do "
                         "frame by frame; extract its frames into a folder (e.g. ffmpeg -i VIDEO DIR/%05d.png)")
    return VideoJob(sequence, output, output / OVERLAY_FOLDER if overlay else None, both_ways=both_ways)


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


# ----------------------------------------------------------------------------- atomic output
def _partial_folders(folder: Path) -> list[Path]:
    """Partial folders of `folder` (`.NAME.partial-*` beside it) that a killed run left."""
    if not folder.parent.is_dir():
        return []
    return sorted(folder.parent.glob(f".{folder.name}{PARTIAL_INFIX}*"))


def _commit_folder(temp: Path, final: Path, marker: str | None = None) -> None:
    """Put the contents of `temp` at `final`: a rename when `final` does not exist, else
    file by file (`marker`, when given, removed from `final` first and moved last)."""
    if not final.exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, final)
        return
    if marker is not None:
        (final / marker).unlink(missing_ok=True)
    entries = sorted(temp.rglob("*"), key=lambda path: (path.name == marker, len(path.parts)))
    for entry in entries:
        target = final / entry.relative_to(temp)
        if entry.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            os.replace(entry, target)
    shutil.rmtree(temp)


@contextmanager
def staged_output(job: VideoJob) -> Iterator[VideoJob]:
    """A copy of `job` whose results go to hidden partial folders beside its outputs. On
    success the marker is written and the folders are committed into place (overlays
    first); on any error or interrupt the partial folders are removed."""
    for stale in _partial_folders(job.output) + (_partial_folders(job.overlay_output) if job.overlay_output else []):
        shutil.rmtree(stale, ignore_errors=True)
    token = secrets.token_hex(4)
    temp = job.output.parent / f".{job.output.name}{PARTIAL_INFIX}{token}"
    temp.mkdir(parents=True)
    overlay_temp = separate_overlay = None
    if job.overlay_output is not None:
        if job.overlay_output.is_relative_to(job.output):  # one video: OUTPUT/overlays moves with OUTPUT
            overlay_temp = temp / job.overlay_output.relative_to(job.output)
        else:  # a dataset: OUTPUT/overlays/SEQ has a partial folder of its own
            overlay_temp = separate_overlay = job.overlay_output.parent / f".{job.overlay_output.name}{PARTIAL_INFIX}{token}"
        overlay_temp.mkdir(parents=True)
    try:
        yield dataclasses.replace(job, output=temp, overlay_output=overlay_temp)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        if separate_overlay is not None:
            shutil.rmtree(separate_overlay, ignore_errors=True)
        raise
    if separate_overlay is not None:
        _commit_folder(separate_overlay, job.overlay_output)
    frames = len(existing_results(temp))
    (temp / COMPLETE_MARKER).write_text(json.dumps({"video": job.name, "frames": frames}) + "\n")
    _commit_folder(temp, job.output, COMPLETE_MARKER)


# ----------------------------------------------------------------------------- running
def run_video(segmenter: Segmenter, job: VideoJob, progress: bool = True) -> VideoReport:
    """Segment one planned (and checked) job; writes one PNG per frame, atomically
    (`staged_output`); returns its report.

    Frames decode on a background thread a few frames ahead and the PNGs (and overlays)
    are written by background threads (`remn.inference.pipeline`) once each frame's ids
    reach the host, so file I/O overlaps with the model's steps and the main thread never
    waits for the GPU; every write has finished when this returns.
    """
    started = time.perf_counter()
    segmenter.reset()
    if job.palette is None:
        job.check(overwrite=True)
    bar = tqdm(total=job.sequence.num_frames, desc=job.name, unit="frame", leave=False, disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    try:
        with staged_output(job) as staged, Prefetcher(_indexed_frames(job.sequence), depth=PREFETCH_FRAMES) as frames, \
                BackgroundWriter(WRITER_THREADS) as writer:
            for index, frame in frames:
                name = job.sequence.frame_name(index)
                labels = _segment_frame(segmenter, job, index, frame)
                writer.submit(_write_results, staged, name, frame, labels)
                bar.update(1)
    finally:
        bar.close()
    report = segmenter.report(job.name)
    report.wall_seconds = time.perf_counter() - started
    return report


def run_both_ways(engine: BothWaysSegmenter, job: VideoJob, progress: bool = True) -> VideoReport:
    """Segment one planned (and checked) job from all its annotations both ways; writes one
    PNG per frame, atomically. Its report sums the runs' (frames: the video's)."""
    started = time.perf_counter()
    if job.palette is None:
        job.check(overwrite=True)
    sequence = job.sequence
    annotations = {}
    for start in sequence.starts:
        annotations[start.frame_index] = mask = start.load_mask()
        if mask.shape != tuple(sequence.size):
            raise ValueError(f"{job.name}: annotation {start.annotation_path} is {mask.shape[0]}x{mask.shape[1]} but the "
                             f"frames are {sequence.size[0]}x{sequence.size[1]} (HxW)")
        if not mask.any():
            raise ValueError(f"{job.name}: annotation {start.annotation_path} is empty (no object pixel)")
    bar = tqdm(total=sequence.num_frames, desc=job.name, unit="frame", leave=False, disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    try:
        with staged_output(job) as staged, BackgroundWriter(WRITER_THREADS) as writer:
            for prediction in engine.run(sequence.num_frames, sequence.frame, annotations):
                frame = sequence.frame(prediction.index) if staged.overlay_output is not None else None
                writer.submit(_write_results, staged, sequence.frame_name(prediction.index), frame,
                              HostCopy(prediction.labels.to(torch.uint8)))
                bar.update(1)
    finally:
        bar.close()
    reports = engine.reports
    return VideoReport(
        name=job.name, frames=sequence.num_frames,
        memory_frames=max(r.memory_frames for r in reports), peak_memory_frames=max(r.peak_memory_frames for r in reports),
        memorised=sum(r.memorised for r in reports), skipped=sum(r.skipped for r in reports),
        gate_dropped=sum(r.gate_dropped for r in reports), evicted=sum(r.evicted for r in reports),
        seconds=sum(r.seconds for r in reports), objects=len(sequence.object_ids),
        wall_seconds=time.perf_counter() - started,
    )


def _write_results(job: VideoJob, name: str, frame: np.ndarray | None, labels: HostCopy) -> None:
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


def _frame_input(job: VideoJob, tracked: tuple[int, ...], index: int, frame: np.ndarray) -> FrameInput | None:
    """Frame `index` of `job` and the objects that start there, if any, for a segmenter
    tracking `tracked`; None before the first object starts (YouTube-VOS): no object yet."""
    start = job.sequence.start_at(index)
    mask = ids = None
    if start is not None:
        mask, ids = start.load_mask(), start.object_ids
        if mask.shape != frame.shape[:2]:
            raise ValueError(f"{job.name}: annotation {start.annotation_path} is {mask.shape[0]}x{mask.shape[1]} "
                             f"but the frames are {frame.shape[0]}x{frame.shape[1]} (HxW)")
        if ids is None and tracked:
            # A later annotation introduces objects; the tracked ones keep their prediction
            # (a folder of ground truth for every frame must not leak into the results).
            mask = np.where(np.isin(mask, tracked), 0, mask).astype(np.uint8)
            if not mask.any():
                mask = None
    if not tracked and (mask is None or not mask.any()):
        return None
    return FrameInput(frame, mask, ids)


def _no_object(frame: np.ndarray) -> HostCopy:
    return HostCopy(torch.zeros(frame.shape[:2], dtype=torch.uint8))


def _segment_frame(segmenter: Segmenter, job: VideoJob, index: int, frame: np.ndarray) -> HostCopy:
    """Frame `index` of `job` through the segmenter → its ids uint8 [H, W], on their way
    to the host. Frames before the first object starts (YouTube-VOS) get no object."""
    given = _frame_input(job, segmenter.objects.ids, index, frame)
    if given is None:
        return _no_object(frame)
    try:
        result = segmenter.step(given.frame, given.mask, given.object_ids)
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


# ----------------------------------------------------------------------------- outcomes
OUTCOMES = ("done", "redone", "skipped", "failed", "remaining")


@dataclass
class VideoOutcome:
    """What became of one job: done (run now), redone (earlier results or a killed run's
    partial folder were there and are replaced), skipped (complete already, `resume`),
    failed (its error; no result of it is left) or remaining (the run stopped first)."""

    name: str
    status: str
    report: VideoReport | None = None
    error: str | None = None

    @classmethod
    def from_dict(cls, values: dict) -> "VideoOutcome":
        report = values.get("report")
        return cls(**{**values, "report": None if report is None else VideoReport(**report)})


def summarise_outcomes(outcomes: list[VideoOutcome]) -> str:
    """The run's summary: the segmented videos' figures, then how many were done, redone,
    skipped, failed (and left when interrupted), naming the failed and remaining ones."""
    counts = {status: [o.name for o in outcomes if o.status == status] for status in OUTCOMES}
    text = summarise([o.report for o in outcomes if o.report is not None])
    text += "; " + ", ".join(f"{len(counts[s])} {s}" for s in OUTCOMES[:4])
    for status in ("failed", "remaining"):
        if counts[status]:
            text += f"; {status}: {' '.join(counts[status])}"
    return text


class RunInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run; `outcomes` says what was complete and what remains."""

    def __init__(self, signal_name: str, outcomes: list[VideoOutcome]):
        remaining = [o.name for o in outcomes if o.status == "remaining"]
        super().__init__(f"{signal_name}: stopped with {len(remaining)} videos remaining; every video written is "
                         "complete (run again with --resume to do the rest)")
        self.signal_name = signal_name
        self.outcomes = outcomes


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While running, SIGTERM interrupts the main thread as SIGINT does (KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- torchrun
def gather_outcomes(context: DistributedContext, outcomes: list[VideoOutcome]) -> list[VideoOutcome] | None:
    """All ranks' outcomes on rank 0 (in job order), None on the others; single process: as is."""
    if not context.distributed:
        return outcomes
    gathered = [None] * context.world_size if context.is_main else None
    dist.gather_object([asdict(o) for o in outcomes], gathered, dst=0)
    if not context.is_main:
        return None
    # Rank r ran jobs r, r + world, ...: interleave back into job order.
    per_rank = [[VideoOutcome.from_dict(o) for o in part] for part in gathered]
    ordered = []
    for index in range(max(len(p) for p in per_rank)):
        ordered.extend(p[index] for p in per_rank if index < len(p))
    return ordered


def check_jobs(jobs: list[VideoJob], context: DistributedContext, overwrite: bool, resume: bool = False) -> None:
    """Check this rank's jobs (a sequence's folder is only ever touched by its own rank);
    under torchrun the ranks then share their verdicts, so either every rank starts or every
    rank stops with the same error. With `resume` complete jobs are not checked (they are
    skipped) and the others may replace what their folders hold."""
    error = None
    try:
        for job in jobs[context.rank::context.world_size]:
            if resume and job.is_complete():
                continue
            job.check(overwrite or resume)
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
    make_model: Callable[[torch.device], torch.nn.Module],
    config,
    context: DistributedContext,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    batch_videos: int = 1,
    resume: bool = False,
    fast_path: bool | None = None,
) -> list[VideoOutcome] | None:
    """Run this rank's share of `jobs` (rank r: r, r + world, ...; `check_jobs` first) with
    the model `make_model(device)` builds and the InferenceConfig `config`, `batch_videos`
    videos at a time (fast_path: as `Segmenter`'s); returns every job's outcome on rank 0,
    None on the other ranks.
    Interrupted (SIGINT, SIGTERM): raises RunInterrupted with this rank's outcomes."""
    if isinstance(batch_videos, bool) or not isinstance(batch_videos, int) or batch_videos < 1:
        raise ValueError(f"batch_videos must be an int >= 1, got {batch_videos!r}")
    mine = jobs[context.rank::context.world_size]
    prefix = f"[rank {context.rank}] " if context.world_size > 1 else ""
    outcomes: dict[int, VideoOutcome] = {}
    todo = []
    for position, job in enumerate(mine):
        if resume and job.is_complete():
            outcomes[position] = VideoOutcome(job.name, "skipped")
            log(prefix + f"{job.name}: complete, skipped")
        else:
            todo.append((position, job, "redone" if job.has_earlier_results() else "done"))

    def finished(position: int, outcome: VideoOutcome) -> None:
        outcomes[position] = outcome
        if outcome.report is not None:
            redone = " (redone: earlier results replaced)" if outcome.status == "redone" else ""
            log(prefix + outcome.report.summary() + redone)
        else:
            print(f"remn segment: error: {outcome.error}; its results were removed", file=sys.stderr)

    if todo:
        model = make_model(context.device)
        both_ways = [entry for entry in todo if entry[1].both_ways]
        forward = [entry for entry in todo if not entry[1].both_ways]
        try:
            with _sigterm_interrupts():
                for position, job, status in both_ways:  # its runs form one batch of their own
                    engine = BothWaysSegmenter(model, config, fast_path=fast_path)
                    finished(position, _run_one(lambda: run_both_ways(engine, job, progress), job, status))
                if batch_videos > 1 and forward:
                    _run_batched(BatchSegmenter(model, config, fast_path=fast_path), forward, batch_videos, finished,
                                 progress)
                elif forward:
                    segmenter = Segmenter(model, config, fast_path=fast_path)
                    for position, job, status in forward:
                        finished(position, _run_one(lambda: run_video(segmenter, job, progress), job, status))
        except KeyboardInterrupt as interrupt:
            for position, job in enumerate(mine):
                outcomes.setdefault(position, VideoOutcome(job.name, "remaining"))
            raise RunInterrupted(str(interrupt) or "SIGINT", [outcomes[i] for i in range(len(mine))]) from None
    return gather_outcomes(context, [outcomes[i] for i in range(len(mine))])


def _run_one(run: Callable[[], VideoReport], job: VideoJob, status: str) -> VideoOutcome:
    """run() segments `job`; a bad input (ValueError, OSError) fails the job alone."""
    try:
        return VideoOutcome(job.name, status, run())
    except (ValueError, OSError) as err:
        return VideoOutcome(job.name, "failed", error=str(err))


@dataclass
class _Running:
    """A video in the batch: its job, its partial output and its open reader and writer."""

    job: VideoJob
    status: str
    staged: VideoJob
    frames: Prefetcher
    writer: BackgroundWriter
    stack: ExitStack
    started: float


def _run_batched(batch: BatchSegmenter, todo: list, batch_videos: int,
                 finished: Callable[[int, VideoOutcome], None], progress: bool) -> None:
    """The jobs in `todo` ((position, job, status) each), `batch_videos` at a time: each
    step takes the next frame of every running video; a video that ends (or fails) leaves
    the batch and the next job joins at once."""
    queue = deque(todo)
    running: dict[int, _Running] = {}
    known = [job.sequence.num_frames for _, job, _ in todo]
    bar = tqdm(total=None if None in known else sum(known), desc=f"{len(todo)} videos, {batch_videos} at a time",
               unit="frame", leave=False, disable=not progress, file=sys.stderr, dynamic_ncols=True)
    writers = max(1, WRITER_THREADS // batch_videos)

    def fail(position: int, error: BaseException, message: str) -> None:
        video = running.pop(position)
        if position in batch:
            batch.remove(position)
        video.stack.__exit__(type(error), error, error.__traceback__)  # removes its partial folders
        finished(position, VideoOutcome(video.job.name, "failed", error=message))

    def finish(position: int) -> None:
        video = running[position]
        report = batch.remove(position)
        try:
            video.stack.close()  # waits for its writes, then commits its folders
        except (ValueError, OSError) as err:
            running.pop(position)
            finished(position, VideoOutcome(video.job.name, "failed", error=f"{video.job.name}: {err}"))
            return
        running.pop(position)
        report.wall_seconds = time.perf_counter() - video.started
        finished(position, VideoOutcome(video.job.name, video.status, report))

    try:
        while queue or running:
            while queue and len(running) < batch_videos:
                position, job, status = queue.popleft()
                stack = ExitStack()
                try:
                    if job.palette is None:
                        job.check(overwrite=True)
                    staged = stack.enter_context(staged_output(job))
                    frames = stack.enter_context(Prefetcher(_indexed_frames(job.sequence), depth=PREFETCH_FRAMES))
                    writer = stack.enter_context(BackgroundWriter(writers))
                except (ValueError, OSError) as err:
                    stack.__exit__(type(err), err, err.__traceback__)
                    finished(position, VideoOutcome(job.name, "failed", error=f"{job.name}: {err}"))
                    continue
                running[position] = _Running(job, status, staged, frames, writer, stack, time.perf_counter())
                batch.add(position)
            inputs, current = {}, {}
            for position, video in list(running.items()):
                index = None
                try:
                    index, frame = next(video.frames)
                    given = _frame_input(video.job, batch.videos[position].objects.ids, index, frame)
                    if given is None:
                        video.writer.submit(_write_results, video.staged, video.job.sequence.frame_name(index), frame,
                                            _no_object(frame))
                        bar.update(1)
                        continue
                except StopIteration:
                    finish(position)
                    continue
                except (ValueError, OSError) as err:
                    where = "" if index is None else f", frame {video.job.sequence.frame_name(index)}"
                    fail(position, err, f"{video.job.name}{where}: {err}")
                    continue
                inputs[position], current[position] = given, (index, frame)
            results = {}
            while inputs:
                try:
                    results = batch.step(inputs)
                    break
                except VideoStepError as err:  # that video fails; the others step without it
                    index = current[err.name][0]
                    inputs.pop(err.name)
                    fail(err.name, err, f"{running[err.name].job.name}, frame "
                                        f"{running[err.name].job.sequence.frame_name(index)}: {err.__cause__}")
            for position, result in results.items():
                video, (index, frame) = running[position], current[position]
                try:
                    video.writer.submit(_write_results, video.staged, video.job.sequence.frame_name(index), frame,
                                        HostCopy(result.labels.to(torch.uint8)))
                except (ValueError, OSError) as err:
                    fail(position, err, f"{video.job.name}: {err}")
                bar.update(1)
    except BaseException as err:  # an interrupt (or a bug): nothing partial stays behind
        for video in running.values():
            video.stack.__exit__(type(err), err, err.__traceback__)
        raise
    finally:
        bar.close()
