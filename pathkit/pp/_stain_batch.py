"""Stain normalisation on a whole uint8 tile batch (B, H, W, 3) in torch: every per-pixel step runs once over
the batch tensor, and only the per-tile statistics (covariance, percentiles, stain matrices) are kept per tile.

Macenko follows torchstain's torch backend step by step (its numbers: nearest-rank percentiles, least squares
concentrations over all pixels); Vahadane is sparse non-negative dictionary learning (Vahadane et al., IEEE TMI
2016) with the block-coordinate solver of scikit-learn's ``dict_learning`` (exact non-negative lasso codes,
atom-by-atom dictionary updates), which scikit-learn shares with SPAMS, the authors' solver.
"""
from __future__ import annotations

import numpy as np

# Ruifrok & Johnston's haematoxylin and eosin optical-density vectors (rows, unit norm): Vahadane's start
_RUIFROK_HE = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])
RUIFROK_HE = _RUIFROK_HE / np.linalg.norm(_RUIFROK_HE, axis=1, keepdims=True)
# scikit-learn's (and SPAMS's) rule for an atom that (almost) no pixel uses: it is not updated
_UNUSED_ATOM = 1e-6
# a tile's Vahadane stain matrix is learned from about this many of its pixels (every s-th pixel)
VAHADANE_TILE_PIXELS = 8192


def od_and_mask(batch, Io: float, beta: float):
    """uint8 (B, H, W, 3) -> optical density (B, P, 3) float32 ``-log((I + 1) / Io)`` (a 256-entry lookup, as
    torchstain computes it in float32) and the stained mask (B, P): density >= `beta` in every channel."""
    import torch

    lut = -torch.log((torch.arange(256, dtype=torch.float32, device=batch.device) + 1) / Io)
    B = batch.shape[0]
    od = lut[batch.reshape(B, -1, 3).long()]
    return od, (od >= beta).all(dim=-1)


def _nearest_rank(sorted_vals, n, q: float):
    """torchstain's percentile (``kthvalue`` at ``1 + round(q / 100 * (n - 1))``) of each row's first `n` sorted
    values; `n` a list of counts."""
    import torch

    k = [1 + round(0.01 * float(q) * (int(c) - 1)) for c in n]
    idx = torch.tensor([max(kk - 1, 0) for kk in k], device=sorted_vals.device)
    return sorted_vals.gather(1, idx[:, None])[:, 0]


def macenko_batch(batch, he_ref, maxc_ref, Io: float, alpha: float, beta: float, min_pixels: int):
    """torchstain's ``TorchMacenkoNormalizer.normalize`` on every tile of a uint8 batch at once.

    Returns the normalised uint8 batch and the (B,) mask of tiles that had at least `min_pixels` stained pixels
    (the others are returned unchanged)."""
    import torch

    B, H, W, _ = batch.shape
    od, m = od_and_mask(batch, Io, beta)
    n = m.sum(dim=1)
    ok = n >= min_pixels
    mf = m.to(od.dtype)[..., None]
    nf = n.clamp(min=2).to(od.dtype)
    mu = (od * mf).sum(dim=1) / nf[:, None]
    xc = (od - mu[:, None]) * mf
    cov = xc.transpose(1, 2) @ xc / (nf - 1)[:, None, None]
    eye = torch.eye(3, dtype=od.dtype, device=od.device).expand(B, 3, 3)
    cov = torch.where(ok[:, None, None], cov, eye)  # glass tiles: any finite matrix, their output is discarded
    ev = torch.linalg.eigh(cov)[1][..., 1:3]  # (B, 3, 2): the two largest eigenvalues' vectors
    proj = od @ ev
    phi = torch.atan2(proj[..., 1], proj[..., 0])
    # the angle percentiles over stained pixels only: background sorts to the end as +inf
    srt = torch.where(m, phi, torch.full_like(phi, float("inf"))).sort(dim=1).values
    counts = n.tolist()
    ang = torch.stack([_nearest_rank(srt, counts, alpha), _nearest_rank(srt, counts, 100 - alpha)], dim=1)
    v = ev @ torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)  # (B, 3, 2): vMin, vMax
    he = torch.where((v[:, 0, 0] > v[:, 0, 1])[:, None, None], v, v.flip(-1))
    # least squares concentrations of every pixel (normal equations of the 3 x 2 system)
    conc = torch.linalg.solve(he.transpose(1, 2) @ he, he.transpose(1, 2) @ od.transpose(1, 2))  # (B, 2, P)
    P = conc.shape[-1]
    k = 1 + round(0.99 * (P - 1))
    maxc = conc.kthvalue(k, dim=-1).values
    conc = conc * (maxc_ref[None, :] / maxc)[..., None]
    out = (Io * torch.exp(-(he_ref @ conc))).clamp_(max=255)
    out = out.transpose(1, 2).reshape(B, H, W, 3).int().clamp_(0, 255).to(torch.uint8)
    return torch.where(ok[:, None, None, None], out, batch), ok


def nonneg_lasso2(od, W, lam: float):
    """Exact codes of ``min_h 0.5 ||v - h W||^2 + lam * sum(h)``, ``h >= 0``, for every pixel `v` of `od`
    (B, P, 3) and a two-atom dictionary `W` (B, 2, 3): the unconstrained solution if it is positive, else the
    better of the two one-atom solutions (the convex problem's optimum lies on one of them)."""
    import torch

    G = W @ W.transpose(1, 2)
    g11, g12, g22 = G[:, 0, 0, None], G[:, 0, 1, None], G[:, 1, 1, None]
    b = od @ W.transpose(1, 2) - lam
    b1, b2 = b[..., 0], b[..., 1]
    tiny = torch.finfo(od.dtype).tiny
    det = g11 * g22 - g12 * g12
    f1 = (g22 * b1 - g12 * b2) / det.clamp(min=tiny)
    f2 = (g11 * b2 - g12 * b1) / det.clamp(min=tiny)
    full = (f1 > 0) & (f2 > 0) & (det > 0)
    s1 = (b1 / g11.clamp(min=tiny)).clamp(min=0)
    s2 = (b2 / g22.clamp(min=tiny)).clamp(min=0)
    first = 0.5 * g11 * s1 * s1 - b1 * s1 <= 0.5 * g22 * s2 * s2 - b2 * s2
    h1 = torch.where(full, f1, torch.where(first, s1, torch.zeros_like(s1)))
    h2 = torch.where(full, f2, torch.where(first, torch.zeros_like(s2), s2))
    return torch.stack([h1, h2], dim=-1)


def _update_dict(W, od, code, wts):
    """One pass of scikit-learn's ``_update_dict`` (positive atoms of norm <= 1), weighted by `wts` (B, P)."""
    import torch

    cw = code * wts[..., None]
    A = cw.transpose(1, 2) @ code  # (B, 2, 2)
    Bm = od.transpose(1, 2) @ cw  # (B, 3, 2)
    W = W.clone()
    for k in range(2):
        akk = A[:, k, k]
        used = akk > _UNUSED_ATOM
        step = (Bm[:, :, k] - (A[:, k, :, None] * W).sum(dim=1)) / torch.where(used, akk, 1)[:, None]
        wk = torch.where(used[:, None], W[:, k] + step, W[:, k]).clamp(min=0)
        W[:, k] = wk / torch.linalg.vector_norm(wk, dim=-1, keepdim=True).clamp(min=1)
    return W


def vahadane_dictionary(od, wts, lam: float = 0.1, max_iter: int = 100, tol: float = 1e-8, W0=None, active=None):
    """Sparse non-negative stain separation of each tile: ``min 0.5 ||V - C W||^2 + lam ||C||_1`` over
    ``C >= 0`` and ``W >= 0`` with atoms of norm <= 1, from Ruifrok's H and E (or `W0`), alternating exact codes
    and one dictionary pass, with scikit-learn's stopping rule per tile (cost decrease < `tol` x cost).

    `od` (B, P, 3), `wts` (B, P) 0/1 weights (stained pixels); `active` (B,): the tiles to solve (default: those
    with any weight; the others keep the start). Returns (W (B, 2, 3) rows H then E of unit norm, iterations
    run per tile)."""
    import torch

    B = od.shape[0]
    if W0 is None:
        W0 = torch.as_tensor(RUIFROK_HE, dtype=od.dtype, device=od.device)
    W = W0.to(od.dtype).expand(B, 2, 3).clone()
    active = (wts.sum(dim=1) > 0) if active is None else active.clone()
    n_iter = torch.zeros(B, dtype=torch.long, device=od.device)
    prev = None
    for it in range(max_iter):
        code = nonneg_lasso2(od, W, lam)
        W_new = _update_dict(W, od, code, wts)
        W = torch.where(active[:, None, None], W_new, W)
        n_iter += active.long()
        res = od - code @ W
        cost = 0.5 * ((res * res).sum(-1) * wts).sum(1) + lam * (code.sum(-1) * wts).sum(1)
        if prev is not None:
            active = active & ~((prev - cost) < tol * cost)
        prev = cost
        if not bool(active.any()):
            break
    W = W / torch.linalg.vector_norm(W, dim=-1, keepdim=True).clamp(min=torch.finfo(od.dtype).tiny)
    swap = W[:, 0, 0] < W[:, 1, 0]  # haematoxylin first: the larger red optical density
    return torch.where(swap[:, None, None], W.flip(1), W), n_iter


def upper_percentile(x, m, q: float):
    """Per row of `x` (B, N): numpy's (linear) `q`-th percentile over the entries where `m` (B, N); `q` near 100
    (only the top ``(100 - q)`` % is sorted)."""
    import torch

    n = m.sum(dim=1)
    k = min(x.shape[1], int(np.floor((1 - q / 100) * max(x.shape[1] - 1, 0))) + 2)
    top = torch.where(m, x, torch.full_like(x, -float("inf"))).topk(k, dim=1).values  # descending
    d = (1 - q / 100) * (n.clamp(min=1) - 1).to(x.dtype)  # position counted from the largest
    lo = d.floor().long().clamp(max=k - 1)
    hi = (lo + 1).clamp(max=k - 1)
    frac = d - lo.to(x.dtype)
    a, b = top.gather(1, lo[:, None])[:, 0], top.gather(1, hi[:, None])[:, 0]
    return torch.where(frac > 0, a + (b - a) * frac, a)


def lstsq_concentrations(od, W):
    """Least squares concentrations (B, P, 2) of `od` (B, P, 3) on the stain rows `W` (B, 2, 3)."""
    import torch

    return torch.linalg.solve(W @ W.transpose(1, 2), W @ od.transpose(1, 2)).transpose(1, 2)


def vahadane_batch(batch, w_ref, maxc_ref, Io: float, beta: float, lam: float, min_pixels: int,
                   mask_background: bool = True, max_iter: int = 100, tol: float = 1e-8):
    """Vahadane normalisation of every tile of a uint8 batch: each tile's own stain matrix (the fit's solver on
    every s-th of its stained pixels), its least squares concentrations scaled so their 99th percentiles (over
    stained pixels, or all with ``mask_background=False``) match the reference's, recomposed with the
    reference matrix `w_ref` (2, 3). Returns (uint8 batch, (B,) mask of the tiles normalised)."""
    import torch

    B, H, W_, _ = batch.shape
    od, m = od_and_mask(batch, Io, beta)
    keep = m if mask_background else torch.ones_like(m)
    ok = m.sum(dim=1) >= min_pixels
    s = max(1, od.shape[1] // VAHADANE_TILE_PIXELS)
    # float64 as in the fit: the stopping rule's 1e-8 relative decrease is below float32's resolution
    Ws, _ = vahadane_dictionary(od[:, ::s].double(), keep[:, ::s].double(), lam, max_iter, tol, active=ok)
    conc = lstsq_concentrations(od, Ws.to(od.dtype))
    maxc = torch.stack([upper_percentile(conc[..., i], keep, 99) for i in range(2)], dim=1)
    # a stain the tile lacks (99th percentile ~0: an eosin-only tile) is left unscaled rather than blown up
    scale = torch.where(maxc > 1e-6, maxc_ref[None, :] / maxc.clamp(min=1e-6), torch.ones_like(maxc))
    out = (Io * torch.exp(-((conc * scale[:, None, :]) @ w_ref))).nan_to_num_(255).clamp_(0, 255)
    out = out.reshape(B, H, W_, 3).to(torch.uint8)
    return torch.where(ok[:, None, None, None], out, batch), ok
