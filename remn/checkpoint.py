"""Loading and saving weights: remn checkpoints, published STCN weights, ImageNet backbones.

Every load is strict: a key the model does not have, a key it has that the file lacks, or
a shape that differs raises ValueError listing them. The one allowance is REMN's own
modules (the gate, the local attention branch): an STCN checkpoint has none of their
parameters, and such a module is then kept at its neutral initialisation, whole.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from remn.config import ModelConfig

# Modules REMN adds on STCN's core; each is either wholly in a checkpoint or wholly absent.
ADDITION_PREFIXES = ("gate.", "local_branch.")
_WRAPPER_KEYS = ("model", "network", "state_dict")
_LISTED = 8


@dataclass
class LoadReport:
    path: str
    kept_initial: tuple[str, ...]  # REMN modules absent from the file, left at their neutral init


def _format_keys(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_LISTED])
    return shown + (f", … ({len(keys) - _LISTED} more)" if len(keys) > _LISTED else "")


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict | None]:
    """A file's state dict (`module.` prefixes stripped) and the remn config saved with it, if any."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing here
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {err}") from err
    if not isinstance(payload, dict):
        raise ValueError(f"{path} holds a {type(payload).__name__}, not a state dict")
    config = payload.get("config") if isinstance(payload.get("config"), dict) else None
    state = payload
    for wrapper in _WRAPPER_KEYS:
        if isinstance(payload.get(wrapper), dict):
            state = payload[wrapper]
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors (looked under {list(_WRAPPER_KEYS)} too)")
    return {k.removeprefix("module."): v for k, v in state.items()}, config


def _check_config(path, saved: dict | None, config: ModelConfig) -> None:
    if saved is None:
        return
    saved_arch = ModelConfig.from_dict(saved).architecture()
    differing = {k: (saved_arch[k], v) for k, v in config.architecture().items() if saved_arch[k] != v}
    if differing:
        details = "; ".join(f"{k}: file {a!r} vs model {b!r}" for k, (a, b) in differing.items())
        raise ValueError(
            f"weights {path} were saved for config {saved.get('name')!r}, which differs from the model's "
            f"config {config.name!r} in {details}; build the model with config={saved.get('name')!r}"
        )


def _widen_stem(state: dict[str, torch.Tensor], name: str, target_channels: int) -> None:
    """Zero-pad the input channels of a stem convolution: STCN's single-object checkpoints
    take 4 (no other-objects mask), torchvision's ResNet-18 takes 3 (RGB only)."""
    weight = state.get(name)
    if weight is not None and weight.dim() == 4 and weight.shape[1] < target_channels:
        pad = weight.new_zeros(weight.shape[0], target_channels - weight.shape[1], *weight.shape[2:])
        state[name] = torch.cat([weight, pad], dim=1)


def load_state_strict(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    optional_prefixes: tuple[str, ...] = (),
    optional_keys: frozenset[str] = frozenset(),
) -> tuple[str, ...]:
    """Load `state` into `module` strictly. A prefix in `optional_prefixes` whose keys are all
    absent is kept as initialised; `optional_keys` may be absent one by one. Returns the
    prefixes kept: those of modules the model has and the file lacks."""
    expected = module.state_dict()
    missing = set(expected) - set(state)
    kept = tuple(
        p for p in optional_prefixes
        if (owned := {k for k in expected if k.startswith(p)}) and owned <= missing
    )
    missing = {k for k in missing if not k.startswith(kept) and k not in optional_keys}
    unexpected = set(state) - set(expected)
    mismatched = {k: (tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
                  if k in state and state[k].shape != v.shape}
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys ({len(missing)}): {_format_keys(missing)}")
        if unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {_format_keys(unexpected)}")
        if mismatched:
            problems.append("shape mismatches: " + _format_keys(f"{k} file {a} vs model {b}" for k, (a, b) in mismatched.items()))
        raise ValueError(f"weights from {source} do not match the model: " + "; ".join(problems))
    merged = {**expected, **state}
    module.load_state_dict(merged, strict=True)
    return kept


def load_weights(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load a remn checkpoint or a published STCN checkpoint (plain or `network`-wrapped) strictly."""
    state, saved_config = read_checkpoint(path)
    _check_config(path, saved_config, model.config)
    _widen_stem(state, "value_encoder.conv1.weight", model.value_encoder.conv1.in_channels)
    kept = load_state_strict(model, state, str(path), ADDITION_PREFIXES)
    return LoadReport(str(path), kept)


def save_weights(model: nn.Module, path: str | os.PathLike, **extra) -> None:
    """Write {"model": state dict, "config": model config, **extra} atomically (temp file, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": model.state_dict(), "config": model.config.to_dict(), **extra}
    atomic_torch_save(payload, path)


def atomic_torch_save(payload, path: Path) -> None:
    """torch.save to a temp file beside `path`, then rename: never a half-written file."""
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(payload, temp_name)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _imagenet_state(path, source_prefix_map: dict[str, str], skip_prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    state, _ = read_checkpoint(path)
    renamed = {}
    for name, tensor in state.items():
        if name.startswith(skip_prefixes):
            continue
        for old, new in source_prefix_map.items():
            if name.startswith(old):
                name = new + name[len(old):]
                break
        renamed[name] = tensor
    return renamed


def load_imagenet_backbones(model: nn.Module, resnet50: str | None = None, resnet18: str | None = None) -> None:
    """Initialise the encoders from local torchvision ImageNet checkpoints (STCN's recipe).

    resnet50 → key encoder (`layer1` renamed `res2`; `layer4` and `fc` unused).
    resnet18 → value encoder trunk: the first convolution's extra mask channels start at
    zero, and the convolution biases torchvision lacks start at zero.
    """
    if resnet50 is not None:
        state = _imagenet_state(resnet50, {"layer1.": "res2."}, ("layer4.", "fc."))
        load_state_strict(model.key_encoder, state, str(resnet50))
    if resnet18 is not None:
        state = _imagenet_state(resnet18, {}, ("layer4.", "fc."))
        trunk = model.value_encoder
        _widen_stem(state, "conv1.weight", trunk.conv1.in_channels)
        conv_biases = frozenset(
            f"{name}.bias" for name, m in trunk.named_modules()
            if isinstance(m, nn.Conv2d) and m.bias is not None and not name.startswith("fuser.")
        )
        load_state_strict(trunk, state, str(resnet18), optional_prefixes=("fuser.",), optional_keys=conv_biases)
