"""Inference settings: the `InferenceConfig` dataclass. Its presets are rows of the one
preset table, `remn.config.PRESETS` (each a model and its inference); `inference_preset(name)`
resolves one:

- `remn`: the full policy: adaptive memory update (a frame enters memory when the
  predicted masks changed enough since the last memorised frame, or after `max_gap`
  frames), the gated dynamic memory bank (bounded by `capacity`, frames whose gate score
  falls below `gate_threshold` are dropped), local attention to the previous frame,
  top-k 20; model preset "remn".
- `stcn`: STCN's own inference: the annotated frame plus every 5th frame counted from it
  (index % 5 == 0) in memory, top-k 20, no gate, no local attention, soft probabilities
  of the aggregated prediction encoded into memory; the bank is unbounded like STCN's
  unless `capacity` sets a hard cap; model preset "stcn".
- `rde`: RDE-VOS's "two frames + compress" inference (`remn.inference.memory.rde`): per
  object group the annotated frame (read twice, as published), the recurrent embedding
  and the last memorised frame in fixed slots, a frame memorised every 3 frames, top-k 40, no gate, no local
  attention; model preset "rde". Fields of the frame bank (capacity, gate, adaptive
  update) are not its settings: naming one raises ValueError.
- `tiny`: the remn policy on the "tiny" model (tests, demo).

Every preset shares the published conventions (tests/test_published_inference.py checks
`stcn` and `rde` against the published loops written out): the memory encodes the
prediction over the whole padded frame, the band around a frame that is not a multiple of
16 included (only the output is cropped); top-k reads exactly k keys per query, ties at
the k-th logit taken in key order; RDE's compressor floors its pooling (the model's
`ModelConfig.rde_pool_ceil_mode`).

The memory policy's settings are its own dataclass (`FrameBankSettings`, `RDESettings`,
`remn.inference.memory`), nested in `InferenceConfig.memory` and validated there, once.
The command line maps its flags onto these fields (`remn.inference.cli`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from remn.config import PRESETS, preset, resolve_preset
from remn.inference.memory import MEMORY_POLICIES, FrameBankSettings, MemorySettings, memory_settings
from remn.precision import check_precision


@dataclass(frozen=True)
class InferenceConfig:
    name: str = "remn"
    model: str = "remn"  # model preset passed to remn.build_model
    memory: MemorySettings = field(default_factory=FrameBankSettings)  # the memory policy and its settings
    top_k: int | None = 20  # keys each query reads from (None: all)
    local_attention: bool = True  # pass the previous frame and its probabilities to the model
    size: int | None = 480  # shorter side the frames are resized to (None: keep the input size)
    # remn.precision. "auto" (default): bf16 autocast on CUDA (fp16 without bf16); on the CPU fp32,
    # with the fast path's key encoder in bf16 where the CPU has native bf16 and its value encoder
    # too in steps with at most 2 objects (FastPathSettings.bf16 "by_objects"); "bf16" on the CPU runs
    # the fast path's encoders and decoder in bf16; "fp16" is CUDA only.
    precision: str = "auto"

    def __post_init__(self):
        if self.model not in PRESETS:
            raise ValueError(f"InferenceConfig.model must be a preset {sorted(PRESETS)}, got {self.model!r}")
        if not isinstance(self.memory, MemorySettings):
            raise TypeError(f"InferenceConfig.memory must be a policy's settings (MemorySettings), got {self.memory!r}")
        model_memory = PRESETS[self.model].model.memory
        if self.memory.needs_compressor and model_memory != "rde":
            raise ValueError(
                f"memory={self.memory.policy!r} needs a model with RDE's memory compressor (mem_compress): "
                f"model preset {self.model!r} is built with memory={model_memory!r}; use model='rde'"
            )
        check_precision(self.precision, "InferenceConfig.precision")
        if self.top_k is not None:
            _check_int("top_k", self.top_k, 1)
        if self.size is not None:
            _check_int("size", self.size, 16)

    def to_dict(self) -> dict:
        """Plain values; the memory settings carry their policy's name."""
        values = dataclasses.asdict(self)
        values["memory"] = {"policy": self.memory.policy, **values["memory"]}
        return values


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"InferenceConfig.{name} must be an int >= {minimum}, got {value!r}")


MEMORY_FIELDS = frozenset(f.name for policy in MEMORY_POLICIES.values() for f in dataclasses.fields(policy.settings_type))


def resolve_inference_config(config: str | InferenceConfig | dict = "remn", **overrides) -> InferenceConfig:
    """A preset name, an InferenceConfig or a dict (`to_dict`'s form), with overrides applied.

    overrides: InferenceConfig fields, and the memory policy's settings by name: `memory`
    may name another policy (its default settings; e.g. memory="rde"), and a field of the
    policy's settings dataclass (e.g. capacity=6, change_threshold=0.0) replaces it there.
    A field the chosen policy does not have raises ValueError naming it.
    """
    if isinstance(config, dict):
        config = _from_plain(config)
    base = resolve_preset(config, InferenceConfig, inference_preset)
    memory_overrides = {k: overrides.pop(k) for k in list(overrides) if k in MEMORY_FIELDS}
    memory = overrides.pop("memory", None)
    if memory_overrides or memory is not None:
        overrides["memory"] = memory_settings(base.memory if memory is None else memory, **memory_overrides)
    return resolve_preset(base, InferenceConfig, inference_preset, **overrides)


def inference_preset(name: str) -> InferenceConfig:
    """The InferenceConfig of preset `name` (remn.config.PRESETS): its model is that preset's."""
    return InferenceConfig(**_from_plain({"name": name, "model": name, **preset(name, "inference preset").inference}))


def _from_plain(values: dict) -> dict:
    """`to_dict`'s form → InferenceConfig fields, the memory settings as their dataclass."""
    if not isinstance(values.get("memory"), dict):
        return values
    memory = dict(values["memory"])
    return {**values, "memory": memory_settings(memory.pop("policy", "remn"), **memory)}
