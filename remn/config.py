"""Model configurations and the one preset table.

`ModelConfig` holds the network's fields; `PRESETS` names settings of remn, each a model
and the way inference runs it (`Preset`). Models: `remn` is the full model on STCN's core (ResNet-50 keys, ResNet-18 values, Ck = 64,
Cv = 512) with the soft modulation gate and the local attention branch; `stcn` is that core
alone; `rde` is that core with RDE-VOS's recurrent memory embedding (`mem_compress`);
`tiny` is a narrow, shallow model that trains on a CPU in minutes; `small` sits between
tiny and the full model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType

# What the network builds for its memory: "rde" adds RDE-VOS's compressor (mem_compress).
MODEL_MEMORIES = ("remn", "rde")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "remn"
    key_dim: int = 64  # Ck
    value_dim: int = 512  # Cv
    key_width: int = 64  # ResNet-50 base width: f4/f8/f16 = 4w/8w/16w channels
    key_blocks: tuple[int, int, int] = (3, 4, 6)
    value_width: int = 64  # ResNet-18 base width: f16 = 4w channels
    value_blocks: tuple[int, int, int] = (2, 2, 2)
    decoder_dims: tuple[int, int] = (256, 256)
    gate: bool = True  # soft modulation gate on memory frames
    gate_hidden: int = 64
    local_attention: bool = True  # windowed attention to the previous frame
    local_radius: int = 7
    memory: str = "remn"  # "remn": gated dynamic bank; "rde": recurrent dynamic embedding
    # RDE's compressor: the SAM's (1, 2, 2) max-pool floors as published (an odd last row or
    # column of the key map takes no part in the non-local keys); True pools it too (ceil_mode).
    rde_pool_ceil_mode: bool = False

    def __post_init__(self):
        for name in ("key_dim", "value_dim", "key_width", "value_width", "gate_hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.memory not in MODEL_MEMORIES:
            raise ValueError(f"ModelConfig.memory must be one of {MODEL_MEMORIES}, got {self.memory!r}")
        if self.local_attention and self.local_radius < 1:
            raise ValueError(f"ModelConfig.local_radius must be >= 1, got {self.local_radius}")
        object.__setattr__(self, "key_blocks", tuple(self.key_blocks))
        object.__setattr__(self, "value_blocks", tuple(self.value_blocks))
        object.__setattr__(self, "decoder_dims", tuple(self.decoder_dims))

    def architecture(self) -> dict:
        """The fields that decide parameter names and shapes (what a checkpoint must match)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "name"}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        check_fields(cls, values)
        return cls(**values)


@dataclass(frozen=True)
class Preset:
    """One named setting of remn: the network `remn.build_model` builds and how `Segmenter`
    runs it. `inference` holds InferenceConfig fields in `InferenceConfig.to_dict`'s form
    (the memory policy's settings under "memory", with its "policy"), resolved and
    validated by `remn.inference.config.resolve_inference_config`; it is a plain mapping
    because the settings dataclasses live above this module in the import graph."""

    model: ModelConfig
    inference: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self):
        object.__setattr__(self, "inference", MappingProxyType(dict(self.inference)))


_FRAME_BANK = {"policy": "remn"}  # the frame bank with its defaults (remn.inference.memory.frame_bank)

# The one preset table. Inference presets:
# - remn: adaptive update, gated bank of 20 frames, local attention, top-k 20;
# - stcn: STCN's own inference: the annotated frame plus every 5th frame counted from it,
#   unbounded, no gate, no local attention, top-k 20, fp32 as published (the others default
#   to precision "auto": bf16 on CUDA);
# - rde: RDE-VOS's "two frames + compress": the recurrent embedding and the last memorised
#   frame in fixed slots, a frame memorised every 3 frames, top-k 40;
# - tiny: the remn policy on a narrow, shallow model (tests, demo);
# - small: the remn policy on a model between tiny and the full one, which learns REMN's
#   ideas on a 2-core CPU in minutes (`remn train --config small --synthetic hard`): a
#   radius-2 window, local on the 8×12 key map of the hard suite's 128×192 frames.
PRESETS: dict[str, Preset] = {
    "remn": Preset(ModelConfig(name="remn"), {"memory": _FRAME_BANK}),
    "stcn": Preset(
        ModelConfig(name="stcn", gate=False, local_attention=False),
        {"memory": {"policy": "remn", "update": "every", "mem_every": 5, "capacity": None, "gate": False},
         "top_k": 20, "local_attention": False, "precision": "fp32"},
    ),
    "rde": Preset(
        ModelConfig(name="rde", gate=False, local_attention=False, memory="rde"),
        {"memory": {"policy": "rde", "mem_every": 3}, "top_k": 40, "local_attention": False, "precision": "fp32"},
    ),
    "tiny": Preset(
        ModelConfig(
            name="tiny",
            key_dim=16,
            value_dim=64,
            key_width=8,
            key_blocks=(1, 1, 1),
            value_width=8,
            value_blocks=(1, 1, 1),
            decoder_dims=(32, 32),
            gate_hidden=16,
            local_radius=3,
        ),
        {"memory": _FRAME_BANK},
    ),
    "small": Preset(
        ModelConfig(
            name="small",
            key_dim=24,
            value_dim=96,
            key_width=16,
            key_blocks=(1, 1, 1),
            value_width=12,
            value_blocks=(1, 1, 1),
            decoder_dims=(48, 48),
            gate_hidden=32,
            local_radius=2,
        ),
        {"memory": _FRAME_BANK},
    ),
}


def preset(name: str, what: str = "preset") -> Preset:
    """The preset called `name`; ValueError naming `what` and listing the presets otherwise."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"unknown {what} {name!r}; presets: {sorted(PRESETS)}")
    return PRESETS[name]


def check_fields(cls, values: dict) -> None:
    """Raise ValueError naming the keys of `values` that are not fields of dataclass `cls`."""
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")


def resolve_preset(config, cls, named, **overrides):
    """A preset name (`named(name)` gives its `cls` instance), an instance of dataclass `cls`
    or a dict of its fields, with field overrides applied."""
    if isinstance(config, cls):
        base = config
    elif isinstance(config, dict):
        check_fields(cls, config)
        base = cls(**config)
    elif isinstance(config, str):
        base = named(config)
    else:
        raise TypeError(f"config must be a preset name, a {cls.__name__} or a dict, got {type(config).__name__}")
    if overrides:
        check_fields(cls, overrides)
        base = dataclasses.replace(base, **overrides)
    return base


def resolve_config(config: str | ModelConfig | dict = "remn", **overrides) -> ModelConfig:
    """A preset's model (by name), a ModelConfig or a dict, with field overrides applied."""
    return resolve_preset(config, ModelConfig, lambda name: preset(name, "config").model, **overrides)
