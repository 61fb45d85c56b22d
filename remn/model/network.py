"""The REMN network and its per-frame step API.

The step API is what the inference engine and the training loop drive:

- `encode_key(frames)`: a query frame's key, decoder features and skips (`FrameFeatures`).
- `encode_value(features, masks)`: that frame with each object's mask into memory values.
- `segment(features, memory_key, memory_value, ...)`: read the memory (gated global read
  plus local attention to the previous frame), decode, soft-aggregate the objects.

Frames are float RGB in [0, 1], any size: they are normalised with the ImageNet statistics
and zero-padded to a multiple of 16 (split evenly, as STCN does). The decoder predicts the
whole padded frame; `SegmentOutput` keeps that padded prediction and crops it for the
frame-size view. As in the published STCN and RDE-VOS inference, what goes back into the
memory (and to the local branch) is the padded-size prediction, band included: masks given
at the padded size are used as they are, masks at the frame size are zero-padded.
Memory tensors keep time as its own axis: keys [B, Ck, T, h, w], values [B, O, Cv, T, h, w].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from remn import ops
from remn.config import ModelConfig
from remn.model.gate import SoftModulationGate
from remn.model.local_branch import LocalAttentionBranch
from remn.model.masks import soft_aggregate
from remn.model.modules import Decoder, KeyEncoder, KeyProjection, ValueEncoder
from remn.model.rde import MemoryCompressor
from remn.model.resnet import Bottleneck, check_blocks, stage_channels

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STRIDE = 16


def even_padding(height: int, width: int, multiple: int = STRIDE) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding to the next multiple, split evenly."""
    pad_h, pad_w = -height % multiple, -width % multiple
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def crop_padding(x: torch.Tensor, padding: tuple[int, int, int, int]) -> torch.Tensor:
    left, right, top, bottom = padding
    return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]


def repeat_per_object(x: torch.Tensor, num_objects: int) -> torch.Tensor:
    """[B, ...] → [B·O, ...]: each clip's features once per object (objects share keys)."""
    return x[:, None].expand(x.shape[0], num_objects, *x.shape[1:]).flatten(0, 1)


@dataclass
class FrameFeatures:
    """A query frame, encoded. h, w = padded size / 16."""

    image: torch.Tensor  # [B, 3, Hp, Wp] normalised, padded
    key: torch.Tensor  # [B, Ck, h, w]
    key_comp: torch.Tensor  # [B, Cv, h, w] query features kept for decoding
    f16: torch.Tensor  # [B, C16, h, w]
    f8: torch.Tensor  # [B, C8, 2h, 2w]
    f4: torch.Tensor  # [B, C4, 4h, 4w]
    padding: tuple[int, int, int, int]
    size: tuple[int, int]  # (H, W) before padding

    @property
    def batch(self) -> int:
        return self.key.shape[0]

    @property
    def padded_size(self) -> tuple[int, int]:
        """(Hp, Wp): the frame with its band, a multiple of 16."""
        return tuple(self.image.shape[-2:])

    def frame(self, num_frames: int, index: int) -> "FrameFeatures":
        """From features of B·T frames (batch-major), the features of frame `index` of each clip."""
        def pick(x):
            return x.view(-1, num_frames, *x.shape[1:])[:, index]

        tensors = {name: pick(getattr(self, name)) for name in ("image", "key", "key_comp", "f16", "f8", "f4")}
        return FrameFeatures(**tensors, padding=self.padding, size=self.size)


@dataclass
class SegmentOutput:
    """The aggregated prediction at the padded size, and its frame-size crop."""

    padded_logits: torch.Tensor  # [..., O+1, Hp, Wp] aggregated logits, background first, band included
    padded_probs: torch.Tensor  # [..., O+1, Hp, Wp] softmax of padded_logits over the object axis
    padding: tuple[int, int, int, int]  # (left, right, top, bottom) band around the frame
    gate_log_scores: torch.Tensor | None  # [B, T] log gate score of each memory frame, or None
    keys: torch.Tensor | None = None  # clip passes (`REMN.forward`): every frame's key [B, T, Ck, h, w]

    @property
    def logits(self) -> torch.Tensor:
        """[..., O+1, H, W]: padded_logits cropped to the frame (a view)."""
        return crop_padding(self.padded_logits, self.padding)

    @property
    def probs(self) -> torch.Tensor:
        """[..., O+1, H, W]: padded_probs cropped to the frame (a view)."""
        return crop_padding(self.padded_probs, self.padding)


def _check_frames(frames) -> None:
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"frames must be a torch.Tensor [B, 3, H, W], got {type(frames).__name__}")
    if not frames.is_floating_point():
        raise TypeError(f"frames must be float RGB in [0, 1], got dtype {frames.dtype} (divide uint8 frames by 255)")
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must have shape [B, 3, H, W], got {tuple(frames.shape)}")


class REMN(nn.Module):
    """REMN on STCN's core; `fused` routes the two hot ops to the Triton kernels on CUDA."""

    def __init__(self, config: ModelConfig, fused: bool = True):
        super().__init__()
        self.config = config
        self.fused = fused
        check_blocks(config.key_blocks)
        check_blocks(config.value_blocks)
        c4, c8, c16 = stage_channels(Bottleneck, config.key_width)
        self.key_encoder = KeyEncoder(config.key_width, config.key_blocks)
        self.value_encoder = ValueEncoder(config.value_dim, c16, config.value_width, config.value_blocks)
        self.key_proj = KeyProjection(c16, config.key_dim)
        self.key_comp = nn.Conv2d(c16, config.value_dim, 3, padding=1)
        self.decoder = Decoder(config.value_dim, c8, c4, config.decoder_dims)
        self.gate = SoftModulationGate(config.key_dim, config.gate_hidden) if config.gate else None
        self.local_branch = LocalAttentionBranch(config.value_dim, config.local_radius) if config.local_attention else None
        self.mem_compress = (
            MemoryCompressor(config.key_dim, config.value_dim, ceil_mode=config.rde_pool_ceil_mode)
            if config.memory == "rde" else None
        )
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def backend(self) -> str | None:
        """The `remn.ops` backend: automatic (kernels on CUDA) when fused, else the reference."""
        return None if self.fused else "reference"

    # ----------------------------------------------------------------- encoding
    def encode_key(self, frames: torch.Tensor) -> FrameFeatures:
        """frames [B, 3, H, W] float RGB in [0, 1] → FrameFeatures."""
        _check_frames(frames)
        size = tuple(frames.shape[-2:])
        padding = even_padding(*size)
        image = F.pad((frames - self.pixel_mean) / self.pixel_std, padding)  # [B, 3, Hp, Wp]
        return FrameFeatures(image, *self._key_trunk(image), padding, size)

    # The trunks: the fixed-shape network parts of encode_key, encode_value and decode, on
    # tensors only (what remn.inference.fast_path replaces and may torch.compile).
    def _key_trunk(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """image [B, 3, Hp, Wp] normalised and padded → (key [B, Ck, h, w], key_comp [B, Cv, h, w],
        f16, f8, f4)."""
        f16, f8, f4 = self.key_encoder(image)
        return self.key_proj(f16), self.key_comp(f16), f16, f8, f4

    def encode_value(self, features: FrameFeatures, masks: torch.Tensor) -> torch.Tensor:
        """masks [B, O, H, W] or [B, O, Hp, Wp] (soft or hard, per object) → memory values
        [B, O, Cv, h, w].

        Each object is encoded with its own mask and the sum of the other objects' masks.
        Frame-size masks are zero-padded; padded-size masks (a prediction's `padded_probs`)
        are encoded as they are, band included.
        """
        self._check_masks("masks", masks, features)
        batch, num_objects = masks.shape[:2]
        masks = self._padded(masks, features).to(features.image.dtype)  # [B, O, Hp, Wp]
        values = self._value_trunk(features.image, features.f16, masks)  # [B·O, Cv, h, w]
        return values.view(batch, num_objects, *values.shape[1:])

    def _value_trunk(self, image: torch.Tensor, key_f16: torch.Tensor, masks: torch.Tensor,
                     encoder: nn.Module | None = None) -> torch.Tensor:
        """image [B, 3, Hp, Wp], key_f16 [B, C16, h, w], masks [B, O, Hp, Wp] (padded) → values
        [B·O, Cv, h, w], by `encoder` (default: the value encoder; the fast path may pass a copy)."""
        num_objects = masks.shape[1]
        others = masks.sum(dim=1, keepdim=True) - masks  # [B, O, Hp, Wp]
        encoder = self.value_encoder if encoder is None else encoder
        return encoder(
            repeat_per_object(image, num_objects),
            repeat_per_object(key_f16, num_objects),
            masks.flatten(0, 1)[:, None],
            others.flatten(0, 1)[:, None],
        )

    # ------------------------------------------------------------ memory reads
    def gate_log_scores(self, features: FrameFeatures, memory_key: torch.Tensor) -> torch.Tensor | None:
        """log gate score of each memory frame for this query: [B, T], or None without a gate."""
        return None if self.gate is None else self.gate(features.key, memory_key)

    def read_memory(self, features, memory_key, memory_value, key_bias=None, top_k=None) -> torch.Tensor:
        """Global read. memory_key [B, Ck, T, h, w], memory_value [B, O, Cv, T, h, w],
        key_bias [B, T] (per memory frame) or None → readout [B, O, Cv, h, w]."""
        batch, _, height, width = features.key.shape
        num_objects, value_dim = memory_value.shape[1:3]
        bias = None
        if key_bias is not None:
            bias = key_bias.to(features.key.dtype).repeat_interleave(height * width, dim=1)  # [B, T·h·w]
        readout = ops.memory_read(
            features.key.flatten(2),  # [B, Ck, N]
            memory_key.flatten(2),  # [B, Ck, T·h·w]
            memory_value.flatten(3),  # [B, O, Cv, T·h·w]
            bias,
            top_k=top_k,
            backend=self.backend,
        )  # [B, O, Cv, N]
        return readout.view(batch, num_objects, value_dim, height, width)

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
        """Segment a query frame from memory.

        features: the query's `encode_key`; memory_key [B, Ck, T, h, w]; memory_value
        [B, O, Cv, T, h, w]; memory_bias [B, T] additive logit bias per memory frame (−inf
        excludes a frame) or None; previous: (previous frame's features, its object
        probabilities [B, O, H, W] or, band included, [B, O, Hp, Wp]) for the local
        attention branch; object_valid [B, O] bool, False for padding objects (their
        probability is forced to 0); gate False reads without the gate's scores (none are
        computed), as a model without a gate does.
        """
        self._check_memory(features, memory_key, memory_value)
        gate_log_scores = self.gate_log_scores(features, memory_key) if gate else None  # [B, T] or None
        key_bias = memory_bias
        if gate_log_scores is not None:
            key_bias = gate_log_scores if key_bias is None else key_bias + gate_log_scores
        readout = self.read_memory(features, memory_key, memory_value, key_bias, top_k)  # [B, O, Cv, h, w]
        if self.local_branch is not None and previous is not None:
            previous_features, previous_probs = previous
            self._check_masks("previous object probabilities", previous_probs, features, readout.shape[1])
            padded = self._padded(previous_probs, previous_features).to(readout.dtype)  # [B, O, Hp, Wp]
            readout = self.local_branch(
                readout, features.key, previous_features.key, previous_features.key_comp, padded, backend=self.backend
            )  # [B, O, Cv, h, w]
        logits = self.decode(features, readout)  # [B, O, Hp, Wp]
        object_probs = torch.sigmoid(logits.float())
        if object_valid is not None:
            object_probs = object_probs * object_valid[:, :, None, None].to(object_probs.dtype)
        aggregated = soft_aggregate(object_probs)  # [B, O+1, Hp, Wp]
        return SegmentOutput(aggregated, torch.softmax(aggregated, dim=1), features.padding, gate_log_scores)

    def decode(self, features: FrameFeatures, readout: torch.Tensor) -> torch.Tensor:
        """readout [B, O, Cv, h, w] → per-object logits [B, O, Hp, Wp] over the padded frame."""
        batch, num_objects = readout.shape[:2]
        logits = self._decode_trunk(readout.flatten(0, 1), features.key_comp, features.f8, features.f4)
        return logits.view(batch, num_objects, *logits.shape[-2:])  # [B, O, Hp, Wp]

    def _decode_trunk(self, readout: torch.Tensor, key_comp: torch.Tensor, f8: torch.Tensor,
                      f4: torch.Tensor) -> torch.Tensor:
        """readout [B·O, Cv, h, w]; the frames' key_comp [B, Cv, h, w], f8, f4 → logits [B·O, 1, Hp, Wp]."""
        num_objects = readout.shape[0] // key_comp.shape[0]
        query_features = repeat_per_object(key_comp, num_objects).to(readout.dtype)  # [B·O, Cv, h, w]
        f16 = torch.cat([readout, query_features], dim=1)  # [B·O, 2Cv, h, w]
        return self.decoder(f16, repeat_per_object(f8, num_objects), repeat_per_object(f4, num_objects))

    # ------------------------------------------------------------ whole clips
    def forward(self, frames: torch.Tensor, first_masks: torch.Tensor, object_valid: torch.Tensor | None = None):
        """Segment clips with every earlier frame in memory: STCN's training pass.

        frames [B, T, 3, H, W], first_masks [B, O, H, W] → SegmentOutput with logits and
        probs [B, T−1, O+1, H, W] for frames 1..T−1 (frame 0 is given), the gate's log
        scores per frame and the keys of all T frames. Each predicted frame enters memory
        with its soft probabilities over the padded frame, as inference encodes them. (RDE
        models train with RDE-VOS's own pass, `remn.train.rde_recipe`.)
        """
        if not isinstance(frames, torch.Tensor) or frames.dim() != 5:
            raise ValueError(f"frames must be [B, T, 3, H, W], got {tuple(getattr(frames, 'shape', ()))}")
        batch, num_frames = frames.shape[:2]
        if num_frames < 2:
            raise ValueError(f"a clip needs at least 2 frames, got {num_frames}")
        all_features = self.encode_key(frames.flatten(0, 1))
        features = [all_features.frame(num_frames, t) for t in range(num_frames)]
        keys = [features[0].key]
        values = [self.encode_value(features[0], first_masks)]
        object_probs = first_masks
        outputs = []
        for t in range(1, num_frames):
            previous = (features[t - 1], object_probs)
            output = self.segment(features[t], torch.stack(keys, dim=2), torch.stack(values, dim=3),
                                  previous=previous, object_valid=object_valid)
            outputs.append(output)
            object_probs = output.padded_probs[:, 1:]  # [B, O, Hp, Wp]: into memory band included, as inference does
            if t < num_frames - 1:
                keys.append(features[t].key)
                values.append(self.encode_value(features[t], object_probs))
        gate = [o.gate_log_scores for o in outputs]
        return SegmentOutput(
            torch.stack([o.padded_logits for o in outputs], dim=1),
            torch.stack([o.padded_probs for o in outputs], dim=1),
            features[0].padding,
            None if gate[0] is None else gate,
            all_features.key.view(batch, num_frames, *all_features.key.shape[1:]),  # [B, T, Ck, h, w]
        )

    @staticmethod
    def _padded(masks: torch.Tensor, features: FrameFeatures) -> torch.Tensor:
        """masks [B, O, H, W] zero-padded, or [B, O, Hp, Wp] as they are → [B, O, Hp, Wp]."""
        if tuple(masks.shape[-2:]) == features.padded_size:
            return masks
        return F.pad(masks, features.padding)

    # ------------------------------------------------------------ validation
    def _check_masks(self, name, masks, features: FrameFeatures, num_objects: int | None = None) -> None:
        if not isinstance(masks, torch.Tensor) or not masks.is_floating_point():
            raise TypeError(f"{name} must be a float tensor [B, O, H, W], got {getattr(masks, 'dtype', type(masks))}")
        if masks.dim() != 4:
            raise ValueError(f"{name} must have shape [B, O, H, W], got {tuple(masks.shape)}")
        if tuple(masks.shape[-2:]) not in (features.size, features.padded_size):
            raise ValueError(
                f"{name} size {tuple(masks.shape[-2:])} differs from the frame size {features.size} and "
                f"from the padded size {features.padded_size}"
            )
        if masks.shape[0] != features.batch:
            raise ValueError(f"{name} batch {masks.shape[0]} differs from the frames' batch {features.batch}")
        if masks.shape[1] < 1 or (num_objects is not None and masks.shape[1] != num_objects):
            expected = "at least 1" if num_objects is None else str(num_objects)
            raise ValueError(f"{name} has {masks.shape[1]} objects, expected {expected}")

    def _check_memory(self, features: FrameFeatures, memory_key, memory_value) -> None:
        expected_key = (features.batch, self.config.key_dim, *features.key.shape[-2:])
        if memory_key.dim() != 5 or (memory_key.shape[:2] + memory_key.shape[3:]) != expected_key:
            raise ValueError(
                f"memory_key must be [B, Ck, T, h, w] with (B, Ck, h, w) = {expected_key}, got {tuple(memory_key.shape)}"
            )
        if memory_key.shape[2] < 1:
            raise ValueError("the memory is empty: encode at least one annotated frame first")
        expected_value = (features.batch, self.config.value_dim, memory_key.shape[2], *features.key.shape[-2:])
        if memory_value.dim() != 6 or (memory_value.shape[:1] + memory_value.shape[2:]) != expected_value:
            raise ValueError(
                f"memory_value must be [B, O, Cv, T, h, w] with (B, Cv, T, h, w) = {expected_value}, "
                f"got {tuple(memory_value.shape)}"
            )
