"""Propagation both ways from any annotated frames: `BothWaysSegmenter`.

Annotators label the clearest frame, not the first. Given annotations on frames K1 < K2 <
... (each a label map; the ids in it are the objects it annotates), every annotated frame
K seeds two runs of the ordinary engine carrying K's objects: forward over K, K+1, ... and
backward over K, K−1, ... (a backward run is a forward run over the reversed frames; the
memory policy, local attention and everything else are the same). All runs are stepped
together in one `BatchSegmenter`, so they share each step's batched key encoder and read.

Which prediction wins where runs overlap: the nearest annotation of each object. For
object o annotated on frames A_o, frame t takes o's probability from the run seeded at the
a ∈ A_o nearest to t (|t − a| smallest; a tie, t midway between two annotations, goes to
the earlier annotation, i.e. its forward run; frame K itself to K's forward run). The
nearest annotation is the one with the fewest frames of drift behind it. Runs stop at the
last frame where they win for some object they carry (`plan_runs`), so with the same
objects on every annotated frame each frame is segmented once. Per frame the winning
objects' probabilities are soft-aggregated together (as the engine aggregates object
groups: background = ∏(1 − p_o), softmax of the logits); where a single run wins for
every object its output is taken as it is. On an annotated frame the given mask wins for
the ids it annotates: the other objects keep their prediction outside its pixels (as
`Segmenter.step` merges a mask).

With one annotation on the first frame this is exactly the forward-only engine (the
backward run is empty), so the DAVIS protocol's first-frame convention is unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

import numpy as np
import torch

from remn.inference.batch import BatchSegmenter, FrameInput
from remn.inference.config import InferenceConfig
from remn.inference.segmenter import VideoReport
from remn.model.masks import probs_to_labels, soft_aggregate

FORWARD, BACKWARD = 1, -1


@dataclass(frozen=True)
class Run:
    """One propagation run: from `seed` in `direction` over `frames` (in step order),
    carrying `objects`; `wins[t]` are the objects whose prediction at frame t is this run's."""

    seed: int
    direction: int  # FORWARD or BACKWARD
    objects: tuple[int, ...]
    frames: tuple[int, ...]
    wins: dict[int, tuple[int, ...]] = field(hash=False)


def nearest_annotation(frame: int, annotated: list[int]) -> int:
    """The annotated frame nearest to `frame` (ties: the earlier one). annotated: sorted."""
    return min(annotated, key=lambda a: (abs(frame - a), a))


def plan_runs(num_frames: int, annotated_ids: Mapping[int, tuple[int, ...]]) -> list[Run]:
    """The runs for a video of `num_frames` frames with `annotated_ids` (frame → the ids
    its annotation holds): per annotated frame a forward and a backward run, each cut to
    the frames where it wins for one of its objects (runs that win nowhere are left out)."""
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    bad = sorted(frame for frame in annotated_ids if not 0 <= frame < num_frames)
    if bad:
        raise ValueError(f"annotated frames {bad} lie outside the video's {num_frames} frames")
    empty = sorted(frame for frame, ids in annotated_ids.items() if not ids)
    if not annotated_ids or empty:
        raise ValueError(f"every annotation must hold an object (empty: frames {empty})" if empty
                         else "propagation needs at least one annotated frame")
    frames_of: dict[int, list[int]] = {}
    for frame in sorted(annotated_ids):
        for object_id in annotated_ids[frame]:
            frames_of.setdefault(object_id, []).append(frame)
    owner = {(object_id, t): nearest_annotation(t, frames) for object_id, frames in frames_of.items()
             for t in range(num_frames)}
    runs = []
    for seed in sorted(annotated_ids):
        objects = tuple(annotated_ids[seed])
        for direction in (FORWARD, BACKWARD):
            stop = num_frames if direction == FORWARD else -1
            span = range(seed, stop, direction)
            # Frame `seed` belongs to its forward run; the backward run still steps it (its mask).
            wins = {t: tuple(o for o in objects if owner[o, t] == seed) for t in span
                    if direction == FORWARD or t != seed}
            last = max((i for i, t in enumerate(span) if wins.get(t)), default=None)
            if last is None:
                continue
            frames = tuple(span[: last + 1])
            runs.append(Run(seed, direction, objects, frames, {t: wins[t] for t in frames if wins.get(t)}))
    return runs


@dataclass
class FramePrediction:
    index: int
    labels: torch.Tensor  # [H, W] int64 object ids (0 background)
    probs: torch.Tensor  # [O+1, H, W] float32, background first, channels in object_ids order
    object_ids: tuple[int, ...]


class BothWaysSegmenter:
    """Semi-supervised VOS from annotations on any frames, propagated both ways.

    model: a REMN in eval mode; config: an InferenceConfig or a preset name (every run's);
    fast_path: as `Segmenter`'s.
    """

    def __init__(self, model, config: InferenceConfig | str = "remn", fast_path=None):
        self.batch = BatchSegmenter(model, config, fast_path=fast_path)
        self.reports: list[VideoReport] = []  # one per run of the last `run`

    def run(self, num_frames: int, frame: Callable[[int], object],
            annotations: Mapping[int, np.ndarray | torch.Tensor]) -> Iterator[FramePrediction]:
        """Segment frames 0..num_frames−1; frame(t) returns frame t (what `Segmenter.step`
        takes); annotations: frame index → label map [H, W] of ids. Yields each frame's
        prediction once every run it needs has reached it — not in frame order."""
        masks = {int(t): _labels(mask) for t, mask in annotations.items()}
        runs = plan_runs(num_frames, {t: _ids(mask) for t, mask in masks.items()})
        object_ids = tuple(sorted({o for ids in (_ids(m) for m in masks.values()) for o in ids}))
        needed = {t: {r for r, run in enumerate(runs) if t in run.wins} for t in range(num_frames)}
        pieces: dict[int, dict[int, tuple[tuple[int, ...], torch.Tensor]]] = {t: {} for t in range(num_frames)}
        self.reports = []
        for index in range(len(runs)):
            self.batch.add(index)
        position = {index: 0 for index in range(len(runs))}
        try:
            while position:
                cache: dict[int, object] = {}  # frames several runs read at this step
                inputs = {}
                for r, step in position.items():
                    t = runs[r].frames[step]
                    if t not in cache:
                        cache[t] = frame(t)
                    inputs[r] = FrameInput(cache[t], masks[runs[r].seed] if step == 0 else None)
                for r, result in self.batch.step(inputs).items():
                    run, t = runs[r], runs[r].frames[position[r]]
                    if t in run.wins:
                        channels = [1 + result.object_ids.index(o) for o in run.wins[t]]
                        pieces[t][r] = (run.wins[t], result.probs[channels].float().cpu())  # [n, H, W]
                        if len(pieces[t]) == len(needed[t]):
                            yield self._combine(t, pieces.pop(t), masks.get(t), object_ids, result)
                    position[r] += 1
                    if position[r] == len(run.frames):
                        del position[r]
                        self.reports.append(self.batch.remove(r))
        finally:
            for r in list(position):
                self.batch.remove(r)

    @staticmethod
    def _combine(t, pieces, mask, object_ids, last_result) -> FramePrediction:
        """Frame t from the winning runs' object probabilities: [O+1, H, W] and labels."""
        if len(pieces) == 1:
            (ids, _), = pieces.values()
            if ids == object_ids and last_result.object_ids == object_ids:
                # one run wins for every object, in the output's channel order: its result as it is
                return FramePrediction(t, last_result.labels.cpu(), last_result.probs.float().cpu(), object_ids)
        size = next(iter(pieces.values()))[1].shape[-2:]
        object_probs = torch.zeros(len(object_ids), *size)  # [O, H, W]
        for ids, probs in pieces.values():
            for object_id, channel in zip(ids, probs):
                object_probs[object_ids.index(object_id)] = channel
        if mask is not None:  # the given mask wins for its ids; the others keep their prediction outside it
            annotated = _ids(mask)
            given = mask.long().cpu() if isinstance(mask, torch.Tensor) else torch.from_numpy(np.asarray(mask)).long()
            for channel, object_id in enumerate(object_ids):
                if object_id in annotated:
                    object_probs[channel] = (given == object_id).float()
                else:
                    object_probs[channel] = object_probs[channel] * (given == 0)
        probs = torch.softmax(soft_aggregate(object_probs[None]), dim=1)[0]  # [O+1, H, W]
        return FramePrediction(t, probs_to_labels(probs, object_ids), probs, object_ids)


def _labels(mask) -> np.ndarray | torch.Tensor:
    if not isinstance(mask, (np.ndarray, torch.Tensor)):
        raise TypeError(f"an annotation must be a label map [H, W] (numpy or tensor), got {type(mask).__name__}")
    return mask


def _ids(mask) -> tuple[int, ...]:
    """The object ids (≠ 0) a label map holds, in increasing order."""
    values = mask.unique() if isinstance(mask, torch.Tensor) else np.unique(mask)
    return tuple(int(v) for v in values if int(v) != 0)
