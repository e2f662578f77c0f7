"""Tile preprocessing on the compute device: PIL-exact resize, centre crop and normalisation of uint8 tiles."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# spec.interpolation names -> resampling filter (PIL / torchvision spelling)
_INTERP = {"bicubic": "bicubic", "cubic": "bicubic", "bilinear": "bilinear", "linear": "bilinear",
           "lanczos": "lanczos", "box": "box", "nearest": "nearest"}


def _bicubic(x: np.ndarray) -> np.ndarray:  # Keys' cubic with a = -0.5, as PIL uses
    a = -0.5
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 3, np.sinc(x) * np.sinc(x / 3), 0.0)


_FILTERS = {  # name -> (function, support)
    "bilinear": (lambda x: np.clip(1 - np.abs(x), 0, None), 1.0),
    "bicubic": (_bicubic, 2.0),
    "lanczos": (_lanczos, 3.0),
    "box": (lambda x: ((x >= -0.5) & (x < 0.5)).astype(np.float64), 0.5),
}


def resample_matrix(in_size: int, out_size: int, mode: str) -> np.ndarray:
    """[out_size, in_size] weights of PIL's separable resampling (antialiased when shrinking): row i holds
    the filter, stretched by the scale factor, centred on output pixel i and normalised to sum 1."""
    fn, support = _FILTERS[mode]
    scale = in_size / out_size
    fscale = max(scale, 1.0)
    support = support * fscale
    w = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        k = fn((np.arange(lo, hi) - center + 0.5) / fscale)
        w[i, lo:hi] = k / k.sum()
    return w


class TilePreprocess(torch.nn.Module):
    """uint8 tiles -> the model's normalised float input [B, 3, S, S], on whatever device it is given.

    Input: uint8 [B, 3, H, W] (any memory layout), or [B, H, W, 3] with `channels_last_input=True`.
    Resize the shorter side to `spec.resize` (or `input_size` when None) with `spec.interpolation` exactly
    as PIL does (antialiased when shrinking, Keys cubic a=-0.5, each pass rounded to whole grey levels) -
    the resize the models were trained with - then centre-crop `input_size`, scale to [0, 1] and normalise
    with the spec's mean/std.

    On CPU bilinear/bicubic use torch's vectorised uint8 kernel (PIL's algorithm); elsewhere two float
    matmuls with PIL's weight matrices. Both agree with PIL within one grey level. (torch's float
    `interpolate` uses a=-0.75 and differs from PIL by up to ~7 grey levels on edges; not used.)
    """

    def __init__(self, spec):
        super().__init__()
        self.resize = int(spec.resize or spec.input_size)
        self.crop = int(spec.input_size)
        mode = _INTERP.get(str(spec.interpolation).lower())
        if mode is None:
            raise ValueError(f"model {spec.name!r}: interpolation {spec.interpolation!r} is not one of "
                             f"{sorted(_INTERP)}")
        self.mode = mode
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
        # (x/255 - mean)/std folded into one multiply-add
        self.register_buffer("scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("shift", -mean / std, persistent=False)
        self._mats: dict = {}

    def _size(self, h, w):
        if h <= w:
            return self.resize, max(1, int(self.resize * w / h))
        return max(1, int(self.resize * h / w)), self.resize

    def _matrix(self, n_in, n_out, device):
        key = (n_in, n_out, str(device))
        if key not in self._mats:
            m = resample_matrix(n_in, n_out, self.mode)
            self._mats[key] = torch.as_tensor(m, dtype=torch.float32, device=device)
        return self._mats[key]

    def _resize(self, x: torch.Tensor, size) -> torch.Tensor:
        (h, w), (oh, ow) = x.shape[-2:], size
        if x.dtype == torch.uint8 and x.device.type == "cpu" and self.mode in ("bilinear", "bicubic"):
            return F.interpolate(x.contiguous(memory_format=torch.channels_last), size=size, mode=self.mode,
                                 align_corners=False, antialias=True)
        if self.mode == "nearest":
            return F.interpolate(x, size=size, mode="nearest-exact")
        x = x.float()
        # horizontal pass first, each pass rounded half up and clipped to uint8, as PIL
        if ow != w:
            x = torch.matmul(x, self._matrix(w, ow, x.device).T).add_(0.5).floor_().clamp_(0, 255)
        if oh != h:
            x = torch.matmul(self._matrix(h, oh, x.device), x).add_(0.5).floor_().clamp_(0, 255)
        return x

    def forward(self, x: torch.Tensor, channels_last_input: bool = False) -> torch.Tensor:
        if channels_last_input:
            x = x.permute(0, 3, 1, 2)  # a view: NCHW with channels-last strides
        h, w = x.shape[-2:]
        if min(h, w) != self.resize:
            x = self._resize(x, self._size(h, w))
            h, w = x.shape[-2:]
        if (h, w) != (self.crop, self.crop):
            if h < self.crop or w < self.crop:
                raise ValueError(f"tiles of {h}x{w} px after resizing are smaller than the crop {self.crop}")
            top = round((h - self.crop) / 2.0)
            left = round((w - self.crop) / 2.0)
            x = x[..., top:top + self.crop, left:left + self.crop]
        # NCHW-contiguous while still uint8 (4x less to move), then one fused multiply-add into a new tensor
        return torch.addcmul(self.shift, x.contiguous().float(), self.scale)
