"""`remn.build_model`: a ready model from a preset, optional local weights, a device."""
from __future__ import annotations

import os

import torch

from remn.checkpoint import load_weights
from remn.config import ModelConfig, resolve_config
from remn.model import REMN


def build_model(
    fused: bool = True,
    config: str | ModelConfig | dict = "remn",
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    **overrides,
) -> REMN:
    """Build REMN in eval mode.

    fused: route the memory read and local attention to the Triton kernels when the tensors
        are on CUDA; on a machine without CUDA the reference PyTorch path runs (no error).
    config: a preset name ("remn", "stcn", "rde", "tiny"), a ModelConfig or a dict; `overrides`
        replace single fields (e.g. local_radius=5).
    weights: a local checkpoint: a remn checkpoint, or STCN's published `stcn.pth` (REMN's
        gate and local branch then start neutral: equal gate scores, no local readout).
    device: where to put the model; default CUDA when available, else CPU.
    """
    model = REMN(resolve_config(config, **overrides), fused=fused)
    if weights is not None:
        load_weights(model, weights)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval()
