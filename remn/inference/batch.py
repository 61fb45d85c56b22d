"""Several independent videos stepped at once: `BatchSegmenter`.

Each video keeps its own state — its object manager, its memory manager (its own policy
decisions) and its previous frame — in a `Segmenter` of its own; `BatchSegmenter.step`
drives the phases of `Segmenter.step` for all the videos that have a frame this step:

1. `_prepare` per video (inputs checked, the frame counted);
2. one `model.encode_key` on the frames of all videos whose working size is the same
   (videos of other sizes form their own batches);
3. each video's policy settles and says whether its previous frame enters memory; one
   `model.encode_value` on the chosen frames of each size and object count, then each
   video's memory writes its own;
4. one `model.segment` per working size (and `GroupRead.gated`) on every object group
   of every video: item i is (video v, group g) and reads what v's memory manager says
   g reads (`GroupRead`). Memories of different lengths T_i are zero-padded to
   T = max T_i with a −inf key bias on the padding (exp(−inf) = 0: a padded frame takes
   no part in the softmax, and top-k never picks one while a real key remains); groups
   of fewer objects O_i are padded to O = max O_i with `object_valid` False. An item's aggregated logits over its own
   channels 0..O_i equal its one-at-a-time logits exactly in math (a padded object has
   probability 0, a factor 1 in the background product), so its probabilities are the
   softmax over those channels; its gate scores are its first T_i;
5. `_finish` per video (annotation merge, memory decision, resize, labels).

Videos join (`add`) and leave (`remove`) between any two steps, and a step may leave out
videos that have no frame now: the others never wait for a batch to drain. On the
reference path each video's probabilities equal its one-at-a-time `Segmenter` run up to
float rounding (batched matrix products sum in another order: ≤ 1e-5), and its labels
are the same; `tests/test_batch.py` checks both.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Hashable, Mapping

import torch

from remn.inference.config import InferenceConfig, resolve_inference_config
from remn.inference.host import to_device
from remn.inference.memory import GroupRead
from remn.inference.segmenter import FrameResult, Segmenter, VideoReport, combine_groups
from remn.model.network import FrameFeatures, SegmentOutput

_TENSOR_FIELDS = ("image", "key", "key_comp", "f16", "f8", "f4")


@dataclass(frozen=True)
class FrameInput:
    """One video's input for a step: what `Segmenter.step` takes."""

    frame: object  # uint8 [H, W, 3] RGB (numpy or tensor) or float [3, H, W] in [0, 1]
    mask: object = None  # label map [H, W] of ids, or None
    object_ids: tuple[int, ...] | None = None  # the ids `mask` annotates (default: those in it)


class VideoStepError(ValueError):
    """A step's input for one video was bad; no video's state changed. `name` says which."""

    def __init__(self, name: Hashable, error: ValueError):
        super().__init__(f"video {name!r}: {error}")
        self.name = name


@dataclass
class _Item:
    """One object group of one video in a batched read."""

    name: Hashable
    read: GroupRead
    query: tuple[FrameFeatures, int]  # the encode batch holding the video's frame, and its index there


def item_features(batch: FrameFeatures, index: int) -> FrameFeatures:
    """Item `index` of batched features, as views with batch 1."""
    tensors = {name: getattr(batch, name)[index:index + 1] for name in _TENSOR_FIELDS}
    return FrameFeatures(**tensors, padding=batch.padding, size=batch.size)


def gather_features(sources: list[tuple[FrameFeatures, int]]) -> FrameFeatures:
    """Features [len(sources), ...] of item i of batch b for each (b, i): the batch itself
    when the sources are all its items in order, else a copy."""
    first = sources[0][0]
    if all(batch is first for batch, _ in sources) and [i for _, i in sources] == list(range(first.batch)):
        return first
    tensors = {name: torch.cat([getattr(batch, name)[i:i + 1] for batch, i in sources]) for name in _TENSOR_FIELDS}
    return FrameFeatures(**tensors, padding=first.padding, size=first.size)


def pad_time(tensors: list[torch.Tensor], dim: int, length: int, objects: int | None = None) -> torch.Tensor:
    """Stack batch-1 tensors along dim 0, zero-padded to `length` along `dim` (and to
    `objects` along dim 1 when given): equal shapes are concatenated as they are."""
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) == 1 and next(iter(shapes))[dim] == length and (objects is None or tensors[0].shape[1] == objects):
        return torch.cat(tensors)
    shape = list(tensors[0].shape)
    shape[0], shape[dim] = len(tensors), length
    if objects is not None:
        shape[1] = objects
    out = tensors[0].new_zeros(shape)
    for index, tensor in enumerate(tensors):
        region = [index, slice(0, tensor.shape[1])] + [slice(None)] * (tensor.dim() - 2)
        region[dim] = slice(0, tensor.shape[dim])
        out[tuple(region)] = tensor[0]
    return out


class BatchSegmenter:
    """Semi-supervised VOS on several videos at once, each as if run alone.

    model: a REMN in eval mode; config: an InferenceConfig or a preset name, shared by all
    videos; fast_path: as `Segmenter`'s (None: the prepared copy on a CPU). `add(name)` starts a video, `step({name: FrameInput, ...})` segments the next
    frame of each named video, `remove(name)` ends one and returns its report.
    """

    def __init__(self, model, config: InferenceConfig | str = "remn", fast_path=None):
        self.config = resolve_inference_config(config)
        # the model a Segmenter runs, shared by every video
        self.model = Segmenter(model, self.config, fast_path=fast_path).model
        self.videos: dict[Hashable, Segmenter] = {}
        self._last_query: dict[Hashable, tuple[FrameFeatures, int]] = {}  # each video's previous frame in its batch

    def __len__(self) -> int:
        return len(self.videos)

    def __contains__(self, name: Hashable) -> bool:
        return name in self.videos

    def add(self, name: Hashable) -> None:
        """Start a new video called `name` (its first step needs a mask)."""
        if name in self.videos:
            raise ValueError(f"video {name!r} is already in the batch")
        self.videos[name] = Segmenter(self.model, self.config, fast_path=False)  # self.model as it is

    def remove(self, name: Hashable) -> VideoReport:
        """End video `name`: its report (waiting for its queued work on CUDA)."""
        if name not in self.videos:
            raise KeyError(f"no video {name!r} in the batch")
        report = self.videos[name].report(str(name))
        del self.videos[name]
        self._last_query.pop(name, None)
        return report

    # ------------------------------------------------------------------ step
    def step(self, inputs: Mapping[Hashable, FrameInput]) -> dict[Hashable, FrameResult]:
        """Segment the next frame of each video in `inputs` (name → FrameInput; the others
        wait). Returns name → FrameResult, as `Segmenter.step` returns it. A bad input
        raises `VideoStepError` naming the video, with no video's state changed."""
        if not inputs:
            return {}
        unknown = [name for name in inputs if name not in self.videos]
        if unknown:
            raise KeyError(f"videos {unknown} are not in the batch (add them first)")
        started = time.perf_counter()
        anyone = self.videos[next(iter(inputs))]
        with torch.inference_mode(), anyone._on_device(), anyone._autocast():
            results = self._step(inputs)
        share = (time.perf_counter() - started) / len(inputs)
        for name in inputs:
            self.videos[name].seconds += share
        return results

    def _step(self, inputs: Mapping[Hashable, FrameInput]) -> dict[Hashable, FrameResult]:
        prepared = self._prepare(inputs)
        by_size: dict[tuple[int, int], list[Hashable]] = {}
        for name in inputs:
            by_size.setdefault(self.videos[name]._work_size, []).append(name)
        queries: dict[Hashable, tuple[FrameFeatures, int]] = {}
        for size, names in by_size.items():
            images = [self.videos[name]._resize(prepared[name][0], size) for name in names]  # [1, 3, h, w] each
            batch = self.model.encode_key(torch.cat(images))  # one key encoder pass on len(names) frames
            queries.update((name, (batch, index)) for index, name in enumerate(names))
        self._write_memory(list(inputs))
        probs = self._read(queries)
        results = {}
        for name in inputs:
            segmenter, (image, annotation) = self.videos[name], prepared[name]
            features = item_features(*queries[name])
            if name not in probs:  # no object tracked yet: background only
                probs[name] = image.new_ones(1, 1, *features.padded_size)
            results[name] = segmenter._finish(image, annotation, features, probs[name])
        self._last_query.update(queries)
        return results

    def _prepare(self, inputs: Mapping[Hashable, FrameInput]) -> dict[Hashable, tuple]:
        """Each video's `_prepare`; on a bad input the videos already prepared are rolled back."""
        saved = {name: (s.frame_index, s._input_size, s._work_size) for name, s in self.videos.items() if name in inputs}
        prepared = {}
        for name, given in inputs.items():
            if not isinstance(given, FrameInput):
                raise TypeError(f"video {name!r}: inputs must be FrameInput, got {type(given).__name__}")
            try:
                prepared[name] = self.videos[name]._prepare(given.frame, given.mask, given.object_ids)
            except ValueError as err:
                for done in prepared:
                    segmenter = self.videos[done]
                    segmenter.frame_index, segmenter._input_size, segmenter._work_size = saved[done]
                raise VideoStepError(name, err) from err
        return prepared

    def _write_memory(self, names: list[Hashable]) -> None:
        """Each video's `Segmenter._write_memory`, the chosen frames encoded together: one
        `encode_value` per (previous encode batch, object count)."""
        chosen: dict[tuple[int, int], list[tuple[Hashable, object]]] = {}
        for name in names:
            last = self.videos[name]._frame_to_write()
            if last is not None:
                source = self._last_query[name][0]
                chosen.setdefault((id(source), last.object_probs.shape[1]), []).append((name, last))
        for group in chosen.values():
            features = gather_features([self._last_query[name] for name, _ in group])
            probs = torch.cat([last.object_probs for _, last in group])  # [B, O, Hp, Wp]
            values = self.model.encode_value(features, probs)  # [B, O, Cv, h, w]
            for index, (name, last) in enumerate(group):
                self.videos[name].memory.write(last.index, last.features.key, values[index:index + 1])

    # ------------------------------------------------------------------ read
    def _read(self, queries: dict[Hashable, tuple[FrameFeatures, int]]) -> dict[Hashable, torch.Tensor]:
        """Every group of every video with objects reads its memory, one `model.segment`
        per encode batch → name → aggregated probabilities [1, O+1, Hp, Wp]."""
        by_batch: dict[tuple[int, bool], list[_Item]] = {}  # (encode batch, gated) → its items
        for name, query in queries.items():
            segmenter = self.videos[name]
            if segmenter.objects.num_objects:
                for read in segmenter.memory.reads():
                    by_batch.setdefault((id(query[0]), read.gated), []).append(_Item(name, read, query))
        outputs: dict[Hashable, list[SegmentOutput]] = {}
        for items in by_batch.values():
            for item, output in zip(items, self._segment(items)):
                outputs.setdefault(item.name, []).append(output)
        probs = {}
        for name, video_outputs in outputs.items():
            self.videos[name].memory.read_done(video_outputs)
            probs[name] = combine_groups(video_outputs)
        return probs

    def _segment(self, items: list[_Item]) -> list[SegmentOutput]:
        """One `model.segment` on all items (same working size, same `gated`) → each
        item's output, as its one-at-a-time read gives it: logits and probs
        [1, O_i+1, Hp, Wp], gate log scores [1, T_i] or None."""
        lengths = [item.read.keys.shape[2] for item in items]  # T_i
        counts = [item.read.values.shape[1] for item in items]  # O_i
        length, objects = max(lengths), max(counts)
        keys = pad_time([item.read.keys for item in items], 2, length)  # [B, Ck, T, h, w]
        values = pad_time([item.read.values for item in items], 3, length, objects)  # [B, O, Cv, T, h, w]
        bias = None
        if any(item.read.bias is not None for item in items) or len(set(lengths)) > 1:
            bias = keys.new_full((len(items), length), float("-inf"), dtype=torch.float32)  # [B, T]
            for index, item in enumerate(items):
                given = item.read.bias
                bias[index, : lengths[index]] = 0.0 if given is None else given[0].float()
        previous = None
        if self.config.local_attention:
            channels = [self.videos[item.name]._last.object_probs[:, item.read.group.channels] for item in items]
            previous_probs = pad_time(channels, 1, objects)  # [B, O, Hp, Wp]
            previous = (gather_features([self._last_query[item.name] for item in items]), previous_probs)
        valid = None
        if len(set(counts)) > 1:
            valid = torch.arange(objects)[None] < torch.tensor(counts)[:, None]  # [B, O]
            valid = to_device(valid, keys.device)
        output = self.model.segment(
            gather_features([item.query for item in items]), keys, values, memory_bias=bias, previous=previous,
            top_k=self.config.top_k, object_valid=valid, gate=items[0].read.gated,
        )
        results = []
        for index, (count, frames) in enumerate(zip(counts, lengths)):
            logits = output.padded_logits[index:index + 1, : count + 1]  # [1, O_i+1, Hp, Wp]
            probs = output.padded_probs[index:index + 1] if count == objects else torch.softmax(logits, dim=1)
            gate = None if output.gate_log_scores is None else output.gate_log_scores[index:index + 1, :frames]
            results.append(SegmentOutput(logits, probs, output.padding, gate))
        return results
