"""InstanSeg's UNet (Goldsborough et al. 2024), written from the paper's description and checked layer by
layer against ``instanseg.utils.models.InstanSeg_UNet`` (instanseg-torch 0.1.2) on random weights.

Parameter names follow the authors' module tree, so a state dict converted from their TorchScript release
loads as it is. Blocks: residual encoder blocks (max-pool, a 1x1 projection added to two 3x3 convolutions,
then a residual pair of 3x3 convolutions), decoder blocks (nearest 2x upsampling, the skip projected 1x1 and
added before the second convolution), one 1x1 head per output group, concatenated.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _cna(cin: int, cout: int, k: int, norm: str | None, act: bool = True) -> nn.Sequential:
    if norm is None or str(norm).lower() == "none":
        nl = nn.Identity()
    elif norm.lower() == "batch":
        nl = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.05)
    elif norm.lower() == "instance":
        nl = nn.InstanceNorm2d(cout, eps=1e-5, track_running_stats=False, affine=True)
    else:
        raise ValueError(f"norm must be None, 'batch' or 'instance', got {norm!r}")
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nl, nn.ReLU(inplace=True) if act else nn.Identity())


class _Encoder(nn.Module):
    def __init__(self, cin, cout, pool, norm):
        super().__init__()
        self.maxpool = nn.MaxPool2d(2, 2) if pool else nn.Identity()
        self.conv0 = _cna(cin, cout, 1, norm)
        self.conv1 = _cna(cin, cout, 3, norm)
        self.conv2 = _cna(cout, cout, 3, norm)
        self.conv3 = _cna(cout, cout, 3, norm)
        self.conv4 = _cna(cout, cout, 3, norm)

    def forward(self, x):
        x = self.maxpool(x)
        x = self.conv0(x) + self.conv2(self.conv1(x))
        return x + self.conv4(self.conv3(x))


class _Decoder(nn.Module):
    def __init__(self, cin, cskip, cout, norm):
        super().__init__()
        self.conv0 = _cna(cin, cout, 1, norm)
        self.conv_skip = _cna(cskip, cout, 1, norm)
        self.conv1 = _cna(cin, cout, 3, norm)
        self.conv2 = _cna(cout, cout, 3, norm)
        self.conv3 = _cna(cout, cout, 3, norm)
        self.conv4 = _cna(cout, cout, 3, norm)

    def forward(self, x, skip):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv0(x) + self.conv2(self.conv1(x) + self.conv_skip(skip))
        return x + self.conv4(self.conv3(x))


class _Head(nn.Module):
    def __init__(self, layers, outs, norm):
        super().__init__()
        self.decoder = nn.ModuleList([_Decoder(layers[i], layers[i + 1], layers[i + 1], norm)
                                      for i in range(len(layers) - 1)])
        head_norm = norm if norm is not None and str(norm).lower() != "instance" else None
        self.final_block = nn.ModuleList([_cna(layers[-1], o, 1, head_norm, act=False) for o in outs])

    def forward(self, x, skips):
        for block, skip in zip(self.decoder, skips[::-1]):
            x = block(x, skip)
        return torch.cat([f(x) for f in self.final_block], dim=1)


class InstanSegUNet(nn.Module):
    """InstanSeg's UNet: `in_channels` -> concatenated heads (``out_channels`` groups, e.g. ``[[2, 2, 1]]`` for
    2 embedding coordinates, 2 sigmas and 1 seed map); `layers` deepest first, as the authors write them."""

    def __init__(self, in_channels: int = 3, out_channels=((2, 2, 1),), layers=(256, 128, 64, 32),
                 norm: str | None = "BATCH"):
        super().__init__()
        if isinstance(out_channels, int):
            out_channels = [[out_channels]]
        out_channels = [list(o) if not isinstance(o, int) else [o] for o in out_channels]
        shallow_first = list(layers)[::-1]
        self.encoder = nn.ModuleList(
            [_Encoder(in_channels, shallow_first[0], False, norm)]
            + [_Encoder(shallow_first[i], shallow_first[i + 1], True, norm) for i in range(len(layers) - 1)])
        self.decoders = nn.ModuleList([_Head(list(layers), o, norm) for o in out_channels])

    def forward(self, x):
        skips = []
        for n, block in enumerate(self.encoder):
            x = block(x)
            if n < len(self.encoder) - 1:
                skips.append(x)
        return torch.cat([d(x, skips) for d in self.decoders], dim=1)
