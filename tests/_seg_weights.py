"""Seeded random state dicts for the segmenter parity tests (shared with the reference script that made the
fixtures in tests/fixtures/parity/seg/).

Each tensor depends only on the seed, its name and its shape (numpy's PCG64 seeded with the name's crc32),
so the same weights are rebuilt from any model with these keys, in any order and any torch version.
Convolutions get He-scaled normal weights; batch norms get weights near 1, small biases and means, and
variances in [0.5, 1.5]: activations stay O(1) through 50 layers, so the logits test every layer.
"""
from __future__ import annotations

import zlib

import numpy as np


def seeded_tensor(name: str, shape, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    shape = tuple(int(s) for s in shape)
    if name.endswith("running_var"):
        return (0.5 + rng.random(shape)).astype(np.float32)
    if name.endswith("running_mean"):
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    if len(shape) <= 1:
        base = 1.0 if name.endswith("weight") else 0.0
        return (base + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * np.sqrt(1.0 / fan_in)).astype(np.float32)


def seeded_state_dict(model, seed: int = 0) -> dict:
    """{name: tensor} for every entry of `model.state_dict()` (integer buffers such as
    ``num_batches_tracked`` are kept as they are)."""
    import torch

    out = {}
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            out[k] = v.clone()
        else:
            out[k] = torch.from_numpy(seeded_tensor(k, v.shape, seed))
    return out


def tiny_deeplab(num_classes: int = 21):
    """A small network with torchvision DeepLabV3's interface, for the HEST pipeline test: ``forward``
    returns ``{"out": logits}`` at the input size, and ``classifier[4]`` is the 1x1 head that HEST's loader
    replaces by a 2-class ``Conv2d(256, 2, 1)``. (The full DeepLabV3-ResNet50 takes ~10 s a 512-px patch on
    a shared CPU; its own parity is tested on a 128-px crop.)"""
    import torch.nn.functional as F
    from torch import nn

    class TinyDeepLab(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                          nn.Conv2d(16, 256, 3, stride=2, padding=1))
            self.classifier = nn.Sequential(nn.BatchNorm2d(256), nn.ReLU(), nn.Identity(), nn.Identity(),
                                            nn.Conv2d(256, num_classes, 1))

        def forward(self, x):
            y = self.classifier(self.backbone(x))
            return {"out": F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)}

    return TinyDeepLab().eval()


# The reduced GrandQC networks of the pipeline tests: the authors' smp classes and encoder, fewer stages.
SMP_REDUCED = {"encoder_depth": 3, "decoder_channels": (16, 8, 4)}
