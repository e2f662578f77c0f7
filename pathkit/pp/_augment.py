"""HED stain augmentation (Tellez et al., IEEE TMI 2018; Med Image Anal 2019): each tile's haematoxylin, eosin
and DAB amounts, from Ruifrok & Johnston's colour deconvolution, are scaled and shifted at random.

Used to train on stain-jittered views: ``pk.tl.embed_tiles(tiles, slide, model, stain=pk.pp.HEDJitter(...),
key_added="X_uni_hed1")`` embeds one jittered view of every tile (a new draw per tile), so MIL or a probe can
train on several views while testing on the plain features.
"""
from __future__ import annotations

import numpy as np

from ..errors import StainError

__all__ = ["HEDJitter", "hed_jitter"]

# Ruifrok & Johnston's optical-density vectors of haematoxylin, eosin and DAB (rows), and the units, of
# skimage.color.rgb2hed / hed2rgb (which Tellez et al.'s sigma and bias values assume): stains are optical
# density divided by -log(1e-6), clipped at 0
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)
_LOG_ADJUST = -np.log(1e-6)


class HEDJitter:
    """Random HED perturbation: per tile and stain channel ``c' = c * a + b`` with ``a ~ U(1 - sigma, 1 + sigma)``
    and ``b ~ U(-bias, bias)`` in the stain units of ``skimage.color.rgb2hed`` (Tellez et al.'s "HED-light":
    sigma = bias = 0.05; "HED-strong": 0.2). Equals ``hed2rgb(rgb2hed(img) * a + b)`` within 1 grey level.

    Parameters
    ----------
    sigma
        Half-width of the multiplicative factor.
    bias
        Half-width of the additive shift (optical-density units).
    random_state
        Seed; every call draws new factors from the same generator.
    """

    method = "hed_jitter"

    def __init__(self, sigma: float = 0.05, bias: float = 0.05, random_state: int | None = 0):
        if not (0 <= sigma < 1 and bias >= 0):
            raise StainError(f"HED jitter needs 0 <= sigma < 1 and bias >= 0, got sigma={sigma}, bias={bias}")
        self.sigma, self.bias, self.random_state = float(sigma), float(bias), random_state
        self._rng = np.random.default_rng(random_state)
        self.n_unchanged = 0

    def __repr__(self):
        return f"HEDJitter(sigma={self.sigma}, bias={self.bias})"

    def to_dict(self) -> dict:
        """Plain data for provenance (``uns["models"][key]["stain"]``)."""
        return {"method": self.method, "sigma": self.sigma, "bias": self.bias,
                "random_state": -1 if self.random_state is None else int(self.random_state)}

    def draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(scale, shift), each (n, 3): the factors of the next `n` tiles."""
        a = self._rng.uniform(1 - self.sigma, 1 + self.sigma, size=(n, 3))
        b = self._rng.uniform(-self.bias, self.bias, size=(n, 3))
        return a, b

    def transform_batch(self, batch):
        """Jitter a torch uint8 batch (B, H, W, 3) -> uint8 (B, H, W, 3) on its device."""
        import torch

        if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
            raise StainError(f"HEDJitter needs a uint8 (B, H, W, 3) batch, got {batch.dtype} {tuple(batch.shape)}")
        a, b = self.draw(batch.shape[0])
        dev = batch.device
        to = torch.from_numpy
        with torch.inference_mode():
            od = -torch.log(torch.clamp(batch.float() / 255.0, min=1e-6)) / _LOG_ADJUST
            hed = (od @ to(_HED_FROM_RGB).float().to(dev)).clamp_(min=0)
            hed = hed * to(a).float().to(dev)[:, None, None, :] + to(b).float().to(dev)[:, None, None, :]
            rgb = torch.exp(-_LOG_ADJUST * (hed @ to(_RGB_FROM_HED).float().to(dev))).clamp_(0, 1) * 255.0
            return rgb.round_().to(torch.uint8)

    def transform(self, rgb: np.ndarray) -> np.ndarray:
        """Jitter an RGB uint8 image (H, W, 3) or stack (N, H, W, 3)."""
        import torch

        arr = np.asarray(rgb)
        if arr.dtype != np.uint8 or arr.shape[-1] != 3 or arr.ndim not in (3, 4):
            raise StainError(f"HEDJitter needs uint8 RGB (H, W, 3) or (N, H, W, 3), got {arr.dtype} {arr.shape}")
        out = self.transform_batch(torch.from_numpy(np.ascontiguousarray(arr if arr.ndim == 4 else arr[None])))
        return out.numpy() if arr.ndim == 4 else out.numpy()[0]


def hed_jitter(rgb: np.ndarray, sigma: float = 0.05, bias: float = 0.05, random_state: int | None = 0
               ) -> np.ndarray:
    """One HED-jittered copy of an RGB uint8 image or stack (see :class:`HEDJitter`)."""
    return HEDJitter(sigma, bias, random_state).transform(rgb)
