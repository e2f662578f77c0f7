"""HoVer-Net (Graham et al. 2019), written from the paper and checked against the authors' PyTorch port
(github.com/vqdang/hover_net, ``models/hovernet/net_desc.py``) on random weights.

Module names reproduce the authors' state-dict keys (``conv0./.weight``, ``d0.units.0.conv1/bn.weight``,
``decoder.tp.u3.dense.units.0.preact_bna/bn.weight``, ``upsample2x.unpool_mat``), so their checkpoints, whose
tensors sit under ``"desc"``, load as they are. The encoder is a pre-activation ResNet-50 with TensorFlow
"same" padding; the three decoders (``np`` nucleus / background, ``hv`` horizontal and vertical distance
maps, ``tp`` types) use valid convolutions and dense blocks, so a 256 px input gives a 164 px output in
"fast" mode (270 -> 80 in "original" mode).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

# input side -> output side of one network pass; the output is centred on the input
PATCH = {"fast": (256, 164), "original": (270, 80)}


def _same_pad(x, ksize: int, stride: int):
    # TensorFlow's "same": the odd pixel of padding goes at the end
    r = x.shape[2] % stride
    pad = max(ksize - (stride if r == 0 else r), 0)
    a = pad // 2
    return F.pad(x, (a, pad - a, a, pad - a))


class _SamePad(nn.Module):
    def __init__(self, ksize: int, stride: int):
        super().__init__()
        self.ksize, self.stride = ksize, stride

    def forward(self, x):
        return _same_pad(x, self.ksize, self.stride)


def _bn(c):
    return nn.BatchNorm2d(c, eps=1e-5)


def _conv(cin, cout, k, stride=1, groups=1, bias=False):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=0, groups=groups, bias=bias)


def _centre_crop(x, h: int, w: int):
    t, l_ = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
    return x[:, :, t:t + h, l_:l_ + w]


class _ResidualStage(nn.Module):
    """Pre-activation bottleneck units (1x1, 3x3, 1x1); the first unit strides and has no pre-activation
    because the previous stage ends with BN-ReLU (``blk_bna``)."""

    def __init__(self, cin, chans, count, stride=1):
        super().__init__()
        self.units = nn.ModuleList()
        c = cin
        for i in range(count):
            s = stride if i == 0 else 1
            layers = [] if i == 0 else [("preact/bn", _bn(c)), ("preact/relu", nn.ReLU())]
            layers += [("conv1", _conv(c, chans[0], 1)), ("conv1/bn", _bn(chans[0])), ("conv1/relu", nn.ReLU()),
                       ("conv2/pad", _SamePad(3, s)), ("conv2", _conv(chans[0], chans[1], 3, stride=s)),
                       ("conv2/bn", _bn(chans[1])), ("conv2/relu", nn.ReLU()),
                       ("conv3", _conv(chans[1], chans[2], 1))]
            self.units.append(nn.Sequential(OrderedDict(layers)))
            c = chans[2]
        self.shortcut = _conv(cin, chans[2], 1, stride=stride) if cin != chans[2] or stride != 1 else None
        self.blk_bna = nn.Sequential(OrderedDict([("bn", _bn(c)), ("relu", nn.ReLU())]))

    def forward(self, x):
        skip = x if self.shortcut is None else self.shortcut(x)
        for unit in self.units:
            x = unit(x) + skip
            skip = x
        return self.blk_bna(x)


class _DenseBlock(nn.Module):
    """Units of BN-ReLU-1x1 (128) then BN-ReLU-kxk grouped valid convolution (32), each concatenated to its
    centre-cropped input."""

    def __init__(self, cin, ksize, count, split=4):
        super().__init__()
        self.units = nn.ModuleList()
        c = cin
        for _ in range(count):
            self.units.append(nn.Sequential(OrderedDict([
                ("preact_bna/bn", _bn(c)), ("preact_bna/relu", nn.ReLU()), ("conv1", _conv(c, 128, 1)),
                ("conv1/bn", _bn(128)), ("conv1/relu", nn.ReLU()), ("conv2", _conv(128, 32, ksize, groups=split)),
            ])))
            c += 32
        self.blk_bna = nn.Sequential(OrderedDict([("bn", _bn(c)), ("relu", nn.ReLU())]))

    def forward(self, x):
        for unit in self.units:
            new = unit(x)
            x = torch.cat([_centre_crop(x, new.shape[2], new.shape[3]), new], 1)
        return self.blk_bna(x)


def _decoder(out_ch: int, ksize: int) -> nn.Sequential:
    u3 = nn.Sequential(OrderedDict([("conva", _conv(1024, 256, ksize)), ("dense", _DenseBlock(256, ksize, 8)),
                                    ("convf", _conv(512, 512, 1))]))
    u2 = nn.Sequential(OrderedDict([("conva", _conv(512, 128, ksize)), ("dense", _DenseBlock(128, ksize, 4)),
                                    ("convf", _conv(256, 256, 1))]))
    u1 = nn.Sequential(OrderedDict([("conva/pad", _SamePad(ksize, 1)), ("conva", _conv(256, 64, ksize))]))
    u0 = nn.Sequential(OrderedDict([("bn", _bn(64)), ("relu", nn.ReLU()), ("conv", _conv(64, out_ch, 1, bias=True))]))
    return nn.Sequential(OrderedDict([("u3", u3), ("u2", u2), ("u1", u1), ("u0", u0)]))


class _Upsample2x(nn.Module):
    """Nearest 2x upsampling as a Kronecker product with ``unpool_mat`` (ones; a buffer in the checkpoints)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("unpool_mat", torch.ones(2, 2))

    def forward(self, x):
        b, c, h, w = x.shape
        m = self.unpool_mat.to(x.dtype)
        return (x[:, :, :, None, :, None] * m[None, None, None, :, None, :]).reshape(b, c, 2 * h, 2 * w)


class HoVerNet(nn.Module):
    """HoVer-Net: uint8-range RGB (n, 3, h, w) -> ``{"tp", "np", "hv"}`` logits / maps (centre crop).

    `nr_types` counts the type channels including background (6 for PanNuke); None: no type branch.
    `mode` "fast" (PanNuke, MoNuSAC checkpoints: 256 -> 164) or "original" (CoNSeP, Kumar: 270 -> 80).
    """

    def __init__(self, nr_types: int | None = 6, mode: str = "fast", input_ch: int = 3):
        super().__init__()
        if mode not in PATCH:
            raise ValueError(f"mode must be 'fast' or 'original', got {mode!r}")
        self.mode, self.nr_types = mode, nr_types
        conv0 = [("/", _conv(input_ch, 64, 7)), ("bn", _bn(64)), ("relu", nn.ReLU())]
        if mode == "fast":
            conv0.insert(0, ("pad", _SamePad(7, 1)))
        self.conv0 = nn.Sequential(OrderedDict(conv0))
        self.d0 = _ResidualStage(64, (64, 64, 256), 3)
        self.d1 = _ResidualStage(256, (128, 128, 512), 4, stride=2)
        self.d2 = _ResidualStage(512, (256, 256, 1024), 6, stride=2)
        self.d3 = _ResidualStage(1024, (512, 512, 2048), 3, stride=2)
        self.conv_bot = _conv(2048, 1024, 1)
        k = 3 if mode == "fast" else 5
        heads = ([("tp", nr_types)] if nr_types else []) + [("np", 2), ("hv", 2)]
        self.decoder = nn.ModuleDict(OrderedDict((name, _decoder(ch, k)) for name, ch in heads))
        self.upsample2x = _Upsample2x()

    def forward(self, imgs):
        x = self.conv0(imgs / 255.0)
        d0 = self.d0(x)
        d1 = self.d1(d0)
        d2 = self.d2(d1)
        d3 = self.conv_bot(self.d3(d2))
        # the skips are cropped by what the valid decoder convolutions lose
        c0, c1 = (92, 36) if self.mode == "fast" else (184, 72)
        d0 = d0[:, :, c0 // 2:d0.shape[2] - (c0 - c0 // 2), c0 // 2:d0.shape[3] - (c0 - c0 // 2)]
        d1 = d1[:, :, c1 // 2:d1.shape[2] - (c1 - c1 // 2), c1 // 2:d1.shape[3] - (c1 - c1 // 2)]
        out = OrderedDict()
        for name, dec in self.decoder.items():
            u = dec.u3(self.upsample2x(d3) + d2)
            u = dec.u2(self.upsample2x(u) + d1)
            u = dec.u1(self.upsample2x(u) + d0)
            out[name] = dec.u0(u)
        return out
