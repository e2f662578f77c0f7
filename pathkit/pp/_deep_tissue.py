"""Deep tissue and artefact segmentation over a whole slide (the segmenters of pathkit.models.segmenters).

The slide is cut into ``spec.input_size`` patches at ``spec.mpp`` (the model's resolution), as the authors
do (see :class:`~pathkit.models.segmenters.SegmenterSpec` ``edge``), each patch is normalised and run
through the network, and the per-pixel decisions are area-averaged onto the mask grid (``mask_mpp``): a
mask pixel is tissue when at least half of the area the model saw in it is tissue. With ``mask_mpp`` equal
to the model's mpp on a slide scanned at that mpp the mask is the model's own decision map, pixel for pixel.
Nothing the size of the slide at the model's resolution is ever held in memory.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4}


# ------------------------------------------------------------------------------------------------ weights
def load_segmenter(name, weights=None, device="auto", dtype="auto"):
    """(spec, model, device, dtype) for segmenter `name`.

    `weights`: None (the entry's sources: HF hub or URL, cached; offline when HF_HUB_OFFLINE is set), a
    local file (safetensors, or a torch file read with ``weights_only=True``), a state dict, or "random"
    (random weights, with a loud warning: for tests only).
    """
    from .._device import resolve_device, resolve_dtype
    from ..errors import WeightsError
    from ..models.segmenters import build_segmenter, get_segmenter
    from ..models.weights import read_state_dict, resolve, strip_prefixes

    spec = get_segmenter(name)
    model = build_segmenter(spec)
    if isinstance(weights, str) and weights == "random":
        warnings.warn(f"segmenter {spec.name!r} runs with RANDOM weights: its masks are meaningless (tests only). "
                      f"Real weights: {spec.weights_help}", UserWarning,
                      stacklevel=_user_stacklevel())
        sd = None
    elif isinstance(weights, dict):
        sd = weights
    elif weights is not None:
        sd = read_state_dict(resolve(weights))
    else:
        if not spec.weights:
            raise WeightsError(f"segmenter {spec.name!r} has no downloadable state dict. {spec.weights_help} "
                               f"Licence: {spec.license}.")
        errors = []
        sd = None
        for src in spec.weights:
            try:
                sd = read_state_dict(resolve(src, sha256=spec.sha256))
                break
            except WeightsError as e:
                errors.append(str(e))
        if sd is None:
            raise WeightsError(f"no weights for segmenter {spec.name!r}. {spec.weights_help} Licence: "
                               f"{spec.license}. Tried: " + " | ".join(errors))
    if sd is not None:
        expected = set(model.state_dict())
        sd, _ = strip_prefixes(dict(sd), expected)
        sd = {k: v for k, v in sd.items() if not k.startswith(tuple(spec.drop_prefixes))}
        missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
        if missing or unexpected:
            raise WeightsError(f"weights for segmenter {spec.name!r} do not fit its architecture {spec.arch}: "
                               f"missing {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} "
                               f"({len(unexpected)}). {spec.weights_help}")
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise WeightsError(f"weights for segmenter {spec.name!r}: {str(e).splitlines()[0]}") from e
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return spec, model, device, dtype


# ------------------------------------------------------------------------------------------------ pixels
def jpeg_roundtrip_bgr(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG-encode and decode an RGB array the way OpenCV does in GrandQC (``cv2.imencode`` of the RGB array,
    which OpenCV takes as BGR, 4:2:0 chroma, then ``cv2.imdecode``), with PIL: the channels are reversed
    before encoding and after decoding."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img[..., ::-1])).save(buf, format="JPEG", quality=int(quality),
                                                                subsampling=2)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))[..., ::-1].copy()


def _starts(extent: int, p: int, edge: str) -> list[tuple[int, int, int]]:
    """(patch start, first new px, end of new px) along one axis, in model px."""
    n = max(1, math.ceil(extent / p))
    out = []
    for i in range(n):
        s, v0, v1 = i * p, i * p, min((i + 1) * p, extent)
        if edge == "shift" and s + p > extent:
            s = extent - p  # GrandQC: the last patch ends at the image edge (padded before 0 when the image is
            # smaller than a patch); only its new pixels count
        out.append((s, v0, v1))
    return out


def _overlap(a0: int, n: int, s: float, m: int):
    """Overlap lengths (mask px) between model px a0..a0+n-1 (each ``s`` mask px wide) and mask px j:
    (j0, W) with W[j - j0, i]; columns beyond the mask (``m``) are cut."""
    edges = (a0 + np.arange(n + 1, dtype=np.float64)) * s
    j0, j1 = math.floor(edges[0] + 1e-9), min(m, math.ceil(edges[-1] - 1e-9))
    j = np.arange(j0, max(j1, j0 + 1), dtype=np.float64)[:, None]
    w = np.minimum(edges[1:][None, :], j + 1) - np.maximum(edges[:-1][None, :], j)
    return j0, np.clip(w, 0.0, None)[: max(0, j1 - j0)]


class _Grid:
    """Area-weighted accumulation of per-pixel values (K x p x p at the model's resolution) on the mask grid."""

    def __init__(self, k: int, shape: tuple[int, int], s: float):
        self.acc = np.zeros((k,) + shape, np.float32)  # 8 classes at 8 um/px of a 50k x 40k scan: 250 MB
        self.cov = np.zeros(shape, np.float32)
        self.s = s

    def add(self, values: np.ndarray, x0: int, y0: int):
        h, w = values.shape[-2:]
        jy, wy = _overlap(y0, h, self.s, self.cov.shape[0])
        jx, wx = _overlap(x0, w, self.s, self.cov.shape[1])
        if wy.size == 0 or wx.size == 0:
            return
        ys, xs = slice(jy, jy + wy.shape[0]), slice(jx, jx + wx.shape[0])
        self.acc[:, ys, xs] += np.einsum("ai,kij,bj->kab", wy, values.astype(np.float64), wx, optimize=True)
        self.cov[ys, xs] += np.outer(wy.sum(1), wx.sum(1))

    def fractions(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.cov > 0, self.acc / np.maximum(self.cov, 1e-12), 0.0).astype(np.float32)


def _model_extent(slide, spec) -> tuple[int, int, float]:
    """Slide size in model px (whole pixels inside the slide for "shift", all covered for "pad") and the
    level-0 px per model px."""
    f = spec.mpp / slide.mpp
    w, h = slide.dimensions
    if spec.edge == "shift":
        return max(1, math.floor(w / f + 1e-9)), max(1, math.floor(h / f + 1e-9)), f
    return max(1, math.ceil(w / f - 1e-9)), max(1, math.ceil(h / f - 1e-9)), f


def _read(slide, spec, x: int, y: int, f: float, whole) -> np.ndarray:
    """The p x p RGB patch at model px (x, y); pixels beyond the slide get ``spec.pad_value``."""
    p = spec.input_size
    if whole is not None:
        out = np.full((p, p, 3), spec.pad_value, np.uint8)
        part = whole[max(y, 0):y + p, max(x, 0):x + p]
        out[max(-y, 0):max(-y, 0) + part.shape[0], max(-x, 0):max(-x, 0) + part.shape[1]] = part
        return out
    img = slide.read_level0_box((x * f, y * f, (x + p) * f, (y + p) * f), (p, p), _RESAMPLE[spec.resample])
    w, h = slide.dimensions
    iw, ih = math.ceil(w / f - x - 1e-9), math.ceil(h / f - y - 1e-9)  # model px inside the slide
    if iw < p or ih < p or x < 0 or y < 0:
        img = img.copy()
        img[max(ih, 0):] = spec.pad_value
        img[:, max(iw, 0):] = spec.pad_value
        img[:max(-y, 0)] = spec.pad_value
        img[:, :max(-x, 0)] = spec.pad_value
    return img


def _logits(model, spec, batch: np.ndarray, device, dtype):
    """Logits (N x C x p x p, float32 numpy) of uint8 RGB patches, normalised with the entry's mean/std."""
    import torch

    from .._device import autocast

    x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    with torch.inference_mode(), autocast(device, dtype):
        out = model(x)
        out = out["out"] if isinstance(out, dict) else out
    return out.float().cpu().numpy()


def segment_slide(slide, spec, model, device, dtype, *, mask_mpp: float, values, n_values: int,
                  gate=None, batch_size: int = 4, progress: bool = True):
    """Run `model` over `slide` and area-average ``values(logits, tile_gate) -> (N, K, p, p)`` onto the mask
    grid at `mask_mpp`. `gate(x, y)`: None, or a p x p bool map of where tissue is (model px at (x, y));
    a patch with at most ``spec.min_tissue_px`` tissue px is not run. Returns (fractions K x H x W,
    coverage H x W, downsample)."""
    from .._progress import progress_bar

    w, h = slide.dimensions
    d = max(1e-9, mask_mpp / slide.mpp)
    mw, mh = max(1, math.ceil(w / d)), max(1, math.ceil(h / d))
    ew, eh, f = _model_extent(slide, spec)
    grid = _Grid(n_values, (mh, mw), spec.mpp / mask_mpp)
    whole = None
    if spec.jpeg_quality:  # the authors compress the whole image at the model's mpp (a thumbnail), then cut it
        whole = slide.read_level0_box((0.0, 0.0, ew * f, eh * f), (ew, eh), _RESAMPLE[spec.resample])
        whole = jpeg_roundtrip_bgr(whole, spec.jpeg_quality)
    jobs = [(sx, sy, vx0, vx1, vy0, vy1) for (sy, vy0, vy1) in _starts(eh, spec.input_size, spec.edge)
            for (sx, vx0, vx1) in _starts(ew, spec.input_size, spec.edge)]
    bar = progress_bar(total=len(jobs), desc=f"{spec.name} on {slide.slide_id}", unit="patch", disable=not progress)
    for b0 in range(0, len(jobs), max(1, int(batch_size))):
        chunk = jobs[b0:b0 + max(1, int(batch_size))]
        gates = [gate(sx, sy) if gate is not None else None for (sx, sy, *_r) in chunk]
        run = [i for i, g in enumerate(gates) if g is None or int(g.sum()) > spec.min_tissue_px]
        logits = None
        if run:
            batch = np.stack([_read(slide, spec, chunk[i][0], chunk[i][1], f, whole) for i in run])
            logits = _logits(model, spec, batch, device, dtype)
        for i, (sx, sy, vx0, vx1, vy0, vy1) in enumerate(chunk):
            lg = logits[run.index(i)] if i in run else None
            vals = values(lg, gates[i])  # K x p x p
            vals = vals[:, vy0 - sy:vy1 - sy, vx0 - sx:vx1 - sx]
            grid.add(vals, vx0, vy0)
        bar.update(len(chunk))
    bar.close()
    return grid.fractions(), grid.cov, d


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=0, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=0, keepdims=True)


from .._warn import user_stacklevel as _user_stacklevel  # last: touches no import order (issue 29)
