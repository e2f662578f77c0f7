"""Synthetic slides with known geometry, for tests and offline demos.

:func:`synthetic_slide` writes a tiled, pyramidal, JPEG-compressed Aperio-style TIFF (tiffslide reads it as
vendor "aperio" with its mpp) whose tissue is H&E-coloured textured blobs of known geometry on a near-white
background; the geometry is returned by :func:`synthetic_truth` so tests know exact tile counts.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from .._io import write_text_atomic

# H&E-like colours (RGB): eosin-pink cytoplasm/stroma, haematoxylin-purple nuclei, glass.
_EOSIN = np.array([222.0, 142.0, 186.0])
_HEMATOXYLIN = np.array([98.0, 62.0, 148.0])
_GLASS = np.array([244.0, 243.0, 246.0])


# ------------------------------------------------------------------------------------------- geometry
def default_blobs(width: int, height: int, grid: int = 512) -> list[dict]:
    """The default tissue layout: two rectangles on a `grid`-px lattice and one disc (level-0 px).

    Rectangles lie on multiples of `grid` (512 = one 256-px tile at 0.5 mpp, or at 0.25 mpp read at 0.5),
    so tiles at those resolutions are wholly in or wholly out of them.
    """
    nx, ny = max(1, width // grid), max(1, height // grid)
    blobs: list[dict] = []
    if nx >= 3 and ny >= 3:
        hx, hy = max(2, nx // 2), max(2, ny // 2)
        blobs.append({"kind": "rect", "x0": grid, "y0": grid, "x1": hx * grid, "y1": hy * grid})
        if nx - 1 > hx + 1 and ny - 1 > hy + 1:
            blobs.append({"kind": "rect", "x0": (hx + 1) * grid, "y0": (hy + 1) * grid,
                          "x1": (nx - 1) * grid, "y1": (ny - 1) * grid})
        if nx >= 6 and ny >= 6:
            r = 0.3 * min(nx - hx, hy) * grid
            blobs.append({"kind": "disc", "cx": (hx + (nx - hx) / 2) * grid, "cy": hy / 2 * grid + grid / 2,
                          "r": r})
    else:
        blobs.append({"kind": "rect", "x0": width // 4, "y0": height // 4, "x1": 3 * width // 4,
                      "y1": 3 * height // 4})
    return blobs


def _normalise_blobs(blobs, width: int, height: int) -> list[dict]:
    if blobs is None or (isinstance(blobs, str) and blobs == "default"):
        return default_blobs(width, height)
    if isinstance(blobs, str) and blobs == "full":
        return [{"kind": "rect", "x0": 0, "y0": 0, "x1": width, "y1": height}]
    if isinstance(blobs, str) and blobs == "none":
        return []
    out = []
    for b in blobs:
        b = dict(b)
        kind = b.get("kind")
        if kind == "rect":
            keys = ("x0", "y0", "x1", "y1")
        elif kind == "disc":
            keys = ("cx", "cy", "r")
        else:
            raise ValueError(f"blob {b!r}: kind must be 'rect' (x0, y0, x1, y1) or 'disc' (cx, cy, r)")
        missing = [k for k in keys if k not in b]
        if missing:
            raise ValueError(f"blob {b!r} lacks {missing}")
        out.append({"kind": kind, **{k: float(b[k]) for k in keys}})
    return out


def _coverage(blobs: list[dict], xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Boolean (len(ys), len(xs)): whether level-0 points (x, y) lie in any blob (half-open rects)."""
    out = np.zeros((ys.size, xs.size), bool)
    for b in blobs:
        if b["kind"] == "rect":
            inx = (xs >= b["x0"]) & (xs < b["x1"])
            iny = (ys >= b["y0"]) & (ys < b["y1"])
            if inx.any() and iny.any():
                out |= iny[:, None] & inx[None, :]
        else:
            dx2 = (xs - b["cx"]) ** 2
            dy2 = (ys - b["cy"]) ** 2
            if dx2.min() <= b["r"] ** 2 and dy2.min() <= b["r"] ** 2:
                out |= (dy2[:, None] + dx2[None, :]) < b["r"] ** 2
    return out


def _bbox_relation(blobs: list[dict], x0: float, y0: float, x1: float, y1: float) -> str:
    """'out' if the box misses every blob, 'in' if a single rect contains it, else 'mixed'."""
    touched = False
    for b in blobs:
        if b["kind"] == "rect":
            if b["x0"] <= x0 and x1 <= b["x1"] and b["y0"] <= y0 and y1 <= b["y1"]:
                return "in"
            if x0 < b["x1"] and b["x0"] < x1 and y0 < b["y1"] and b["y0"] < y1:
                touched = True
        else:
            nx = min(max(b["cx"], x0), x1)
            ny = min(max(b["cy"], y0), y1)
            if (nx - b["cx"]) ** 2 + (ny - b["cy"]) ** 2 < b["r"] ** 2:
                touched = True
    return "mixed" if touched else "out"


# ------------------------------------------------------------------------------------------- texture
def _texture_bank(tile: int, seed: int, n_tissue: int = 12, n_glass: int = 4):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    tissue = []
    for _ in range(n_tissue):
        fibres = gaussian_filter(rng.standard_normal((tile, tile)), sigma=(1.5, 4.0))
        fibres /= fibres.std() + 1e-9
        blotch = gaussian_filter(rng.standard_normal((tile, tile)), sigma=12)
        blotch /= blotch.std() + 1e-9
        nuc_field = gaussian_filter(rng.standard_normal((tile, tile)), sigma=1.6)
        nuclei = nuc_field > np.quantile(nuc_field, 0.9)
        img = _EOSIN[None, None, :] + (6 * fibres + 3 * blotch)[..., None]
        shade = np.clip(0.75 + 0.25 * gaussian_filter(nuc_field, 1.0) / (nuc_field.std() + 1e-9), 0.5, 1.0)
        nuc_rgb = _HEMATOXYLIN[None, None, :] * shade[..., None]
        img = np.where(nuclei[..., None], nuc_rgb, img)
        img += rng.normal(0, 3, img.shape)
        tissue.append(np.clip(img, 0, 255).astype(np.uint8))
    glass = [np.clip(_GLASS[None, None, :] + rng.normal(0, 1.5, (tile, tile, 3)), 0, 255).astype(np.uint8)
             for _ in range(n_glass)]
    return tissue, glass


def _render(blobs, bank, lx: int, ly: int, w: int, h: int, ds: float, variant: int) -> np.ndarray:
    """(h, w, 3) uint8 of level pixels [lx, lx+w) x [ly, ly+h) of a level with downsample `ds`."""
    tissue, glass = bank
    t = tissue[variant % len(tissue)]
    g = glass[variant % len(glass)]
    th, tw = t.shape[:2]
    if (h, w) != (th, tw):  # regions of another size (the thumbnail page): tile the textures
        reps = (math.ceil(h / th), math.ceil(w / tw), 1)
        t = np.tile(t, reps)[:h, :w]
        g = np.tile(g, reps)[:h, :w]
    rel = _bbox_relation(blobs, lx * ds, ly * ds, (lx + w) * ds, (ly + h) * ds)
    if rel == "in":
        return t
    if rel == "out":
        return g
    xs = (lx + np.arange(w) + 0.5) * ds
    ys = (ly + np.arange(h) + 0.5) * ds
    cov = _coverage(blobs, xs, ys)
    return np.where(cov[..., None], t, g)


class _JpegTiles:
    """Encodes tiles as tifffile would for ``compression="jpeg"`` on RGB (YCbCr 4:2:0), once per distinct
    texture variant: wholly-tissue and wholly-glass tiles repeat, so a 40,000-tile slide costs a few
    hundred encodes instead of 40,000."""

    def __init__(self, quality: int):
        import imagecodecs

        self.encode = imagecodecs.jpeg_encode
        self.args = {"level": int(quality), "subsampling": (2, 2), "colorspace": "RGB", "outcolorspace": "YCBCR"}
        self.cache: dict[int, bytes] = {}
        self.shared: set[int] = set()

    def __call__(self, arr: np.ndarray) -> bytes:
        key = id(arr)
        if key in self.shared:
            hit = self.cache.get(key)
            if hit is None:
                hit = self.cache[key] = self.encode(arr, **self.args)
            return hit
        return self.encode(arr, **self.args)


# ------------------------------------------------------------------------------------------- writer
def synthetic_slide(path, width: int = 4096, height: int = 3072, mpp: float = 0.5, levels: int | None = None,
                    tile: int = 256, blobs=None, seed: int = 0, compression: str = "jpeg", quality: int = 90,
                    level_downsample: int = 4, progress: bool = False) -> Path:
    """Write a synthetic pyramidal H&E-like slide and return its path.

    The file is an Aperio-style tiled TIFF (BigTIFF when large): page 0 is level 0 with an ImageDescription
    ``Aperio Image Library ... |AppMag = 20|MPP = 0.5`` (so tiffslide reports vendor "aperio" and the mpp),
    page 1 a small thumbnail, then the pyramid levels. Tiles are rendered on the fly from the blob geometry,
    never the whole image, so a 51200 x 51200 slide (40,000 tiles of 256 px at 0.5 mpp) takes a few minutes
    and little memory. The geometry is written next to it as ``<path>.json`` (see :func:`synthetic_truth`).

    Parameters
    ----------
    path
        Output file (``.svs``, ``.tif`` or ``.tiff``); written atomically.
    width, height
        Level-0 size in pixels.
    mpp
        Microns per pixel at level 0 (e.g. 0.5 for "20x", 0.25 for "40x").
    levels
        Number of pyramid levels (each `level_downsample` times smaller); default: until the longest side
        is at most 2048 px.
    tile
        TIFF tile size in pixels.
    blobs
        Tissue geometry in level-0 px: ``None``/"default" (:func:`default_blobs`), "full" (tissue
        everywhere), "none" (empty glass), or a list of ``{"kind": "rect", "x0", "y0", "x1", "y1"}``
        (half-open) and ``{"kind": "disc", "cx", "cy", "r"}``. A pixel is tissue when its centre is inside.
    seed
        Seed of the texture.
    compression
        "jpeg" (default), "zlib" or "none".
    quality
        JPEG quality.
    """
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height, tile = int(width), int(height), int(tile)
    if width < 1 or height < 1 or tile < 16 or tile % 16:
        raise ValueError("width and height must be positive; tile a positive multiple of 16")
    if not mpp > 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    blob_list = _normalise_blobs(blobs, width, height)
    if levels is None:
        levels = 1
        while max(width, height) / level_downsample ** (levels - 1) > 2048:
            levels += 1
    levels = max(1, int(levels))
    dims = [(max(1, width // level_downsample ** k), max(1, height // level_downsample ** k))
            for k in range(levels)]
    bank = _texture_bank(tile, seed)
    comp = {"jpeg": "jpeg", "zlib": "zlib", "none": None, None: None}[compression]
    comp_args = {"level": int(quality)} if comp == "jpeg" else None
    mag = 20 if mpp >= 0.375 else 40
    desc = (f"Aperio Image Library v12.0.15 \r\n{width}x{height} ({tile}x{tile}) "
            f"{'JPEG' if comp == 'jpeg' else 'RAW'}/RGB Q={quality}|AppMag = {mag}|MPP = {mpp:.6g}"
            f"|Filename = {path.stem}|pathkit = synthetic slide, seed {seed}")
    res = (1e4 / mpp, 1e4 / mpp)
    bigtiff = width * height * 3 * 1.34 > 2 ** 31

    total = sum(math.ceil(w / tile) * math.ceil(h / tile) for w, h in dims)
    bar = None
    if progress:
        from .._progress import progress_bar

        bar = progress_bar(total=total, desc=f"writing {path.name}", unit="tile")

    jpeg = _JpegTiles(quality) if comp == "jpeg" else None
    if jpeg is not None:
        jpeg.shared = {id(a) for a in bank[0] + bank[1]}

    def tiles_of(k):
        w, h = dims[k]
        ds = level_downsample ** k
        idx = 0
        for ty in range(0, h, tile):
            for tx in range(0, w, tile):
                arr = _render(blob_list, bank, tx, ty, tile, tile, ds, hash((seed, k, idx)) & 0xFFFF)
                arr = arr if jpeg is None else jpeg(arr)
                idx += 1
                if bar is not None:  # before the yield: the writer never resumes the generator after its last tile
                    bar.update(1)
                yield arr

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
            common = {"photometric": "rgb", "compression": comp, "compressionargs": comp_args,
                          "resolution": res, "resolutionunit": "CENTIMETER", "metadata": None}
            tw.write(tiles_of(0), shape=(dims[0][1], dims[0][0], 3), dtype=np.uint8, tile=(tile, tile),
                     description=desc, **common)
            # Aperio puts a stripped thumbnail second; tifffile and tiffslide expect it there
            ts = min(1.0, 768 / max(width, height))
            tw_, th_ = max(1, int(width * ts)), max(1, int(height * ts))
            thumb = _render(blob_list, bank, 0, 0, tw_, th_, 1 / ts, 0)
            tw.write(thumb, photometric="rgb", compression=comp, compressionargs=comp_args, metadata=None,
                     description=f"Aperio Image Library v12.0.15 \r\n{width}x{height} -> {tw_}x{th_}")
            for k in range(1, levels):
                w, h = dims[k]
                tw.write(tiles_of(k), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile),
                         description=f"Aperio Image Library v12.0.15 \r\n{width}x{height} -> {w}x{h}",
                         **{**common, "resolution": (res[0] / level_downsample ** k,
                                                     res[1] / level_downsample ** k)})
        os.replace(tmp, path)
    finally:
        if bar is not None:
            bar.close()
        if tmp.exists():
            tmp.unlink()
    truth = {"width": width, "height": height, "mpp": float(mpp), "levels": levels,
             "level_dimensions": [list(d) for d in dims], "level_downsample": level_downsample,
             "tile": tile, "seed": seed, "compression": compression, "blobs": blob_list,
             "tissue_rgb": _EOSIN.tolist(), "glass_rgb": _GLASS.tolist()}
    side = _truth_path(path)
    write_text_atomic(side, json.dumps(truth, indent=1))
    return path


def _truth_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def synthetic_truth(path) -> dict:
    """The ground truth of a slide written by :func:`synthetic_slide` (size, mpp, levels, blobs)."""
    side = _truth_path(Path(path))
    if not side.exists():
        raise FileNotFoundError(f"{side}: no ground truth next to {path} (was it made by synthetic_slide?)")
    return json.loads(side.read_text())


def truth_mask(truth: dict, downsample: float) -> np.ndarray:
    """Rasterise the blobs: bool (ceil(h/d), ceil(w/d)), pixel centres tested (for plots and checks)."""
    w, h = truth["width"], truth["height"]
    mw, mh = math.ceil(w / downsample), math.ceil(h / downsample)
    xs = (np.arange(mw) + 0.5) * downsample
    ys = (np.arange(mh) + 0.5) * downsample
    return _coverage(truth["blobs"], xs, ys)
