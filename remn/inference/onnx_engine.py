"""`OnnxRuntimeEngine`: REMN's step API backed by the exported ONNX graphs (`remn export`).

It offers what `Segmenter` drives on a model — `encode_key(frames)`, `encode_value(features,
masks)`, `segment(features, memory_key, memory_value, ...)` — with the same tensors in and
out (FrameFeatures, SegmentOutput; torch CPU tensors, fp32), each call one ONNX Runtime
session run of `encode_key.onnx`, `encode_value.onnx` or `segment.onnx`. So the memory
policy, the object manager and everything else in `Segmenter` run unchanged:

    Segmenter("exported/", "remn", engine="onnxruntime")      # or remn segment --engine onnxruntime --onnx DIR

The graphs fix the working frame size, top_k and whether local attention reads the previous
frame (the manifest says which); a call that asks otherwise raises ValueError. Install
with `pip install remn[onnx]`.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from remn.config import ModelConfig
from remn.export.onnx import FEATURES, load_manifest
from remn.model.network import FrameFeatures, SegmentOutput

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


def _array(tensor: torch.Tensor) -> np.ndarray:
    """A torch CPU tensor → a C-contiguous numpy array (a view where it already is one)."""
    return np.ascontiguousarray(tensor.detach().cpu().numpy())


class OnnxRuntimeEngine:
    """The exported step graphs of one model, each an `onnxruntime.InferenceSession`.

    directory: an export folder (manifest.json + three .onnx files); providers: ONNX Runtime
    execution providers in order of preference (default CPU; e.g. ("CUDAExecutionProvider",
    "CPUExecutionProvider")); threads: intra-op threads per session (None: ONNX Runtime's default).
    The sessions' threads do not spin between runs (the step's PyTorch work shares the cores).
    """

    engine = "onnxruntime"  # what `Segmenter(engine=None)` runs this object as

    def __init__(self, directory: str | os.PathLike, providers=None, threads: int | None = None):
        try:
            import onnxruntime
        except ImportError as err:  # pragma: no cover - depends on the installation
            raise ImportError("the onnxruntime engine needs ONNX Runtime: pip install 'remn[onnx]'") from err
        self.directory = os.fspath(directory)
        self.manifest = load_manifest(directory)
        self.config = ModelConfig.from_dict(self.manifest["model"])
        self.size = tuple(self.manifest["size"])
        self.padded_size = tuple(self.manifest["padded_size"])
        self.padding = tuple(self.manifest["padding"])
        self.top_k = self.manifest["inference"]["top_k"]
        self.local_attention = self.manifest["inference"]["local_attention"]
        self.gated = self.manifest["inference"]["gate"]  # the segment graph reads the gate's scores
        self.max_objects = self.manifest["max_objects"]
        self.device = torch.device("cpu")  # what Segmenter puts its tensors on
        # The memory policy asks the model for its gate (frame bank) and compressor (RDE, not exported):
        # the gate is the segment graph's, whose scores come back in SegmentOutput.gate_log_scores.
        self.gate = "segment.onnx:gate_log_scores" if self.gated else None
        self.mem_compress = None
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        # No busy-waiting between runs: PyTorch works between the session runs of a step, on the same cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = list(DEFAULT_PROVIDERS if providers is None else providers)
        self.sessions = {
            name: onnxruntime.InferenceSession(os.path.join(self.directory, graph["file"]), options, providers=providers)
            for name, graph in self.manifest["graphs"].items()
        }

    # ----------------------------------------------------------------- the step API
    def encode_key(self, frames: torch.Tensor) -> FrameFeatures:
        """frames [1, 3, H, W] float RGB in [0, 1] at the exported size → FrameFeatures."""
        if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be a tensor [1, 3, H, W], got {tuple(getattr(frames, 'shape', ()))}")
        if frames.shape[0] != 1 or tuple(frames.shape[-2:]) != self.size:
            raise ValueError(
                f"the graphs in {self.directory} take one frame of {self.size[0]}x{self.size[1]} (H x W), got "
                f"{tuple(frames.shape)}: export for this working size (remn export --size HxW), or set "
                "InferenceConfig.size so frames are resized to it"
            )
        outputs = self.sessions["encode_key"].run(None, {"frames": _array(frames.float())})
        tensors = dict(zip(FEATURES, (torch.from_numpy(array) for array in outputs)))
        return FrameFeatures(**tensors, padding=self.padding, size=self.size)

    def encode_value(self, features: FrameFeatures, masks: torch.Tensor) -> torch.Tensor:
        """masks [1, O, H, W] or [1, O, Hp, Wp] → memory values [1, O, Cv, h, w] (frame-size
        masks are zero-padded, as the model does)."""
        masks = self._padded("masks", masks)
        (values,) = self.sessions["encode_value"].run(None, {
            "image": _array(features.image), "f16": _array(features.f16), "masks": _array(masks),
        })
        return torch.from_numpy(values)

    def segment(
        self,
        features: FrameFeatures,
        memory_key: torch.Tensor,
        memory_value: torch.Tensor,
        *,
        memory_bias: torch.Tensor | None = None,
        previous: tuple[FrameFeatures, torch.Tensor] | None = None,
        top_k: int | None = None,
        object_valid: torch.Tensor | None = None,
        gate: bool = True,
    ) -> SegmentOutput:
        """`REMN.segment` on the exported graph: memory_key [1, Ck, T, h, w], memory_value
        [1, O, Cv, T, h, w], memory_bias [1, T] or None, previous (features, probabilities
        [1, O, H(p), W(p)]) when the export reads it, top_k as exported, object_valid [1, O];
        gate: read with the gate's scores, as exported."""
        if top_k != self.top_k:
            raise ValueError(f"the segment graph in {self.directory} reads top_k={self.top_k}, asked for top_k={top_k}")
        if self.config.gate and gate != self.gated:  # a model without a gate reads the same either way
            raise ValueError(
                f"the segment graph in {self.directory} was exported with the gate {'on' if self.gated else 'off'}, "
                f"asked gate={gate}: export with the memory policy's gate setting"
            )
        if (previous is not None) != self.local_attention:
            raise ValueError(
                f"the segment graph in {self.directory} was exported with local_attention={self.local_attention}: "
                f"it {'needs the' if self.local_attention else 'takes no'} previous frame (InferenceConfig.local_attention)"
            )
        if memory_key.dim() != 5 or memory_value.dim() != 6 or memory_key.shape[2] < 1:
            raise ValueError(
                f"memory_key must be [1, Ck, T, h, w] and memory_value [1, O, Cv, T, h, w] with T >= 1, got "
                f"{tuple(memory_key.shape)} and {tuple(memory_value.shape)}"
            )
        num_objects, num_frames = memory_value.shape[1], memory_key.shape[2]
        self._check_objects(num_objects)
        bias = torch.zeros(1, num_frames) if memory_bias is None else memory_bias.float()  # + 0 leaves logits as they are
        valid = torch.ones(1, num_objects, dtype=torch.bool) if object_valid is None else object_valid.bool()
        feeds = {
            "key": features.key, "key_comp": features.key_comp, "f8": features.f8, "f4": features.f4,
            "memory_key": memory_key, "memory_value": memory_value, "memory_bias": bias, "object_valid": valid,
        }
        if previous is not None:
            previous_features, previous_probs = previous
            feeds.update(previous_key=previous_features.key, previous_key_comp=previous_features.key_comp,
                         previous_probs=self._padded("previous object probabilities", previous_probs))
        outputs = self.sessions["segment"].run(None, {name: _array(tensor) for name, tensor in feeds.items()})
        outputs = [torch.from_numpy(array) for array in outputs]
        gate_log_scores = outputs[2] if len(outputs) == 3 else None
        return SegmentOutput(outputs[0], outputs[1], self.padding, gate_log_scores)

    # ----------------------------------------------------------------- checks
    def _check_objects(self, num_objects: int) -> None:
        if not 1 <= num_objects <= self.max_objects:
            raise ValueError(
                f"the graphs in {self.directory} take 1..{self.max_objects} objects, got {num_objects}: "
                "export with a larger --objects"
            )

    def _padded(self, name: str, masks: torch.Tensor) -> torch.Tensor:
        """masks [1, O, H, W] zero-padded, or [1, O, Hp, Wp] as they are → float [1, O, Hp, Wp]."""
        if not isinstance(masks, torch.Tensor) or masks.dim() != 4 or masks.shape[0] != 1:
            raise ValueError(f"{name} must be a tensor [1, O, H, W], got {tuple(getattr(masks, 'shape', ()))}")
        self._check_objects(masks.shape[1])
        if tuple(masks.shape[-2:]) == self.padded_size:
            return masks.float()
        if tuple(masks.shape[-2:]) != self.size:
            raise ValueError(
                f"{name} size {tuple(masks.shape[-2:])} is neither the frame size {self.size} nor the padded "
                f"size {self.padded_size}"
            )
        return torch.nn.functional.pad(masks.float(), self.padding)
