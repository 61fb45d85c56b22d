"""STCN's network core: key encoder, value encoder with its fuser, key projection, decoder.

Module and parameter names match the published STCN checkpoint exactly, so `stcn.pth`
loads strictly. Widths are configurable (`ModelConfig`) for small models.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from remn.model.resnet import BasicBlock, Bottleneck, ResNetStem, init_resnet, make_stage, stage_channels


class ResBlock(nn.Module):
    """x' = conv2(relu(conv1(relu(x)))) + downsample(x); 3×3 convolutions with bias."""

    def __init__(self, in_channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.downsample = None if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def forward(self, x):
        residual = self.conv2(F.relu(self.conv1(F.relu(x))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return shortcut + residual


class ChannelGate(nn.Module):
    """CBAM channel gate: shared MLP on avg- and max-pooled features, summed, sigmoid."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        # Index 0 (flatten) and 2 (ReLU) carry no parameters; names match STCN's mlp.1/mlp.3.
        self.mlp = nn.Sequential(
            nn.Flatten(), nn.Linear(channels, channels // reduction), nn.ReLU(), nn.Linear(channels // reduction, channels)
        )

    def forward(self, x):
        avg = self.mlp(F.adaptive_avg_pool2d(x, 1))  # [B, C]
        peak = self.mlp(F.adaptive_max_pool2d(x, 1))  # [B, C]
        return x * torch.sigmoid(avg + peak)[:, :, None, None]


class SpatialConv(nn.Module):
    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2)


class SpatialGate(nn.Module):
    """CBAM spatial gate: 7×7 conv over [channel max, channel mean], sigmoid."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.spatial = SpatialConv(kernel_size)

    def forward(self, x):
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)  # [B, 2, H, W]
        return x * torch.sigmoid(self.spatial.conv(pooled))


class CBAM(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.ChannelGate = ChannelGate(channels, reduction)  # noqa: N815 (checkpoint name)
        self.SpatialGate = SpatialGate()  # noqa: N815 (checkpoint name)

    def forward(self, x):
        return self.SpatialGate(self.ChannelGate(x))


class FeatureFusion(nn.Module):
    """Fuses value-encoder features with the key encoder's f16: block1 → CBAM → block2."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.block1 = ResBlock(in_channels, out_channels)
        self.attention = CBAM(out_channels)
        self.block2 = ResBlock(out_channels, out_channels)

    def forward(self, value_features, key_f16):
        x = self.block1(torch.cat([value_features, key_f16], dim=1))
        return self.block2(x + self.attention(x))


class KeyEncoder(ResNetStem):
    """ResNet-50 to stride 16: returns f16 [B, 4w·4, H/16, W/16], f8, f4."""

    def __init__(self, width: int = 64, blocks=(3, 4, 6)):
        super().__init__(3, width, bias=False)
        c4, c8, _ = stage_channels(Bottleneck, width)
        self.res2 = make_stage(Bottleneck, width, width, blocks[0], 1)
        self.layer2 = make_stage(Bottleneck, c4, width * 2, blocks[1], 2)
        self.layer3 = make_stage(Bottleneck, c8, width * 4, blocks[2], 2)
        init_resnet(self)

    def forward(self, image):
        f4 = self.res2(self.stem(image))
        f8 = self.layer2(f4)
        f16 = self.layer3(f8)
        return f16, f8, f4


class ValueEncoder(ResNetStem):
    """ResNet-18 (biased convs) over [RGB, object mask, other objects' masks] to stride 16, fused."""

    def __init__(self, value_dim: int, key_f16_channels: int, width: int = 64, blocks=(2, 2, 2)):
        super().__init__(5, width, bias=True)
        c4, c8, c16 = stage_channels(BasicBlock, width)
        self.layer1 = make_stage(BasicBlock, width, c4, blocks[0], 1)
        self.layer2 = make_stage(BasicBlock, c4, c8, blocks[1], 2)
        self.layer3 = make_stage(BasicBlock, c8, c16, blocks[2], 2)
        init_resnet(self)
        self.fuser = FeatureFusion(c16 + key_f16_channels, value_dim)

    def forward(self, image, key_f16, masks, other_masks):
        """image [B, 3, H, W], key_f16 [B, C16, H/16, W/16], masks/other_masks [B, 1, H, W] → [B, Cv, H/16, W/16]."""
        x = self.stem(torch.cat([image, masks, other_masks], dim=1))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fuser(x, key_f16)


class KeyProjection(nn.Module):
    def __init__(self, in_channels: int, key_dim: int):
        super().__init__()
        self.key_proj = nn.Conv2d(in_channels, key_dim, 3, padding=1)
        nn.init.orthogonal_(self.key_proj.weight)
        nn.init.zeros_(self.key_proj.bias)

    def forward(self, x):
        return self.key_proj(x)


class UpsampleBlock(nn.Module):
    """skip_conv(skip) + ×2 bilinear(up), then a residual block."""

    def __init__(self, skip_channels: int, up_channels: int, out_channels: int):
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_channels, up_channels, 3, padding=1)
        self.out_conv = ResBlock(up_channels, out_channels)

    def forward(self, skip, up):
        up = F.interpolate(up, scale_factor=2, mode="bilinear", align_corners=False)
        return self.out_conv(self.skip_conv(skip) + up)


class Decoder(nn.Module):
    """[readout, key_comp] at stride 16 plus f8, f4 skips → one logit map at full resolution."""

    def __init__(self, value_dim: int, f8_channels: int, f4_channels: int, dims=(256, 256)):
        super().__init__()
        self.compress = ResBlock(2 * value_dim, value_dim)
        self.up_16_8 = UpsampleBlock(f8_channels, value_dim, dims[0])
        self.up_8_4 = UpsampleBlock(f4_channels, dims[0], dims[1])
        self.pred = nn.Conv2d(dims[1], 1, 3, padding=1)

    def forward(self, f16, f8, f4):
        """f16 [B', 2Cv, h, w], f8 [B', C8, 2h, 2w], f4 [B', C4, 4h, 4w] → logits [B', 1, 16h, 16w]."""
        x = self.compress(f16)
        x = self.up_16_8(f8, x)
        x = self.up_8_4(f4, x)
        x = self.pred(F.relu(x))
        return F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
