"""What every memory policy shares: the `MemoryManager` interface, its settings base and
its statistics.

A manager holds memory and answers what a query reads; the per-frame core
(`remn.inference.segmenter.Segmenter.step`) computes. Per frame the core:

1. `settle()` — lets the manager apply what the device decided about the previous frame
   (its memory decision, the gate scores of the last read), then, if the previous frame
   was chosen, encodes it (`model.encode_value`) and calls `write(frame, key, values)`;
2. `reads()` — one `GroupRead` per object group: the keys, values and key bias that
   group's objects read; the core runs `model.segment` per group and aggregates once,
   then hands the outputs back with `read_done(outputs)`;
3. `add_group(group)` for objects first annotated on this frame;
4. `decide(frame, features, probs, annotated)` — whether this frame enters memory (a
   `Decision` the host may read a frame later).

Settings: each policy has a frozen dataclass deriving from `MemorySettings`, with its own
validation, nested in `InferenceConfig.memory`; `policy` names it in the registry
(`remn.inference.memory.MEMORY_POLICIES`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from remn.inference.host import Decision
from remn.inference.objects import ObjectGroup


@dataclass(frozen=True)
class MemorySettings:
    """Base of every policy's settings dataclass."""

    policy: ClassVar[str]  # the policy's name in MEMORY_POLICIES
    needs_compressor: ClassVar[bool] = False  # the model must have RDE's compressor (ModelConfig.memory="rde")


@dataclass
class MemoryStats:
    frames: int = 0  # frames in memory now
    peak_frames: int = 0  # most frames in memory at any time
    memorised: int = 0  # frames written into memory
    skipped: int = 0  # frames the update policy left out
    gate_dropped: int = 0  # frames removed because their gate score EMA fell below the threshold
    evicted: int = 0  # frames removed to make room in a full bank


@dataclass
class GroupRead:
    """What one object group's query reads."""

    group: ObjectGroup
    keys: torch.Tensor  # [1, Ck, T, h, w]
    values: torch.Tensor  # [1, O_g, Cv, T, h, w]
    bias: torch.Tensor | None = None  # [1, T] additive logit bias per memory frame (−inf excludes), or None
    gated: bool = True  # the model's gate scores bias this read (False: the policy reads without them)


class MemoryManager(ABC):
    """The interface the per-frame core drives (see the module docstring for the order)."""

    settings_type: ClassVar[type[MemorySettings]]

    def __init__(self, model, settings: MemorySettings):
        if not isinstance(settings, self.settings_type):
            raise TypeError(f"{type(self).__name__} takes {self.settings_type.__name__}, got {type(settings).__name__}")
        self.model = model
        self.settings = settings
        self.groups: list[ObjectGroup] = []
        self.stats = MemoryStats()

    def add_group(self, group: ObjectGroup) -> None:
        """Objects enter at `group.entry_frame`; that frame's `decide` carries their masks."""
        if group.index != len(self.groups):
            raise ValueError(f"object groups must be added in order: expected {len(self.groups)}, got {group.index}")
        self.groups.append(group)

    @abstractmethod
    def decide(self, frame_index: int, features, probs: torch.Tensor, *, annotated: bool) -> Decision:
        """Whether this frame enters memory. probs: its final probabilities [1, O+1, Hp, Wp]
        over the padded frame (what a memorised frame encodes, band included); annotated:
        the frame had a mask. The returned decision's `get()` may wait for the device."""

    def settle(self) -> None:
        """Apply what the device decided about the last frame (host copies are read)."""

    @abstractmethod
    def write(self, frame_index: int, key: torch.Tensor, values: torch.Tensor) -> None:
        """Store a frame `decide` chose (after `settle`): key [1, Ck, h, w], values
        [1, O, Cv, h, w] for every object tracked when it was decided."""

    @abstractmethod
    def reads(self) -> list[GroupRead]:
        """What each object group reads now, in group order."""

    def read_done(self, outputs: list) -> None:
        """The `SegmentOutput` of each group's read, in `reads()` order (gate scores)."""

    def _require_memory(self, empty: bool) -> None:
        if not self.groups or empty:
            raise RuntimeError("the memory is empty: the first annotated frame must be written before a read")
