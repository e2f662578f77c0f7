"""Tile bags for MIL: slide id -> tile features read from ``obsm[use_rep]`` (``"X"`` reads ``X``), lazily.
``use_rep=None``: the bags' single ``X_<model>`` key (see :func:`default_rep`).

Accepted: a dict ``slide_id -> AnnData``; a list of tile AnnData; one AnnData with ``obs["slide_id"]``
(in memory or backed); a path to such an ``.h5ad``; a folder or list of per-slide ``.h5ad`` files
(``embed_cohort``'s output); a folder or list of CLAM-style ``.h5`` bags (``feats`` / ``features`` datasets;
``use_rep`` other than ``"X"`` names the dataset).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...errors import TableError

__all__ = ["BagSet", "default_rep"]

_NOT_FEATURES = ("X_umap", "X_pca", "X_tsne")


def _pick_rep(obsm_keys, n_vars: int, where: str) -> str:
    feats = [k for k in obsm_keys if k.startswith("X_") and k not in _NOT_FEATURES]
    if len(feats) == 1:
        return feats[0]
    if not feats and n_vars > 0:
        return "X"
    raise TableError(f"{where}: which tile features? obsm holds {list(obsm_keys) or 'nothing'}"
                     + (f" ({len(feats)} feature keys)" if feats else "") + " and X has "
                     f"{n_vars} columns; pass use_rep= one of {feats or list(obsm_keys)}")


def _h5ad_rep(path: Path) -> str:
    import h5py

    from ..._files import open_h5

    with open_h5(path, "h5ad tile bag") as f:
        X = f.get("X")
        if isinstance(X, h5py.Dataset):
            n_vars = X.shape[1] if X.ndim == 2 else 0
        elif X is not None:  # sparse group
            n_vars = int(X.attrs.get("shape", (0, 0))[1])
        else:
            n_vars = 0
        return _pick_rep(list(f.get("obsm", {})), n_vars, str(path))


def default_rep(bags) -> str:
    """``use_rep=None``: the single ``obsm`` key ``X_<model>`` of the bags (UMAP / PCA keys aside), else
    ``"X"`` when ``X`` has columns; CLAM ``.h5`` bags read their ``feats`` / ``features`` dataset (``"X"``).
    Several feature keys: an error that lists them. The first bag decides; every bag is then read with it."""
    import anndata as ad

    first = bags
    if isinstance(first, dict):
        first = next(iter(first.values()), None)
    elif isinstance(first, (list, tuple)):
        first = first[0] if len(first) else None
    if isinstance(first, (str, Path)):
        p = Path(first)
        if p.is_dir():
            files = sorted(p.glob("*.h5ad")) or sorted(p.glob("*.h5"))
            if not files:
                raise TableError(f"no .h5ad or .h5 tile files in {p}")
            p = files[0]
        if p.suffix == ".h5" or not p.exists():
            return "X"  # CLAM bags (or a missing file, reported by BagSet)
        return _h5ad_rep(p)
    if isinstance(first, ad.AnnData):
        return _pick_rep(list(first.obsm.keys()), first.n_vars if first.X is not None else 0, "the tile bags")
    return "X"  # not a bag: BagSet reports it


def _dense(arr) -> np.ndarray:
    if hasattr(arr, "toarray"):
        arr = arr.toarray()
    elif isinstance(arr, pd.DataFrame):
        arr = arr.to_numpy()
    return np.asarray(arr, dtype=np.float32)


def _rep_of(a, use_rep: str, where: str):
    """The feature matrix object (not yet read) of AnnData ``a``."""
    if use_rep == "X":
        if a.X is None or a.n_vars == 0:
            raise TableError(f"{where}: X is empty (n_vars = 0); features live in obsm: pass use_rep= one of "
                             f"{list(a.obsm.keys())}")
        return a.X
    if use_rep not in a.obsm:
        raise TableError(f"{where}: no obsm[{use_rep!r}]; available: {list(a.obsm.keys())} (or use_rep='X')")
    return a.obsm[use_rep]


def _read_rows(X, idx: np.ndarray | None) -> np.ndarray:
    if idx is None:
        return _dense(X[:] if not isinstance(X, (np.ndarray, pd.DataFrame)) else X)
    if isinstance(X, pd.DataFrame):
        return _dense(X.iloc[idx])
    if len(idx) and idx[-1] - idx[0] + 1 == len(idx):  # contiguous: one slice read from disk
        return _dense(X[int(idx[0]):int(idx[-1]) + 1])
    return _dense(X[idx])


class BagSet:
    """slide_id -> tile features, read when asked; writes per-tile values back where the tiles came from."""

    def __init__(self, bags, use_rep: str | None = None):
        import anndata as ad

        self.use_rep = default_rep(bags) if use_rep is None else use_rep
        self._readers: dict[str, Callable[[], np.ndarray]] = {}
        self._targets: dict[str, tuple[Any, np.ndarray | None]] = {}
        self._h5 = None
        self.opened = None
        if isinstance(bags, (str, Path)) and Path(bags).is_dir():
            folder = Path(bags)
            files = sorted(folder.glob("*.h5ad")) or sorted(folder.glob("*.h5"))
            if not files:
                raise TableError(f"no .h5ad or .h5 tile files in {folder}")
            bags = files
        if isinstance(bags, (list, tuple)) and bags and all(isinstance(t, (str, Path)) for t in bags):
            for f in map(Path, bags):
                self._add_file(f)
            return
        if isinstance(bags, (str, Path)):
            path = Path(bags)
            if not path.exists():
                raise FileNotFoundError(f"tile features file {path} does not exist")
            if path.suffix == ".h5":
                self._add_file(path)
                return
            if path.suffix != ".h5ad":
                raise TableError(f"{path}: pass an .h5ad (read backed), a CLAM .h5 bag, a folder of them, "
                                 f"or AnnData objects")
            if self._add_h5ad_dense(path):
                return
            from ..._files import read_h5ad

            bags = read_h5ad(path, "h5ad tile bags", backed="r")
            self.opened = bags
        if isinstance(bags, ad.AnnData):
            self._add_multi(bags)
        elif isinstance(bags, dict):
            for sid, a in bags.items():
                self._add_one(str(sid), a)
        elif isinstance(bags, (list, tuple)):
            for i, a in enumerate(bags):
                self._add_one(self._slide_id_of(a, i), a)
        else:
            raise TypeError("bags must be a dict slide_id -> AnnData, a list of AnnData, one AnnData with "
                            f"obs['slide_id'], an .h5ad path, or a folder of .h5ad / .h5 bags; got "
                            f"{type(bags).__name__}")
        if not self._readers:
            raise TableError("no tile bags found in `bags`")

    # ------------------------------------------------------------------ sources
    def _add_h5ad_dense(self, path: Path) -> bool:
        """Dense features: read only obs["slide_id"] and slice the matrix with h5py (a backed AnnData would
        load the whole obs table). False for other layouts (sparse X, ...)."""
        import h5py

        from ..._files import h5_file

        try:
            from anndata.io import read_elem
        except ImportError:  # anndata < 0.11
            from anndata.experimental import read_elem
        f = h5_file(path, "h5ad tile bag")
        X = f.get("X") if self.use_rep == "X" else f.get("obsm", {}).get(self.use_rep)
        if not isinstance(X, h5py.Dataset) or "slide_id" not in f.get("obs", {}):
            if self.use_rep != "X" and X is None:
                keys = list(f.get("obsm", {}))
                f.close()
                raise TableError(f"{path}: no obsm[{self.use_rep!r}]; available: {keys} (or use_rep='X')")
            f.close()
            return False
        el = f["obs"]["slide_id"]
        if isinstance(el, h5py.Dataset) and el.dtype.kind in "OSU":
            lookup: dict[str, int] = {}
            codes = np.empty(el.shape[0], dtype=np.int64)
            step = 65536
            for s in range(0, el.shape[0], step):
                vals = el.asstr()[s:s + step] if el.dtype.kind == "O" else el[s:s + step].astype(str)
                codes[s:s + step] = [lookup.setdefault(v, len(lookup)) for v in vals]
            uniq = list(lookup)
        else:
            sid = read_elem(el)
            if isinstance(sid, pd.Categorical):
                codes, uniq = np.asarray(sid.codes), [str(c) for c in sid.categories]
            else:
                codes, uniq = pd.factorize(np.asarray(sid).astype(str))
        self._h5 = f
        self._add_groups(X, np.asarray(codes), list(uniq), target=None)
        return True

    @staticmethod
    def _slide_id_of(a, i) -> str:
        if "slide_id" in a.obs.columns and a.n_obs:
            ids = pd.unique(a.obs["slide_id"].astype(str))
            if len(ids) > 1:
                raise TableError(f"bags[{i}] holds {len(ids)} slides in obs['slide_id']; pass one AnnData "
                                 f"per slide, or the combined AnnData itself")
            return str(ids[0])
        sid = (a.uns.get("slide") or {}).get("slide_id")
        if sid:
            return str(sid)
        raise TableError(f"bags[{i}] has no obs['slide_id'] nor uns['slide']['slide_id']; pass a dict "
                         f"slide_id -> AnnData instead")

    def _add_file(self, f: Path):
        if not f.exists():
            raise FileNotFoundError(f"tile features file {f} does not exist")
        if f.suffix == ".h5":
            from ...io.bags import h5_bag_slide_id, read_h5_features

            sid = h5_bag_slide_id(f)
            dataset = None if self.use_rep == "X" else self.use_rep
            self._set(sid, lambda f=f: read_h5_features(f, dataset), None, None, where=str(f))
            return
        import h5py

        from ..._files import open_h5, read_h5ad

        a = read_h5ad(f, "h5ad tile bag", backed="r")
        try:
            sid = self._slide_id_of(a, str(f)) if a.n_obs else f.stem
            _rep_of(a, self.use_rep, str(f))  # fail now, not in the middle of training
        finally:
            a.file.close()

        def read(f=f):
            with open_h5(f, "h5ad tile bag") as h:
                el = h["X"] if self.use_rep == "X" else h["obsm"][self.use_rep]
                if isinstance(el, h5py.Dataset):
                    return _dense(el[:])
            b = read_h5ad(f, "h5ad tile bag", backed="r")
            try:
                return _read_rows(_rep_of(b, self.use_rep, str(f)), None)
            finally:
                b.file.close()

        self._set(sid, read, None, None, where=str(f))

    def _set(self, sid, reader, target, idx, where):
        if sid in self._readers:
            raise TableError(f"slide {sid!r} appears twice in `bags` ({where})")
        self._readers[sid] = reader
        self._targets[sid] = (target, idx)

    def _add_one(self, sid: str, a):
        rep = _rep_of(a, self.use_rep, f"bag of slide {sid!r}")
        self._set(sid, lambda rep=rep: _read_rows(rep, None), a, None, where=sid)

    def _add_multi(self, a):
        if "slide_id" not in a.obs.columns:
            if a.n_obs and (a.uns.get("slide") or {}).get("slide_id"):
                return self._add_one(str(a.uns["slide"]["slide_id"]), a)
            raise TableError("the tile AnnData has no obs['slide_id'] column naming the slide of each tile")
        rep = _rep_of(a, self.use_rep, "the tile AnnData")
        codes, uniq = pd.factorize(a.obs["slide_id"].astype(str))
        self._add_groups(rep, codes, list(uniq), target=a)

    def _add_groups(self, X, codes: np.ndarray, uniq: list, target):
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(uniq) + 1))
        for k, sid in enumerate(uniq):
            idx = np.sort(order[bounds[k]:bounds[k + 1]])
            if len(idx):
                self._set(sid, lambda idx=idx: _read_rows(X, idx), target, idx if target is not None else None,
                          where=sid)

    # ------------------------------------------------------------------ access
    def ids(self) -> list[str]:
        return list(self._readers)

    def __contains__(self, sid) -> bool:
        return sid in self._readers

    def __getitem__(self, sid: str) -> np.ndarray:
        x = self._readers[sid]()
        if x.ndim != 2 or x.shape[0] == 0:
            raise TableError(f"slide {sid!r}: empty bag or features not 2-d (shape {x.shape}, "
                             f"use_rep={self.use_rep!r})")
        if not np.isfinite(x).all():
            raise TableError(f"slide {sid!r}: {int((~np.isfinite(x)).sum())} non-finite feature values in "
                             f"{self.use_rep!r}")
        return x

    def write_obs(self, values: dict[str, np.ndarray], key: str):
        """Write per-tile ``values`` (slide id -> one value per tile) to each in-memory bag's ``obs[key]``;
        tiles of other slides in the same object are reset to NaN. Bags read from files are left alone."""
        done = set()
        for sid, w in values.items():
            a, idx = self._targets.get(sid, (None, None))
            if a is None:
                continue
            if id(a) not in done:
                a.obs[key] = np.nan
                done.add(id(a))
            if idx is None:
                a.obs[key] = np.asarray(w, dtype=np.float64)
            else:
                col = a.obs[key].to_numpy(dtype=np.float64, copy=True)
                col[idx] = w
                a.obs[key] = col

    def close(self):
        """Close the files this object opened itself; user objects stay open."""
        if self.opened is not None and getattr(self.opened, "file", None) is not None:
            self.opened.file.close()
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
