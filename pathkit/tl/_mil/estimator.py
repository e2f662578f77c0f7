"""The MIL estimator: fit on one cohort, predict on another, save / load (safetensors + JSON)."""
from __future__ import annotations

import copy
import time as _time
from pathlib import Path

import numpy as np
import pandas as pd

from ..._device import resolve_device
from ...errors import TableError
from ..splits import inner_split
from . import tasks as T
from .bags import BagSet
from .covariates import CovariateSpec, bag_covariates
from .data import Units, cohort_obs, make_units, write_predictions

_EVAL_TILES = 8192  # tiles per evaluation chunk of the batched (ABMIL) path


def _release_memory():
    """Collect, then hand freed heap pages back to the OS (the many few-MB bag buffers)."""
    import gc

    from ..._io import malloc_trim

    gc.collect()
    malloc_trim()


class MIL:
    """A multiple-instance learning model over tile bags, as an estimator.

    Parameters
    ----------
    model
        A name of :data:`pathkit.models.mil.MIL_MODELS`: ``"abmil"`` (gated attention), ``"clam_sb"``,
        ``"transmil"``, ``"dsmil"``, ``"mean"``, ``"max"``.
    task
        ``"binary"``, ``"multiclass"``, ``"multilabel"``, ``"regression"``, ``"survival"`` (discrete-time
        NLL) or ``"cox"``.
    epochs, lr, weight_decay, patience
        Adam for at most ``epochs``; early stopping when the validation loss has not improved for
        ``patience`` epochs (the best epoch's weights are kept).
    batch_size
        Bags per optimiser step. Default 1 (CLAM), 16 for ``cox`` (the partial likelihood needs several bags).
    val_fraction
        Share of the training patients held out for early stopping (0: train all epochs, keep the last).
    n_bins, alpha_surv
        ``survival``: quantile bins of uncensored times, and the extra weight of the uncensored term.
    bag_by
        ``"slide"``: one bag per slide; ``"patient"``: the tiles of all a patient's slides pooled in one bag.
    device
        ``"auto"`` (cuda, then mps, then cpu) or a torch device string.
    random_state
        Seeds the inner split, initialisation, shuffling and dropout.
    progress
        A tqdm bar over the epochs.
    **params
        The network's hyper-parameters (defaults in ``MIL_MODELS[model][1]``), e.g. ``hidden=256``.

    Attributes
    ----------
    module_
        After ``fit``: the fitted ``torch.nn.Module`` (on CPU, eval mode; a
        :class:`~pathkit.models.mil.CovariateFusion` around the network when fit with covariates).
    classes_, in_dim_, use_rep_
        The classes, the feature width and the ``obsm`` key the model was fit on.
    history_
        ``epoch``, ``train_loss``, ``val_loss`` per epoch.
    bins_
        The survival time bins (task ``"survival"``).
    covariates_
        The covariates' sources, encoding, training mean and sd; None without covariates.
    importance_
        Slide id -> per-tile importance of the last ``predict``.
    """

    def __init__(self, model: str = "abmil", task: str = "binary", *, epochs: int = 20, lr: float = 2e-4,
                 weight_decay: float = 1e-5, patience: int = 5, batch_size: int | None = None,
                 val_fraction: float = 0.2, n_bins: int = 4, alpha_surv: float = 0.15, bag_by: str = "slide",
                 device: str = "auto", random_state: int = 0, progress: bool = True, **params):
        from ...models.mil import mil_params

        if task not in T.TASKS:
            raise ValueError(f"task must be one of {T.TASKS}, not {task!r}")
        if bag_by not in ("slide", "patient"):
            raise ValueError(f"bag_by must be 'slide' or 'patient', not {bag_by!r}")
        self.params = mil_params(model, **params)
        self.model, self.task = model, task
        self.epochs, self.lr, self.weight_decay, self.patience = epochs, lr, weight_decay, patience
        self.batch_size = batch_size if batch_size is not None else (16 if task == "cox" else 1)
        self.val_fraction, self.n_bins, self.alpha_surv, self.bag_by = val_fraction, n_bins, alpha_surv, bag_by
        self.device, self.random_state, self.progress = device, random_state, progress
        self.module_ = None
        self.covariates_: CovariateSpec | None = None
        self._sizes: dict[int, list[int]] = {}

    def __repr__(self) -> str:
        state = "fitted" if self.module_ is not None else "not fitted"
        return f"MIL(model={self.model!r}, task={self.task!r}, bag_by={self.bag_by!r}; {state})"

    # ================================================================ public API
    def fit(self, bags, cohort, label=None, *, time: str | None = None, event: str | None = None,
            use_rep: str | None = None, split_by: str = "patient_id", covariates=None,
            covariate_nan: str = "raise") -> MIL:
        """Fit on every usable bag of ``cohort`` (an inner patient-level split for early stopping).

        Parameters
        ----------
        bags
            Tile AnnData per slide: a dict ``slide_id -> AnnData``, a list, one AnnData with
            ``obs["slide_id"]``, an ``.h5ad`` path, a folder of ``embed_cohort`` ``.h5ad`` files, or CLAM
            ``.h5`` bags.
        cohort
            One row per slide (AnnData or DataFrame): ``obs["slide_id"]`` (else obs_names), ``split_by``, the
            label columns. Slides whose label is missing are dropped with a warning giving the count.
        label
            Class column (binary / multiclass), 0/1 columns (multilabel), numeric column(s) (regression).
        time, event
            Survival columns (``event`` 1 = observed).
        use_rep
            The tiles' ``obsm`` key holding the features (``"X"`` reads ``X``). Default: the bags' single
            ``X_<model>`` key (an error lists them when there are several), else ``X`` when it has columns.
        split_by
            Patient column: the validation split and ``bag_by="patient"`` group by it.
        covariates
            Late fusion: names of bag-level covariates added to the pooled bag representation before the
            head (see :class:`~pathkit.models.mil.CovariateFusion`): columns of the slides' ``obs`` (numeric,
            or categorical: one-hot with the first category as reference), ``obsm`` keys of the slides, and,
            when ``cohort`` is the MuData of :func:`pathkit.io.link`, RNA ``obs`` columns, RNA ``obsm`` keys
            (e.g. ``"pathways_score_genes"``: every pathway) or genes (each slide takes its patient's row).
            Standardised with the mean and sd of the training bags; ``bag_by="patient"`` averages a patient's
            slides. Stored with the model; :meth:`predict` reads the same names from its cohort. The tile
            network is trained first; then the labels are regressed on its output and the covariates
            (stacking, a standard normal prior on the standardised covariates' weights), so covariates
            explain what the tiles do not.
        covariate_nan
            A bag with a missing covariate value: ``"raise"`` (an error naming the columns), ``"mean"`` (the
            training mean, at fit and at predict) or ``"drop"`` (left out of training, and not predicted,
            with a warning that counts them).

        Returns
        -------
        self
        """
        need = T.label_columns(self.task, label, time, event)
        bagset = BagSet(bags, use_rep)
        try:
            units = make_units(cohort, bagset, bag_by=self.bag_by, split_by=split_by, need=need)
            C = spec = None
            if covariates is not None and len(covariates):
                units, C, spec = bag_covariates(cohort, units, covariates, nan=covariate_nan, where="fit")
            tg, classes = T.encode_targets(self.task, units.table, label, time, event)
            self.label_, self.time_, self.event_, self.use_rep_ = label, time, event, bagset.use_rep
            self.split_by_ = split_by
            self._fit_units(bagset, units, tg, classes, np.arange(len(units)), C=C, cov_spec=spec)
        finally:
            bagset.close()
        return self

    def predict(self, bags, cohort, *, use_rep: str | None = None, key_added: str | None = None,
                split_by: str | None = None) -> pd.DataFrame:
        """Predict every slide of ``cohort`` that has a bag; write the results to ``cohort`` and the tiles.

        Parameters
        ----------
        bags, cohort
            As in :meth:`fit` (labels are not needed). With covariates, ``cohort`` needs the columns (or RNA
            features) named at fit; bags missing a value follow the ``covariate_nan`` of fit.
        use_rep
            Default: the key used in ``fit``. The feature width must match the fitted model's.
        key_added
            Prefix of the columns written (default: the model name).
        split_by
            Patient column for ``bag_by="patient"`` (default: the one used in ``fit``).

        Returns
        -------
        One row per predicted slide (index ``slide_id``): ``unit``, ``patient`` and the task's columns.
        Sets the following fields:

        ``cohort.obs[f"{key_added}_prob_<class>"]``, ``[f"{key_added}_pred"]``
            binary / multiclass (multilabel: ``_prob_<label>`` and boolean ``_pred_<label>``).
        ``cohort.obs[f"{key_added}_pred"]``
            regression (``_pred_<column>`` for several columns), in the label's units.
        ``cohort.obs[f"{key_added}_risk"]``
            survival / cox; higher = shorter survival.
        ``tiles.obs[f"{key_added}_importance"]``
            each in-memory tile AnnData: attention (ABMIL, CLAM, DSMIL, TransMIL's class token) or the
            tile's own score (mean, max). Also in ``self.importance_``.
        """
        self._check_fitted()
        key = key_added or self.model
        bagset = BagSet(bags, use_rep or self.use_rep_)
        try:
            units = make_units(cohort, bagset, bag_by=self.bag_by, split_by=split_by or self.split_by_,
                               need=[], require_split=False)
            C = None
            if self.covariates_ is not None:
                units, C, _ = bag_covariates(cohort, units, spec=self.covariates_, where="predict")
            idx = np.arange(len(units))
            raw, imp = self._predict_units(bagset, units, idx, C)
            pred = T.transform(self.task, raw, self.y_mean_, self.y_sd_)
            table = write_predictions(cohort_obs(cohort), units, idx, self.task, pred, self.classes_, key)
            self.importance_ = imp
            bagset.write_obs(imp, f"{key}_importance")
        finally:
            bagset.close()
        return table

    def save(self, path) -> Path:
        """Write ``path/model.safetensors`` and ``path/config.json`` (a folder); returns the folder."""
        from .io import save_estimator

        self._check_fitted()
        return save_estimator(self, path)

    @classmethod
    def load(cls, path, *, device: str = "auto") -> MIL:
        """Rebuild a saved estimator (see :meth:`save`)."""
        from .io import load_estimator

        return load_estimator(cls, path, device=device)

    # ================================================================ internals
    def _check_fitted(self):
        if self.module_ is None:
            raise RuntimeError("this MIL estimator is not fitted: call fit() or MIL.load() first")

    def _unit_x(self, bagset: BagSet, units: Units, i: int, in_dim: int | None):
        """The unit's tiles (its slides' bags stacked); records the slides' sizes in ``self._sizes``."""
        xs = [bagset[b] for b in units.bags[i]]
        self._sizes[i] = [len(x) for x in xs]
        for b, x in zip(units.bags[i], xs):
            if in_dim is not None and x.shape[1] != in_dim:
                rep = "X" if bagset.use_rep == "X" else f"obsm[{bagset.use_rep!r}]"
                raise TableError(f"slide {b!r}: {rep} has {x.shape[1]} features per tile, but the model was fit "
                                 f"on {in_dim} (use_rep={getattr(self, 'use_rep_', bagset.use_rep)!r}); pass the "
                                 f"features of the same encoder")
        return xs[0] if len(xs) == 1 else np.concatenate(xs)

    def _forward(self, module, bagset, units, idx, dev, targets=None, keep_imp=False, in_dim=None, covs=None):
        """Outputs of the units ``idx`` (stacked), their extras, and (optionally) importance per unit.
        ``covs``: the standardised covariates of every unit (a tensor), for a fused module."""
        import torch

        from ...models.mil import CovariateFusion

        outs, extras, imps = [], [], []
        fused = isinstance(module, CovariateFusion)
        if hasattr(module.base if fused else module, "forward_many"):  # ABMIL: one matmul, no extras
            xs, rows, n = [], [], 0

            def flush():
                o, a = module.forward_many(xs, covs[rows]) if fused else module.forward_many(xs)
                outs.append(o)
                if keep_imp:
                    imps.extend(w.detach().float().cpu().numpy() for w in a)
                xs.clear()
                rows.clear()

            for i in idx:
                x = torch.from_numpy(self._unit_x(bagset, units, i, in_dim)).to(dev)
                if xs and n + len(x) > _EVAL_TILES:
                    flush()
                    n = 0
                xs.append(x)
                rows.append(int(i))
                n += len(x)
            if xs:
                flush()
            return torch.cat(outs), extras, imps
        for j, i in enumerate(idx):
            x = torch.from_numpy(self._unit_x(bagset, units, i, in_dim)).to(dev)
            target = targets[j] if targets is not None else None
            o, a, ex = module(x, target=target, cov=covs[int(i)]) if fused else module(x, target=target)
            outs.append(o)
            extras.append(ex)
            if keep_imp:
                imps.append(a.detach().float().cpu().numpy())
        return torch.stack(outs), extras, imps

    def _targets(self, tg: dict, idx, dev) -> dict:
        return T.batch_targets(self.task, tg, idx, dev, self.y_mean_, self.y_sd_, self.bins_)

    def _loss(self, out, extras, tg):
        return T.bag_loss(self.task, out, extras, tg, self.alpha_surv)

    def _covs(self, C, dev):
        """The standardised covariates of every unit as a tensor on ``dev`` (None without covariates)."""
        import torch

        if self.covariates_ is None:
            return None
        if C is None:
            raise RuntimeError("this model was fit with covariates: pass their raw values")
        return torch.from_numpy(self.covariates_.standardise(C)).to(dev)

    def _fit_units(self, bagset: BagSet, units: Units, tg: dict, classes, train_idx: np.ndarray, fold: int = 0,
                   C: np.ndarray | None = None, cov_spec: CovariateSpec | None = None):
        """Train on the units ``train_idx``; sets ``module_`` and the fitted attributes. ``C``: the raw
        covariates of every unit (standardised with the statistics of ``train_idx``)."""
        import torch

        from ..._progress import progress_bar
        from ...models.mil import CovariateFusion, build_mil

        if len(train_idx) == 0:
            raise TableError("no usable bag to train on")
        seed = self.random_state * 1009 + fold
        self.classes_ = classes
        self.bins_ = self.y_mean_ = self.y_sd_ = None
        if self.task == "survival":
            self.bins_ = T.quantile_bins(tg["time"][train_idx], tg["event"][train_idx], self.n_bins)
        if self.task == "regression":
            y = tg["y"][train_idx]
            self.y_mean_, self.y_sd_ = y.mean(0), np.where(y.std(0) > 0, y.std(0), 1.0)
        n_out = {"binary": len(classes or []), "multiclass": len(classes or []), "multilabel": len(classes or []),
                 "regression": len(classes or []), "survival": self.n_bins, "cox": 1}[self.task]
        pats = units.patient[train_idx]
        strat = tg.get("strat")
        strat_tr = None if strat is None else np.asarray(strat)[train_idx]
        if self.val_fraction and len(set(pats)) >= 4:
            itr, iva = inner_split(pats, strat_tr, self.val_fraction, seed=seed)
            tr, va = train_idx[itr], train_idx[iva]
        else:
            tr, va = train_idx, train_idx[:0]
        dev = resolve_device(self.device)
        in_dim = self._unit_x(bagset, units, int(train_idx[0]), None).shape[1]
        self.covariates_ = None if C is None else cov_spec.fitted(C[train_idx])
        covs = self._covs(C, dev)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        module = build_mil(self.model, in_dim, n_out, **self.params)
        if covs is not None:  # the bag network trains alone (scale 1, shift 0, W 0); the fusion is fit after
            module = CovariateFusion(module, covs.shape[1], n_out)
            for p in (module.scale, module.shift, module.covariates.weight):
                p.requires_grad_(False)
        module = module.to(dev)
        needs_label = self.model == "clam_sb" and self.task in ("binary", "multiclass")
        opt = torch.optim.Adam(module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        best, best_state, best_epoch, wait, hist = float("inf"), None, 0, 0, []
        bar = progress_bar(range(self.epochs), desc=f"{self.model} fold {fold}", leave=False, disable=not self.progress)
        for ep in bar:
            t_ep = _time.perf_counter()
            module.train()
            order = rng.permutation(tr)
            losses = []
            for s in range(0, len(order), self.batch_size):
                idx = order[s:s + self.batch_size]
                targets = list(tg["y"][idx]) if needs_label else None
                out, extras, _ = self._forward(module, bagset, units, idx, dev, targets=targets, in_dim=in_dim,
                                               covs=covs)
                loss = self._loss(out, extras, self._targets(tg, idx, dev))
                if loss is None:  # a Cox batch without events carries no partial likelihood
                    continue
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
            tl = float(np.mean(losses)) if losses else float("nan")
            vl = float("nan")
            if len(va):
                module.eval()
                with torch.no_grad():
                    vout, _, _ = self._forward(module, bagset, units, va, dev, in_dim=in_dim, covs=covs)
                    v = T.task_loss(self.task, vout, self._targets(tg, va, dev), self.alpha_surv)
                vl = float(v) if v is not None else float("nan")
            hist.append((fold, ep, tl, vl))
            bar.set_postfix(train=f"{tl:.3f}", val=f"{vl:.3f}")
            if _time.perf_counter() - t_ep > 5:  # long epochs: keep the resident size from creeping up
                _release_memory()
            if not len(va):
                continue
            crit = vl if np.isfinite(vl) else tl  # no validation events (cox): the training loss
            if crit < best - 1e-6:
                best, best_epoch, wait = crit, ep, 0
                best_state = copy.deepcopy(module.state_dict())
            else:
                wait += 1
                if wait >= self.patience:
                    break
        bar.close()
        _release_memory()
        if best_state is not None:
            module.load_state_dict(best_state)
        if covs is not None:
            self._fit_fusion(module, bagset, units, tg, train_idx, dev, in_dim, covs)
        self.module_ = module.cpu().eval()
        self.in_dim_, self.n_out_ = in_dim, n_out
        self.best_epoch_ = best_epoch + 1 if len(va) else len(hist)
        self.history_ = pd.DataFrame(hist, columns=["fold", "epoch", "train_loss", "val_loss"])
        return self

    def _fit_fusion(self, module, bagset, units, tg, idx, dev, in_dim, covs):
        """Stacking: fit the fused module's scale, shift and covariate weights on the training units ``idx``
        with the trained bag network's outputs held fixed (:func:`.covariates.stack_fit`)."""
        import torch

        from .covariates import stack_fit

        module.eval()
        with torch.no_grad():
            base, _, _ = self._forward(module.base, bagset, units, idx, dev, in_dim=in_dim)
        scale, shift, W = stack_fit(self.task, base.to(covs.dtype), covs[idx], self._targets(tg, idx, dev),
                                    self.alpha_surv)
        with torch.no_grad():
            module.scale.copy_(scale)
            module.shift.copy_(shift)
            module.covariates.weight.copy_(W)

    def _predict_units(self, bagset: BagSet, units: Units, idx: np.ndarray, C: np.ndarray | None = None):
        """(raw outputs [n, n_out], slide id -> per-tile importance) of the units ``idx`` (``C``: the raw
        covariates of every unit, for a model fit with covariates)."""
        import torch

        self._check_fitted()
        dev = resolve_device(self.device)
        module = self.module_.to(dev).eval()
        covs = self._covs(C, dev)
        outs, imps = [], {}
        with torch.no_grad():
            for s in range(0, len(idx), 64):
                chunk = idx[s:s + 64]
                o, _, im = self._forward(module, bagset, units, chunk, dev, keep_imp=True, in_dim=self.in_dim_,
                                         covs=covs)
                outs.append(o.float().cpu().numpy())
                for i, w in zip(chunk, im):
                    for b, part in zip(units.bags[i], np.split(w, np.cumsum(self._sizes[i])[:-1])):
                        imps[b] = part
        self.module_ = module.cpu()
        raw = np.concatenate(outs) if outs else np.zeros((0, self.n_out_))
        return raw, imps

