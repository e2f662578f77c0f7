"""Stain normalisation: Macenko and Reinhard as torchstain computes them (fitted with its numpy backend; tiles
normalised as its torch backend does, Macenko batched in ``_stain_batch``), and Vahadane's sparse
non-negative stain separation (``_stain_batch``, scikit-learn's dictionary-learning solver).

A fitted normaliser is plain data (:meth:`StainNormalizer.to_dict`): it goes into ``uns`` and h5ad files and
comes back with :meth:`StainNormalizer.from_dict`. Background never enters the fit: only pixels whose optical
density is at least ``beta`` in every channel (Macenko's own transparency rule) are used, for both methods.
"""
from __future__ import annotations

import numpy as np

from ..errors import StainError

__all__ = ["StainNormalizer", "as_normalizer", "fit_stain"]

METHODS = ("macenko", "reinhard", "vahadane")
# the saved parameters of each method (plain data in uns)
PARAM_KEYS = {"macenko": ("stain_matrix", "max_concentrations"), "reinhard": ("lab_mean", "lab_std"),
              "vahadane": ("stain_matrix", "max_concentrations", "regularizer")}
# fewer stained pixels than this in a reference cannot give a stable stain matrix / Lab statistics
MIN_FIT_PIXELS = 500
# a tile to transform needs this many stained pixels; emptier tiles (glass) are passed through unchanged
MIN_TILE_PIXELS = 64
# Vahadane: sparsity weight of the concentrations (Vahadane et al.'s lambda, StainTools' and tiatoolbox's 0.1),
# the solver's iteration cap and stopping rule (scikit-learn's dict_learning: cost decrease < tol x cost), and
# the most stained pixels a fit learns the dictionary from (a random sample of them beyond that)
VAHADANE_LAMBDA = 0.1
VAHADANE_MAX_ITER = 1000
VAHADANE_TOL = 1e-8
VAHADANE_FIT_PIXELS = 250_000


def _torchstain():
    try:
        import torchstain.torch.normalizers as tsn
    except ImportError as err:  # pragma: no cover - the extra is in dev
        raise ImportError('stain normalisation needs torchstain: pip install "pathkit[stain]"') from err
    return tsn


def stained_pixels(rgb: np.ndarray, Io: float = 240, beta: float = 0.15) -> np.ndarray:
    """(n, 3) uint8: the pixels of `rgb` (any leading shape, last axis RGB) that are not background, i.e. whose
    optical density ``-log((I + 1) / Io)`` is >= `beta` in all three channels."""
    px = np.asarray(rgb).reshape(-1, 3)
    od = -np.log((px.astype(np.float64) + 1) / Io)
    return px[np.all(od >= beta, axis=1)]


class StainNormalizer:
    """A fitted stain normaliser. Make it with :func:`pathkit.pp.fit_stain`.

    Attributes
    ----------
    method : str
        ``"macenko"``, ``"reinhard"`` or ``"vahadane"``.
    params : dict
        Macenko and Vahadane: ``stain_matrix`` (3 x 2, columns H and E optical-density vectors of unit norm),
        ``max_concentrations`` (2,): 99th percentiles; Vahadane also ``regularizer`` (the sparsity weight);
        Reinhard: ``lab_mean``, ``lab_std`` (3,) in torchstain's Lab units.
    Io, alpha, beta : float
        Transmitted light intensity, Macenko angle percentile and optical-density transparency threshold.
    mask_background : bool
        Background (optical density below `beta`) left out of the fit and of a tile's Reinhard statistics.
    info : dict
        How it was fitted (``n_pixels`` used, ``source``).
    """

    def __init__(self, method: str, params: dict, *, Io: float = 240.0, alpha: float = 1.0, beta: float = 0.15,
                 mask_background: bool = True, info: dict | None = None):
        if method not in METHODS:
            raise StainError(f"unknown stain method {method!r}; choose one of {METHODS}")
        self.method = method
        self.params = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
        self.Io, self.alpha, self.beta = float(Io), float(alpha), float(beta)
        self.mask_background = bool(mask_background)
        self.info = dict(info or {})
        self._norm = None
        self.n_unchanged = 0  # tiles passed through because they hold (almost) no stain

    def __repr__(self):
        return f"StainNormalizer({self.method!r}, fitted on {self.info.get('n_pixels', '?')} stained pixels)"

    # plain data for uns / h5ad
    def to_dict(self) -> dict:
        """The normaliser as plain data (h5ad-writable); :meth:`from_dict` rebuilds it."""
        return {"method": self.method, "Io": self.Io, "alpha": self.alpha, "beta": self.beta,
                "mask_background": self.mask_background,
                **{k: v.tolist() for k, v in self.params.items()},
                **{f"fit_{k}": v for k, v in self.info.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> StainNormalizer:
        """Rebuild a normaliser saved with :meth:`to_dict` (e.g. from ``adata.uns["stain"]``)."""
        d = dict(d)
        method = str(d.get("method"))
        keys = PARAM_KEYS.get(method, ())
        missing = [k for k in keys if k not in d]
        if method not in METHODS or missing:
            raise StainError(f"not a saved stain normaliser (method {method!r}, missing {missing}); save one "
                             "with norm.to_dict()")
        info = {k[4:]: (v.item() if hasattr(v, "item") and np.ndim(v) == 0 else v)
                for k, v in d.items() if k.startswith("fit_")}
        return cls(method, {k: d[k] for k in keys}, Io=float(d.get("Io", 240)), alpha=float(d.get("alpha", 1)),
                   beta=float(d.get("beta", 0.15)), mask_background=bool(d.get("mask_background", True)),
                   info=info)

    def _torch_normalizer(self):
        """torchstain's Reinhard normaliser holding the fitted Lab statistics."""
        if self._norm is None:
            import torch

            norm = _torchstain().TorchReinhardNormalizer()
            norm.target_means = torch.tensor(self.params["lab_mean"], dtype=torch.float32)
            norm.target_stds = torch.tensor(self.params["lab_std"], dtype=torch.float32)
            self._norm = norm
        return self._norm

    def _one(self, tile):
        """One HWC uint8 torch tile -> Reinhard-normalised HWC uint8 (unchanged when it holds almost no stain)."""
        import torch

        od = -torch.log((tile.float() + 1) / self.Io)
        stained = (od >= self.beta).all(dim=-1)
        if int(stained.sum()) < MIN_TILE_PIXELS:
            self.n_unchanged += 1
            return tile
        return self._reinhard(tile.permute(2, 0, 1), stained if self.mask_background else None)

    def _reinhard(self, chw, stained):
        """torchstain's Reinhard, with the tile's Lab statistics taken over its stained pixels only (as the fit
        was): over all pixels, a tile's glass would pull its mean towards white and the tissue away from the
        target."""
        import torch
        from torchstain.torch.utils import lab2rgb, lab_merge, lab_split, rgb2lab

        labs = lab_split(rgb2lab(chw.float() / 255))
        norm = self._torch_normalizer()
        out = []
        for ch, mu_t, sd_t in zip(labs, norm.target_means, norm.target_stds):
            vals = ch[stained] if stained is not None else ch
            out.append((ch - vals.mean()) / vals.std() * sd_t + mu_t)
        return (lab2rgb(lab_merge(*out)) * 255).to(torch.uint8)

    def transform_batch(self, batch):
        """Normalise a torch uint8 batch (B, H, W, 3) -> uint8 (B, H, W, 3), on the batch's device."""
        import torch

        if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
            raise StainError(f"transform_batch needs a uint8 (B, H, W, 3) batch, got {batch.dtype} "
                             f"{tuple(batch.shape)}")
        if self.method == "reinhard":
            norm = self._torch_normalizer()
            for name in ("target_means", "target_stds"):
                t = getattr(norm, name)
                if t.device != batch.device:
                    setattr(norm, name, t.to(batch.device))
            with torch.inference_mode():
                return torch.stack([self._one(t) for t in batch])
        from . import _stain_batch as sb

        def ref(key):
            return torch.tensor(self.params[key], dtype=torch.float32, device=batch.device)

        with torch.inference_mode():
            if self.method == "macenko":
                out, ok = sb.macenko_batch(batch, ref("stain_matrix"), ref("max_concentrations"), self.Io,
                                           self.alpha, self.beta, MIN_TILE_PIXELS)
            else:
                out, ok = sb.vahadane_batch(batch, ref("stain_matrix").T, ref("max_concentrations"), self.Io,
                                            self.beta, float(self.params["regularizer"]), MIN_TILE_PIXELS,
                                            self.mask_background, VAHADANE_MAX_ITER, VAHADANE_TOL)
        self.n_unchanged += int((~ok).sum())
        return out

    def transform(self, rgb: np.ndarray) -> np.ndarray:
        """Normalise an RGB uint8 image (H, W, 3) or a stack (N, H, W, 3); returns uint8 of the same shape."""
        import torch

        arr = np.asarray(rgb)
        if arr.dtype != np.uint8 or arr.shape[-1] != 3 or arr.ndim not in (3, 4):
            raise StainError(f"transform needs uint8 RGB (H, W, 3) or (N, H, W, 3), got {arr.dtype} {arr.shape}")
        batch = torch.from_numpy(np.ascontiguousarray(arr if arr.ndim == 4 else arr[None]))
        out = self.transform_batch(batch).numpy()
        return out if arr.ndim == 4 else out[0]


def _fit_vahadane(px: np.ndarray, Io: float, random_state) -> dict:
    """Vahadane's stain matrix of the pixels `px` (n, 3) uint8 (scikit-learn's dictionary-learning solver, from
    Ruifrok's H and E: deterministic) and the 99th percentiles of their least squares concentrations."""
    import torch

    from ._stain_batch import vahadane_dictionary

    od = -np.log((px.astype(np.float64) + 1) / Io)
    learn = od
    if len(od) > VAHADANE_FIT_PIXELS:
        rng = np.random.default_rng(random_state)
        learn = od[np.sort(rng.choice(len(od), size=VAHADANE_FIT_PIXELS, replace=False))]
    W, n_iter = vahadane_dictionary(torch.from_numpy(np.ascontiguousarray(learn.T))[None],
                                    torch.ones(1, len(learn), dtype=torch.float64), VAHADANE_LAMBDA,
                                    VAHADANE_MAX_ITER, VAHADANE_TOL)
    W = W[0].numpy()
    conc = np.linalg.lstsq(W.T, od.T, rcond=None)[0].T
    return {"stain_matrix": W.T, "max_concentrations": np.percentile(conc, 99, axis=0),
            "regularizer": np.float64(VAHADANE_LAMBDA)}, int(n_iter[0])


def _fit_pixels(px: np.ndarray, method: str, Io: float, alpha: float, beta: float, source: str,
                mask_background: bool = True, random_state=0):
    if method not in METHODS:
        raise StainError(f"unknown stain method {method!r}; choose one of {METHODS}")
    if len(px) < MIN_FIT_PIXELS:
        raise StainError(f"the stain reference ({source}) has {len(px)} stained pixels (need >= {MIN_FIT_PIXELS}):"
                         " it is blank or background only; pick a reference with tissue")
    info = {"n_pixels": len(px), "source": source}
    if method == "vahadane":
        params, info["n_iter"] = _fit_vahadane(px, Io, random_state)
    else:
        params = _fit_torchstain(px, method, Io, alpha, beta)
    if not all(np.isfinite(v).all() for v in params.values()):
        raise StainError(f"the stain fit on {source} is not finite ({params}); the reference has too little "
                         "stain variation (one colour only?)")
    return StainNormalizer(method, params, Io=Io, alpha=alpha, beta=beta, mask_background=mask_background,
                           info=info)


def _fit_torchstain(px: np.ndarray, method: str, Io: float, alpha: float, beta: float) -> dict:
    _torchstain()
    import torchstain.numpy.normalizers as tsn_np

    # the fit is a one-off: torchstain's numpy backend (float64, interpolated percentiles) gives the reference
    # numbers; its torch backend (float32, nearest-rank percentiles) differs by up to ~5e-4 in the stain
    # matrix. Stained pixels as an (n, 1, 3) image keep background out of the fit.
    img = np.ascontiguousarray(px[:, None, :])
    if method == "macenko":
        norm = tsn_np.NumpyMacenkoNormalizer()
        with np.errstate(all="ignore"):
            norm.fit(img, Io=Io, alpha=alpha, beta=beta)
        return {"stain_matrix": np.asarray(norm.HERef), "max_concentrations": np.asarray(norm.maxCRef)}
    norm = tsn_np.NumpyReinhardNormalizer()
    norm.fit(img)
    return {"lab_mean": np.asarray(norm.target_means), "lab_std": np.asarray(norm.target_stds)}


def _tile_pixels(tiles, slide, n_tiles, random_state, Io, beta):
    from ..slide import slide_of_tiles
    from ..tl._tiles_check import check_tiles

    check_tiles(tiles)
    slide = slide_of_tiles(tiles, slide)
    spec = check_tiles(tiles, slide)
    if tiles.n_obs == 0:
        raise StainError(f"{slide.path}: the tiles AnnData has no tiles to fit a stain reference on")
    rng = np.random.default_rng(random_state)
    pick = np.sort(rng.choice(tiles.n_obs, size=min(n_tiles, tiles.n_obs), replace=False))
    xs = tiles.obs["x"].to_numpy()[pick]
    ys = tiles.obs["y"].to_numpy()[pick]
    px = [stained_pixels(slide.read_tile(int(x), int(y), tile_px=int(spec["tile_px"]), mpp=float(spec["mpp"])),
                         Io, beta) for x, y in zip(xs, ys)]
    return np.concatenate(px), f"{slide.path} ({len(pick)} tiles)"


def fit_stain(reference, method: str = "macenko", *, slide=None, n_tiles: int = 64, Io: float = 240.0,
              alpha: float = 1.0, beta: float = 0.15, mask_background: bool = True,
              random_state: int = 0) -> StainNormalizer:
    """Fit a stain normaliser to a reference (its target appearance).

    Parameters
    ----------
    reference
        An RGB uint8 image (H, W, 3) or stack (N, H, W, 3); a tiles AnnData of :func:`pathkit.pp.tile` (with
        `slide`, or the slide recorded in its ``uns``); or a :class:`~pathkit.slide.Slide` / slide path (tiled
        with :func:`pathkit.pp.tile` defaults).
    method
        ``"macenko"`` (stain matrix + 99th-percentile concentrations) or ``"reinhard"`` (Lab mean and
        standard deviation), as torchstain computes them; ``"vahadane"``: the stain matrix of sparse
        non-negative dictionary learning (Vahadane et al. 2016; scikit-learn's solver, sparsity 0.1, started
        from Ruifrok's H and E: deterministic) + 99th-percentile least squares concentrations. Each tile to
        normalise gets its own Vahadane matrix by the same solver (on about 8k of its pixels), batched.
    slide
        The slide of a tiles AnnData `reference`.
    n_tiles
        Tiles sampled (with `random_state`) from a slide or tiles AnnData.
    Io, alpha, beta
        Transmitted light intensity, angle percentile and optical-density threshold (torchstain's defaults).
        Pixels with optical density below `beta` in any channel are background and do not enter the fit.
    mask_background
        False: every pixel enters the fit and a tile's Reinhard statistics (and Vahadane's dictionary and
        percentiles), as in torchstain itself.
    random_state
        Seed of the tile sample (and of Vahadane's pixel sample when a reference has more than 250,000 stained
        pixels).

    Returns
    -------
    StainNormalizer
        ``norm.transform(rgb)`` -> uint8 RGB; ``norm.to_dict()`` is plain data for ``uns`` (e.g.
        ``adata.uns["stain"] = norm.to_dict()``); pass it to ``pk.tl.embed_tiles(..., stain=norm)``.

    Raises
    ------
    StainError
        A blank or background-only reference, an unknown method, or a fit that is not finite.
    """
    import anndata as ad

    from ..slide import Slide, read_slide

    keep = beta if mask_background else -np.inf
    if isinstance(reference, ad.AnnData):
        px, source = _tile_pixels(reference, slide, n_tiles, random_state, Io, keep)
    elif isinstance(reference, (Slide, str)) or hasattr(reference, "__fspath__"):
        from .tiling import tile

        sl = reference if isinstance(reference, Slide) else read_slide(reference)
        px, source = _tile_pixels(tile(sl), sl, n_tiles, random_state, Io, keep)
    else:
        arr = np.asarray(reference)
        if arr.dtype != np.uint8 or arr.shape[-1] != 3:
            raise StainError(f"a stain reference image must be uint8 RGB (..., 3), got {arr.dtype} {arr.shape}")
        px, source = stained_pixels(arr, Io, keep), f"an RGB array {arr.shape}"
    return _fit_pixels(px, method, Io, alpha, beta, source, mask_background, random_state)


def as_normalizer(stain) -> StainNormalizer | None:
    """None, a :class:`StainNormalizer` or its ``to_dict()``, or a :class:`~pathkit.pp.HEDJitter` (or its
    ``to_dict()``) -> the object whose ``transform_batch`` runs on tile batches (or None)."""
    from ._augment import HEDJitter

    if stain is None or isinstance(stain, (StainNormalizer, HEDJitter)):
        return stain
    if isinstance(stain, dict) and stain.get("method") == HEDJitter.method:
        rs = int(stain.get("random_state", 0))
        return HEDJitter(float(stain["sigma"]), float(stain["bias"]), None if rs < 0 else rs)
    if isinstance(stain, dict):
        return StainNormalizer.from_dict(stain)
    raise StainError(f"stain must be pk.pp.fit_stain(...) or its to_dict(), got {type(stain).__name__}")
