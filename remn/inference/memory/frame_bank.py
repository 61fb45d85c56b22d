"""memory="remn": the gated dynamic frame bank, with adaptive (or every-N) update.

FrameBankMemory's policy, all of it in this file:

- What enters. After each frame the update policy decides (`decide`, returning a
  `Decision`):
  * annotated frames always enter; the frame that introduces an object group (the first
    annotated frame included) is protected: it is never removed;
  * update="every" (STCN): frames whose distance to the first annotated frame is a
    multiple of `mem_every`;
  * update="adaptive": frames whose predicted masks changed enough since the last
    memorised frame, change = max over objects of (1 − IoU) > `change_threshold`
    (hard masks at the working resolution; an object absent from both counts IoU 1); or
    whose objects changed appearance: max over objects of 1 − cos(d_o, d'_o) >
    `appearance_threshold`, d_o the mean key of object o under its probability (at the
    key map's resolution) now and d'_o at the last memorised frame (a sudden change of
    colour or texture leaves the masks alone but moves the keys); or when `max_gap`
    frames have passed since the last memorised frame. On a still stretch neither moves:
    the bank gets one frame per `max_gap`.
  A chosen frame is encoded by the core (`encode_value` with the soft probabilities of
  the aggregated prediction over the padded frame, band included, as STCN does) and
  written when the next frame arrives, so the last frame of a video is never encoded for
  nothing.
- When the host learns the outcome. Nothing in a step waits for the GPU: the mask change
  and the gate scores stay on the device and are copied to the host without blocking
  (`remn.inference.host`). They are read when the next frame's step settles the memory
  (`settle`), after that frame's key encoder is queued, so the GPU stays busy while the
  host waits; the memory a frame reads is exactly what deciding at once gives.
- What is read. Every object group reads the memory frames from its entry frame on (the
  bank keeps frames in time order and the entry frame is protected, so that is a suffix of
  the bank, read as a view); the core soft-aggregates the groups' per-object
  probabilities together. The model adds the gate's log scores to each frame's logits.
- Where memory is dropped (`_drop_by_gate`, `_make_room`):
  * each memory frame carries the EMA of its gate scores (sigmoid of
    `SegmentOutput.gate_log_scores`, starting at its first score); when a read's scores
    are settled, the gate decides how many frames to drop (gate=True and a model with a
    gate). It was trained (`remn.train.losses.gate_targets`) to score frame m of a T-frame
    read y_m = min(1, T · a_m), a_m the share of the read's attention frame m receives: a
    frame used at least as much as a uniform share scores 1, one used half as much 0.5. The
    scores' sum over the bank is then the gate's estimate of how many frames' worth of the
    read is used, and T − Σ_m s_m of how many are not: with `drop_unused`, the
    ⌊T − Σ_m s_m⌋ lowest-scored unprotected frames are removed (an untrained gate, every
    score ≈ 0.9975, drops nothing below T = 400). Frames whose EMA is below
    `gate_threshold` are removed as well;
  * when a frame must enter a full bank (`capacity` frames), the frame with the lowest
    EMA is removed, or the oldest without gate scores;
  * protected frames are never removed; a full bank of protected frames only is an error
    (ValueError: raise the capacity).
- Storage (`FrameBank`) is preallocated to `capacity` slots along the time axis, written
  in place and compacted on removal: device memory does not grow with the video. With
  capacity=None (STCN's unbounded bank) the slots double when full.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from remn.inference.host import Decision, HostCopy, to_device
from remn.inference.memory.base import GroupRead, MemoryManager, MemorySettings
from remn.model.network import crop_padding

UPDATE_POLICIES = ("adaptive", "every")
UNBOUNDED_INITIAL_SLOTS = 16


@dataclass(frozen=True)
class FrameBankSettings(MemorySettings):
    """memory="remn": what enters the bank, how large it grows, when the gate drops."""

    policy = "remn"

    update: str = "adaptive"  # "adaptive": by mask change / max gap; "every": every `mem_every` frames
    mem_every: int = 5  # "every": frames whose distance to the first annotated frame is a multiple
    change_threshold: float = 0.1  # "adaptive": memorise when max over objects of (1 − IoU) exceeds this
    appearance_threshold: float = 0.1  # "adaptive": … or when max over objects of 1 − cos(object keys) exceeds this
    max_gap: int = 10  # "adaptive": memorise at the latest this many frames after the last memorised one
    capacity: int | None = 20  # memory frames at most (None: unbounded, storage grows by doubling)
    gate: bool = True  # the gate's scores bias the read, and frames are dropped by them (a model with a gate); False: no gate
    drop_unused: bool = True  # drop the ⌊T − Σ gate scores⌋ lowest-scored frames: those the gate predicts the read does not use
    gate_threshold: float = 0.05  # also drop a frame whose gate score EMA falls below this (0 disables)
    gate_momentum: float = 0.9  # EMA: score ← momentum · score + (1 − momentum) · this frame's score

    def __post_init__(self):
        if self.update not in UPDATE_POLICIES:
            raise ValueError(f"FrameBankSettings.update must be one of {UPDATE_POLICIES}, got {self.update!r}")
        check_int(self, "mem_every", 1)
        check_int(self, "max_gap", 1)
        if self.capacity is not None:
            check_int(self, "capacity", 2)
        if not 0.0 <= self.change_threshold <= 1.0:
            raise ValueError(f"FrameBankSettings.change_threshold must lie in [0, 1], got {self.change_threshold}")
        if not 0.0 <= self.appearance_threshold <= 2.0:
            raise ValueError(f"FrameBankSettings.appearance_threshold must lie in [0, 2], got {self.appearance_threshold}")
        if not 0.0 <= self.gate_threshold < 1.0:
            raise ValueError(f"FrameBankSettings.gate_threshold must lie in [0, 1), got {self.gate_threshold}")
        if not 0.0 <= self.gate_momentum < 1.0:
            raise ValueError(f"FrameBankSettings.gate_momentum must lie in [0, 1), got {self.gate_momentum}")


def check_int(settings, name: str, minimum: int) -> None:
    """Raise ValueError unless `settings.name` is an int ≥ minimum (bools refused)."""
    value = getattr(settings, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{type(settings).__name__}.{name} must be an int >= {minimum}, got {value!r}")


# ----------------------------------------------------------------------------- storage
class FrameBank:
    """Memory frames along a preallocated time axis, in time order.

    keys: [1, Ck, S, h, w]; values: one buffer per object group [1, O_g, Cv, S, h, w]; S
    slots, the first `len(self)` used. Per used slot: frame index, gate score EMA (None
    until first read), protected flag.
    """

    def __init__(self, capacity: int | None):
        self.capacity = capacity
        self.keys: torch.Tensor | None = None
        self.values: list[torch.Tensor | None] = []
        self.frames: list[int] = []
        self.scores: list[float | None] = []
        self.protected: list[bool] = []

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def slots(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    @property
    def full(self) -> bool:
        return self.capacity is not None and len(self) >= self.capacity

    def add_group(self) -> None:
        self.values.append(None)  # allocated with the first frame that carries the group

    def append(self, key: torch.Tensor, group_values: list[torch.Tensor], frame: int, protected: bool) -> None:
        """key [1, Ck, h, w]; group_values[g] [1, O_g, Cv, h, w] → written into the next slot."""
        if self.full:
            raise RuntimeError("FrameBank.append on a full bank (make room first)")
        if self.keys is None:
            slots = self.capacity or UNBOUNDED_INITIAL_SLOTS
            self.keys = key.new_zeros(key.shape[0], key.shape[1], slots, *key.shape[2:])  # [1, Ck, S, h, w]
        elif len(self) == self.slots:  # unbounded: double the slots
            self._grow(2 * self.slots)
        for index, values in enumerate(group_values):
            if self.values[index] is None:
                self.values[index] = values.new_zeros(*values.shape[:3], self.slots, *values.shape[3:])  # [1, O_g, Cv, S, h, w]
        slot = len(self)
        self.keys[:, :, slot] = key
        for buffer, values in zip(self.values, group_values):
            buffer[:, :, :, slot] = values
        self.frames.append(frame)
        self.scores.append(None)
        self.protected.append(protected)

    def _grow(self, slots: int) -> None:
        used = len(self)
        keys = self.keys.new_zeros(*self.keys.shape[:2], slots, *self.keys.shape[3:])
        keys[:, :, :used] = self.keys[:, :, :used]
        self.keys = keys
        for index, buffer in enumerate(self.values):
            if buffer is not None:
                grown = buffer.new_zeros(*buffer.shape[:3], slots, *buffer.shape[4:])
                grown[:, :, :, :used] = buffer[:, :, :, :used]
                self.values[index] = grown

    def remove(self, slots: list[int]) -> None:
        """Remove these used slots; the rest move down in place, keeping time order."""
        if not slots:
            return
        if any(self.protected[s] for s in slots):
            raise RuntimeError("a protected memory frame cannot be removed")
        gone = set(slots)
        keep = [s for s in range(len(self)) if s not in gone]
        index = to_device(torch.tensor(keep, dtype=torch.long), self.keys.device)
        self.keys[:, :, : len(keep)] = self.keys.index_select(2, index)  # gather into a temporary, then in place
        for buffer in self.values:
            if buffer is not None:
                buffer[:, :, :, : len(keep)] = buffer.index_select(3, index)
        self.frames = [self.frames[s] for s in keep]
        self.scores = [self.scores[s] for s in keep]
        self.protected = [self.protected[s] for s in keep]

    def first_slot(self, frame: int) -> int:
        """The first used slot holding `frame` or a later one."""
        for slot, held in enumerate(self.frames):
            if held >= frame:
                return slot
        return len(self)

    def read(self, group: int, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of slots [start, len): keys [1, Ck, T, h, w], group values [1, O_g, Cv, T, h, w]."""
        end = len(self)
        return self.keys[:, :, start:end], self.values[group][:, :, :, start:end]


# ----------------------------------------------------------------------------- policy
def mask_change(labels: torch.Tensor, reference: torch.Tensor, num_objects: int) -> torch.Tensor:
    """max over objects o = 1..O of 1 − IoU(labels == o, reference == o); labels, reference
    [h, w] channel indices (0 background); a 0-dim float tensor on their device. IoU of two
    empty masks is 1."""
    if num_objects == 0:
        return labels.new_zeros((), dtype=torch.float)
    channels = torch.arange(1, num_objects + 1, device=labels.device)[:, None, None]  # [O, 1, 1]
    now, before = labels[None] == channels, reference[None] == channels  # [O, h, w] each
    intersection = (now & before).flatten(1).sum(1)  # [O]
    union = (now | before).flatten(1).sum(1)  # [O]
    iou = torch.where(union > 0, intersection / union.clamp_min(1), torch.ones_like(union, dtype=torch.float))
    return (1 - iou).max()


def object_descriptors(key: torch.Tensor, object_probs: torch.Tensor) -> torch.Tensor:
    """Each object's mean key under its probability: key [1, Ck, h, w], object_probs
    [1, O, Hp, Wp] (Hp = 16h) → [O, Ck] (zeros for an object with no probability mass)."""
    weights = F.adaptive_avg_pool2d(object_probs.float(), key.shape[-2:])[0].flatten(1)  # [O, h·w]
    summed = weights @ key[0].float().flatten(1).T  # [O, Ck]
    return summed / weights.sum(dim=1, keepdim=True).clamp_min(1e-6)


def appearance_change(now: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """max over objects of 1 − cos(now_o, before_o); now, before [O, Ck] → 0-dim (0 for O = 0)."""
    if now.shape[0] == 0:
        return now.new_zeros(())
    return (1 - F.cosine_similarity(now, before, dim=1, eps=1e-6)).max()


@dataclass
class _Pending:
    """The last decided frame, until its decision is settled."""

    frame: int
    decision: Decision  # whether the frame enters memory
    labels: torch.Tensor | None  # adaptive update: its channel labels [H, W], the next change's reference
    descriptors: torch.Tensor | None  # adaptive update: its objects' mean keys [O, Ck], the same


class FrameBankMemory(MemoryManager):
    """memory="remn": the gated dynamic frame bank with adaptive (or every-N) update."""

    settings_type = FrameBankSettings

    def __init__(self, model, settings: FrameBankSettings):
        super().__init__(model, settings)
        self.bank = FrameBank(settings.capacity)
        self._pending: _Pending | None = None
        self._chosen: int | None = None  # the settled frame that `write` may store next
        self._gate_scores: HostCopy | None = None  # the last read's gate scores [T], not applied yet
        self._entry_frames: set[int] = set()
        self._first_frame: int | None = None
        self._last_frame: int | None = None  # last frame chosen for memory
        self._last_labels: torch.Tensor | None = None  # its channel labels [H, W]
        self._last_descriptors: torch.Tensor | None = None  # its objects' mean keys [O, Ck]

    # ------------------------------------------------------------------ groups
    def add_group(self, group) -> None:
        super().add_group(group)
        self.bank.add_group()
        self._entry_frames.add(group.entry_frame)
        if self._first_frame is None:
            self._first_frame = group.entry_frame

    # ------------------------------------------------------------------ read
    def reads(self) -> list[GroupRead]:
        self._require_memory(len(self.bank) == 0)
        reads = []
        for group in self.groups:
            start = self.bank.first_slot(group.entry_frame)
            keys, values = self.bank.read(group.index, start)  # [1, Ck, T, h, w], [1, O_g, Cv, T, h, w]
            reads.append(GroupRead(group, keys, values, gated=self.settings.gate))
        return reads

    def read_done(self, outputs) -> None:
        if self._gated() and outputs[0].gate_log_scores is not None:  # group 0 entered first: it reads every slot
            self._gate_scores = HostCopy(outputs[0].gate_log_scores[0].float().exp())  # [T] in (0, 1]

    # ------------------------------------------------------------------ write
    def decide(self, frame_index, features, probs, *, annotated):
        if self._first_frame is None:
            raise RuntimeError("decide before any object group was added")
        self._settle_decision()  # the previous frame's decision sets the reference for this one
        settings = self.settings
        labels = descriptors = None
        if settings.update == "adaptive":  # the change is measured on the frame, not the band
            labels = crop_padding(probs[0], features.padding).argmax(dim=0)  # [H, W] channel indices
            descriptors = object_descriptors(features.key, probs[:, 1:])  # [O, Ck]
        if annotated:
            decision = Decision(True)
        elif settings.update == "every":
            decision = Decision((frame_index - self._first_frame) % settings.mem_every == 0)
        elif frame_index - self._last_frame >= settings.max_gap:
            decision = Decision(True)
        else:  # decided on the device; read a frame later
            num_before = self._last_descriptors.shape[0]  # objects that entered since are new: they changed
            changed = mask_change(labels, self._last_labels, probs.shape[1] - 1) > settings.change_threshold
            moved = appearance_change(descriptors[:num_before], self._last_descriptors) > settings.appearance_threshold
            decision = Decision(changed | moved)
        self._pending = _Pending(frame_index, decision, labels, descriptors)
        return decision

    def settle(self) -> None:
        """Apply the last read's gate scores, then the last decided frame's decision."""
        if self._gate_scores is not None:
            scores, self._gate_scores = self._gate_scores.get().tolist(), None
            self._update_gate(scores)
        self._settle_decision()

    def _settle_decision(self) -> None:
        """Read the last decided frame's decision: skip it, or make it the newest memorised."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if not pending.decision.get():
            self.stats.skipped += 1
            return
        self._chosen = self._last_frame = pending.frame
        if pending.labels is not None:
            self._last_labels, self._last_descriptors = pending.labels, pending.descriptors

    def write(self, frame_index, key, values) -> None:
        """Put the chosen frame into the bank, making room first when it is full."""
        if frame_index != self._chosen:
            raise RuntimeError(f"frame {frame_index} was not chosen for memory (settle its decision first)")
        self._chosen = None
        if self.bank.full:
            self._make_room()
        group_values = [values[:, group.channels] for group in self.groups]  # [1, O_g, Cv, h, w] each
        self.bank.append(key, group_values, frame_index, frame_index in self._entry_frames)
        self.stats.memorised += 1
        self._count()

    # ------------------------------------------------------------------ dropping
    def _gated(self) -> bool:
        return self.settings.gate and getattr(self.model, "gate", None) is not None

    def _update_gate(self, scores: list[float]) -> None:
        """Fold one read's gate scores (one per used slot, in (0, 1]) into the EMAs; drop."""
        momentum = self.settings.gate_momentum
        for slot, score in enumerate(scores):
            old = self.bank.scores[slot]
            self.bank.scores[slot] = score if old is None else momentum * old + (1 - momentum) * score
        self._drop_by_gate()

    def _drop_by_gate(self) -> None:
        """Remove the frames the gate predicts the read does not use (module docstring)."""
        scores, protected = self.bank.scores, self.bank.protected
        threshold = self.settings.gate_threshold
        scored = [slot for slot, score in enumerate(scores) if score is not None]
        candidates = sorted((s for s in scored if not protected[s]), key=lambda s: (scores[s], s))  # lowest first
        doomed = {slot for slot in candidates if scores[slot] < threshold}
        if self.settings.drop_unused and scored:
            unused = math.floor(len(scored) - sum(scores[s] for s in scored) + 1e-9)
            doomed.update(candidates[:unused])
        doomed = sorted(doomed)
        self.bank.remove(doomed)
        self.stats.gate_dropped += len(doomed)
        self._count()

    def _make_room(self) -> None:
        candidates = [slot for slot, protected in enumerate(self.bank.protected) if not protected]
        if not candidates:
            raise ValueError(
                f"memory capacity {self.bank.capacity} is filled by protected frames (the first annotated "
                f"frame and the entry frame of each object group, {len(self.groups)} groups): raise the capacity"
            )
        if self._gated():
            victim = min(candidates, key=lambda s: (math.inf if self.bank.scores[s] is None else self.bank.scores[s], s))
        else:
            victim = candidates[0]  # the oldest
        self.bank.remove([victim])
        self.stats.evicted += 1

    def _count(self) -> None:
        self.stats.frames = len(self.bank)
        self.stats.peak_frames = max(self.stats.peak_frames, self.stats.frames)
