"""Model configurations: dataclass defaults and named presets.

`remn` is the full model on STCN's core (ResNet-50 keys, ResNet-18 values, Ck = 64,
Cv = 512) with the soft modulation gate and the local attention branch; `stcn` is that core
alone; `rde` is that core with RDE-VOS's recurrent memory embedding (`mem_compress`);
`tiny` is a narrow, shallow model that trains on a CPU in minutes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

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


PRESETS: dict[str, ModelConfig] = {
    "remn": ModelConfig(name="remn"),
    "stcn": ModelConfig(name="stcn", gate=False, local_attention=False),
    "rde": ModelConfig(name="rde", gate=False, local_attention=False, memory="rde"),
    "tiny": ModelConfig(
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
}


def check_fields(cls, values: dict) -> None:
    """Raise ValueError naming the keys of `values` that are not fields of dataclass `cls`."""
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")


def resolve_preset(config, cls, presets: dict, what: str, **overrides):
    """A preset name (looked up in `presets`), an instance of dataclass `cls` or a dict of its
    fields, with field overrides applied."""
    if isinstance(config, cls):
        base = config
    elif isinstance(config, dict):
        check_fields(cls, config)
        base = cls(**config)
    elif isinstance(config, str):
        if config not in presets:
            raise ValueError(f"unknown {what} {config!r}; presets: {sorted(presets)}")
        base = presets[config]
    else:
        raise TypeError(f"config must be a preset name, a {cls.__name__} or a dict, got {type(config).__name__}")
    if overrides:
        check_fields(cls, overrides)
        base = dataclasses.replace(base, **overrides)
    return base


def resolve_config(config: str | ModelConfig | dict = "remn", **overrides) -> ModelConfig:
    """A model preset name, a ModelConfig or a dict, with field overrides applied."""
    return resolve_preset(config, ModelConfig, PRESETS, "config", **overrides)
