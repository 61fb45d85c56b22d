"""The per-frame core: `Segmenter.step(frame, mask=None, object_ids=None)`.

Per frame (`_step`, in this order): resize to the working size (shorter side
`config.size`) and encode the key; write the frame the memory policy chose last step into
memory (encoded here with its probabilities; `remn.inference.memory`); read: one
`model.segment` per object group on what the memory manager says the group reads, with
the previous frame and its probabilities for local attention, the groups aggregated
once; merge a given mask (it wins for the ids it annotates; the other objects keep their
prediction outside it); let the memory policy decide whether this frame enters memory;
resize the probabilities back to the input size (bilinear) before the argmax. As in the
published STCN and RDE-VOS inference, the
probabilities carried to memory and to the next frame are those of the whole padded frame
(a multiple of 16), the band the decoder predicted around the frame included; only the
output is cropped to the frame. Everything runs under `torch.inference_mode()`, under
`torch.autocast` when `config.precision` asks for it on CUDA; the same input gives the
same output.

On CUDA a step queues its work and returns without waiting for the GPU: the frame goes up
through pinned memory, the memory manager reads its device-side decisions a frame later
(`remn.inference.host`), and the returned tensors are on the device (read them, e.g.
`labels.cpu()`, when needed). The host waits only on annotated frames, whose ids it checks.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from remn.inference.config import InferenceConfig, resolve_inference_config
from remn.inference.fast_path import FastPathSettings, inference_model
from remn.inference.host import Decision, to_device
from remn.inference.memory import make_memory_manager
from remn.inference.objects import ObjectManager
from remn.model.masks import probs_to_labels, soft_aggregate
from remn.model.network import FrameFeatures, crop_padding
from remn.precision import autocast_dtype


@dataclass
class _LastFrame:
    """The previous frame: what local attention reads, and what memory encodes should the
    policy have chosen it."""

    index: int
    features: FrameFeatures
    object_probs: torch.Tensor  # [1, O, Hp, Wp] over the padded frame, band included
    decision: Decision | None  # the policy's choice, None once acted on


@dataclass
class FrameResult:
    index: int  # frame index within the video (0-based, counting every step)
    labels: torch.Tensor  # [H, W] int64 object ids at the input size (0 background)
    probs: torch.Tensor  # [O+1, H, W] float32 at the input size, background first, channels in object_ids order
    object_ids: tuple[int, ...]  # the ids of channels 1..O of probs
    decision: Decision  # the memory manager's choice for this frame

    @property
    def memorised(self) -> bool:
        """The memory manager chose this frame for memory (on CUDA this may wait for the step's work)."""
        return self.decision.get()


@dataclass
class VideoReport:
    name: str
    frames: int  # frames stepped through
    memory_frames: int  # frames in memory at the end
    peak_memory_frames: int  # most frames in memory at any time
    memorised: int  # frames written into memory
    skipped: int  # frames the update policy left out of memory
    gate_dropped: int  # memory frames removed by the gate threshold
    evicted: int  # memory frames removed to make room at capacity
    seconds: float  # time spent in step()
    objects: int = 0
    wall_seconds: float | None = None  # the whole video with its file I/O (set by the dataset runner)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        with_io = f" ({self.frames / self.wall_seconds:.1f} with file I/O)" if self.wall_seconds else ""
        return (
            f"{self.name}: {self.frames} frames, {self.objects} objects, {self.fps:.1f} FPS{with_io}; memory "
            f"{self.memory_frames} frames (peak {self.peak_memory_frames}), {self.memorised} memorised, "
            f"{self.skipped} skipped by the update policy, {self.gate_dropped} dropped by the gate, "
            f"{self.evicted} evicted at capacity"
        )


def working_size(height: int, width: int, shorter_side: int | None) -> tuple[int, int]:
    """(h, w) with the shorter side scaled to `shorter_side` (None: unchanged)."""
    if shorter_side is None or min(height, width) == shorter_side:
        return height, width
    scale = shorter_side / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def merge_annotation(predicted: torch.Tensor, masks: torch.Tensor, channels: list[int], num_objects: int) -> torch.Tensor:
    """Predicted object probabilities [1, O_before, H, W] and annotation masks [1, A, H, W]
    for channels `channels` (new objects take channels ≥ O_before) → aggregated
    probabilities [1, O+1, H, W]. Annotated objects take their mask; the others keep their
    prediction outside the annotated pixels."""
    annotated = masks.sum(dim=1, keepdim=True).clamp(max=1)  # [1, 1, H, W]
    object_probs = predicted.new_zeros(1, num_objects, *predicted.shape[-2:])  # [1, O, H, W]
    object_probs[:, : predicted.shape[1]] = predicted * (1 - annotated)
    object_probs[:, torch.tensor(channels, device=predicted.device)] = masks.to(object_probs.dtype)
    return torch.softmax(soft_aggregate(object_probs), dim=1)  # [1, O+1, H, W]


def combine_groups(outputs) -> torch.Tensor:
    """The `SegmentOutput` of each object group's read (in channel order) → aggregated
    probabilities [1, O+1, Hp, Wp] over all objects."""
    if len(outputs) == 1:
        return outputs[0].padded_probs  # [1, O+1, Hp, Wp]
    # Each group aggregated its own objects; recover their probabilities (sigmoid of the
    # logits is the clamped probability) and aggregate all objects together.
    object_probs = torch.cat([torch.sigmoid(out.padded_logits[:, 1:]) for out in outputs], dim=1)  # [1, O, Hp, Wp]
    return torch.softmax(soft_aggregate(object_probs), dim=1)  # [1, O+1, Hp, Wp]


class Segmenter:
    """Semi-supervised VOS on a stream of frames: one `step` per frame, in order.

    model: a REMN (`remn.build_model`), in eval mode; config: an InferenceConfig or a
    preset name; fast_path: on a CPU the Segmenter runs a prepared copy of the model
    (`remn.inference.fast_path`: BatchNorm folded, per-frame inputs shared by the objects,
    channels-last; with precision "auto" on a CPU with native bf16 the key encoder in bf16,
    the value encoder too with at most 2 objects; bf16 encoders and decoder with precision
    "bf16") unless fast_path=False; a FastPathSettings picks the routes. Start a new video with `reset()` (or a new Segmenter).
    engine: "pytorch" runs the model's step functions; "onnxruntime" runs the exported graphs
    instead (`remn export`; `model` is then the export folder or a
    `remn.inference.onnx_engine.OnnxRuntimeEngine`), under the same memory policy; None (the
    default): "pytorch", or the kind an engine object passed as `model` names (its `engine`).
    """

    def __init__(self, model, config: InferenceConfig | str = "remn", fast_path: FastPathSettings | bool | None = None,
                 engine: str | None = None):
        self.config = resolve_inference_config(config)
        engine = getattr(model, "engine", "pytorch") if engine is None else engine
        if engine == "onnxruntime":
            from remn.inference.onnx_engine import OnnxRuntimeEngine

            self.model = model if isinstance(model, OnnxRuntimeEngine) else OnnxRuntimeEngine(model)
            self.device = self.model.device
        elif engine == "pytorch":
            self.model = inference_model(model, fast_path, self.config.precision)
            self.device = next(model.parameters()).device
        else:
            raise ValueError(f"engine must be 'pytorch' or 'onnxruntime', got {engine!r}")
        self.reset()

    def reset(self) -> None:
        self.objects = ObjectManager()
        self.memory = make_memory_manager(self.model, self.config.memory)
        self.frame_index = -1
        self.seconds = 0.0  # host time in step(), plus the device's tail at each report()
        self._input_size: tuple[int, int] | None = None
        self._work_size: tuple[int, int] | None = None
        self._last: _LastFrame | None = None

    # ------------------------------------------------------------------ inputs
    def _frame_tensor(self, frame) -> torch.Tensor:
        """uint8 [H, W, 3] (numpy or tensor) or float [3, H, W] in [0, 1] → float [1, 3, H, W] on the device."""
        if isinstance(frame, np.ndarray):
            frame = torch.from_numpy(np.ascontiguousarray(frame))
        if not isinstance(frame, torch.Tensor):
            raise TypeError(f"frame must be a numpy array or a torch.Tensor, got {type(frame).__name__}")
        if frame.dtype == torch.uint8:
            if frame.dim() != 3 or frame.shape[2] != 3:
                raise ValueError(f"a uint8 frame must be [H, W, 3] RGB, got shape {tuple(frame.shape)}")
            image = to_device(frame, self.device).permute(2, 0, 1).float().div_(255)  # [3, H, W]
        elif frame.is_floating_point():
            if frame.dim() != 3 or frame.shape[0] != 3:
                raise ValueError(f"a float frame must be [3, H, W] RGB in [0, 1], got shape {tuple(frame.shape)}")
            image = to_device(frame, self.device).float()
        else:
            raise TypeError(f"frame must be uint8 [H, W, 3] or float [3, H, W], got dtype {frame.dtype}")
        return image[None]  # [1, 3, H, W]

    def _mask_tensor(self, mask, size: tuple[int, int]) -> torch.Tensor:
        """Label map [H, W] of integer ids → int64 [H, W] on the device."""
        if isinstance(mask, np.ndarray):
            mask = torch.from_numpy(np.ascontiguousarray(mask))
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a numpy array or a torch.Tensor, got {type(mask).__name__}")
        if mask.is_floating_point() or mask.dtype == torch.bool or mask.dim() != 2:
            raise ValueError(f"mask must be an integer label map [H, W] of object ids, got {mask.dtype} {tuple(mask.shape)}")
        if tuple(mask.shape) != size:
            raise ValueError(f"mask size {tuple(mask.shape)} differs from the frame size {size} (H, W)")
        if mask.numel() and int(mask.min()) < 0:
            raise ValueError("mask ids must be >= 0")
        return mask.to(self.device, torch.long)

    def _resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == size:
            return x
        if x.numel() == 0:  # no channels (no object tracked yet)
            return x.new_zeros(*x.shape[:-2], *size)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)

    def _autocast(self):
        """Autocast as `config.precision` says, on CUDA only (the CPU runs fp32)."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        dtype = autocast_dtype(self.config.precision, "cuda", torch.cuda.is_bf16_supported())
        return contextlib.nullcontext() if dtype is None else torch.autocast("cuda", dtype=dtype)

    def _on_device(self):
        """The model's GPU as the current device: kernels, copies and events share its stream."""
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    # ------------------------------------------------------------------ step
    def step(self, frame, mask=None, object_ids: Sequence[int] | None = None) -> FrameResult:
        """Segment the next frame.

        frame: uint8 [H, W, 3] RGB (numpy or tensor) or float [3, H, W] in [0, 1].
        mask: label map [H, W] of ids (0 background) for this frame, or None. The first
            step needs one; a later one adds new ids (objects entering the video) and
            re-annotates tracked ids it holds; the other objects keep being propagated.
        object_ids: the ids `mask` annotates (default: the ids present in it); an id in
            the mask outside them raises ValueError.
        Returns a FrameResult: labels [H, W] and probs [O+1, H, W] at the input size.
        """
        started = time.perf_counter()
        with torch.inference_mode(), self._on_device(), self._autocast():
            result = self._step(frame, mask, object_ids)
        self.seconds += time.perf_counter() - started
        return result

    def _step(self, frame, mask, object_ids) -> FrameResult:
        image, annotation = self._prepare(frame, mask, object_ids)
        features = self.model.encode_key(self._resize(image, self._work_size))
        self._write_memory()
        if self.objects.num_objects:
            probs = self._read(features)
        else:
            probs = image.new_ones(1, 1, *features.padded_size)  # background only
        return self._finish(image, annotation, features, probs)

    # The phases of a step, also driven by `remn.inference.batch.BatchSegmenter` for several
    # videos at once: _prepare → encode_key → _write_memory → read → _finish.
    def _prepare(self, frame, mask, object_ids):
        """Check the inputs and count the frame → (image [1, 3, H, W], Annotation or None)."""
        image = self._frame_tensor(frame)  # [1, 3, H, W]
        size = tuple(image.shape[-2:])
        if self._input_size is not None and size != self._input_size:
            raise ValueError(f"frame {self.frame_index + 1} is {size} (H, W) but the video's frames are {self._input_size}")
        annotation = None
        if mask is not None:
            annotation = self.objects.parse(self._mask_tensor(mask, size), object_ids)
        if self.objects.num_objects == 0:
            if annotation is None:
                raise ValueError("the first frame needs a mask: no object is tracked yet")
            if not annotation.ids or annotation.masks.sum() == 0:
                raise ValueError("the first annotation is empty: it holds no object pixel")
        if self._input_size is None:
            self._input_size, self._work_size = size, working_size(*size, self.config.size)
        self.frame_index += 1
        return image, annotation

    def _finish(self, image, annotation, features: FrameFeatures, probs: torch.Tensor) -> FrameResult:
        """Merge the annotation into the read's probs [1, O+1, Hp, Wp] over the padded
        working frame, let the memory policy decide, resize to the input size."""
        frame_index = self.frame_index
        annotated = annotation is not None and len(annotation.ids) > 0
        if annotated:
            if annotation.new_ids:
                self.memory.add_group(self.objects.add_group(annotation.new_ids, frame_index))
            channels = self.objects.channels(annotation.ids)
            predicted = probs[:, 1:].float()  # [1, O_before, Hp, Wp]
            masks = F.pad(self._resize(annotation.masks[None], self._work_size), features.padding)  # [1, A, Hp, Wp]
            probs = merge_annotation(predicted, masks, channels, self.objects.num_objects)  # [1, O+1, Hp, Wp]
            # At the input size the given mask is kept exactly (no resizing round trip).
            full = merge_annotation(
                self._resize(crop_padding(predicted, features.padding), self._input_size),
                annotation.masks[None], channels, self.objects.num_objects,
            )[0]  # [O+1, H, W]
        else:
            full = self._resize(crop_padding(probs, features.padding).float(), self._input_size)[0]  # [O+1, H, W]
        decision = self.memory.decide(frame_index, features, probs, annotated=annotated)
        self._last = _LastFrame(frame_index, features, probs[:, 1:], decision)
        labels = probs_to_labels(full, self.objects.ids_tensor(self.device))  # [H, W]
        return FrameResult(frame_index, labels, full, self.objects.ids, decision)

    def _write_memory(self) -> None:
        """Settle the memory, then write the last frame into it if the policy chose it.

        Runs after this frame's key encoder is queued: on CUDA the host may wait here for
        the previous frame's decision while the GPU works."""
        last = self._frame_to_write()
        if last is not None:
            values = self.model.encode_value(last.features, last.object_probs)  # [1, O, Cv, h, w]
            self.memory.write(last.index, last.features.key, values)

    def _frame_to_write(self) -> _LastFrame | None:
        """Settle the memory; the last frame when the policy chose it (to be encoded and
        written now), else None."""
        last = self._last
        if last is None or last.decision is None:
            return None
        decision, last.decision = last.decision, None
        self.memory.settle()
        return last if decision.get() else None

    def _read(self, features: FrameFeatures) -> torch.Tensor:
        """Each object group reads its memory; → aggregated probabilities [1, O+1, Hp, Wp]."""
        last = self._last if self.config.local_attention else None
        outputs = []
        for read in self.memory.reads():
            group_previous = None if last is None else (last.features, last.object_probs[:, read.group.channels])
            outputs.append(self.model.segment(
                features, read.keys, read.values, memory_bias=read.bias, previous=group_previous, top_k=self.config.top_k,
                gate=read.gated,
            ))
        self.memory.read_done(outputs)
        return combine_groups(outputs)

    # ------------------------------------------------------------------ report
    def report(self, name: str = "") -> VideoReport:
        """The video so far. Waits for the queued work (its time counts) and settles the last
        frame's memory decision."""
        if self.device.type == "cuda":
            started = time.perf_counter()
            torch.cuda.synchronize(self.device)
            self.seconds += time.perf_counter() - started
        with torch.inference_mode(), self._on_device():  # a gate drop compacts the bank in place
            self.memory.settle()
        stats = self.memory.stats
        return VideoReport(
            name=name,
            frames=self.frame_index + 1,
            memory_frames=stats.frames,
            peak_memory_frames=stats.peak_frames,
            memorised=stats.memorised,
            skipped=stats.skipped,
            gate_dropped=stats.gate_dropped,
            evicted=stats.evicted,
            seconds=self.seconds,
            objects=self.objects.num_objects,
        )
