"""The object manager: object ids ↔ channels, and objects that appear mid-video.

Objects are tracked in channels 0..O−1 of every per-object tensor, in the order they were
first annotated. Objects first annotated on the same frame form a group (XMem's idea):
a group's channels are contiguous, so a group's slice of the memory values is a view, and
the memory manager lets each group read only the memory frames from its entry frame on.
Ids are any distinct positive integers; they need not be contiguous.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from remn.inference.host import to_device
from remn.model.masks import labels_to_masks


@dataclass(frozen=True)
class ObjectGroup:
    """Objects first annotated on the same frame: channels [start, stop) of O."""

    index: int
    entry_frame: int  # the frame whose annotation introduced them
    ids: tuple[int, ...]
    start: int
    stop: int

    @property
    def channels(self) -> slice:
        return slice(self.start, self.stop)

    @property
    def num_objects(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Annotation:
    """A parsed mask: which tracked or new ids it annotates, and their masks."""

    ids: tuple[int, ...]  # the annotated ids, in mask order (tracked ones first, then new)
    new_ids: tuple[int, ...]  # the ones not tracked before
    masks: torch.Tensor  # [len(ids), H, W] float {0, 1} at the input size


class ObjectManager:
    def __init__(self):
        self._ids: list[int] = []
        self._channel: dict[int, int] = {}
        self.groups: list[ObjectGroup] = []
        self._ids_on_device: torch.Tensor | None = None  # ids_tensor's cache; ids only grow, so a length change means new ids

    @property
    def ids(self) -> tuple[int, ...]:
        """Tracked ids in channel order."""
        return tuple(self._ids)

    @property
    def num_objects(self) -> int:
        return len(self._ids)

    def ids_tensor(self, device: torch.device) -> torch.Tensor:
        """Tracked ids in channel order as int64 [O] on `device`, copied there once per change."""
        cached = self._ids_on_device
        if cached is None or cached.device != device or len(cached) != len(self._ids):
            self._ids_on_device = to_device(torch.tensor(self._ids, dtype=torch.long), device)
        return self._ids_on_device

    def channels(self, ids: Sequence[int]) -> list[int]:
        return [self._channel[int(i)] for i in ids]

    def parse(self, labels: torch.Tensor, object_ids: Sequence[int] | None) -> Annotation:
        """labels [H, W] integer ids (0 background) → the Annotation of the ids it holds.

        object_ids: the ids this mask annotates (an id absent from the mask is annotated as
        empty); an id in the mask outside object_ids raises ValueError. None: the ids
        present in the mask. 255 (DAVIS "void") is an ordinary id here; callers that read
        DAVIS annotations zero it first.
        """
        present = [int(i) for i in torch.unique(labels).tolist() if i != 0]
        if object_ids is None:
            ids = present
        else:
            ids = [int(i) for i in object_ids]
            if len(set(ids)) != len(ids) or any(i <= 0 for i in ids):
                raise ValueError(f"object_ids must be distinct positive integers, got {ids}")
            undeclared = sorted(set(present) - set(ids))
            if undeclared:
                raise ValueError(f"the mask holds ids {undeclared} that are not among the declared object_ids {sorted(ids)}")
        tracked = [i for i in ids if i in self._channel]
        new = [i for i in ids if i not in self._channel]
        ordered = tracked + new
        return Annotation(tuple(ordered), tuple(new), labels_to_masks(labels, ordered))  # masks [A, H, W]

    def add_group(self, ids: Sequence[int], entry_frame: int) -> ObjectGroup:
        """Track `ids` (all new) from `entry_frame` on, in channels appended after the others."""
        ids = tuple(int(i) for i in ids)
        if not ids:
            raise ValueError("an object group needs at least one id")
        clash = [i for i in ids if i in self._channel]
        if clash:
            raise ValueError(f"ids {clash} are already tracked")
        start = len(self._ids)
        for offset, object_id in enumerate(ids):
            self._channel[object_id] = start + offset
            self._ids.append(object_id)
        group = ObjectGroup(len(self.groups), entry_frame, ids, start, len(self._ids))
        self.groups.append(group)
        return group
