"""FusedConv (oneDNN's convolution with post-ops): packed weights and dtypes oneDNN cannot take."""
import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

from remn.inference import onednn
from remn.inference.onednn import FusedConv, conv_pointwise_available, onednn_convolves

pytestmark = pytest.mark.skipif(not conv_pointwise_available(), reason="this torch build has no oneDNN convolution")


def conv_and_input(batch, in_channels, out_channels, height, width, kernel=3, stride=1, padding=1, dilation=1,
                   groups=1, bias=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    conv = torch.nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, dilation=dilation,
                           groups=groups, bias=bias).eval().requires_grad_(False)
    conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) / (kernel * in_channels ** 0.5))
    if bias:
        conv.bias.copy_(torch.randn(out_channels, generator=generator))
    x = torch.randn(batch, in_channels, height, width, generator=generator)
    return conv, x


def separate_ops(conv, x, add, relu):
    out = conv(x) if add is None else conv(x) + add
    return F.relu(out) if relu else out


@pytest.mark.parametrize("geometry", [
    dict(kernel=3, padding=1),
    dict(kernel=1, padding=0),
    dict(kernel=3, stride=2, padding=1),  # odd size: a tail row and column
    dict(kernel=3, padding=2, dilation=2),
    dict(kernel=3, padding=1, groups=4),
    dict(kernel=7, stride=2, padding=3),  # the ResNet stem's
])
@pytest.mark.parametrize("add_relu", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@torch.inference_mode()
def test_small_calls_on_packed_weights_give_the_plain_calls_bits(monkeypatch, geometry, add_relu, bias):
    conv, x = conv_and_input(2, 16, 24, 9, 13, bias=bias, **geometry)
    out_height, out_width = conv(x).shape[2:]
    add = torch.randn(2, 24, out_height, out_width) if add_relu else None
    module = FusedConv(conv)
    packed = module(x, add=add, relu=add_relu)
    assert module._packed is not None and module._packed[1].is_mkldnn  # 2·H'·W' < PACKED_WEIGHTS_BELOW_PIXELS
    monkeypatch.setattr(onednn, "PACKED_WEIGHTS_BELOW_PIXELS", 0)
    plain = FusedConv(conv)(x, add=add, relu=add_relu)
    assert packed.is_contiguous(memory_format=torch.channels_last) and torch.equal(packed, plain)
    want = separate_ops(conv, x, add, relu=add_relu)
    torch.testing.assert_close(packed, want, rtol=0, atol=16 * torch.finfo(torch.float32).eps * want.abs().max().item())


@torch.inference_mode()
def test_only_calls_below_the_pixel_bound_pack():
    conv, _ = conv_and_input(1, 8, 8, 1, 1)
    module = FusedConv(conv)
    side = int(onednn.PACKED_WEIGHTS_BELOW_PIXELS ** 0.5)  # 32: 1024 output pixels, not below the bound
    module(torch.randn(1, 8, side, side))
    assert module._packed is None
    module(torch.randn(1, 8, side - 1, side))
    assert module._packed is not None
    module(torch.randn(1, 8, side, side))  # large again: the plain weight; the packing stays for the next small call
    assert module._packed[0][0] == (1, 8, side - 1, side)


def test_the_packing_follows_the_input_shape_and_the_weight():
    conv, x = conv_and_input(1, 8, 6, 10, 10)
    module = FusedConv(conv)
    with torch.no_grad():
        module(x)
        other = torch.randn(3, 8, 5, 7)
        torch.testing.assert_close(module(other), conv(other), rtol=0, atol=1e-5)
        assert module._packed[0][0] == (3, 8, 5, 7)
        conv.weight.mul_(-2)  # the module's weight is the conv's: changed in place
        torch.testing.assert_close(module(other), conv(other), rtol=0, atol=1e-5)
        module.weight = torch.nn.Parameter(torch.randn_like(conv.weight))  # replaced: a new tensor
        torch.testing.assert_close(module(other), F.conv2d(other, module.weight, module.bias, padding=1),
                                   rtol=0, atol=1e-5)


@torch.inference_mode()
def test_a_module_with_a_packed_weight_copies_and_pickles():
    conv, x = conv_and_input(1, 8, 6, 10, 10)
    module = FusedConv(conv)
    want = module(x)
    assert module._packed is not None
    for copied in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert copied._packed is None and torch.equal(copied(x), want)
    assert module._packed is not None  # the original keeps its own


@pytest.mark.parametrize("add_relu", [False, True])
def test_bf16_where_onednn_cannot_take_it_runs_torchs_convolution(monkeypatch, add_relu):
    """bf16 without oneDNN's bf16 kernels (AVX2 CPUs): torch's convolution, then the add and
    ReLU, as a Conv2d under the autocast would with the add in bf16; where oneDNN takes bf16
    its fused call lies within bf16's rounding of that."""
    conv, x = conv_and_input(2, 16, 8, 9, 11)
    add = torch.randn(2, 8, 9, 11) if add_relu else None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = separate_ops(conv, x, None if add is None else add.bfloat16(), relu=add_relu)
        native = FusedConv(conv)(x, add=add, relu=add_relu)  # oneDNN's, or torch's where it cannot
        monkeypatch.setattr(onednn, "onednn_convolves", lambda dtype: dtype == torch.float32)
        fallback = FusedConv(conv)(x, add=add, relu=add_relu)
    assert fallback.dtype == native.dtype == torch.bfloat16 and torch.equal(fallback, want)
    if not onednn_convolves(torch.bfloat16):
        assert torch.equal(native, want)
    torch.testing.assert_close(native.float(), want.float(), rtol=0,
                               atol=2 * torch.finfo(torch.bfloat16).eps * want.float().abs().max().item())
