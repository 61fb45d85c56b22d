"""WinogradConv2d (F(4×4, 3×3)) against the direct convolution, and where the fast path uses it."""
import pytest
import torch
import torch.nn.functional as F

import remn
from remn.inference import fast_path, winograd
from remn.inference.fast_path import FastPathSettings, prepare_fast_model
from remn.inference.onednn import FusedConv
from remn.inference.winograd import WinogradConv2d, winograd_applies, winograd_pays

# a rounding floor for Winograd's fp32 error: about 1e-5 of the output's scale at 256-512
# channels (the module docstring), against ~1e-6 for the direct convolution
WINOGRAD_RTOL = 3e-5


@pytest.fixture(autouse=True)
def every_call_by_winograd(monkeypatch):
    """These tests' convolutions are small: let F(4×4, 3×3) take every call (see
    test_calls_on_few_tiles_run_the_direct_convolution for the rule itself)."""
    monkeypatch.setattr(winograd, "MIN_TILES", 0)


def conv_and_input(batch, in_channels, out_channels, height, width, bias=True, channels_last=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    conv = torch.nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias).eval().requires_grad_(False)
    conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) / (3 * in_channels ** 0.5))
    if bias:
        conv.bias.copy_(torch.randn(out_channels, generator=generator))
    x = torch.randn(batch, in_channels, height, width, generator=generator)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return conv, x


@pytest.mark.parametrize("shape", [
    (1, 8, 8, 16, 16),  # whole tiles
    (2, 7, 5, 13, 19),  # tails on both axes, Cin ≠ Cout
    (3, 16, 24, 5, 7),  # one partial tile row and column pair
    (1, 4, 4, 1, 1),  # a single pixel: all padding but the centre
    (2, 32, 16, 30, 54),  # the decoder's 1/16 grid at 480p (not a multiple of 4)
])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_winograd_computes_the_convolution(shape, bias, channels_last):
    conv, x = conv_and_input(*shape, bias=bias, channels_last=channels_last)
    want = F.conv2d(x.double(), conv.weight.double(), None if conv.bias is None else conv.bias.double(), padding=1)
    got = WinogradConv2d(conv)(x)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=WINOGRAD_RTOL * want.abs().max().item())


@pytest.mark.parametrize("min_tiles, max_bytes, shape", [
    (1, 1, (1, 1)),  # one tile row of one image: 2 images × 6 bands, the last 2 rows tall
    (20, 1 << 30, (2, 2)),  # two tile rows of both images: 3 bands
])
def test_winograd_adds_and_rectifies_in_bands(monkeypatch, min_tiles, max_bytes, shape):
    """relu(conv(x) + add) in bands of tile rows (the last band cut by the image edge)
    equals the same in one band of both images, and the direct math."""
    conv, x = conv_and_input(2, 12, 10, 22, 17)  # 6 × 5 tiles of 4 × 4 per image
    add = torch.randn(2, 10, 22, 17).contiguous(memory_format=torch.channels_last)
    want = F.relu(F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1) + add.double())
    module = WinogradConv2d(conv)
    assert winograd.band_shape(2, 6, 5, 12) == (2, 6)
    one_band = module(x, add=add, relu=True)
    monkeypatch.setattr(winograd, "MIN_BAND_TILES", min_tiles)
    monkeypatch.setattr(winograd, "MAX_BAND_BYTES", max_bytes)
    assert winograd.band_shape(2, 6, 5, 12) == shape
    banded = module(x, add=add, relu=True)
    # the same math; BLAS may sum each product in another order for another band height
    rounding = 16 * torch.finfo(torch.float32).eps * one_band.abs().max().item()
    torch.testing.assert_close(banded, one_band, rtol=0, atol=rounding)
    torch.testing.assert_close(banded.double(), want, rtol=0, atol=WINOGRAD_RTOL * want.abs().max().item())
    assert (banded == 0).any() and (banded >= 0).all()


@pytest.mark.parametrize("batch, tile_rows, tile_cols, channels", [
    (1, 30, 54, 256), (2, 30, 54, 256), (4, 30, 54, 256), (2, 15, 27, 512), (2, 8, 14, 1024),  # 480p's grids
    (64, 30, 54, 256),  # many objects: a tile row of every image together exceeds MAX_BAND_BYTES
    (1, 3, 2000, 4096),  # one tile row of one image alone exceeds it
    (3, 2, 3, 8),  # the whole batch holds fewer than MIN_BAND_TILES tiles
])
def test_bands_hold_enough_tiles_within_the_byte_budget(batch, tile_rows, tile_cols, channels):
    images, rows = winograd.band_shape(batch, tile_rows, tile_cols, channels)
    assert 1 <= images <= batch and 1 <= rows <= tile_rows
    tiles = images * rows * tile_cols
    tile_bytes = 4 * winograd.POSITIONS * channels
    if tile_cols * tile_bytes > winograd.MAX_BAND_BYTES:
        assert (images, rows) == (1, 1)
        return
    assert tiles * tile_bytes <= winograd.MAX_BAND_BYTES
    # as many tiles as asked for, or as the budget or the batch allows
    grown = [(images, rows + 1)] if rows < tile_rows else []
    grown += [(images + 1, rows)] if images < batch else []
    assert tiles >= winograd.MIN_BAND_TILES or all(
        n * r * tile_cols * tile_bytes > winograd.MAX_BAND_BYTES for n, r in grown)


def test_winograd_at_the_decoders_width_errs_near_the_direct_convolution():
    """At 256 channels (the decoder's 1/4 grid, cut to a band): within 20× the direct fp32
    convolution's own error against fp64, and within WINOGRAD_RTOL of the scale."""
    conv, x = conv_and_input(1, 256, 256, 12, 20, seed=3)
    exact = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
    direct_error = (conv(x).double() - exact).abs().max().item()
    error = (WinogradConv2d(conv)(x).double() - exact).abs().max().item()
    assert error <= 20 * direct_error and error <= WINOGRAD_RTOL * exact.abs().max().item()


def test_under_an_autocast_winograd_runs_the_direct_convolution():
    """As a FusedConv of the conv under the autocast: bf16 convolution, the add and ReLU
    inside (where oneDNN takes bf16 on this CPU; else after it), to the bit, and within bf16's
    rounding of the Conv2d it replaces with the add and ReLU after it."""
    conv, x = conv_and_input(1, 8, 8, 9, 11)
    add = torch.randn(1, 8, 9, 11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        separate = F.relu(conv(x) + add)
        want = FusedConv(conv)(x, add=add, relu=True)
        got = WinogradConv2d(conv)(x, add=add, relu=True)
    assert got.dtype == want.dtype == torch.bfloat16 and torch.equal(got, want)
    torch.testing.assert_close(got.float(), separate.float(), rtol=0,
                               atol=2 * torch.finfo(torch.bfloat16).eps * separate.abs().max().item())


@pytest.mark.parametrize("batch, height, width, by_winograd", [
    (1, 16, 12, False),  # 4 × 3 = 12 tiles: below MIN_TILES
    (2, 16, 12, True),  # 24 tiles over the batch
    (1, 13, 19, True),  # 4 × 5 tiles with tails
    (3, 1, 1, False),  # one pixel, one tile per image
])
@pytest.mark.parametrize("add_relu", [False, True])
def test_calls_on_few_tiles_run_the_direct_convolution(monkeypatch, batch, height, width, by_winograd, add_relu):
    """A call on fewer than MIN_TILES tiles computes relu?(conv(x) + add?) with the direct
    convolution (a FusedConv of the conv, to the bit, channels-last); every other by
    F(4×4, 3×3)."""
    monkeypatch.setattr(winograd, "MIN_TILES", 16)
    conv, x = conv_and_input(batch, 24, 40, height, width, channels_last=False)
    add = torch.randn(batch, 40, height, width) if add_relu else None
    direct = FusedConv(conv)(x, add=add, relu=add_relu)
    separate = conv(x) if add is None else F.relu(conv(x) + add)
    torch.testing.assert_close(direct, separate, rtol=0, atol=16 * torch.finfo(torch.float32).eps * separate.abs().max().item())
    module = WinogradConv2d(conv)
    got = module(x, add=add, relu=add_relu)
    assert module.pays_on(batch * -(-height // 4) * -(-width // 4)) == by_winograd
    assert got.is_contiguous(memory_format=torch.channels_last) and got.dtype == torch.float32
    assert torch.equal(got, direct) == (not by_winograd)
    torch.testing.assert_close(got, direct, rtol=0, atol=WINOGRAD_RTOL * direct.abs().max().item())


def test_winograd_refuses_what_it_does_not_compute():
    for conv in (torch.nn.Conv2d(4, 4, 3, stride=2, padding=1), torch.nn.Conv2d(4, 4, 1),
                 torch.nn.Conv2d(4, 4, 3, padding=1, groups=2), torch.nn.Conv2d(4, 4, 3, padding=2, dilation=2),
                 torch.nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
                 torch.nn.Conv2d(4, 4, 3, padding=1).to(torch.bfloat16), torch.nn.Conv2d(4, 4, 3, padding="same")):
        assert not winograd_applies(conv)
        with pytest.raises(ValueError, match="3×3, stride-1"):
            WinogradConv2d(conv)
    module = WinogradConv2d(torch.nn.Conv2d(4, 6, 3, padding=1))
    with pytest.raises(ValueError, match=r"fp32 \[N, 4, H, W\]"):
        module(torch.rand(1, 5, 8, 8))
    with pytest.raises(ValueError, match=r"fp32 \[N, 4, H, W\]"):
        module(torch.rand(1, 4, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="add must be"):
        module(torch.rand(1, 4, 8, 8), add=torch.rand(1, 6, 8, 7))
    assert winograd_pays(torch.nn.Conv2d(128, 256, 3, padding=1))
    assert not winograd_pays(torch.nn.Conv2d(256, 64, 3, padding=1))
    assert not winograd_pays(torch.nn.Conv2d(256, 1, 3, padding=1))


@pytest.mark.parametrize("bf16", fast_path.BF16_PARTS)
def test_fast_path_computes_its_fp32_trunks_by_winograd(monkeypatch, bf16):
    """With every width eligible (MIN_CHANNELS = 1 on the tiny model), the fp32 trunks'
    3×3 stride-1 convolutions, in the fused blocks too, become WinogradConv2d and the bf16
    trunks' do not; the step's outputs stay within fp32-route tolerance of the plain model."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    torch.manual_seed(0)
    model = remn.build_model(config="tiny", device="cpu").eval()
    fast = prepare_fast_model(model, FastPathSettings(bf16=bf16))
    fast.finish_fp32_values()  # by_objects: the value encoder's fp32 copy takes Winograd when finished
    for trunk, names in fast_path.TRUNK_MODULES.items():
        for name in [name for name in names if getattr(fast, name) is not None]:  # fp32_value_encoder: by_objects only
            kinds = {type(module) for module in getattr(fast, name).modules()}
            assert (WinogradConv2d in kinds) == (not fast._in_bf16(trunk)), (trunk, name)
    fused_by_winograd = [isinstance(block.conv2, WinogradConv2d) for block in fast.modules()
                         if isinstance(block, fast_path.FusedResBlock)]
    assert fused_by_winograd and any(fused_by_winograd) == (not fast._in_bf16("decoder"))
    plain = prepare_fast_model(model, FastPathSettings(bf16=bf16, winograd=False))
    assert not any(isinstance(module, WinogradConv2d) for module in plain.modules())
    generator = torch.Generator().manual_seed(1)
    image, probs = torch.rand(1, 3, 56, 72, generator=generator), torch.rand(1, 2, 56, 72, generator=generator)
    with torch.inference_mode():
        features, want_features = fast.encode_key(image), plain.encode_key(image)
        readout = torch.randn(1, 2, model.config.value_dim, *features.key.shape[-2:], generator=generator)
        for got, want in ((features.key, want_features.key),
                          (fast.encode_value(features, probs), plain.encode_value(features, probs)),
                          (fast.decode(features, readout), plain.decode(features, readout))):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
