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
# a tile's Vahadane stain matrix is learned from about this many of its pixels (every s-th pixel): the solver's
# cost grows with them. The problem is flat: on 16 CMU-1 tiles (224 px) the matrix from every 6th pixel differs
# from the all-pixel one by 0.014 (median; max 0.10) per component, from every 12th by 0.04 (max 0.14)
VAHADANE_TILE_PIXELS = 8192


def od_and_mask(batch, Io: float, beta: float):
    """uint8 (B, H, W, 3) -> optical density (B, P, 3) float32 ``-log((I + 1) / Io)`` (as torchstain computes
    it) and the stained mask (B, P): density >= `beta` in every channel."""
    od = batch.reshape(batch.shape[0], -1, 3).float().add_(1).div_(Io).log_().neg_()
    return od, (od >= beta).all(dim=-1)


def _planar_od(batch, Io: float):
    """uint8 (B, H, W, 3) -> optical density (B, 3, P) float32, one contiguous plane per channel."""
    B = batch.shape[0]
    return batch.permute(0, 3, 1, 2).reshape(B, 3, -1).float().add_(1).div_(Io).log_().neg_()


def _pseudo_angle(y, x):
    """A strictly increasing function of ``atan2(y, x)`` on (-pi, pi] (the "diamond angle", in (-2, 2]) that
    costs a few arithmetic operations: ranks by it are ranks by the angle."""
    import torch

    r = y / (x.abs() + y.abs()).clamp_(min=torch.finfo(x.dtype).tiny)  # in [-1, 1]
    # right half: r; left half: 2 - r above the axis, -2 - r below it
    return torch.where(x >= 0, r, torch.where(y >= 0, 2 - r, -2 - r))


def _rank_pick(key, m, ranks, largest: bool):
    """Per row of `key` (B, N): the index of the entry at 0-based rank ``ranks[b]`` among those where `m`, in
    ascending (or, with `largest`, descending) order of `key`."""
    import torch

    fill = -float("inf") if largest else float("inf")
    top = key.masked_fill(~m, fill).topk(int(max(ranks)) + 1, dim=1, largest=largest, sorted=True).indices
    return top.gather(1, torch.as_tensor(ranks, device=key.device)[:, None])


def macenko_batch(batch, he_ref, maxc_ref, Io: float, alpha: float, beta: float, min_pixels: int):
    """torchstain's ``TorchMacenkoNormalizer.normalize`` on every tile of a uint8 batch at once.

    Returns the normalised uint8 batch and the (B,) mask of tiles that had at least `min_pixels` stained pixels
    (the others are returned unchanged)."""
    import torch

    B, H, W, _ = batch.shape
    od = _planar_od(batch, Io)  # (B, 3, P)
    P = od.shape[-1]
    m = od.amin(dim=1) >= beta
    n = m.sum(dim=1)
    ok = n >= min_pixels
    mf = m.to(od.dtype)[..., None]  # (B, P, 1)
    nf = n.clamp(min=2).to(od.dtype)
    mu = (od @ mf) / nf[:, None, None]  # (B, 3, 1)
    xc = (od - mu).mul_(mf.transpose(1, 2))
    cov = xc @ xc.transpose(1, 2) / (nf - 1)[:, None, None]
    del xc
    eye = torch.eye(3, dtype=od.dtype, device=od.device).expand(B, 3, 3)
    cov = torch.where(ok[:, None, None], cov, eye)  # glass tiles: any finite matrix, their output is discarded
    ev = torch.linalg.eigh(cov)[1][..., 1:3]  # (B, 3, 2): the two largest eigenvalues' vectors
    proj = ev.transpose(1, 2) @ od  # (B, 2, P)
    # torchstain's nearest-rank angle percentiles over stained pixels: ranked by a cheap monotone stand-in for
    # atan2, the angle itself taken of the two picked pixels only
    key = _pseudo_angle(proj[:, 1], proj[:, 0])
    counts = n.tolist()
    lo = [max(0, round(0.01 * float(alpha) * (c - 1))) for c in counts]  # 0-based rank from the smallest
    hi = [max(0, c - 1 - round(0.01 * (100 - float(alpha)) * (c - 1))) for c in counts]  # ... from the largest
    idx = torch.cat([_rank_pick(key, m, lo, False), _rank_pick(key, m, hi, True)], dim=1)  # (B, 2)
    t = proj.gather(2, idx[:, None, :].expand(B, 2, 2))  # (B, 2 coords, 2 ends)
    ang = torch.atan2(t[:, 1], t[:, 0])
    v = ev @ torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)  # (B, 3, 2): vMin, vMax
    he = torch.where((v[:, 0, 0] > v[:, 0, 1])[:, None, None], v, v.flip(-1))
    he = torch.where(ok[:, None, None], he, he_ref)
    # least squares concentrations of every pixel: the pseudo-inverse of the 3 x 2 stain matrix
    pinv = torch.linalg.solve(he.transpose(1, 2) @ he, he.transpose(1, 2))  # (B, 2, 3)
    conc = pinv @ od  # (B, 2, P)
    del od
    k = P - (1 + round(0.99 * (P - 1)))  # torchstain's 99th percentile, as a rank from the largest
    maxc = conc.topk(k + 1, dim=-1, sorted=True).values[..., k]
    # recompose with the reference matrix: exponent (B, 3, P) = (reference matrix x scale) @ conc
    mix = he_ref[None] * (maxc_ref[None, :] / maxc)[:, None, :]  # (B, 3, 2)
    out = (mix @ conc).neg_().exp_().mul_(Io).clamp_(max=255).to(torch.uint8)
    out = out.reshape(B, 3, H, W).permute(0, 2, 3, 1).contiguous()
    if not bool(ok.all()):
        out[~ok] = batch[~ok]
    return out, ok


def nonneg_lasso2(od, W, lam: float):
    """Exact codes (B, 2, P) of ``min_h 0.5 ||v - h W||^2 + lam * sum(h)``, ``h >= 0``, for every pixel `v` of
    `od` (B, 3, P) and a two-atom dictionary `W` (B, 2, 3): the unconstrained solution if it is positive, else
    the better of the two one-atom solutions (the convex problem's optimum lies on one of them)."""
    import torch

    G = W @ W.transpose(1, 2)
    g11, g12, g22 = G[:, 0, 0, None], G[:, 0, 1, None], G[:, 1, 1, None]
    b = (W @ od).sub_(lam)
    b1, b2 = b[:, 0], b[:, 1]
    tiny = torch.finfo(od.dtype).tiny
    det = g11 * g22 - g12 * g12
    inv = 1 / det.clamp(min=tiny)
    f1 = (g22 * inv) * b1 - (g12 * inv) * b2
    f2 = (g11 * inv) * b2 - (g12 * inv) * b1
    full = (f1 > 0) & (f2 > 0) & (det > 0)
    s1 = b1.clamp(min=0) / g11.clamp(min=tiny)
    s2 = b2.clamp(min=0) / g22.clamp(min=tiny)
    first = s1 * b1 >= s2 * b2  # the one-atom objectives are -s1 * b1 / 2 and -s2 * b2 / 2
    h1 = torch.where(full, f1, s1.mul_(first))
    h2 = torch.where(full, f2, s2.mul_(~first))
    return torch.stack([h1, h2], dim=1)


def _update_dict(W, A, Bm):
    """One pass of scikit-learn's ``_update_dict`` (positive atoms of norm <= 1) from the code statistics
    ``A = sum w h h^T`` (B, 2, 2) and ``Bm = sum w v h^T`` (B, 3, 2)."""
    import torch

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

    `od` (B, 3, P), `wts` (B, P) 0/1 weights (stained pixels); `active` (B,): the tiles to solve (default: those
    with any weight; the others keep the start). Returns (W (B, 2, 3) rows H then E of unit norm, iterations
    run per tile)."""
    import torch

    B = od.shape[0]
    if W0 is None:
        W0 = torch.as_tensor(RUIFROK_HE, dtype=od.dtype, device=od.device)
    W = W0.to(od.dtype).expand(B, 2, 3).clone()
    active = (wts.sum(dim=1) > 0) if active is None else active.clone()
    n_iter = torch.zeros(B, dtype=torch.long, device=od.device)
    svv = ((od * od).sum(dim=1) * wts).sum(dim=1)
    prev = None
    for _ in range(max_iter):
        code = nonneg_lasso2(od, W, lam)
        cw = code * wts[:, None]
        A = cw @ code.transpose(1, 2)  # (B, 2, 2)
        Bm = od @ cw.transpose(1, 2)  # (B, 3, 2)
        W = torch.where(active[:, None, None], _update_dict(W, A, Bm), W)
        n_iter += active.long()
        # scikit-learn's cost (this iteration's codes, the updated dictionary) from the statistics
        G = W @ W.transpose(1, 2)
        fit = svv - 2 * (W * Bm.transpose(1, 2)).sum(dim=(1, 2)) + (G * A).sum(dim=(1, 2))
        cost = 0.5 * fit + lam * cw.sum(dim=(1, 2))
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


def vahadane_batch(batch, w_ref, maxc_ref, Io: float, beta: float, lam: float, min_pixels: int,
                   mask_background: bool = True, max_iter: int = 100, tol: float = 1e-8):
    """Vahadane normalisation of every tile of a uint8 batch: each tile's own stain matrix (the fit's solver on
    every s-th of its stained pixels), its least squares concentrations scaled so their 99th percentiles (over
    stained pixels, or all with ``mask_background=False``) match the reference's, recomposed with the
    reference matrix `w_ref` (2, 3). Returns (uint8 batch, (B,) mask of the tiles normalised)."""
    import torch

    B, H, W_, _ = batch.shape
    od = _planar_od(batch, Io)  # (B, 3, P)
    m = od.amin(dim=1) >= beta
    keep = m if mask_background else torch.ones_like(m)
    ok = m.sum(dim=1) >= min_pixels
    s = max(1, od.shape[-1] // VAHADANE_TILE_PIXELS)
    # float64 as in the fit: the stopping rule's 1e-8 relative decrease is below float32's resolution
    Ws, _ = vahadane_dictionary(od[:, :, ::s].double(), keep[:, ::s].double(), lam, max_iter, tol, active=ok)
    Ws = torch.where(ok[:, None, None], Ws.to(od.dtype), w_ref)
    pinv = torch.linalg.solve(Ws @ Ws.transpose(1, 2), Ws)  # (B, 2, 3): least squares concentrations
    conc = pinv @ od  # (B, 2, P)
    del od
    maxc = torch.stack([upper_percentile(conc[:, i], keep, 99) for i in range(2)], dim=1)
    # a stain the tile lacks (99th percentile ~0: an eosin-only tile) is left unscaled rather than blown up
    scale = torch.where(maxc > 1e-6, maxc_ref[None, :] / maxc.clamp(min=1e-6), torch.ones_like(maxc))
    mix = w_ref.T[None] * scale[:, None, :]  # (B, 3, 2)
    out = (mix @ conc).neg_().exp_().mul_(Io).nan_to_num_(255).clamp_(0, 255).to(torch.uint8)
    out = out.reshape(B, 3, H, W_).permute(0, 2, 3, 1).contiguous()
    if not bool(ok.all()):
        out[~ok] = batch[~ok]
    return out, ok
