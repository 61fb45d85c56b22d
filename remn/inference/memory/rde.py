"""memory="rde": RDE-VOS's recurrent dynamic embedding as a memory manager.

RDE-VOS (Li et al., CVPR 2022) keeps one recurrently updated memory "embedding" instead of
a growing bank, so memory and time per frame are constant in the video's length. Its
inference mode "two frames + compress" reads from three memory frames, the annotated one
twice:

    [annotated frame, annotated frame, embedding, last memorised frame]

Policy, all of it in this file (the order of operations follows the published inference
code, `inference_memory_bank.MemoryBank.add_memory` in compress mode with `use_gt` and
`use_last`):

- What enters. Annotated frames always; otherwise a frame whose distance to the last
  memorised frame reaches `mem_every` (RDE's YouTube-VOS loop; with one annotation on the
  first frame this is RDE's DAVIS rule `t % mem_every == 0` counted from that frame). As
  in FrameBankMemory, the core encodes a chosen frame (`encode_value` with the soft
  probabilities of the aggregated prediction, band included) and writes it when the next
  frame arrives, so the last frame of a video is never encoded for nothing.
- How a memorised frame F (key k_F, values v_F) is written, per object group:
    1. the group's first frame (its entry frame, the annotation that introduced it):
       annotated ← F, embedding ← F (the embedding starts from the annotated frame), and
       no last frame yet;
    2. every later memorised frame, in this order:
         embedding ← mem_compress(embedding, F)   (update_key, update_value: SAM, then
                                                   the (2, 3, 3) squeeze)
         last      ← F
       i.e. the embedding absorbs the *new* memorised frame at once, and the same frame is
       also kept verbatim as the last frame until the next memorised frame replaces it.
       (This is the published order; it is not "absorb the previous last frame when the
       next one arrives".)
- What is read. Each group reads its own used slots, in the published order: [annotated,
  annotated] until its first memorised frame after the entry (the published [embedding,
  annotated], the embedding being a bit-identical copy of the annotated frame then),
  [embedding, last, annotated, annotated] from then on; top-k as configured (RDE: 40).
  Reading the annotated frame twice is what the published checkpoints were evaluated
  with: each of its keys carries double weight in the softmax and takes two top-k places,
  so a single copy would not reproduce their numbers. The order matters where logits tie
  at the k-th place (top-k takes tied keys in key order): on a still stretch the last
  frame's keys equal the annotated frame's, with different values. The groups'
  per-object probabilities are soft-aggregated together by the core.
- Nothing is dropped: the slots are overwritten in place.
- Training reads what RDE-VOS's published training reads, which is not this inference
  read (`remn.train.rde_recipe`: the embedding alone at frames 2 and 4 of a clip), but it
  keeps the embedding in these same `RDESlots` (`enter`, `absorb`, `read_embedding`), so
  the two fold memorised frames into the embedding with one piece of code.

Object groups (objects first annotated on the same frame, `remn.inference.objects`) each
own four slots (three frames, the annotated one stored twice so that a read is one view,
the last `used` slots): keys [1, Ck, 4, h, w] and values [1, O_g, Cv, 4, h, w], made when
the group's entry frame is written and rebuilt (same size) on each memorised frame. This is RDE's own scheme for objects that
appear mid-video (its YouTube-VOS loop keeps one memory per object, started from the frame
that annotates it; a later annotation enters the older objects' memories as an ordinary
memorised frame, compressed into their embeddings). Per group instead of per object is the
same computation: the objects of a group share every key, the key embedding does not depend
on the masks, and `update_value` compresses each object on its own. A single shared key
embedding would not be correct: a group entering at frame e must read an embedding whose
keys start at e, with values that match them position by position.

One difference from the published code, deliberate: "every mem_every frames" counts from
the last memorised frame, as the published YouTube-VOS loop does; the published DAVIS loop
counts absolute frame indices, which agrees whenever the first annotation is on frame 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from remn.inference.host import Decision
from remn.inference.memory.base import GroupRead, MemoryManager, MemorySettings
from remn.inference.memory.frame_bank import check_int

SLOTS = 4  # the published read order: embedding, last, annotated, annotated again
EMBEDDING, LAST, ANNOTATED, ANNOTATED_AGAIN = range(SLOTS)
ENTRY_SLOTS = 2  # read before the first memorised frame after the entry: the annotated frame twice


@dataclass(frozen=True)
class RDESettings(MemorySettings):
    """memory="rde": the fixed schedule; nothing else is a setting (fixed slots, no drops)."""

    policy = "rde"
    needs_compressor = True

    mem_every: int = 3  # memorise a frame when this many frames passed since the last memorised one

    def __post_init__(self):
        check_int(self, "mem_every", 1)


@dataclass
class RDESlots:
    """One object group's memory: four slots along (embedding, last, annotated, annotated
    again); the last `used` of them are read (2, the annotated pair, until the first
    memorised frame after the entry, then all 4).

    keys [B, Ck, 4, h, w], values [B, O_g, Cv, 4, h, w]. B is 1 in the engine; the RDE
    training pass (`remn.train.rde_recipe`) holds its clips' embedding in the same slots,
    with their batch. Under `torch.inference_mode()` (the engine) writes go in place and
    the storage never changes; otherwise they make new slot tensors, so gradients reach the
    compressor through every fold and a read taken earlier keeps what it read. A read is a
    view.
    """

    keys: torch.Tensor
    values: torch.Tensor
    entry_frame: int  # the frame in the annotated slot
    used: int = ENTRY_SLOTS
    last_frame: int | None = None  # the frame in the last slot
    absorbed: int = 0  # frames compressed into the embedding since the entry

    @classmethod
    def enter(cls, key: torch.Tensor, values: torch.Tensor, frame: int) -> "RDESlots":
        """A group entering on `frame`: key [B, Ck, h, w], values [B, O_g, Cv, h, w] fill the
        annotated pair and start the embedding; the last slot is empty (zeros, not read)."""
        # (embedding, last, annotated, annotated again): the embedding starts from the annotated frame
        keys = torch.stack([key, torch.zeros_like(key), key, key], dim=2)  # [B, Ck, 4, h, w]
        slot_values = torch.stack([values, torch.zeros_like(values), values, values], dim=3)  # [B, O_g, Cv, 4, h, w]
        return cls(keys, slot_values, entry_frame=frame)

    def absorb(self, compressor, key: torch.Tensor, values: torch.Tensor, frame: int) -> None:
        """A later memorised frame F (key [B, Ck, h, w], values [B, O_g, Cv, h, w]), in the
        published order: embedding ← compressor(embedding, F), then last ← F."""
        # [B, Ck, h, w], [B, O_g, Cv, h, w]
        embedding_key, embedding_values = compressor(self.embedding_key, self.embedding_values, key, values)
        self.keys = _replace_slots(self.keys, 2, {EMBEDDING: embedding_key, LAST: key})
        self.values = _replace_slots(self.values, 3, {EMBEDDING: embedding_values, LAST: values})
        self.used = SLOTS
        self.last_frame = frame
        self.absorbed += 1

    @property
    def embedding_key(self) -> torch.Tensor:
        """The recurrent embedding's key [B, Ck, h, w]."""
        return self.keys[:, :, EMBEDDING]

    @property
    def embedding_values(self) -> torch.Tensor:
        """The recurrent embedding's values [B, O_g, Cv, h, w]."""
        return self.values[:, :, :, EMBEDDING]

    @property
    def frames(self) -> int:
        """Distinct frames held: the annotated one, then also the embedding and the last."""
        return 1 if self.used == ENTRY_SLOTS else 3

    def read(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the used slots: keys [B, Ck, T, h, w], values [B, O_g, Cv, T, h, w]."""
        start = SLOTS - self.used
        return self.keys[:, :, start:], self.values[:, :, :, start:]

    def read_embedding(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedding slot alone, what RDE-VOS's training reads at its embedding frames:
        keys [B, Ck, 1, h, w], values [B, O_g, Cv, 1, h, w]."""
        return self.keys[:, :, EMBEDDING:EMBEDDING + 1], self.values[:, :, :, EMBEDDING:EMBEDDING + 1]


def _replace_slots(slots: torch.Tensor, dim: int, entries: dict[int, torch.Tensor]) -> torch.Tensor:
    """`slots` with its entries along `dim` at the indices of `entries` replaced: in place
    under inference mode, else as a new tensor (in place would overwrite what the
    compressor's backward, or an earlier read, still holds)."""
    if torch.is_inference_mode_enabled():
        for index, entry in entries.items():
            slots.select(dim, index).copy_(entry)
        return slots
    parts = list(slots.unbind(dim))
    for index, entry in entries.items():
        parts[index] = entry
    return torch.stack(parts, dim=dim)


class RDEMemory(MemoryManager):
    """memory="rde": per object group, [embedding, last, annotated ×2] in four fixed slots;
    a memorised frame is compressed into the embedding and becomes the last frame.

    model: a REMN built with memory="rde" (it has `mem_compress`); settings: RDESettings.
    """

    settings_type = RDESettings

    def __init__(self, model, settings: RDESettings):
        if getattr(model, "mem_compress", None) is None:
            built = getattr(getattr(model, "config", None), "memory", "unknown")
            raise ValueError(
                "memory='rde' needs a model with RDE's memory compressor (mem_compress): build it with "
                f"config='rde' or memory='rde'; this model was built with memory={built!r}"
            )
        super().__init__(model, settings)
        self.slots: list[RDESlots | None] = []  # per group, allocated when its entry frame is written
        self._last_frame: int | None = None  # last frame chosen for memory

    # ------------------------------------------------------------------ groups
    def add_group(self, group) -> None:
        super().add_group(group)
        self.slots.append(None)

    # ------------------------------------------------------------------ read
    def reads(self) -> list[GroupRead]:
        self._require_memory(not self.slots or self.slots[0] is None)
        # [1, Ck, T, h, w], [1, O_g, Cv, T, h, w], T = 2 or 4
        return [GroupRead(group, *slots.read()) for group, slots in zip(self.groups, self.slots)]

    # ------------------------------------------------------------------ write
    def decide(self, frame_index, features, probs, *, annotated):
        if not self.groups:
            raise RuntimeError("decide before any object group was added")
        chosen = annotated or frame_index - self._last_frame >= self.settings.mem_every
        if not chosen:
            self.stats.skipped += 1
            return Decision(False)
        self._last_frame = frame_index
        return Decision(True)  # decided on the host: the schedule needs no device value

    def write(self, frame_index, key, values) -> None:
        """Write a memorised frame into every group's slots: a group's entry frame enters
        it, a later frame is absorbed."""
        if frame_index != self._last_frame:
            raise RuntimeError(f"frame {frame_index} was not chosen for memory")
        for index, group in enumerate(self.groups):
            group_values = values[:, group.channels]  # [1, O_g, Cv, h, w]
            if self.slots[index] is None:
                if group.entry_frame != frame_index:
                    raise RuntimeError(f"object group {index} was never written on its entry frame {group.entry_frame}")
                self.slots[index] = RDESlots.enter(key, group_values, frame_index)
            else:
                self.slots[index].absorb(self.model.mem_compress, key, group_values, frame_index)
        self.stats.memorised += 1
        self.stats.frames = max(s.frames for s in self.slots if s is not None)
        self.stats.peak_frames = max(self.stats.peak_frames, self.stats.frames)
