"""What a slide backend provides to :class:`pathkit.Slide`.

A backend owns pixel access and the format's metadata; `Slide` keeps the rules shared by every format (mpp
resolution and plausibility, the brightfield check, white padding, tiles at a target mpp, pickling).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class MppMetadata:
    """The file's own microns per pixel at level 0, as written (``x``/``y`` may be strings: `Slide` parses and
    validates them), where it came from (``origin``, for messages) and, when it came from TIFF resolution
    tags in inches, the dpi value (``dpi``: a screen/print setting below 1200 is refused)."""

    x: Any
    y: Any
    origin: str
    dpi: float | None = None


@dataclass(frozen=True)
class PixelInfo:
    """Enough about the stored samples for the brightfield check: ``rgb8`` when they are 8-bit RGB (or YCbCr
    / JPEG), else ``channels``, ``axes`` and ``dtype`` describe them and ``what`` names the kind of file."""

    rgb8: bool
    channels: int = 3
    axes: str = "YXS"
    dtype: str = "uint8"
    what: str = "image"


class SlideBackend:
    """Base class of the backends (see :mod:`pathkit.backends`).

    Attributes set by ``__init__``: ``name``, ``version``, ``dimensions`` (w, h at level 0),
    ``level_dimensions``, ``level_downsamples``, ``properties`` (dict of str keys), ``vendor``,
    ``magnification`` (float or None).
    """

    name = "base"
    version = ""
    dimensions: tuple[int, int]
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]
    properties: dict
    vendor: str | None = None
    magnification: float | None = None

    def mpp_metadata(self) -> MppMetadata | None:
        """The file's mpp, or None when its metadata has none."""
        return None

    def pixel_info(self) -> PixelInfo:
        return PixelInfo(rgb8=True)

    def read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Pixels [x0, x1) x [y0, y1) of `level` (inside the level), (h, w, 3) uint8 RGB."""
        raise NotImplementedError

    def associated_images(self) -> dict:
        """Label / macro / thumbnail images stored beside the pyramid, as PIL images by name."""
        return {}

    def close(self) -> None:
        """Release file handles (the backend is not used after this)."""


def to_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    """(h, w, c) of any dtype -> (h, w, 3) uint8 (first three channels; gray replicated)."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.integer):
            arr = (arr.astype(np.float64) * (255.0 / np.iinfo(arr.dtype).max)).round().astype(np.uint8)
        else:
            arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    c = arr.shape[2]
    if c == 3:
        return arr
    if c == 1:
        return np.repeat(arr, 3, axis=2)
    if c == 2:
        return np.concatenate([arr, np.zeros_like(arr[..., :1])], axis=2)
    return np.ascontiguousarray(arr[..., :3])


# OME PhysicalSize units -> micrometres
_UNITS = {"m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "nm": 1e-3, "pm": 1e-6}


def ome_mpp(description: str) -> MppMetadata | None:
    """PhysicalSizeX/Y (with their units, um by default) of the first OME Pixels element."""
    try:
        root = ET.fromstring(description)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.endswith("Pixels"):
            sx, sy = el.get("PhysicalSizeX"), el.get("PhysicalSizeY")
            if sx is None or sy is None:
                return None
            ux, uy = el.get("PhysicalSizeXUnit", "µm"), el.get("PhysicalSizeYUnit", "µm")
            if ux not in _UNITS or uy not in _UNITS:
                return MppMetadata(f"{sx} {ux}", f"{sy} {uy}", f"OME-XML PhysicalSizeX/Y (unit {ux!r} / {uy!r} "
                                   f"is not a length pathkit knows)")
            try:
                return MppMetadata(float(sx) * _UNITS[ux], float(sy) * _UNITS[uy],
                                   f"OME-XML PhysicalSizeX/Y ({sx} {ux}, {sy} {uy})")
            except ValueError:
                return MppMetadata(sx, sy, "OME-XML PhysicalSizeX/Y")
    return None
