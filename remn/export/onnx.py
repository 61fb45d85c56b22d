"""ONNX export of REMN's three per-frame step graphs, and the manifest that describes them.

The graphs are the model's step API (`remn.model.network.REMN`), batch 1, at one working
frame size H×W (padded to Hp×Wp, a multiple of 16; h, w = Hp/16, Wp/16):

- `encode_key.onnx`: frames [1, 3, H, W] float RGB in [0, 1] → image [1, 3, Hp, Wp]
  (normalised, padded), key [1, Ck, h, w], key_comp [1, Cv, h, w], f16, f8, f4;
- `encode_value.onnx`: image, f16, masks [1, O, Hp, Wp] → values [1, O, Cv, h, w];
- `segment.onnx`: key, key_comp, f8, f4 of the query, memory_key [1, Ck, T, h, w],
  memory_value [1, O, Cv, T, h, w], memory_bias [1, T] (additive, −inf excludes a frame;
  zeros for none), object_valid [1, O] bool and, with local attention, the previous
  frame's key, key_comp and object probabilities [1, O, Hp, Wp] → padded_logits and
  padded_probs [1, O+1, Hp, Wp] and, when the model's gate is read, gate_log_scores [1, T]: the gated
  memory read with top-k, local attention, the decoder and the soft aggregation.

T (memory frames) and O (objects, up to `max_objects`) are dynamic axes. The exporter is
`torch.onnx.export(..., dynamo=True)`: the model is captured with `torch.export`, where
the memory read and local attention are the custom ops `remn::memory_read` and
`remn::local_attention` (`remn.ops`); `run_decompositions(remn.ops.REFERENCE_DECOMPOSITIONS)`
turns them into their reference math, so the graphs hold standard ONNX operators only
(MatMul/Einsum, TopK, CumSum, ReduceMax, Exp…), no custom domain.
"""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import torch
from torch import nn
from torch.export import Dim

from remn import ops
from remn.model.network import IMAGENET_MEAN, IMAGENET_STD, STRIDE, FrameFeatures, even_padding

MANIFEST = "manifest.json"
FORMAT = "remn-onnx"
FORMAT_VERSION = 1
GRAPHS = ("encode_key", "encode_value", "segment")
FEATURES = ("image", "key", "key_comp", "f16", "f8", "f4")  # encode_key's outputs, in order


class ExportError(ValueError):
    """What cannot be exported, and why."""


def padded_size(size: tuple[int, int]) -> tuple[int, int]:
    """(H, W) → (Hp, Wp): the next multiples of 16, as `even_padding` pads."""
    left, right, top, bottom = even_padding(*size)
    return size[0] + top + bottom, size[1] + left + right


def _unread(like: torch.Tensor, *shape) -> torch.Tensor:
    """A zero tensor of `shape` standing in for a FrameFeatures field the graph never reads
    (only its shape is looked at); an expanded scalar, so it costs nothing in the graph."""
    return like.new_zeros(()).expand(*shape)


def _features(key, key_comp, f8, f4, padded, size) -> FrameFeatures:
    """FrameFeatures from the tensors the segment graph takes (the image only gives the padded size)."""
    image = _unread(key, key.shape[0], 3, *padded)  # [1, 3, Hp, Wp]
    return FrameFeatures(image, key, key_comp, None, f8, f4, even_padding(*size), size)


class EncodeKeyStep(nn.Module):
    """frames [1, 3, H, W] → the FrameFeatures tensors, in `FEATURES` order."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, frames):
        features = self.model.encode_key(frames)
        return tuple(getattr(features, name) for name in FEATURES)


class EncodeValueStep(nn.Module):
    """image [1, 3, Hp, Wp], f16 [1, C16, h, w], masks [1, O, Hp, Wp] → values [1, O, Cv, h, w]."""

    def __init__(self, model, size):
        super().__init__()
        self.model, self.size = model, size

    def forward(self, image, f16, masks):
        key = _unread(f16, 1, 1, *f16.shape[-2:])  # encode_value reads only the batch of the key
        features = FrameFeatures(image, key, None, f16, None, None, even_padding(*self.size), self.size)
        return self.model.encode_value(features, masks)


class SegmentStep(nn.Module):
    """The memory read (gated, top-k), local attention, decoder and aggregation of one query."""

    def __init__(self, model, size, padded, top_k, local_attention, gated):
        super().__init__()
        self.model, self.size, self.padded = model, size, padded
        self.top_k, self.local_attention, self.gated = top_k, local_attention, gated

    def forward(self, key, key_comp, f8, f4, memory_key, memory_value, memory_bias, object_valid,
                previous_key=None, previous_key_comp=None, previous_probs=None):
        features = _features(key, key_comp, f8, f4, self.padded, self.size)
        previous_step = None
        if self.local_attention:
            previous_features = FrameFeatures(
                features.image, previous_key, previous_key_comp, None, None, None, features.padding, self.size
            )
            previous_step = (previous_features, previous_probs)
        out = self.model.segment(
            features, memory_key, memory_value, memory_bias=memory_bias, previous=previous_step,
            top_k=self.top_k, object_valid=object_valid, gate=self.gated,
        )
        if out.gate_log_scores is None:
            return out.padded_logits, out.padded_probs
        return out.padded_logits, out.padded_probs, out.gate_log_scores


def check_exportable(model_config, inference_config, size, max_objects) -> None:
    """Raise ExportError naming what these settings ask that the graphs cannot do."""
    if model_config.memory != "remn" or inference_config.memory.needs_compressor:
        raise ExportError(
            f"model memory={model_config.memory!r} / memory policy {inference_config.memory.policy!r} cannot be "
            "exported: RDE's recurrent compressor is not one of the step graphs; export a frame-bank preset "
            "(remn, stcn, tiny)"
        )
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < STRIDE for s in size):
        raise ExportError(f"size must be two ints >= {STRIDE} (H, W), got {size!r}")
    height, width = size
    if isinstance(max_objects, bool) or not isinstance(max_objects, int) or max_objects < 2:
        raise ExportError(f"max_objects must be an int >= 2 (the objects axis is dynamic up to it), got {max_objects!r}")
    padded_height, padded_width = padded_size(size)
    positions = (padded_height // STRIDE) * (padded_width // STRIDE)
    top_k = inference_config.top_k
    if top_k is not None and top_k >= positions:
        raise ExportError(
            f"top_k={top_k} is not below the {positions} key positions of one memory frame at {height}x{width}: "
            "the graph's top-k needs k < h·w; export a larger size or a smaller top_k (or top_k=None)"
        )


def _example_inputs(model, size, objects, frames):
    """Example tensors for each graph (objects and memory frames ≥ 2: size-1 axes would be
    fixed). Every input is a tensor of its own: inputs that are one tensor would be traced
    as one graph input."""
    with torch.no_grad():
        features, previous = (model.encode_key(torch.rand(1, 3, *size)) for _ in range(2))
        masks = torch.rand(1, objects, *features.padded_size)
        values = model.encode_value(features, masks)
    memory_key = torch.randn(1, model.config.key_dim, frames, *features.key.shape[-2:])  # [1, Ck, T, h, w]
    memory_value = torch.randn(1, objects, *values.shape[2:3], frames, *values.shape[-2:])  # [1, O, Cv, T, h, w]
    segment = [features.key, features.key_comp, features.f8, features.f4, memory_key, memory_value,
               torch.zeros(1, frames), torch.ones(1, objects, dtype=torch.bool)]
    if model.local_branch is not None:
        segment += [previous.key, previous.key_comp, torch.rand(1, objects, *features.padded_size)]
    return {
        "encode_key": (torch.rand(1, 3, *size),),
        "encode_value": (features.image, features.f16, masks),
        "segment": tuple(segment),
    }


def _graph_specs(local_attention: bool, gate: bool, max_objects: int):
    """Per graph: input names, output names and dynamic axes ({input: {axis: Dim}})."""
    objects = Dim("objects", min=1, max=max_objects)
    frames = Dim("memory_frames", min=1)
    segment_inputs = ["key", "key_comp", "f8", "f4", "memory_key", "memory_value", "memory_bias", "object_valid"]
    segment_dynamic = [None, None, None, None, {2: frames}, {1: objects, 3: frames}, {1: frames}, {1: objects}]
    if local_attention:
        segment_inputs += ["previous_key", "previous_key_comp", "previous_probs"]
        segment_dynamic += [None, None, {1: objects}]
    segment_outputs = ["padded_logits", "padded_probs"] + (["gate_log_scores"] if gate else [])
    return {
        "encode_key": (["frames"], list(FEATURES), (None,)),
        "encode_value": (["image", "f16", "masks"], ["values"], (None, None, {1: objects})),
        "segment": (segment_inputs, segment_outputs, tuple(segment_dynamic)),
    }


def _export_graph(module, args, dynamic_shapes, input_names, output_names, path: Path, opset: int | None):
    """torch.export → the custom ops decomposed into their reference → torch.onnx (dynamo) → `path`."""
    onnx = _require_onnx()
    dynamic_shapes = dict(zip(input_names, dynamic_shapes))  # by argument name: trailing defaults stay out
    program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
    program = program.run_decompositions(ops.REFERENCE_DECOMPOSITIONS)
    onnx_program = torch.onnx.export(
        program, dynamo=True, input_names=input_names, output_names=output_names, opset_version=opset,
        external_data=False, optimize=True, verbose=False,
    )
    proto = onnx_program.model_proto
    custom = sorted({node.domain for node in proto.graph.node} - {"", "ai.onnx"})
    if custom:
        raise ExportError(f"{path.name} holds operators outside the standard ONNX domain: {custom}")
    _name_dynamic_axes(proto, dynamic_shapes)
    onnx.save(proto, str(path))
    return next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))


def _require_onnx():
    try:
        import onnx
        import onnxscript  # noqa: F401 (torch.onnx's exporter translates with it)
    except ImportError as err:
        raise ImportError(f"ONNX export needs onnx and onnxscript ({err}): pip install 'remn[onnx]'") from err
    return onnx


def _name_dynamic_axes(proto, dynamic_shapes) -> None:
    """Give the graph's symbolic dims the names of their `Dim`s ("objects", "memory_frames")
    wherever they appear (inputs, outputs, intermediate shapes)."""
    inputs = {value.name: value for value in proto.graph.input}
    names = {}
    for input_name, axes in dynamic_shapes.items():
        for axis, dim in (axes or {}).items():
            symbol = inputs[input_name].type.tensor_type.shape.dim[axis].dim_param
            if symbol:
                names[symbol] = dim.__name__
    if not names:
        return
    symbol = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:  # a symbol or an expression of symbols, e.g. "s4 + 1"
                dim.dim_param = symbol.sub(lambda match: names[match.group(1)], dim.dim_param)


def export_onnx(
    model,
    directory: str | os.PathLike,
    inference_config="remn",
    *,
    size: tuple[int, int] = (480, 854),
    max_objects: int = 8,
    weights: str | None = None,
    overwrite: bool = False,
    opset: int | None = None,
) -> dict:
    """Write the three step graphs of `model` (a REMN; exported as an fp32 CPU copy) and
    `manifest.json` to `directory`.

    inference_config: the InferenceConfig (or preset) the graphs will run under: its top_k
    and local_attention are fixed in the segment graph; size: the working frame size (H, W)
    the Segmenter feeds (its frames resized to the shorter side `InferenceConfig.size`);
    max_objects: the largest object count the objects axis takes; weights: where the
    weights came from (recorded); an existing manifest is replaced only with overwrite.
    Returns the manifest.
    """
    from remn.inference.config import resolve_inference_config

    config = resolve_inference_config(inference_config)
    size = tuple(size)
    check_exportable(model.config, config, size, max_objects)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ExportError(f"{directory} exists and is not a folder")
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise ExportError(f"{directory} is not empty; pass overwrite=True (--overwrite) to replace its export")
    written = [directory / name for name in (MANIFEST, *(f"{graph}.onnx" for graph in GRAPHS))]
    for path in written:  # nothing of an earlier export survives a failed one
        path.unlink(missing_ok=True)
    directory.mkdir(parents=True, exist_ok=True)

    # A CPU fp32 copy whose ops go through the custom ops (the decomposable path) whatever `fused` says.
    model = copy.deepcopy(model).float().cpu().eval()
    model.fused = True
    local_attention = config.local_attention and model.local_branch is not None
    gated = model.gate is not None and getattr(config.memory, "gate", True)  # the policy reads with the gate
    specs = _graph_specs(local_attention, gated, max_objects)
    examples = _example_inputs(model, size, objects=2, frames=2)
    padding = even_padding(*size)
    padded = padded_size(size)
    modules = {
        "encode_key": EncodeKeyStep(model),
        "encode_value": EncodeValueStep(model, size),
        "segment": SegmentStep(model, size, padded, config.top_k, local_attention, gated),
    }
    if not local_attention:
        examples["segment"] = examples["segment"][:8]
    graphs, versions = {}, set()
    try:
        for name in GRAPHS:
            inputs, outputs, dynamic = specs[name]
            path = directory / f"{name}.onnx"
            versions.add(_export_graph(modules[name], examples[name], dynamic, inputs, outputs, path, opset))
            graphs[name] = {"file": path.name, "inputs": inputs, "outputs": outputs}
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "opset": max(versions),
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        "size": list(size),
        "padded_size": list(padded),
        "padding": list(padding),  # (left, right, top, bottom) zero band of the normalised image
        "stride": STRIDE,
        "normalisation": {"input": "float RGB in [0, 1]", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "batch": 1,
        "max_objects": max_objects,
        "dynamic_axes": {"objects": "O, 1..max_objects", "memory_frames": "T, >= 1"},
        "model": model.config.to_dict(),
        "inference": {"preset": config.name, "top_k": config.top_k, "local_attention": local_attention, "gate": gated},
        "weights": None if weights is None else str(weights),
        "graphs": graphs,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_manifest(directory: str | os.PathLike) -> dict:
    """The manifest of an export folder; ValueError when it is missing or of another format."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: export the graphs first (remn export --onnx {directory})")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} is not a {FORMAT} v{FORMAT_VERSION} manifest (format {manifest.get('format')!r}, "
            f"version {manifest.get('version')!r})"
        )
    return manifest


__all__ = ["ExportError", "export_onnx", "load_manifest", "check_exportable", "GRAPHS", "MANIFEST"]
