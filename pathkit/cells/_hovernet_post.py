"""HoVer-Net's post-processing and tiling, after the authors' ``models/hovernet/post_proc.py`` and
``infer/tile.py`` (github.com/vqdang/hover_net), with scipy / scikit-image in place of OpenCV.

Instances come from the nucleus probability and the horizontal / vertical distance maps: the maps are
min-max scaled, differentiated with 21-tap Sobel filters (OpenCV's kernels, reflect-101 borders), the larger
gradient marks boundaries; markers (nucleus pixels away from boundaries, holes filled, opened with OpenCV's
5x5 ellipse, >= 10 px) seed a watershed of the smoothed "distance" inside the nucleus mask. A nucleus takes
the type most of its pixels vote for, background votes ignored unless nothing else votes (the authors' rule).
"""
from __future__ import annotations

import math

import numpy as np

# OpenCV's MORPH_ELLIPSE of size 5 x 5
_ELLIPSE5 = np.array([[0, 0, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0]], bool)


def sobel_kernels(ksize: int = 21):
    """OpenCV's separable Sobel kernels of size `ksize` (> 3): (smoothing, first derivative), as integers.

    Smoothing is the binomial row of order ksize - 1, the derivative the binomial row of order ksize - 2
    convolved with [-1, 1] (``cv2.getDerivKernels(1, 0, ksize)``), applied as a correlation.
    """
    smooth = np.array([math.comb(ksize - 1, i) for i in range(ksize)], np.float64)
    base = np.array([math.comb(ksize - 2, i) for i in range(ksize - 1)], np.float64)
    deriv = np.convolve(base, [-1.0, 1.0])
    return smooth, deriv


def _minmax_coefficients(x: np.ndarray):
    # OpenCV's normalize to CV_32F: the scale rounded to float32, the shift -(float32)(min * scale)
    lo, hi = float(x.min()), float(x.max())
    a = float(np.float32(1.0 / (hi - lo))) if hi - lo > np.finfo(np.float64).eps else 0.0
    return a, 0.0 - float(np.float32(lo * a))


def _minmax32(x: np.ndarray) -> np.ndarray:
    """``cv2.normalize(x, None, 0, 1, NORM_MINMAX, CV_32F)`` of a float32 map, to the bit: OpenCV computes
    x * a + b with one rounding (a fused multiply-add), which float64 reproduces for float32 inputs."""
    x = np.asarray(x, np.float32)
    a, b = _minmax_coefficients(x)
    return (x.astype(np.float64) * a + b).astype(np.float32)


def _minmax64(x: np.ndarray) -> np.ndarray:
    """The same of a float64 map (OpenCV's fused multiply-add in float64, emulated in extended precision)."""
    a, b = _minmax_coefficients(x)
    ld = np.longdouble
    return (x.astype(ld) * ld(a) + ld(b)).astype(np.float64).astype(np.float32)


def _remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    # the authors' version counts the background too (bincount of the whole image): kept as they do
    sizes = np.bincount(labels.ravel())
    out = labels.copy()
    out[(sizes < min_size)[labels]] = 0
    return out


def _blur3(x: np.ndarray) -> np.ndarray:
    """``cv2.GaussianBlur(x, (3, 3), 0)`` of a float64 map: [1/4, 1/2, 1/4] along rows then columns,
    reflect-101 borders, each sum in the order OpenCV's row and column filters use (equal to the bit)."""
    p = np.pad(x, ((0, 0), (1, 1)), mode="reflect")
    x = (p[:, 1:-1] * 0.5 + p[:, :-2] * 0.25) + p[:, 2:] * 0.25
    p = np.pad(x, ((1, 1), (0, 0)), mode="reflect")
    return p[1:-1] * 0.5 + (p[:-2] + p[2:]) * 0.25


def np_hv_instances(np_prob: np.ndarray, hv: np.ndarray, *, ksize: int = 21, min_size: int = 10) -> np.ndarray:
    """Nucleus instances (int32 labels 1..n, 0 background) from HoVer-Net's maps.

    Parameters
    ----------
    np_prob
        (h, w) probability of "nucleus" (softmax channel 1 of the ``np`` branch).
    hv
        (h, w, 2) horizontal and vertical distance maps (the ``hv`` branch, channel 0 horizontal).
    ksize, min_size
        Sobel size and smallest blob / marker (px): the authors' 21 and 10.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    np_prob = np.asarray(np_prob, np.float32)
    hv = np.asarray(hv, np.float32)
    blb = ndi.label(np_prob >= 0.5)[0]
    blb = (_remove_small(blb, min_size) > 0).astype(np.int32)

    h_dir, v_dir = _minmax32(hv[..., 0]), _minmax32(hv[..., 1])
    smooth, deriv = sobel_kernels(ksize)
    sobel_h = ndi.correlate1d(ndi.correlate1d(h_dir.astype(np.float64), deriv, axis=1, mode="mirror"),
                              smooth, axis=0, mode="mirror")
    sobel_v = ndi.correlate1d(ndi.correlate1d(v_dir.astype(np.float64), smooth, axis=1, mode="mirror"),
                              deriv, axis=0, mode="mirror")
    sobel_h = 1 - _minmax64(sobel_h)
    sobel_v = 1 - _minmax64(sobel_v)

    overall = np.maximum(sobel_h, sobel_v) - (1 - blb)  # float64, as numpy promotes float32 - int32
    overall[overall < 0] = 0
    dist = -_blur3((1.0 - overall) * blb)  # nuclei are hills of (1 - boundary): negate for basins

    marker = blb - (overall >= 0.4).astype(np.int32)
    marker[marker < 0] = 0
    marker = ndi.binary_fill_holes(marker)
    # opening as OpenCV does it: pixels outside the image never erode nor dilate
    marker = ndi.binary_erosion(marker, _ELLIPSE5, border_value=1)
    marker = ndi.binary_dilation(marker, _ELLIPSE5, border_value=0)
    marker = _remove_small(ndi.label(marker)[0], min_size)
    return watershed(dist, markers=marker, mask=blb).astype(np.int32)


def type_votes(type_map: np.ndarray, n_types: int) -> np.ndarray:
    """(n_types, h, w) float32 one-hot of the per-pixel types 1..n_types (background: all zeros), so that the
    mean over a nucleus is the share of its pixels voting for each type."""
    t = np.asarray(type_map)
    return np.stack([(t == k + 1) for k in range(n_types)]).astype(np.float32)


# ------------------------------------------------------------------------------------------------ tiling
def patch_grid(h: int, w: int, window: int, out: int):
    """The authors' tile-mode patching (``infer/tile.py``): padding (top, bottom, left, right) so that
    output windows of `out` px stepped by `out` cover the image, and the top-left corners of the patches in
    the padded image."""
    def last(n):
        steps = math.ceil((n - out) / out) if n > out else 0
        return (steps + 1) * out

    lh, lw = last(h), last(w)
    pad = (window - out) // 2
    ys = np.arange(0, lh, out)
    xs = np.arange(0, lw, out)
    return (pad, lh + window - h, pad, lw + window - w), ys, xs


def hovernet_maps(model, rgb: np.ndarray, *, device="cpu", batch_size: int = 8):
    """Run HoVer-Net over an RGB image of any size with the authors' tile-mode conventions.

    The image is reflect-padded by ``(window - out) / 2`` at the top / left (and enough at the bottom /
    right), cut into `window`-px patches stepped by `out` px, and the `out`-px centre outputs are laid side by
    side, so the stitched maps are aligned with the image pixels.

    Returns
    -------
    np_prob : (h, w) float32
        Nucleus probability.
    hv : (h, w, 2) float32
        Horizontal, vertical maps.
    types : (h, w) int64 or None
        Argmax of the type branch (0: background), when the model classifies.
    """
    import torch

    from ._hovernet_net import PATCH

    window, out = PATCH[model.mode]
    rgb = np.asarray(rgb)
    h, w = rgb.shape[:2]
    (pt, pb, pl, pr), ys, xs = patch_grid(h, w, window, out)
    img = np.pad(rgb, ((pt, pb), (pl, pr), (0, 0)), mode="reflect")
    corners = [(y, x) for y in ys for x in xs]
    full = None
    dev = torch.device(device)
    for s in range(0, len(corners), batch_size):
        chunk = corners[s:s + batch_size]
        batch = np.stack([img[y:y + window, x:x + window] for y, x in chunk])
        xb = torch.from_numpy(batch).to(dev).permute(0, 3, 1, 2).float()
        with torch.no_grad():
            res = model(xb)
        parts = [torch.softmax(res["np"], 1)[:, 1:], res["hv"]]
        if "tp" in res:
            parts.append(torch.argmax(torch.softmax(res["tp"], 1), 1, keepdim=True).float())
        maps = torch.cat(parts, 1).permute(0, 2, 3, 1).cpu().numpy()
        if full is None:
            full = np.zeros((len(ys) * out, len(xs) * out, maps.shape[-1]), np.float32)
        for (y, x), m in zip(chunk, maps):
            full[y:y + out, x:x + out] = m
    full = full[:h, :w]
    types = full[..., 3].astype(np.int64) if full.shape[-1] > 3 else None
    return full[..., 0], full[..., 1:3], types
