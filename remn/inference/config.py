"""Inference settings: the `InferenceConfig` dataclass and its named presets.

- `remn`: the full policy: adaptive memory update (a frame enters memory when the
  predicted masks changed enough since the last memorised frame, or after `max_gap`
  frames), the gated dynamic memory bank (bounded by `capacity`, frames whose gate score
  falls below `gate_threshold` are dropped), local attention to the previous frame,
  top-k 20; model preset "remn".
- `stcn`: STCN's own inference: the annotated frame plus every 5th frame counted from it
  (index % 5 == 0) in memory, top-k 20, no gate, no local attention, soft probabilities
  of the aggregated prediction encoded into memory; the bank is unbounded like STCN's
  unless `capacity` sets a hard cap; model preset "stcn".

Every preset shares the published conventions (tests/test_published_inference.py checks
`stcn` and `rde` against the published loops written out): the memory encodes the
prediction over the whole padded frame, the band around a frame that is not a multiple of
16 included (only the output is cropped); top-k reads exactly k keys per query, ties at
the k-th logit taken in key order; RDE's compressor floors its pooling (the model's
`ModelConfig.rde_pool_ceil_mode`).
- `rde`: RDE-VOS's "two frames + compress" inference (`remn.inference.rde_memory`): per
  object group the annotated frame (read twice, as published), the recurrent embedding
  and the last memorised frame in fixed slots, a frame memorised every 3 frames, top-k 40, no gate, no local
  attention; model preset "rde". Fields of the frame bank (capacity, gate, adaptive
  update) must be left off: a config that sets them raises ValueError.
- `tiny`: the remn policy on the "tiny" model (tests, demo).

The command line maps its flags onto these fields (`remn.inference.cli`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from remn.config import MEMORY_MODES, PRESETS as MODEL_PRESETS, resolve_preset

UPDATE_POLICIES = ("adaptive", "every")
AMP_DTYPES = (None, "bf16", "fp16")


@dataclass(frozen=True)
class InferenceConfig:
    name: str = "remn"
    model: str = "remn"  # model preset passed to remn.build_model
    memory: str = "remn"  # memory manager: "remn" (frame bank, inference.memory) or "rde" (inference.rde_memory)
    update: str = "adaptive"  # "adaptive": by mask change / max gap; "every": every `mem_every` frames
    mem_every: int = 5  # "every": frames whose distance to the first annotated frame is a multiple (rde: since the last memorised frame)
    change_threshold: float = 0.1  # "adaptive": memorise when max over objects of (1 − IoU) exceeds this
    max_gap: int = 10  # "adaptive": memorise at the latest this many frames after the last memorised one
    capacity: int | None = 20  # memory frames at most (None: unbounded, storage grows by doubling)
    gate: bool = True  # keep gate scores per memory frame and drop by them (needs a model with a gate)
    gate_threshold: float = 0.05  # drop a frame whose gate score EMA falls below this (0 disables)
    gate_momentum: float = 0.9  # EMA: score ← momentum · score + (1 − momentum) · this frame's score
    top_k: int | None = 20  # keys each query reads from (None: all)
    local_attention: bool = True  # pass the previous frame and its probabilities to the model
    size: int | None = 480  # shorter side the frames are resized to (None: keep the input size)
    amp: str | None = None  # "bf16" / "fp16": torch.autocast on CUDA (ignored on CPU)

    def __post_init__(self):
        if self.model not in MODEL_PRESETS:
            raise ValueError(f"InferenceConfig.model must be a model preset {sorted(MODEL_PRESETS)}, got {self.model!r}")
        if self.memory not in MEMORY_MODES:
            raise ValueError(f"InferenceConfig.memory must be one of {MEMORY_MODES}, got {self.memory!r}")
        if self.update not in UPDATE_POLICIES:
            raise ValueError(f"InferenceConfig.update must be one of {UPDATE_POLICIES}, got {self.update!r}")
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"InferenceConfig.amp must be one of {AMP_DTYPES}, got {self.amp!r}")
        if self.memory == "rde":
            _check_rde(self)
        _check_int("mem_every", self.mem_every, 1)
        _check_int("max_gap", self.max_gap, 1)
        if self.capacity is not None:
            _check_int("capacity", self.capacity, 2)
        if self.top_k is not None:
            _check_int("top_k", self.top_k, 1)
        if self.size is not None:
            _check_int("size", self.size, 16)
        if not 0.0 <= self.change_threshold <= 1.0:
            raise ValueError(f"InferenceConfig.change_threshold must lie in [0, 1], got {self.change_threshold}")
        if not 0.0 <= self.gate_threshold < 1.0:
            raise ValueError(f"InferenceConfig.gate_threshold must lie in [0, 1), got {self.gate_threshold}")
        if not 0.0 <= self.gate_momentum < 1.0:
            raise ValueError(f"InferenceConfig.gate_momentum must lie in [0, 1), got {self.gate_momentum}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_rde(config: InferenceConfig) -> None:
    """memory="rde" keeps fixed slots per object group and drops nothing: it needs a
    model with RDE's compressor, the fixed schedule, and none of the frame bank's bounds."""
    model_memory = MODEL_PRESETS[config.model].memory
    if model_memory != "rde":
        raise ValueError(
            f"InferenceConfig.memory='rde' needs a model with RDE's memory compressor (mem_compress): model "
            f"preset {config.model!r} has memory={model_memory!r}; use model='rde'"
        )
    if config.update != "every":
        raise ValueError(
            f"InferenceConfig.memory='rde' memorises every `mem_every` frames: update must be 'every', "
            f"not {config.update!r}"
        )
    if config.capacity is not None:
        raise ValueError(
            f"InferenceConfig.capacity does not apply to memory='rde' (fixed slots): set None, "
            f"not {config.capacity}"
        )
    if config.gate:
        raise ValueError("InferenceConfig.gate does not apply to memory='rde' (it drops no frame): set gate=False")


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"InferenceConfig.{name} must be an int >= {minimum}, got {value!r}")


PRESETS: dict[str, InferenceConfig] = {
    "remn": InferenceConfig(name="remn"),
    "stcn": InferenceConfig(
        name="stcn",
        model="stcn",
        update="every",
        mem_every=5,
        capacity=None,
        gate=False,
        top_k=20,
        local_attention=False,
    ),
    "rde": InferenceConfig(
        name="rde",
        model="rde",
        memory="rde",
        update="every",
        mem_every=3,
        capacity=None,
        gate=False,
        top_k=40,
        local_attention=False,
    ),
    "tiny": InferenceConfig(name="tiny", model="tiny"),
}


def resolve_inference_config(config: str | InferenceConfig | dict = "remn", **overrides) -> InferenceConfig:
    """A preset name, an InferenceConfig or a dict, with field overrides applied."""
    return resolve_preset(config, InferenceConfig, PRESETS, "inference preset", **overrides)
