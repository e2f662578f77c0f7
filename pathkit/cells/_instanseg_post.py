"""InstanSeg's post-processing: network output -> instance labels (Goldsborough et al. 2024).

Written by pathkit after the inference path of the authors' TorchScript export (``InstanSeg_Torchscript`` of
instanseg-torch): seeds are local maxima of the seed map; each seed reads a square window around it, where a
small MLP (the "pixel classifier") turns the embedding difference to the seed and the sigma maps into an
instance probability; overlapping windows are merged when their masks overlap; each pixel goes to the instance
of highest probability. The arithmetic follows the authors' order of operations in torch, so the same network
output gives the same label image (tests/test_parity_instanseg.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class InstanSegParams:
    """Post-processing settings of InstanSeg (the defaults of the authors' TorchScript export, used when the
    converted weights carry none of their own).

    ``seed_threshold``: a seed is a local maximum of the seed map (``output / 15 + 0.5``, the inverse of the
    distance-transform scaling used in training) above this, at most one per ``2 * peak_distance + 1`` px
    square. ``window_size``: half the side (px) of the square each seed's instance may cover.
    ``mask_threshold``: instance probability that puts a pixel in the instance. ``overlap_threshold``: two
    seeds whose masks overlap by more than this IoU are one instance. ``fg_threshold``: for models with a
    separate foreground channel. ``cleanup_fragments``: keep only the piece connected to the seed and fill
    its holes.
    """

    mask_threshold: float = 0.53
    peak_distance: int = 5
    seed_threshold: float = 0.7
    overlap_threshold: float = 0.3
    fg_threshold: float = 0.5
    window_size: int = 32
    cleanup_fragments: bool = True

    @classmethod
    def from_dict(cls, d: dict | None) -> InstanSegParams:
        names = {f.name for f in fields(cls)}
        d = dict(d or {})
        bad = sorted(set(d) - names)
        if bad:
            from ..errors import ParameterError

            raise ParameterError(f"unknown InstanSeg parameters {bad}; known: {sorted(names)}")
        return cls(**d)

    def as_dict(self) -> dict:
        return asdict(self)


class PixelClassifier(nn.Module):
    """The authors' ``ProbabilityNet``: (embedding offset, sigmas) per pixel -> instance logit."""

    def __init__(self, n_in: int = 4, width: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(n_in, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, 1)

    def forward(self, x):
        if x.numel() == 0:
            return self.fc3(self.fc2(self.fc1(x)))
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _seeds(seed_map: torch.Tensor, peak_distance: int, threshold: float) -> torch.Tensor:
    """(n, 2) row, col of the local maxima: a pixel is a seed when it is the first maximum (row-major) of the
    square of half-side `peak_distance` around it, and that maximum exceeds `threshold`."""
    h, w = seed_map.shape
    k = 2 * int(peak_distance) + 1
    pooled, arg = F.max_pool2d(seed_map.view(1, 1, h, w), kernel_size=k, stride=1, padding=int(peak_distance),
                               return_indices=True)
    own = torch.arange(h * w, device=seed_map.device).view(1, 1, h, w)
    return torch.nonzero(((arg == own) & (pooled > threshold)).view(h, w)).long()


def _grow(mask: torch.Tensor, seed: torch.Tensor, steps: int) -> torch.Tensor:
    """Geodesic dilation of `seed` inside `mask` (8-connected), one pixel per step, until stable or `steps`."""
    cur = seed
    for _ in range(steps):
        nxt = (F.max_pool2d(cur.float(), kernel_size=3, stride=1, padding=1) > 0) & mask
        if torch.equal(cur, nxt):
            return nxt
        cur = nxt
    return cur


def _cleanup(prob: torch.Tensor, local_seeds: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep, in each window, the part of the mask connected to its seed; set its holes to `threshold`.

    A hole is background not reached from the pixels more than 3 px away from the mask (as the authors fill
    holes), so a gap that opens onto the window's edge within 3 px counts as a hole too.
    """
    n, _, s, _ = prob.shape
    seed = torch.zeros_like(prob, dtype=torch.bool)
    seed[torch.arange(n, device=prob.device), 0, local_seeds[:, 0], local_seeds[:, 1]] = True
    kept = _grow(prob >= threshold, seed, s)
    near = kept.float()
    for _ in range(3):
        near = F.max_pool2d(near, kernel_size=3, stride=1, padding=1)
    outside = _grow(~kept, ~(near > 0), s)
    holes = (~outside) & (~kept)
    prob = prob.clone()
    prob[~kept] = 0
    prob[holes] = threshold
    return prob


def _components(adjacent: np.ndarray) -> np.ndarray:
    """Instance id (1-based) of each window: the smallest window index of its connected group."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    n = adjacent.shape[0]
    _, comp = connected_components(csr_matrix(adjacent), directed=False)
    first = np.full(comp.max() + 1 if n else 0, n, np.int64)
    np.minimum.at(first, comp, np.arange(n))
    return first[comp] + 1


def instanseg_labels(output: torch.Tensor, classifier: nn.Module, params: InstanSegParams | None = None, *,
                     dim_coords: int = 2, n_sigma: int = 2, dim_seeds: int = 1) -> torch.Tensor:
    """Instance labels of one image from InstanSeg's network output.

    Parameters
    ----------
    output
        (dim_coords + n_sigma + dim_seeds, h, w) float32 network output of one image (one head).
    classifier
        The pixel classifier (:class:`PixelClassifier`).
    params
        :class:`InstanSegParams`.
    dim_coords, n_sigma, dim_seeds
        The layout of `output`'s channels (embedding coordinates, sigmas, seed map [and foreground]).

    Returns
    -------
    torch.Tensor
        int64 (h, w): 0 background; an instance's value is the smallest index (1-based) of the seeds merged
        into it, so values are not consecutive.
    """
    p = params or InstanSegParams()
    dev = output.device
    h, w = output.shape[-2:]
    xx = torch.linspace(0, w * 64 / 256, w, device=dev).view(1, 1, -1).expand(1, h, w)
    yy = torch.linspace(0, h * 64 / 256, h, device=dev).view(1, -1, 1).expand(1, h, w)
    # embeddings are offsets (in 1/4 px) added to a coordinate ramp: pixels of one nucleus agree on a point
    emb = (torch.sigmoid(output[0:dim_coords]) - 0.5) * 8 + torch.cat((xx, yy), 0)
    sigma = output[dim_coords:dim_coords + n_sigma]
    if dim_seeds == 1:
        seed_map = output[-1] / 15 + 0.5
    else:
        seed_map = (output[-2] / 15).clone() + 0.5
        seed_map[~(torch.sigmoid(output[-1]) > p.fg_threshold)] = 0
    seeds = _seeds(seed_map, p.peak_distance, p.seed_threshold)
    n = seeds.shape[0]
    if n == 0:
        return torch.zeros((h, w), dtype=torch.int64, device=dev)
    ws = min(int(p.window_size), h, w)
    side = 2 * ws
    top = seeds.clone()
    top[:, 0].clamp_(min=ws, max=h - ws)
    top[:, 1].clamp_(min=ws, max=w - ws)
    top = top - ws
    steps = torch.arange(side, device=dev)
    rows = (top[:, 0, None] + steps)[:, :, None].expand(n, side, side)
    cols = (top[:, 1, None] + steps)[:, None, :].expand(n, side, side)
    centre = emb[:, seeds[:, 0], seeds[:, 1]]  # (E, n)
    feats = torch.cat([emb[:, rows, cols] - centre[:, :, None, None], sigma[:, rows, cols]], 0)  # (E+S, n, s, s)
    feats = feats.permute(1, 2, 3, 0).reshape(n * side * side, -1)
    with torch.no_grad():
        prob = torch.sigmoid(classifier(feats)).reshape(n, 1, side, side)
    if p.cleanup_fragments:
        prob = _cleanup(prob, seeds - top, p.mask_threshold)
    prob = prob.reshape(-1)
    lin = (rows * w + cols).reshape(-1)
    owner = torch.arange(n, device=dev).view(n, 1).expand(n, side * side).reshape(-1)
    on = prob >= p.mask_threshold
    prob, lin, owner = prob[on], lin[on], owner[on]
    # each pixel goes to the window of highest probability; ties to the lowest window index
    best = torch.full((h * w,), -1.0, device=dev).scatter_reduce(0, lin, prob, reduce="amax")
    win = prob == best[lin]
    first = torch.full((h * w,), n, dtype=torch.int64, device=dev).scatter_reduce(0, lin[win], owner[win],
                                                                                  reduce="amin")
    # windows whose masks overlap by IoU > overlap_threshold are one instance
    from scipy.sparse import csr_matrix

    o, li = owner.cpu().numpy(), lin.cpu().numpy()
    m = csr_matrix((np.ones(len(o), np.float32), (o, li)), shape=(n, h * w))
    inter = torch.from_numpy((m @ m.T).toarray().astype(np.float32))
    area = torch.from_numpy(np.asarray(m.sum(1), np.float32).reshape(1, -1))
    iou = inter / (area.T + area - inter)
    ids = torch.from_numpy(_components((iou > p.overlap_threshold).numpy())).to(dev)
    lut = torch.cat([torch.zeros(1, dtype=torch.int64, device=dev), ids])
    first = torch.where(first == n, torch.zeros_like(first), first + 1)
    return lut[first].view(h, w)
