"""ABMIL (gated attention MIL) training with patient-level cross-validation.

The model follows Ilse et al. 2018 as used by CLAM: ``Linear(d, 512) + ReLU + Dropout``, a gated attention
branch (``tanh`` and ``sigmoid`` projections to 256, multiplied, then ``Linear(256, 1)``), softmax over the
tiles of a bag, attention-weighted mean of the 512-d tile features, and a linear head:

* ``binary`` / ``multiclass``: one logit per class, cross-entropy;
* ``multilabel``: one logit per label column, binary cross-entropy;
* ``survival``: discrete-time hazards over 4 bins cut at the quartiles of the uncensored times of the
  training patients (Zadeh & Schmid 2020; PORPOISE / MCAT), negative log-likelihood with the uncensored term
  up-weighted by ``alpha_surv``; risk = -sum of the survival curve (higher = shorter survival);
* ``cox``: one risk score, negative Cox partial log-likelihood (Breslow) over each mini-batch of bags.

Bags are read one at a time (from in-memory or backed AnnData), moved to the device, and released: a
cohort never has to fit on the GPU.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import TableError
from .splits import inner_split, patient_folds, read_splits

__all__ = ["AbmilResult", "GatedAttentionMIL", "train_abmil"]

_TASKS = ("binary", "multiclass", "multilabel", "survival", "cox")
_EVAL_TILES = 8192  # tiles per evaluation chunk (no gradients kept, so only activations count)
_SLIDE_EXTS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".h5ad", ".h5", ".zarr")


# ============================================================================================ model
def _torch():
    import torch

    return torch


def GatedAttentionMIL(in_dim: int, n_out: int, hidden: int = 512, attn_hidden: int = 256,
                      dropout: float = 0.25):
    """Build the gated-attention MIL network; ``forward(x[N, in_dim]) -> (out[n_out], attention[N])``."""
    torch = _torch()
    nn = torch.nn

    class _GatedAttentionMIL(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
            self.attn_a = nn.Sequential(nn.Linear(hidden, attn_hidden), nn.Tanh(), nn.Dropout(dropout))
            self.attn_b = nn.Sequential(nn.Linear(hidden, attn_hidden), nn.Sigmoid(), nn.Dropout(dropout))
            self.attn_c = nn.Linear(attn_hidden, 1)
            self.head = nn.Linear(hidden, n_out)

        def forward(self, x):
            h = self.fc(x)
            scores = self.attn_c(self.attn_a(h) * self.attn_b(h)).squeeze(-1)
            att = torch.softmax(scores, dim=0)
            return self.head(att @ h), att

        def forward_many(self, xs):
            """Several bags at once: one matmul over all their tiles, softmax within each bag."""
            sizes = [len(x) for x in xs]
            h = self.fc(torch.cat(xs) if len(xs) > 1 else xs[0])
            scores = self.attn_c(self.attn_a(h) * self.attn_b(h)).squeeze(-1)
            outs, atts = [], []
            for hb, sb in zip(torch.split(h, sizes), torch.split(scores, sizes)):
                a = torch.softmax(sb, dim=0)
                outs.append(a @ hb)
                atts.append(a)
            return self.head(torch.stack(outs)), atts

    return _GatedAttentionMIL()


# ============================================================================================ losses
def _nll_surv(logits, y, c, alpha: float, eps: float = 1e-7):
    """Discrete-time survival NLL (PORPOISE/MCAT form). ``y`` bin index, ``c`` censorship (1 = censored)."""
    torch = _torch()
    h = torch.sigmoid(logits)
    S = torch.cumprod(1 - h, dim=1)
    S_pad = torch.cat([torch.ones_like(S[:, :1]), S], dim=1)
    y = y.view(-1, 1)
    c = c.view(-1, 1).float()
    s_prev = torch.gather(S_pad, 1, y).clamp(min=eps)
    h_this = torch.gather(h, 1, y).clamp(min=eps)
    s_this = torch.gather(S_pad, 1, y + 1).clamp(min=eps)
    uncensored = -(1 - c) * (torch.log(s_prev) + torch.log(h_this))
    censored = -c * torch.log(s_this)
    loss = (1 - alpha) * (censored + uncensored) + alpha * uncensored
    return loss.mean()


def _cox_nll(risk, time, event):
    """Negative Cox partial log-likelihood (Breslow ties) averaged over events; None without events."""
    torch = _torch()
    if float(event.sum()) == 0:
        return None
    order = torch.argsort(time, descending=True)
    r, e = risk.view(-1)[order], event[order].float()
    log_cum = torch.logcumsumexp(r, dim=0)
    return -((r - log_cum) * e).sum() / e.sum()


# ============================================================================================ bags
class _Bags:
    """slide_id -> tile features, read lazily; writes attention back where the tiles came from."""

    def __init__(self, tiles):
        import anndata as ad

        self._readers: dict[str, Callable[[], np.ndarray]] = {}
        self._targets: dict[str, tuple[Any, np.ndarray | None]] = {}
        self.opened = None
        if isinstance(tiles, (str, Path)) and Path(tiles).is_dir():
            # embed_cohort's output folder: one <slide_id>.h5ad per slide, each read when its bag is needed
            files = sorted(Path(tiles).glob("*.h5ad"))
            if not files:
                raise TableError(f"no .h5ad files in {tiles}")
            tiles = files
        if isinstance(tiles, (list, tuple)) and tiles and all(isinstance(t, (str, Path)) for t in tiles):
            for f in map(Path, tiles):
                self._add_file(f)
            return
        if isinstance(tiles, (str, Path)):
            path = Path(tiles)
            if not path.exists():
                raise FileNotFoundError(f"tile features file {path} does not exist")
            if path.suffix != ".h5ad":
                raise TableError(f"{path}: lazy reading needs an .h5ad file (backed mode); pass AnnData objects "
                                 f"for other formats")
            if self._add_h5ad_dense(path):
                return
            tiles = ad.read_h5ad(path, backed="r")
            self.opened = tiles
        if isinstance(tiles, ad.AnnData):
            self._add_multi(tiles)
        elif isinstance(tiles, dict):
            for sid, a in tiles.items():
                self._add_one(str(sid), a)
        elif isinstance(tiles, (list, tuple)):
            for i, a in enumerate(tiles):
                self._add_one(self._slide_id_of(a, i), a)
        else:
            raise TypeError("tiles must be a dict slide_id -> AnnData, a list of AnnData, one AnnData with "
                            f"obs['slide_id'], or an .h5ad path; got {type(tiles).__name__}")
        if not self._readers:
            raise TableError("no tile bags found in `tiles`")

    def _add_h5ad_dense(self, path: Path) -> bool:
        """Dense X: read only obs["slide_id"] and slice X with h5py (a full backed AnnData would load the
        whole obs table, ~300 MB for a million tiles). False for other layouts (sparse X, ...)."""
        import h5py

        try:
            from anndata.io import read_elem
        except ImportError:  # anndata < 0.11
            from anndata.experimental import read_elem
        f = h5py.File(path, "r")
        if not isinstance(f.get("X"), h5py.Dataset) or "slide_id" not in f.get("obs", {}):
            f.close()
            return False
        el = f["obs"]["slide_id"]
        if isinstance(el, h5py.Dataset) and el.dtype.kind in "OSU":
            # plain strings: factorise in slices so a million ids never sit in memory as Python objects
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
        self._add_groups(f["X"], np.asarray(codes), list(uniq), target=None)
        return True

    def close(self):
        """Close the file this object opened itself (an .h5ad path); user objects stay open."""
        if self.opened is not None and getattr(self.opened, "file", None) is not None:
            self.opened.file.close()
        if getattr(self, "_h5", None) is not None:
            self._h5.close()
            self._h5 = None

    @staticmethod
    def _slide_id_of(a, i) -> str:
        if "slide_id" in a.obs.columns and a.n_obs:
            ids = pd.unique(a.obs["slide_id"].astype(str))
            if len(ids) > 1:
                raise TableError(f"tiles[{i}] holds {len(ids)} slides in obs['slide_id']; pass one AnnData "
                                 f"per slide, or the combined AnnData itself")
            return str(ids[0])
        sid = (a.uns.get("slide") or {}).get("slide_id")
        if sid:
            return str(sid)
        raise TableError(f"tiles[{i}] has no obs['slide_id'] nor uns['slide']['slide_id']; pass a dict "
                         f"slide_id -> AnnData instead")

    @staticmethod
    def _read(X, idx: np.ndarray | None) -> np.ndarray:
        if idx is None:
            arr = X[:] if not isinstance(X, np.ndarray) else X
        elif len(idx) and idx[-1] - idx[0] + 1 == len(idx):  # contiguous: one slice read from disk
            arr = X[int(idx[0]):int(idx[-1]) + 1]
        else:
            arr = X[idx]
        if hasattr(arr, "toarray"):
            arr = arr.toarray()
        return np.asarray(arr, dtype=np.float32)

    def _add_file(self, f: Path):
        import anndata as ad

        if not f.exists():
            raise FileNotFoundError(f"tile features file {f} does not exist")
        a = ad.read_h5ad(f, backed="r")
        try:
            sid = self._slide_id_of(a, str(f)) if a.n_obs else f.stem
        finally:
            a.file.close()
        if sid in self._readers:
            raise TableError(f"slide {sid!r} appears twice in `tiles` ({f})")

        def read(f=f):
            b = ad.read_h5ad(f, backed="r")
            try:
                return self._read(b.X, None)
            finally:
                b.file.close()

        self._readers[sid] = read
        self._targets[sid] = (None, None)

    def _add_one(self, sid: str, a):
        if sid in self._readers:
            raise TableError(f"slide {sid!r} appears twice in `tiles`")
        self._readers[sid] = lambda a=a: self._read(a.X, None)
        self._targets[sid] = (a, None)

    def _add_multi(self, a):
        if "slide_id" not in a.obs.columns:
            if a.n_obs and (a.uns.get("slide") or {}).get("slide_id"):
                return self._add_one(str(a.uns["slide"]["slide_id"]), a)
            raise TableError("the tile AnnData has no obs['slide_id'] column naming the slide of each tile")
        codes, uniq = pd.factorize(a.obs["slide_id"].astype(str))
        self._add_groups(None, codes, list(uniq), target=a)

    def _add_groups(self, X, codes: np.ndarray, uniq: list, target):
        """One reader per slide over the rows with its code; X None = read ``target.X`` at access time."""
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(uniq) + 1))
        for k, sid in enumerate(uniq):
            idx = np.sort(order[bounds[k]:bounds[k + 1]])
            if not len(idx):
                continue
            if X is None:
                self._readers[sid] = lambda idx=idx: self._read(target.X, idx)
            else:
                self._readers[sid] = lambda idx=idx: self._read(X, idx)
            self._targets[sid] = (target, idx if target is not None else None)

    def ids(self) -> list[str]:
        return list(self._readers)

    def __getitem__(self, sid: str) -> np.ndarray:
        x = self._readers[sid]()
        if x.ndim != 2 or x.shape[0] == 0:
            raise TableError(f"slide {sid!r}: empty bag or features not 2-d (shape {x.shape})")
        return x

    def write_attention(self, att: dict[str, np.ndarray], key: str = "abmil_attention"):
        done = set()
        for sid, w in att.items():
            a, idx = self._targets[sid]
            if a is None:  # read from a file: the attention stays in the result only
                continue
            if id(a) not in done:  # reset: tiles of slides not held out this run stay NaN
                a.obs[key] = np.nan
                done.add(id(a))
            if idx is None:
                a.obs[key] = w.astype(np.float64)
            else:
                col = a.obs[key].to_numpy(dtype=np.float64, copy=True)
                col[idx] = w
                a.obs[key] = col


# ============================================================================================ result
@dataclass
class AbmilResult:
    """What :func:`train_abmil` returns.

    Attributes
    ----------
    metrics : pd.DataFrame
        One row per fold (index ``fold``: 0..k-1, then ``"pooled"``); columns ``n``, ``auroc``, ``auprc``,
        ``balanced_accuracy`` (classification) or ``c_index`` (survival / cox), ``epochs`` (trained, best
        epoch restored), ``seconds``.
    summary : pd.DataFrame
        Pooled out-of-fold metrics with bootstrap 95% CIs (columns ``value``, ``ci_lower``, ``ci_upper``).
    predictions : pd.DataFrame
        Out-of-fold predictions per slide (index slide_id): ``patient``, ``fold`` and the task's columns.
    attention : dict
        slide_id -> attention weights (one per tile, summing to 1) from the model of the fold where the slide
        was held out.
    models : list
        Per fold ``state_dict`` (on CPU) of the best epoch; rebuild with :func:`GatedAttentionMIL`.
    history : pd.DataFrame
        ``fold``, ``epoch``, ``train_loss``, ``val_loss``.
    classes : list
        Class names (classification) / label columns (multilabel).
    bins : dict
        Survival task: fold -> bin edges of the discrete time axis.
    config : dict
        All settings, for the record.
    """

    task: str
    metrics: pd.DataFrame
    summary: pd.DataFrame
    predictions: pd.DataFrame
    attention: dict = field(repr=False)
    models: list = field(repr=False)
    history: pd.DataFrame = field(repr=False)
    classes: list | None = None
    bins: dict | None = None
    config: dict = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return (f"AbmilResult(task={self.task!r}, folds={len(self.models)}, "
                f"slides={len(self.predictions)})\n{self.summary.to_string()}")


# ============================================================================================ metrics
def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Binary AUROC by the rank-sum (Mann-Whitney) identity; ties count 1/2 (= sklearn's)."""
    from scipy.stats import rankdata

    y = np.asarray(y).astype(bool)
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _auprc(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision (step-wise area under the precision-recall curve, = sklearn's)."""
    y = np.asarray(y).astype(float)
    if y.sum() == 0:
        return float("nan")
    order = np.argsort(-np.asarray(s), kind="mergesort")
    ys, ss = y[order], np.asarray(s)[order]
    last = np.r_[np.flatnonzero(np.diff(ss)), len(ss) - 1]  # last index of each distinct score
    tps = np.cumsum(ys)[last]
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _bacc(y: np.ndarray, pred: np.ndarray) -> float:
    """Balanced accuracy: mean recall over the classes present in ``y``."""
    y, pred = np.asarray(y), np.asarray(pred)
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def _metric_fns(task: str, n_classes: int) -> dict[str, Callable]:
    if task in ("survival", "cox"):
        from .survival import cindex

        return {"c_index": lambda t: cindex(t["time"], t["risk"], t["event"])}
    if task == "binary":
        return {"auroc": lambda t: _auroc(t["y"], t["p"][:, 1]),
                "auprc": lambda t: _auprc(t["y"], t["p"][:, 1]),
                "balanced_accuracy": lambda t: _bacc(t["y"], t["p"].argmax(1))}
    if task == "multiclass":
        def auroc(t):  # macro one-vs-rest; undefined when a class is absent
            if len(np.unique(t["y"])) < n_classes:
                return np.nan
            return float(np.mean([_auroc(t["y"] == k, t["p"][:, k]) for k in range(n_classes)]))

        def auprc(t):
            return float(np.nanmean([_auprc(t["y"] == k, t["p"][:, k]) for k in range(n_classes)]))

        return {"auroc": auroc, "auprc": auprc,
                "balanced_accuracy": lambda t: _bacc(t["y"], t["p"].argmax(1))}

    def per_label(fn, use_pred=False):  # multilabel: macro mean over labels with both values present
        def f(t):
            vals = []
            for k in range(t["y"].shape[1]):
                yk = t["y"][:, k]
                if len(np.unique(yk)) < 2:
                    continue
                vals.append(fn(yk, (t["p"][:, k] >= 0.5).astype(int) if use_pred else t["p"][:, k]))
            return float(np.mean(vals)) if vals else np.nan
        return f

    return {"auroc": per_label(_auroc), "auprc": per_label(_auprc),
            "balanced_accuracy": per_label(_bacc, use_pred=True)}


def _safe(fn, t) -> float:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(fn(t))
    except ValueError:
        return float("nan")


def _subset(t: dict, idx) -> dict:
    return {k: v[idx] for k, v in t.items()}


def _bootstrap_ci(fn, t: dict, n_boot: int, seed: int) -> tuple[float, float]:
    n = len(next(iter(t.values())))
    if n_boot <= 0 or n < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        v = _safe(fn, _subset(t, rng.integers(0, n, n)))
        if np.isfinite(v):
            vals.append(v)
    if len(vals) < max(10, n_boot // 10):
        return float("nan"), float("nan")
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


# ============================================================================================ helpers
def _device(device: str):
    torch = _torch()
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _release_memory():
    """Hand freed heap pages back to the OS. glibc keeps the many few-MB bag and activation buffers in
    its arenas, so without this the resident size of a long run creeps up fold after fold."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to trim
        pass


def _strip_ext(s: str) -> str:
    low = s.lower()
    for ext in _SLIDE_EXTS:
        if low.endswith(ext):
            return s[: -len(ext)]
    return s


def _match_slides(cohort_ids: list[str], bag_ids: list[str]) -> dict[str, str]:
    """cohort slide id -> bag slide id: exact, else after dropping a slide-file extension."""
    bags = set(bag_ids)
    stripped = {}
    for b in bag_ids:
        stripped.setdefault(_strip_ext(b), b)
    out = {}
    for c in cohort_ids:
        if c in bags:
            out[c] = c
        elif _strip_ext(c) in stripped:
            out[c] = stripped[_strip_ext(c)]
    return out


def _quantile_bins(times: np.ndarray, events: np.ndarray, n_bins: int, all_times: np.ndarray) -> np.ndarray:
    """Bin edges at the quantiles of uncensored times; outer edges widened to hold every time."""
    unc = times[events == 1]
    if len(unc) < n_bins:
        raise TableError(f"survival task: {len(unc)} uncensored training slides are too few for {n_bins} "
                         f"time bins; lower n_bins or use task='cox'")
    edges = np.quantile(unc, np.linspace(0, 1, n_bins + 1))
    edges[0] = min(all_times.min(), edges[0]) - 1e-6
    edges[-1] = max(all_times.max(), edges[-1]) + 1e-6
    return edges


def _to_bins(times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, times, side="right") - 1, 0, len(edges) - 2)


# ============================================================================================ training
def train_abmil(tiles, cohort, label: str | Sequence[str] | None = None, task: str = "binary", *,
                time: str | None = None, event: str | None = None, folds: int = 5,
                split_by: str = "patient_id", splits=None, epochs: int = 20, lr: float = 2e-4,
                weight_decay: float = 1e-5, patience: int = 5, batch_size: int | None = None,
                dropout: float = 0.25, hidden: int = 512, attn_hidden: int = 256, n_bins: int = 4,
                alpha_surv: float = 0.15, val_fraction: float = 0.2, n_bootstrap: int = 1000, seed: int = 0,
                device: str = "auto", progress: bool = True, key_added: str = "abmil") -> AbmilResult:
    """Train gated-attention MIL with patient-level cross-validation; write out-of-fold predictions.

    Parameters
    ----------
    tiles
        Tile features per slide: a dict ``slide_id -> AnnData``, a list of tile AnnData (slide id from
        ``obs["slide_id"]`` or ``uns["slide"]["slide_id"]``), one AnnData with ``obs["slide_id"]`` (may be
        backed), a path to such an ``.h5ad`` (opened backed, read one slide at a time), or a folder /
        list of per-slide ``.h5ad`` files (``embed_cohort``'s output; each read when needed).
    cohort
        Slide-level AnnData (or DataFrame): one row per slide with ``obs["slide_id"]`` (else obs_names),
        the ``split_by`` column (``patient_id``) and the label columns. Slide ids may carry a slide-file
        extension (``.svs``) that the tile ids lack.
    label
        Class column (``binary``: 2 values; ``multiclass``), or a list of 0/1 columns (``multilabel``).
        Not used for ``survival`` / ``cox``.
    task
        ``"binary"``, ``"multiclass"``, ``"multilabel"``, ``"survival"`` (discrete-time NLL) or ``"cox"``.
    time, event
        Survival columns (``event`` 1 = observed; convert censorship first).
    folds
        Number of patient-level folds (``StratifiedGroupKFold``, stratified by label or event).
    split_by
        Column grouping slides that must stay in the same fold (patients).
    splits
        User folds instead: a folder of ``splits_{k}.csv`` (``train`` / ``val`` columns of ``split_by``
        ids; ``val`` is held out), or a list of (train_ids, test_ids). Overrides ``folds``.
    epochs, lr, weight_decay, patience
        Adam for at most ``epochs``; early stopping when the validation loss has not improved for
        ``patience`` epochs; the best epoch's weights are kept.
    batch_size
        Bags per optimiser step (losses averaged). Default 1 (CLAM), 16 for ``cox`` (the partial
        likelihood needs several bags).
    dropout, hidden, attn_hidden
        Network sizes (CLAM defaults 0.25, 512, 256).
    n_bins, alpha_surv
        ``survival``: number of quantile bins of uncensored times, and the extra weight of the
        uncensored term: ``loss = (1 - alpha) * NLL + alpha * NLL_uncensored`` (PORPOISE's ``NLLSurvLoss``
        default 0.15).
    val_fraction
        Share of each training fold's patients held out for early stopping.
    n_bootstrap
        Bootstrap resamples (over slides) for the pooled metrics' 95% CIs.
    seed
        Seeds numpy and torch (folds, inner splits, initialisation, shuffling, dropout).
    device
        ``"auto"`` (CUDA, then MPS, then CPU), or a torch device string.
    progress
        tqdm bars per fold and per epoch.
    key_added
        Prefix of the columns written.

    Writes
    ------
    ``cohort.obs``: ``abmil_fold`` (held-out fold, -1 when never held out), and per task
    ``abmil_prob_<class>`` + ``abmil_pred`` (binary / multiclass), ``abmil_prob_<label>`` +
    ``abmil_pred_<label>`` (multilabel), ``abmil_risk`` (survival / cox; higher = shorter survival).
    Each tile AnnData: ``obs["abmil_attention"]`` (NaN for tiles of slides never held out); when
    ``tiles`` is a path, the file is only read and the attention is in ``result.attention``. Predictions
    are out-of-fold: a slide is scored only by the model that did not see its patient.
    """
    torch = _torch()
    from tqdm.auto import tqdm

    if task not in _TASKS:
        raise ValueError(f"task must be one of {_TASKS}, not {task!r}")
    obs = cohort if isinstance(cohort, pd.DataFrame) else cohort.obs
    cfg = {"task": task, "label": label, "time": time, "event": event, "folds": folds, "split_by": split_by,
               "splits": str(splits) if isinstance(splits, (str, Path)) else (None if splits is None else "custom"),
               "epochs": epochs, "lr": lr, "weight_decay": weight_decay, "patience": patience, "dropout": dropout,
               "hidden": hidden, "attn_hidden": attn_hidden, "n_bins": n_bins, "alpha_surv": alpha_surv,
               "val_fraction": val_fraction, "seed": seed}
    if batch_size is None:
        batch_size = 16 if task == "cox" else 1
    cfg["batch_size"] = batch_size
    batch_size_eval = max(batch_size, 8)

    # ---------------------------------------------------------------- cohort table and targets
    if split_by not in obs.columns:
        raise TableError(f"cohort has no column {split_by!r} to group slides into folds (add obs['patient_id'], "
                         f"or pass split_by='slide_id' if every slide is its own patient)")
    slide_col = obs["slide_id"].astype(str) if "slide_id" in obs.columns else pd.Series(
        obs.index.astype(str), index=obs.index)
    need: list[str] = []
    if task in ("survival", "cox"):
        if time is None or event is None:
            raise TableError(f"task={task!r} needs time= and event= columns")
        need = [time, event]
    else:
        if label is None:
            raise TableError(f"task={task!r} needs label=")
        need = list(label) if task == "multilabel" else [label]
        if task == "multilabel" and isinstance(label, str):
            raise TableError("task='multilabel' needs label= a list of 0/1 columns")
    for c in need:
        if c not in obs.columns:
            raise TableError(f"cohort has no column {c!r}; available: {list(obs.columns)}")

    bags = _Bags(tiles)
    match = _match_slides(list(slide_col), bags.ids())
    has_bag = slide_col.map(lambda s: s in match).to_numpy()
    has_label = obs[need].notna().all(axis=1).to_numpy() & obs[split_by].notna().to_numpy()
    use = has_bag & has_label
    if not has_bag.any():
        raise TableError(f"no cohort slide id matches a tile bag: cohort e.g. {list(slide_col[:3])}, tiles e.g. "
                         f"{bags.ids()[:3]}")
    if (~has_bag).sum():
        warnings.warn(f"{int((~has_bag).sum())} cohort slides have no tile features and are skipped "
                      f"(e.g. {list(slide_col[~has_bag][:3])})", stacklevel=2)
    if (has_bag & ~has_label).sum():
        warnings.warn(f"{int((has_bag & ~has_label).sum())} slides have a missing {need + [split_by]} value and "
                      f"are skipped", stacklevel=2)
    rows = np.flatnonzero(use)
    sids = slide_col.to_numpy()[rows]
    bag_ids = np.array([match[s] for s in sids])
    patients = obs[split_by].astype(str).to_numpy()[rows]
    n = len(rows)

    classes = None
    if task in ("binary", "multiclass"):
        col = obs[label].iloc[rows]
        classes = list(col.cat.categories) if isinstance(col.dtype, pd.CategoricalDtype) else sorted(pd.unique(col))
        classes = [c for c in classes if (col == c).any()]
        if task == "binary" and len(classes) != 2:
            raise TableError(f"task='binary' needs 2 classes in {label!r}; found {classes}")
        if task == "multiclass" and len(classes) < 2:
            raise TableError(f"{label!r} has fewer than 2 classes: {classes}")
        y = pd.Categorical(col, categories=classes).codes.astype(np.int64)
        strat = y
        n_out = len(classes)
    elif task == "multilabel":
        classes = list(label)
        Y = obs[classes].iloc[rows].astype(float).to_numpy()
        if not np.isin(Y, [0, 1]).all():
            raise TableError(f"multilabel columns {classes} must hold 0/1 values")
        y = Y.astype(np.float32)
        strat = Y[:, 0]
        n_out = len(classes)
    else:
        from .survival import _survival_frame

        sf = _survival_frame(obs.iloc[rows], time, event)
        t_all = sf["time"].to_numpy()
        e_all = sf["event"].to_numpy()
        strat = e_all
        n_out = n_bins if task == "survival" else 1

    # ---------------------------------------------------------------- folds
    if splits is not None:
        user = read_splits(splits)
        fold_sets = []
        seen: dict[str, int] = {}
        for k, (tr, te) in enumerate(user):
            for p in te:
                if p in seen:
                    raise TableError(f"patient {p!r} is held out in splits {seen[p]} and {k}; out-of-fold "
                                     f"predictions need disjoint test sets")
                seen[p] = k
            tr_idx = np.flatnonzero(np.isin(patients, list(tr)))
            te_idx = np.flatnonzero(np.isin(patients, list(te)))
            fold_sets.append((tr_idx, te_idx))
        unknown = set().union(*[tr | te for tr, te in user]) - set(patients)
        if unknown:
            warnings.warn(f"{len(unknown)} ids in the splits have no usable slide in the cohort (ignored)",
                          stacklevel=2)
        never = sorted(set(patients) - set(seen))
        if never:
            warnings.warn(f"{len(never)} patients are in no held-out split and get no prediction "
                          f"(e.g. {never[:3]})", stacklevel=2)
    else:
        fold_sets = patient_folds(patients, strat, folds=folds, seed=seed)
    for k, (tr, te) in enumerate(fold_sets):
        leak = set(patients[tr]) & set(patients[te])
        if leak:
            raise TableError(f"fold {k}: {len(leak)} patients in both train and test, e.g. {sorted(leak)[:3]}")
        if len(tr) == 0 or len(te) == 0:
            raise TableError(f"fold {k} has an empty train or test set")

    dev = _device(device)
    dim = bags[bag_ids[0]].shape[1]
    cfg.update(device=str(dev), in_dim=dim)

    # ---------------------------------------------------------------- per-fold training
    out_cols = {"fold": np.full(n, -1, dtype=int)}
    if task in ("binary", "multiclass", "multilabel"):
        P = np.full((n, n_out), np.nan)
    risk = np.full(n, np.nan)
    attention: dict[str, np.ndarray] = {}
    models, hist_rows, fold_rows, bins = [], [], [], {}
    fold_bar = tqdm(range(len(fold_sets)), desc="ABMIL folds", disable=not progress)
    for k in fold_bar:
        import time as _time

        t0 = _time.perf_counter()
        tr_all, te = fold_sets[k]
        itr, iva = inner_split(patients[tr_all], np.asarray(strat)[tr_all], val_fraction, seed=seed + k)
        tr, va = tr_all[itr], tr_all[iva]
        if task == "survival":
            edges = _quantile_bins(t_all[tr_all], e_all[tr_all], n_bins, t_all)
            bins[k] = edges
            ybin = _to_bins(t_all, edges)
            cens = 1 - e_all
        else:
            ybin = cens = None

        def target(idx, ybin=ybin, cens=cens):
            if task in ("binary", "multiclass"):
                return torch.as_tensor(y[idx], device=dev)
            if task == "multilabel":
                return torch.as_tensor(y[idx], device=dev)
            if task == "survival":
                return (torch.as_tensor(ybin[idx], device=dev), torch.as_tensor(cens[idx], device=dev))
            return (torch.as_tensor(t_all[idx], device=dev, dtype=torch.float32),
                    torch.as_tensor(e_all[idx], device=dev, dtype=torch.float32))

        def loss_fn(out, idx):
            tg = target(idx)
            if task in ("binary", "multiclass"):
                return torch.nn.functional.cross_entropy(out, tg)
            if task == "multilabel":
                return torch.nn.functional.binary_cross_entropy_with_logits(out, tg)
            if task == "survival":
                return _nll_surv(out, tg[0], tg[1], alpha_surv)
            return _cox_nll(out.view(-1), tg[0], tg[1])

        def forward(model, idx, keep_att=False, chunk=None):
            # bags of a step go through together; evaluation walks in chunks of at most `chunk` bags and
            # about _EVAL_TILES tiles to bound memory
            chunk = chunk or len(idx)
            outs, atts, xs, n_tiles = [], [], [], 0

            def flush():
                o, a = model.forward_many(xs)
                outs.append(o)
                if keep_att:
                    atts.extend(w.detach().float().cpu().numpy() for w in a)
                xs.clear()

            for i in idx:
                x = torch.from_numpy(bags[bag_ids[i]]).to(dev, non_blocking=True)
                if xs and (len(xs) >= chunk or n_tiles + len(x) > _EVAL_TILES):
                    flush()
                    n_tiles = 0
                xs.append(x)
                n_tiles += len(x)
            if xs:
                flush()
            return torch.cat(outs), atts

        torch.manual_seed(seed * 1009 + k)
        rng = np.random.default_rng(seed * 1009 + k)
        model = GatedAttentionMIL(dim, n_out, hidden, attn_hidden, dropout).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        best, best_state, best_epoch, wait = float("inf"), None, 0, 0
        ep_bar = tqdm(range(epochs), desc=f"fold {k}", leave=False, disable=not progress)
        for ep in ep_bar:
            model.train()
            order = rng.permutation(tr)
            losses = []
            for s in range(0, len(order), batch_size):
                idx = order[s:s + batch_size]
                out, _ = forward(model, idx)
                loss = loss_fn(out, idx)
                if loss is None:  # a Cox batch without events carries no partial likelihood
                    continue
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
            model.eval()
            with torch.no_grad():
                vout, _ = forward(model, va, chunk=batch_size_eval)
                vl = loss_fn(vout, va)
            vl = float(vl) if vl is not None else float("nan")
            tl = float(np.mean(losses)) if losses else float("nan")
            hist_rows.append((k, ep, tl, vl))
            ep_bar.set_postfix(train=f"{tl:.3f}", val=f"{vl:.3f}")
            _release_memory()
            # no validation events (cox): fall back to the training loss, with the same patience
            crit = vl if np.isfinite(vl) else tl
            if crit < best - 1e-6:
                best, best_epoch, wait = crit, ep, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                wait += 1
                if wait >= patience:
                    break
        ep_bar.close()
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        with torch.no_grad():
            tout, atts = forward(model, te, keep_att=True, chunk=batch_size_eval)
        tout = tout.float().cpu()
        if task in ("binary", "multiclass"):
            P[te] = torch.softmax(tout, dim=1).numpy()
        elif task == "multilabel":
            P[te] = torch.sigmoid(tout).numpy()
        elif task == "survival":
            S = torch.cumprod(1 - torch.sigmoid(tout), dim=1)
            risk[te] = (-S.sum(dim=1)).numpy()
        else:
            risk[te] = tout.view(-1).numpy()
        out_cols["fold"][te] = k
        for i, a in zip(te, atts):
            attention[bag_ids[i]] = a
        models.append({kk: v.detach().cpu() for kk, v in model.state_dict().items()})
        fold_rows.append((k, len(te), best_epoch + 1, _time.perf_counter() - t0))
        del model, opt, best_state
    fold_bar.close()

    # ---------------------------------------------------------------- metrics
    if task in ("survival", "cox"):
        truth = {"time": t_all, "event": e_all, "risk": risk}
    else:
        truth = {"y": y, "p": P}
    fns = _metric_fns(task, n_out)
    recs = []
    for k, (_, te) in enumerate(fold_sets):
        rec = {"fold": k, "n": len(te)}
        rec.update({m: _safe(f, _subset(truth, te)) for m, f in fns.items()})
        rec.update(epochs=fold_rows[k][2], seconds=fold_rows[k][3])
        recs.append(rec)
    held = np.flatnonzero(out_cols["fold"] >= 0)
    pooled_t = _subset(truth, held)
    pooled = {"fold": "pooled", "n": len(held)}
    summ = []
    for m, f in fns.items():
        v = _safe(f, pooled_t)
        lo, hi = _bootstrap_ci(f, pooled_t, n_bootstrap, seed)
        pooled[m] = v
        summ.append((m, v, lo, hi))
    pooled.update(epochs=np.nan, seconds=float(sum(r[3] for r in fold_rows)))
    metrics = pd.DataFrame(recs + [pooled]).set_index("fold")
    summary = pd.DataFrame(summ, columns=["metric", "value", "ci_lower", "ci_upper"]).set_index("metric")

    # ---------------------------------------------------------------- write back
    pred = pd.DataFrame({"patient": patients, "fold": out_cols["fold"]}, index=pd.Index(sids, name="slide_id"))
    obs_idx = obs.index[rows]
    fold_full = np.full(len(obs), -1, dtype=int)
    fold_full[rows] = out_cols["fold"]
    obs[f"{key_added}_fold"] = fold_full
    if task in ("binary", "multiclass", "multilabel"):
        for j, c in enumerate(classes):
            col = np.full(len(obs), np.nan)
            col[rows] = P[:, j]
            obs[f"{key_added}_prob_{c}"] = col
            pred[f"prob_{c}"] = P[:, j]
        if task == "multilabel":
            for j, c in enumerate(classes):
                pl = pd.Series(pd.NA, index=obs.index, dtype="boolean")
                pl.loc[obs_idx] = np.where(np.isnan(P[:, j]), pd.NA, P[:, j] >= 0.5)
                obs[f"{key_added}_pred_{c}"] = pl
                pred[f"pred_{c}"] = pl.loc[obs_idx].to_numpy()
        else:
            labels = np.array(classes, dtype=object)[np.nan_to_num(P, nan=-1).argmax(1)]
            labels[np.isnan(P).any(1)] = None
            col = pd.Series(None, index=obs.index, dtype=object)
            col.loc[obs_idx] = labels
            obs[f"{key_added}_pred"] = pd.Categorical(col, categories=classes)
            pred["pred"] = labels
    else:
        col = np.full(len(obs), np.nan)
        col[rows] = risk
        obs[f"{key_added}_risk"] = col
        pred["risk"] = risk
    bags.write_attention(attention, key=f"{key_added}_attention")
    bags.close()
    history = pd.DataFrame(hist_rows, columns=["fold", "epoch", "train_loss", "val_loss"])
    return AbmilResult(task=task, metrics=metrics, summary=summary, predictions=pred, attention=attention,
                       models=models, history=history, classes=classes, bins=bins or None, config=cfg)
