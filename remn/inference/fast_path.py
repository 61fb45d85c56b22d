"""The fast CPU inference path: a prepared copy of a REMN that computes the same function faster.

`prepare_fast_model(model, FastPathSettings())` returns a `FastREMN` holding the model's
weights (the caller's model is left untouched, so training can go on with it). Routes,
each a field of `FastPathSettings`:

- `fold_batchnorm`: every eval-mode BatchNorm after a convolution is folded into it
  (w' = w·γ/σ, b' = (b − μ)·γ/σ + β, `torch.nn.utils.fusion.fuse_conv_bn_eval`); exact up
  to rounding.
- `share_inputs`: what is the same for every object is computed once per frame instead
  of once per object. A convolution is linear in its input channels, so over
  [per-object x_o, shared s] it splits as conv(x_o; W_x) + conv(s; W_s) + b, with the
  shared half run on the frame's batch and broadcast over objects: the value encoder's
  image channels (stem) and key-f16 channels (fuser), the decoder's key_comp channels
  (compress) and its two skip convolutions of f8 and f4. Exact up to rounding; it saves
  ≈ 40 % of the decoder's work per extra object at 480p.
- `channels_last`: weights and activations in NHWC, the layout oneDNN's convolutions
  take natively.
- `fuse_pointwise`: each ReLU and residual add that follows a convolution runs inside it
  as a oneDNN post-op (`torch.ops.mkldnn._convolution_pointwise`, the op Inductor's CPU
  freezing emits): relu(conv(x) + identity) in one pass over the output instead of three,
  in the decoder's and fuser's residual blocks and in the ResNet blocks whose BatchNorm
  `fold_batchnorm` folded. Exact up to rounding: in fp32 most layers match the separate
  ops to the bit (oneDNN may take another kernel for a fused call, e.g. layer3's 1×1
  convolutions, a few ulp apart); in the bf16 trunks the sum is rounded to bf16 once where
  the separate ops round twice. CPU only (`conv_pointwise_available`), with
  `channels_last` (oneDNN fuses the add only into channels-last outputs), and not with
  `compile_mode`, where Inductor fuses the graph itself. A small fp32 call (under
  PACKED_WEIGHTS_BELOW_PIXELS output pixels) runs on its weight packed once in oneDNN's
  blocked layout for its input's shape, where oneDNN would otherwise reorder the weight on
  every call: in small frames that reorder, not the arithmetic, takes most of a wide
  convolution's time. Exact: the packed and the plain call give the same bits.
- `winograd`: the 3×3, stride-1 convolutions of the fp32 trunks (the decoder, by default
  here) with at least 128 input and output channels computed by Winograd's F(4×4, 3×3)
  (`remn.inference.winograd`): a quarter of the multiplications; at 480p the decoder's
  Winograd convolutions take 0.53–0.58× the direct time in sum over a step of 1-4 objects
  (0.35–0.77× each; `bench/bench_winograd.py`). A call on fewer than 16 output tiles of
  4×4 runs the direct convolution, where Winograd does not pay (`WinogradConv2d.pays_on`):
  at one object, the decoder's 1/16-scale layers in frames under about 256×256 pixels and
  its 1/8-scale ones under 128×128. Its rounding differs more than the other fp32 routes'
  (about 1e-5 of the output's scale against 1e-6), still far below bf16's. CPU only, and
  not with `compile_mode`.
- `bf16`: which parts run under `torch.autocast("cpu", torch.bfloat16)`: "none", "key"
  (the key encoder), "encoders" (the key and value encoders), "all" (the encoders and the
  decoder) or "by_objects" (the key encoder, and the value encoder in steps with at most
  BF16_VALUES_MAX_OBJECTS = 2 objects: a step with more runs an fp32 copy of it, with
  Winograd); the memory read, local attention and gate stay fp32 (the reference ops switch
  autocast off).
  None (the default) follows `InferenceConfig.precision`: "all" for "bf16", "none" for
  "fp32", and for "auto" "by_objects" where the processor has native bf16 dot products
  (`cpu_has_native_bf16`: AVX512-BF16 or AMX, as torch reports them; elsewhere bf16 does
  not pay: oneDNN emulates it on other AVX512 CPUs and has no bf16 convolution on AVX2
  ones, where torch's own computes it, `remn.inference.onednn.onednn_convolves`), else
  "none". The encoders' outputs feed the memory
  read and the decoder; with trained weights bf16 there kept 99.89-99.96 % of eager fp32's
  labels at 2 objects but 98.99-99.80 % at 4, nearly all flips on pixels fp32 leaves within
  1e-3 of a tie. The value encoder, run once per object, makes most of those flips: with
  it in fp32 ("key") 99.69-99.91 % stayed at 4 objects, at more time; hence "by_objects".
  The decoder's output is the logit itself, and bf16 there flips more labels, decided ones
  too (README, "Fast on a CPU").

- `reuse_freed_memory`: on glibc, freed memory stays in the process's heap for the next
  allocation (`mallopt`: no mmap for large blocks, no trimming) instead of going back to
  the kernel. A step allocates the same large activations every frame; by glibc's default
  each block over 32 MiB is a fresh mmap whose pages the kernel zero-fills on first touch
  (at 480p on this 2-core machine keeping them took the then default path to 0.95× at 2
  objects and 0.83× at 4: bench/results/cpu-fast-path-allocator-2026-12-02.json).
  Process-wide, like the thread count, and set when a fast model is prepared on the CPU;
  the heap then keeps its high-water mark until the process exits (`keep_freed_memory`).

- `compile_mode`: `torch.compile` (Inductor, fixed shapes, whole graphs) of the trunks, the
  network parts of a step whose shapes stay fixed; "reduce-overhead" replays them as CUDA
  graphs on CUDA. Off by default: on the CPU it does not pay (README, "Fast on a CPU"), on
  a GPU it is not yet measured (`bench/bench_cuda_fast_path.py`).

What pays and by how much is measured by `bench/bench_cpu.py` (`python bench/run.py
--sections cpu`); the README's CPU section has the table.
"""
from __future__ import annotations

import copy
import ctypes
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from remn.inference.onednn import FusedConv, conv_pointwise_available
from remn.inference.winograd import WinogradConv2d, winograd_pays
from remn.model.modules import ResBlock, UpsampleBlock
from remn.model.network import REMN
from remn.model.resnet import BasicBlock, Bottleneck, ResNetStem
from remn.precision import check_precision


def cpu_has_native_bf16() -> bool:
    """True when torch reports bf16 dot-product instructions on this CPU (AVX512-BF16 or AMX
    tiles), so oneDNN runs bf16 convolutions natively rather than by emulation."""
    if torch.backends.cpu.get_cpu_capability() != "AVX512" or not torch.backends.mkldnn.is_available():
        return False
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


BF16_TRUNKS = {  # FastPathSettings.bf16 → the trunks (as FastREMN._in_bf16 names them) it runs in bf16
    "none": (), "key": ("key",), "encoders": ("key", "value"), "all": ("key", "value", "decoder"),
    "by_objects": ("key", "value"),  # "value" only in steps with at most BF16_VALUES_MAX_OBJECTS objects
}
BF16_PARTS = tuple(BF16_TRUNKS)  # what FastPathSettings.bf16 may say
# "by_objects": the most objects a step may have for its values to be encoded in bf16; a step
# with more runs the value encoder's fp32 copy ("fp32_value"). With trained weights bf16 values
# kept 99.89-99.96 % of eager fp32's labels at 2 objects and 98.99-99.80 % at 4 (README).
BF16_VALUES_MAX_OBJECTS = 2
TRUNK_MODULES = {  # trunk → the FastREMN modules it runs
    "key": ("key_encoder", "key_proj", "key_comp"),
    "value": ("value_encoder",),
    "fp32_value": ("fp32_value_encoder",),  # bf16 "by_objects" only: the value encoder's fp32 copy
    "decoder": ("decoder",),
}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the modes that capture CUDA graphs on CUDA


@dataclass(frozen=True)
class FastPathSettings:
    """Which routes the fast path takes (each is measured alone in bench/bench_cpu.py)."""

    fold_batchnorm: bool = True
    share_inputs: bool = True
    channels_last: bool = True
    fuse_pointwise: bool = True  # ReLUs and residual adds inside the convolutions (CPU)
    winograd: bool = True  # fp32 trunks' 3×3 convolutions (≥ 128 channels) by F(4×4, 3×3) (CPU)
    bf16: str | None = None  # one of BF16_PARTS; None: as InferenceConfig.precision says
    compile_mode: str | None = None  # one of COMPILE_MODES: torch.compile the trunks; None: eager (off until measured)
    reuse_freed_memory: bool = True  # glibc keeps freed memory for reuse (process-wide; keep_freed_memory)

    def __post_init__(self):
        for name in ("fold_batchnorm", "share_inputs", "channels_last", "fuse_pointwise", "winograd",
                     "reuse_freed_memory"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"FastPathSettings.{name} must be a bool, got {getattr(self, name)!r}")
        if self.bf16 is not None and self.bf16 not in BF16_PARTS:
            raise ValueError(f"FastPathSettings.bf16 must be one of {BF16_PARTS} or None (as the precision says), "
                             f"got {self.bf16!r}")
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"FastPathSettings.compile_mode must be one of {COMPILE_MODES} or None (eager), "
                             f"got {self.compile_mode!r}")

    def resolved_bf16(self, precision: str = "fp32") -> str:
        """The parts in bf16 (one of BF16_PARTS) for a config's `precision` (`remn.precision`)."""
        check_precision(precision, "precision")
        if self.bf16 is not None:
            return self.bf16
        if precision == "bf16":
            return "all"
        return "by_objects" if precision == "auto" and cpu_has_native_bf16() else "none"


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_NEVER_TRIM = 2**31 - 1  # bytes of free heap top before glibc gives memory back: the largest C int


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse, for the whole process: large blocks
    come from the heap instead of their own mmap (M_MMAP_MAX = 0) and the heap is not
    trimmed back (M_TRIM_THRESHOLD = 2 GiB), so a block freed at the end of one frame
    serves the same allocation in the next one without the kernel zero-filling new pages.
    True when applied; False where the C library is not glibc (nothing is changed)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only; musl's and macOS's mallopt are no-ops or absent
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) == 1


def fold_batchnorm(module: nn.Module) -> None:
    """In place: fold each BatchNorm of the ResNet blocks and stems into the convolution
    it follows (their forwards apply `bnN(convN(·))` and `downsample = (conv, bn)`) and
    replace it by an identity. The module must be in eval mode (running statistics)."""
    if module.training:
        raise ValueError("fold_batchnorm needs a module in eval mode: training BatchNorm uses batch statistics")
    for block in module.modules():
        pairs = []
        if isinstance(block, (Bottleneck, BasicBlock)):
            pairs = [(f"conv{i}", f"bn{i}") for i in (1, 2, 3) if hasattr(block, f"bn{i}")]
            if block.downsample is not None and isinstance(block.downsample[1], nn.BatchNorm2d):
                block.downsample[0] = fuse_conv_bn_eval(block.downsample[0], block.downsample[1])
                block.downsample[1] = nn.Identity()
        elif isinstance(block, ResNetStem):
            pairs = [("conv1", "bn1")]
        for conv_name, bn_name in pairs:
            bn = getattr(block, bn_name)
            if isinstance(bn, nn.BatchNorm2d):
                setattr(block, conv_name, fuse_conv_bn_eval(getattr(block, conv_name), bn))
                setattr(block, bn_name, nn.Identity())


def _fused(conv: nn.Module) -> nn.Module:
    """conv with FusedConv's call, relu?(conv(x) + add?): a WinogradConv2d already has it."""
    return conv if isinstance(conv, WinogradConv2d) else FusedConv(conv)


def _batchnorm_folded(block: Bottleneck | BasicBlock) -> bool:
    """Whether fold_batchnorm left identities where the block's BatchNorms were."""
    return all(isinstance(module, nn.Identity) for name, module in block.named_children() if name.startswith("bn"))


class FusedBottleneck(nn.Module):
    """A `Bottleneck` with BatchNorm folded: relu(conv3(relu(conv2(relu(conv1 x)))) + identity), three fused calls."""

    def __init__(self, block: Bottleneck):
        super().__init__()
        if not _batchnorm_folded(block):
            raise ValueError("FusedBottleneck needs the block's BatchNorm folded first (fold_batchnorm)")
        self.conv1, self.conv2, self.conv3 = _fused(block.conv1), _fused(block.conv2), _fused(block.conv3)
        self.downsample = block.downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv3(self.conv2(self.conv1(x, relu=True), relu=True), add=identity, relu=True)


class FusedBasicBlock(nn.Module):
    """A `BasicBlock` with BatchNorm folded: relu(conv2(relu(conv1 x)) + identity), two fused calls."""

    def __init__(self, block: BasicBlock):
        super().__init__()
        if not _batchnorm_folded(block):
            raise ValueError("FusedBasicBlock needs the block's BatchNorm folded first (fold_batchnorm)")
        self.conv1, self.conv2 = _fused(block.conv1), _fused(block.conv2)
        self.downsample = block.downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv2(self.conv1(x, relu=True), add=identity, relu=True)


class FusedResBlock(nn.Module):
    """A `ResBlock`: conv2(relu(conv1(relu x))) + shortcut, the inner ReLU and the add fused."""

    def __init__(self, block: ResBlock):
        super().__init__()
        self.conv1, self.conv2 = _fused(block.conv1), _fused(block.conv2)
        self.downsample = block.downsample

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.conv2(self.conv1(F.relu(x), relu=True), add=shortcut)


FUSED_FORMS = {Bottleneck: FusedBottleneck, BasicBlock: FusedBasicBlock, ResBlock: FusedResBlock}


def _replace_below(module: nn.Module, replacement) -> None:
    """In place: each module below `module` for which replacement(child) is not None becomes that."""
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            replaced = replacement(child)
            if replaced is not None:
                setattr(parent, name, replaced)


def _fused_form(block: nn.Module) -> nn.Module | None:
    form = FUSED_FORMS.get(type(block))
    return form(block) if form is not None and (form is FusedResBlock or _batchnorm_folded(block)) else None


def fuse_pointwise(module: nn.Module) -> None:
    """In place: replace every `ResBlock` below `module`, and every ResNet block whose
    BatchNorm is folded (`fold_batchnorm`), by its fused form (FUSED_FORMS)."""
    _replace_below(module, _fused_form)


def _winograd_form(conv: nn.Module) -> WinogradConv2d | None:
    return WinogradConv2d(conv) if winograd_pays(conv) else None


def use_winograd(module: nn.Module) -> None:
    """In place: every convolution below `module` that F(4×4, 3×3) computes and pays for
    (`winograd_pays`: 3×3, stride 1, fp32, ≥ MIN_CHANNELS channels) becomes a WinogradConv2d."""
    _replace_below(module, _winograd_form)


def _split_conv(conv: nn.Conv2d, first: int) -> tuple[nn.Conv2d, nn.Conv2d]:
    """conv over cat[a (its first `first` input channels), b] → (conv_a, conv_b), the bias
    on conv_b: conv(cat[a, b]) = conv_a(a) + conv_b(b)."""
    parts = []
    for weight, bias in ((conv.weight[:, :first], None), (conv.weight[:, first:], conv.bias)):
        with torch.device("meta"):  # no random init: the weights are the slices
            part = nn.Conv2d(weight.shape[1], conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                             conv.dilation, bias=bias is not None)
        part.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
        if bias is not None:
            part.bias = nn.Parameter(bias.clone(), requires_grad=False)
        parts.append(part)
    return parts[0], parts[1]


def _add_per_object(per_object: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """per_object [B·O, C, H, W] + shared [B, C, H, W] (each frame's, broadcast over its objects) → [B·O, C, H, W]."""
    return (per_object.unflatten(0, (shared.shape[0], -1)) + shared[:, None]).flatten(0, 1)


class SplitConv(nn.Module):
    """A convolution over input channels [shared s, per-object x_o] (that order) as two:
    conv(cat[s, x_o]) = conv_s(s) + conv_x(x_o), conv_s run once per frame."""

    def __init__(self, conv: nn.Conv2d, shared_channels: int):
        super().__init__()
        self.shared, self.per_object = _split_conv(conv, shared_channels)

    def forward(self, per_object: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        """per_object [B·O, Cx, H, W], shared [B, Cs, H, W] → [B·O, Cout, H', W']."""
        return _add_per_object(self.per_object(per_object), self.shared(shared))


class SplitResBlock(nn.Module):
    """A `ResBlock` over cat[x_o (per object), s (shared)] with its input convolutions split:
    x' = conv2(relu(conv1_x(relu x_o) + conv1_s(relu s))) + down_x(x_o) + down_s(s)."""

    def __init__(self, block: ResBlock, per_object_channels: int):
        super().__init__()
        if block.downsample is None:
            raise ValueError("SplitResBlock needs a ResBlock that changes its channels (with a downsample convolution)")
        self.conv1_x, self.conv1_s = _split_conv(block.conv1, per_object_channels)
        self.down_x, self.down_s = _split_conv(block.downsample, per_object_channels)
        self.conv2 = block.conv2

    def forward(self, per_object: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        """per_object [B·O, Cx, H, W], shared [B, Cs, H, W] → [B·O, Cout, H, W]."""
        hidden = _add_per_object(self.conv1_x(F.relu(per_object)), self.conv1_s(F.relu(shared)))
        return _add_per_object(self.down_x(per_object), self.down_s(shared)) + self.conv2(F.relu(hidden))


def _upsample_shared_skip(block: UpsampleBlock, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """`UpsampleBlock` with its skip convolution once per frame: skip [B, Cs, 2h, 2w] (the
    frame's), up [B·O, Cu, h, w] → out_conv(skip_conv(skip) + ×2 bilinear(up)) [B·O, C, 2h, 2w]."""
    up = F.interpolate(up, scale_factor=2, mode="bilinear", align_corners=False)
    return block.out_conv(_add_per_object(up, block.skip_conv(skip)))


class FastREMN(REMN):
    """A REMN prepared for inference by `prepare_fast_model`: the same step API and function.

    It replaces the trunks (`REMN._key_trunk`, `_value_trunk`, `_decode_trunk`: the network
    parts of encode_key, encode_value and decode). `bf16` (one of BF16_PARTS) names the
    trunks that run under bf16 autocast (BF16_TRUNKS): "key", "encoders" (key and value),
    "all" (the decoder too) or "by_objects" (key, and value up to BF16_VALUES_MAX_OBJECTS
    objects: `keep_fp32_values()` keeps the fp32 copy that encodes more, finished on the
    first step that needs it); their outputs are
    handed on in fp32, so memory, local attention, the gate and the read are fp32 as in the
    plain model. With
    `split_shared_inputs()` applied, the value and decode trunks compute each frame's
    shared inputs once for all its objects; with
    `compute_by_winograd()` the fp32 trunks' wide 3×3 convolutions are WinogradConv2d. With
    `compile_trunks(mode)` each trunk is a `torch.compile` of itself.
    """

    def __init__(self, config, fused: bool = True, bf16: str = "none"):
        super().__init__(config, fused=fused)
        if bf16 not in BF16_PARTS:
            raise ValueError(f"FastREMN bf16 must be one of {BF16_PARTS}, got {bf16!r}")
        self.bf16 = bf16
        self.fp32_value_encoder = None  # the value encoder's fp32 copy, finished: finish_fp32_values()
        # keep_fp32_values(): (that copy as it was taken, the routes to apply to it when it is
        # finished); a tuple, so no registered submodule: the routes run on the model pass it by
        self._fp32_values_pending = None
        self.shares_inputs = False
        self.compile_mode = None

    def _in_bf16(self, trunk: str) -> bool:
        """Whether `trunk` (a key of TRUNK_MODULES) runs under bf16 autocast."""
        return trunk in BF16_TRUNKS[self.bf16]

    def _run_trunk(self, name: str, trunk, *args):
        """trunk(*args), under the CPU's bf16 autocast with its outputs handed back in fp32
        when `bf16` includes the trunk `name`; else as it is (on CUDA the Segmenter's autocast applies)."""
        if not self._in_bf16(name):
            return trunk(*args)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = trunk(*args)
        return _each_output(torch.Tensor.float, outputs)

    def store_bf16_weights(self) -> None:
        """Hold the weights and biases of the bf16 trunks' convolutions and linear layers in
        bf16. Autocast casts an fp32 weight to bf16 on every call (inference keeps no cast
        cache: the weights need no gradient), one copy of every weight per step; a weight
        already in bf16 it takes as it is, so the outputs are the same to the bit. Other
        parameters (BatchNorm's, when not folded) stay fp32, as autocast leaves them."""
        for trunk, names in TRUNK_MODULES.items():
            if not self._in_bf16(trunk):
                continue
            for name in names:
                for module in getattr(self, name).modules():
                    if isinstance(module, (nn.Conv2d, nn.Linear)):
                        module.to(torch.bfloat16)

    def compute_by_winograd(self) -> None:
        """`use_winograd` on the fp32 trunks' modules, a module that is itself such a
        convolution (key_comp) included, and on the value encoder's fp32 copy when it is
        finished. The bf16 trunks keep oneDNN's bf16 convolutions: here F(4×4, 3×3) is an
        fp32 algorithm, its transforms would round to bf16."""
        self._later_on_fp32_values(use_winograd)
        for trunk, names in TRUNK_MODULES.items():
            if self._in_bf16(trunk):
                continue
            for name in names:
                if getattr(self, name) is None:  # fp32_value_encoder before finish_fp32_values()
                    continue
                replaced = _winograd_form(getattr(self, name))
                if replaced is not None:
                    setattr(self, name, replaced)
                else:
                    use_winograd(getattr(self, name))

    def keep_fp32_values(self) -> None:
        """For bf16 "by_objects": keep a copy of the value encoder, as the routes applied so
        far left it, that stays fp32 (`store_bf16_weights` and bf16 autocast pass it by), for
        steps with more than BF16_VALUES_MAX_OBJECTS objects. The first such step finishes it
        (`finish_fp32_values`): the fp32 routes applied to the model since (Winograd, whose
        filters take 4× the weights, and fused ops) are applied to the copy then, so a model
        whose steps never have more objects holds only the copy's fp32 weights."""
        if self.bf16 != "by_objects":
            raise ValueError(f'keep_fp32_values is for bf16 "by_objects", this model has bf16 {self.bf16!r}')
        self.fp32_value_encoder = None
        self._fp32_values_pending = (copy.deepcopy(self.value_encoder), [])

    @property
    def holds_fp32_values(self) -> bool:
        """Whether steps with more than BF16_VALUES_MAX_OBJECTS objects encode values in fp32
        (`keep_fp32_values`), with the copy finished or not."""
        return self.fp32_value_encoder is not None or self._fp32_values_pending is not None

    def finish_fp32_values(self) -> None:
        """Apply to the kept fp32 copy of the value encoder the routes the model took after
        `keep_fp32_values`, in their order, and make it `fp32_value_encoder`; nothing when no
        copy waits."""
        if self._fp32_values_pending is None:
            return
        encoder, routes = self._fp32_values_pending
        for route in routes:
            route(encoder)
        self.fp32_value_encoder, self._fp32_values_pending = encoder, None

    def _apply(self, fn, *args, **kwargs):
        """As nn.Module._apply (`.to`, `.cuda`, `.double` …), on the kept fp32 value copy too."""
        if self._fp32_values_pending is not None:
            self._fp32_values_pending[0]._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def fuse_pointwise_ops(self) -> None:
        """`fuse_pointwise` on the model, and on the value encoder's fp32 copy when it is finished."""
        fuse_pointwise(self)
        self._later_on_fp32_values(fuse_pointwise)

    def _later_on_fp32_values(self, route) -> None:
        """route(module) on the kept fp32 value copy when `finish_fp32_values` finishes it."""
        if self._fp32_values_pending is not None:
            self._fp32_values_pending[1].append(route)

    def split_shared_inputs(self) -> None:
        """Replace the value encoder's stem and fuser input block and the decoder's compress
        block by their split forms (`SplitConv`, `SplitResBlock`); the value and decode
        trunks then take the split route. The replaced modules' forwards are no longer called."""
        encoder = self.value_encoder
        value_channels = encoder.layer3[-1].conv2.out_channels  # the value trunk's f16 width
        encoder.conv1 = SplitConv(encoder.conv1, 3)  # input [RGB (the frame's), mask, other masks]
        encoder.fuser.block1 = SplitResBlock(encoder.fuser.block1, value_channels)  # [values, key f16]
        self.decoder.compress = SplitResBlock(self.decoder.compress, self.config.value_dim)  # [readout, key_comp]
        self.shares_inputs = True

    def compile_trunks(self, mode: str) -> None:
        """Make each trunk `torch.compile(trunk, mode=mode, fullgraph=True, dynamic=False)`.

        The trunks' shapes are fixed for a video (the key trunk) or per object count (the
        value and decode trunks), so each compiles once per shape; the memory read, whose
        bank grows, stays eager. Under "reduce-overhead" (CUDA graphs on CUDA) a graph's
        outputs live in memory its next replay overwrites, and a step keeps features for the
        next frame: each call then marks a new step and hands back copies.
        """
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")
        self.finish_fp32_values()  # a compiled value trunk cannot finish it within its graph
        for name in ("_key_trunk", "_value_trunk", "_decode_trunk"):
            compiled = torch.compile(getattr(self, name), mode=mode, fullgraph=True, dynamic=False)
            setattr(self, name, _graph_outputs_copied(compiled) if mode in CUDA_GRAPH_MODES else compiled)
        self.compile_mode = mode

    def _key_trunk(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._run_trunk("key", super()._key_trunk, image)

    def _value_trunk(self, image: torch.Tensor, key_f16: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """As `REMN._value_trunk`: masks [B, O, Hp, Wp] → values [B·O, Cv, h, w]; a step with
        more than BF16_VALUES_MAX_OBJECTS objects runs the fp32 copy where one is kept,
        finishing it on the first such step."""
        fp32_copy = self.holds_fp32_values and masks.shape[1] > BF16_VALUES_MAX_OBJECTS
        if fp32_copy:
            self.finish_fp32_values()
        trunk_name = "fp32_value" if fp32_copy else "value"
        encoder = self.fp32_value_encoder if fp32_copy else self.value_encoder
        trunk = self._split_value_trunk if self.shares_inputs else super()._value_trunk
        return self._run_trunk(trunk_name, trunk, image, key_f16, masks, encoder)

    def _decode_trunk(self, readout: torch.Tensor, key_comp: torch.Tensor, f8: torch.Tensor,
                      f4: torch.Tensor) -> torch.Tensor:
        """As `REMN._decode_trunk`: readout [B·O, Cv, h, w] → logits [B·O, 1, Hp, Wp]."""
        trunk = self._split_decode_trunk if self.shares_inputs else super()._decode_trunk
        return self._run_trunk("decoder", trunk, readout, key_comp, f8, f4)

    def _split_value_trunk(self, image, key_f16, masks, encoder):
        """The value trunk of `encoder` (split by `split_shared_inputs()`): the frame's image and key f16 enter once."""
        others = masks.sum(dim=1, keepdim=True) - masks  # [B, O, Hp, Wp]
        pairs = torch.stack([masks, others], dim=2).flatten(0, 1)  # [B·O, 2, Hp, Wp]
        x = encoder.conv1(pairs, image)  # [B·O, w, Hp/2, Wp/2]
        x = encoder.layer3(encoder.layer2(encoder.layer1(encoder.maxpool(encoder.relu(encoder.bn1(x))))))
        fuser = encoder.fuser
        x = fuser.block1(x, key_f16)  # [B·O, Cv, h, w]
        return fuser.block2(x + fuser.attention(x))

    def _split_decode_trunk(self, readout, key_comp, f8, f4):
        """The decode trunk with `split_shared_inputs()`: key_comp, f8 and f4 convolved once per frame."""
        decoder = self.decoder
        x = decoder.compress(readout, key_comp)  # [B·O, Cv, h, w]
        x = _upsample_shared_skip(decoder.up_16_8, f8, x)  # [B·O, D0, 2h, 2w]
        x = _upsample_shared_skip(decoder.up_8_4, f4, x)  # [B·O, D1, 4h, 4w]
        x = decoder.pred(F.relu(x))  # [B·O, 1, 4h, 4w]
        return F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)  # [B·O, 1, Hp, Wp]


def _graph_outputs_copied(compiled):
    """`compiled` (a CUDA-graph mode of torch.compile) called as a new step each time, its
    output tensors copied out of the graph's memory before the next replay reuses it."""
    def run(*args):
        torch.compiler.cudagraph_mark_step_begin()
        return _each_output(torch.Tensor.clone, compiled(*args))
    return run


def _each_output(fn, outputs):
    """fn applied to a trunk's output tensor, or to each of its tuple of tensors."""
    return tuple(fn(x) for x in outputs) if isinstance(outputs, tuple) else fn(outputs)


def prepare_fast_model(model: REMN, settings: FastPathSettings | None = None, precision: str = "fp32") -> FastREMN:
    """A FastREMN with `model`'s weights, on its device, in eval mode, with the routes of
    `settings` (default: all; bf16 as `precision` says). `model` is not changed."""
    settings = FastPathSettings() if settings is None else settings
    if not isinstance(model, REMN):
        raise TypeError(f"prepare_fast_model needs a REMN (remn.build_model), got {type(model).__name__}")
    if model.training:
        raise ValueError("prepare_fast_model needs the model in eval mode (call model.eval())")
    parameter = next(model.parameters())
    on_cpu = parameter.device.type == "cpu"
    if settings.bf16 not in (None, "none") and not on_cpu:
        raise ValueError(f"FastPathSettings.bf16 is the CPU's autocast; on {parameter.device} use InferenceConfig.precision")
    bf16 = settings.resolved_bf16(precision) if on_cpu else "none"  # off the CPU the Segmenter's autocast applies `precision`
    with torch.device("meta"):  # no storage and no random init: the weights come from `model`
        fast = FastREMN(model.config, fused=model.fused, bf16=bf16)
    fast.load_state_dict({name: tensor.clone() for name, tensor in model.state_dict().items()}, assign=True)
    for name, buffer in model.named_buffers():  # the non-persistent ones (pixel statistics) are not in the state dict
        owner, _, attribute = name.rpartition(".")
        if fast.get_buffer(name).is_meta:
            setattr(fast.get_submodule(owner), attribute, buffer.clone())
    fast = fast.eval().requires_grad_(False)
    if settings.fold_batchnorm:
        fold_batchnorm(fast)
    if settings.share_inputs:
        fast.split_shared_inputs()
    if settings.channels_last:  # 2-D convolutions only (RDE's compressor holds 3-D ones)
        for module in fast.modules():
            if isinstance(module, nn.Conv2d):
                module.to(memory_format=torch.channels_last)
    if fast.bf16 == "by_objects":  # before the bf16 weights, with the layout set
        fast.keep_fp32_values()
    fast.store_bf16_weights()
    if settings.winograd and on_cpu and settings.compile_mode is None:  # after the layout and the bf16 weights are set
        fast.compute_by_winograd()
    # After the weights' layout and dtype are set; a compiled trunk is left to Inductor's own fusion.
    fuse = settings.fuse_pointwise and settings.channels_last and settings.compile_mode is None
    if fuse and on_cpu and conv_pointwise_available():
        fast.fuse_pointwise_ops()
    if settings.compile_mode is not None:
        fast.compile_trunks(settings.compile_mode)
    if settings.reuse_freed_memory and on_cpu:
        keep_freed_memory()
    return fast


def inference_model(model: REMN, fast_path: FastPathSettings | bool | None = None, precision: str = "fp32") -> REMN:
    """The model a `Segmenter` runs; `precision` is its InferenceConfig's.

    fast_path None (the default): on a CPU, `prepare_fast_model(model)` with the default
    settings; on another device `model` itself (the routes are not yet measured on a GPU).
    True: the default settings on any device (off the CPU bf16 stays "none": there the
    Segmenter's own autocast applies `precision`). A FastPathSettings: those settings.
    False: `model` itself. A model already prepared is returned as it is.
    """
    if fast_path is not None and not isinstance(fast_path, (bool, FastPathSettings)):
        raise ValueError(f"fast_path must be None, a bool or a FastPathSettings, got {fast_path!r}")
    if fast_path is False or isinstance(model, FastREMN):
        return model
    on_cpu = next(model.parameters()).device.type == "cpu"
    if fast_path is None and not on_cpu:
        return model
    settings = fast_path if isinstance(fast_path, FastPathSettings) else FastPathSettings()
    return prepare_fast_model(model, settings, precision)
