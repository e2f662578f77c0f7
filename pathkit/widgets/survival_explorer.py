"""Survival explorer widget: split a cohort at a cut-off of a covariate, KM curves and log-rank p-value."""
from __future__ import annotations

import html
import re

import numpy as np
import pandas as pd

from ._maxstat import maxstat, p_lausen94, standardized
from ._static import StaticFallback, static_copy
from .slide_explorer import replace_figure

HIGH, LOW = "high", "low"

#: Columns that hold the outcome (or are derived from it): never offered as a covariate to split on.
OUTCOME = re.compile(r"^(event|time|censorship|censored|censor|survival|os|dss|dfi|pfi|pfs|efs|rfs|dfs|ttp"
                     r"|vital_status|vital|dead|death|deceased|days_to_death|days_to_last_follow_?up"
                     r"|last_contact_days_to|death_days_to|follow_?up|survival_status)([._ ].*)?$", re.IGNORECASE)
#: Bookkeeping columns (splits, folds, ids, files, job status).
BOOKKEEPING = re.compile(r"^((is_)?(train|test|val|valid|validation)|split|fold|n_tiles|tile_file|path|error"
                         r"|status|index|level_0|unnamed: ?0|.*_id|.*_barcode|.*_(fold|split)s?)([._ ].*)?$",
                         re.IGNORECASE)


def excluded_columns(obs: pd.DataFrame, time: str, event: str, survival_info=None) -> dict[str, str]:
    """Columns that must not be split on, with the reason: the outcome itself, the survival columns
    ``pk.io.link`` normalised or read (``uns["survival"]``: new columns and their sources), other columns
    named like an outcome, and bookkeeping (train/test splits, folds, ids, file paths, job status)."""
    out = {time: "the survival time", event: "the event indicator"}
    for key, info in dict(survival_info or {}).items():
        col = str(key).split(" (")[0]
        out.setdefault(col, "survival column recorded by pk.io.link (uns['survival'])")
        src = info.get("source") if isinstance(info, dict) else None
        if src:
            out.setdefault(str(src), f"source of survival column {col!r} (uns['survival'])")
    for c in obs.columns:
        c = str(c)
        if c in out:
            continue
        base = c.rsplit(":", 1)[-1]          # MuData prefixes modality columns ("slides:time")
        if base in out:
            out[c] = out[base]
        elif OUTCOME.match(base):
            out[c] = "named like an outcome (time, event, censoring, vital status)"
        elif BOOKKEEPING.match(base):
            out[c] = "bookkeeping (split, fold, id, file, status)"
    return out


def _numeric_columns(df: pd.DataFrame, exclude) -> list[str]:
    out = []
    for c in df.columns:
        if str(c) in exclude:
            continue
        s = df[c]
        if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
            continue
        if s.nunique(dropna=True) >= 2:
            out.append(str(c))
    return out


def _modalities(x) -> dict | None:
    """A MuData's modalities (DataFrame.mod is a method, so test for a mapping)."""
    mod = getattr(x, "mod", None)
    return mod if hasattr(mod, "keys") else None


def _subjects(cohort, time: str, event: str):
    """What the rows of the explorer are: a MuData's modality whose obs holds `time` and `event` (``"slides"``
    first: the survival columns of :func:`pathkit.link` live there), else the object itself."""
    mods = _modalities(cohort)
    if mods is None:
        return cohort
    for name in ["slides", *[m for m in mods if m != "slides"]]:
        if name in mods and {time, event} <= set(mods[name].obs.columns):
            return mods[name]
    return cohort


def _gene_table(cohort, rna, obs: pd.DataFrame) -> pd.DataFrame | None:
    """Genes x subjects as a DataFrame indexed like ``obs`` (NaN where a subject has no RNA): from ``rna=``
    (an AnnData whose var are genes, or a MuData with an ``"rna"`` modality), a MuData's ``"rna"`` modality,
    or ``obsm["rna"]`` (``pk.io.link``). RNA rows of patients reach their slides through the obs column
    ``rna.uns["link"]["slides_key"]`` that :func:`pathkit.link` records."""
    src = rna
    if src is not None and _modalities(src) is not None:
        if "rna" not in _modalities(src):
            raise KeyError(f"rna= is a MuData without an 'rna' modality (it has {list(_modalities(src))})")
        src = _modalities(src)["rna"]
    mods = _modalities(cohort)
    if src is None and mods is not None and "rna" in mods:
        src = mods["rna"]
    if src is None and hasattr(cohort, "obsm") and "rna" in cohort.obsm:
        src = cohort.obsm["rna"]
    if src is None:
        return None
    if isinstance(src, pd.DataFrame):
        table = src
    elif hasattr(src, "var_names"):
        X = src.X.toarray() if hasattr(src.X, "toarray") else np.asarray(src.X)
        table = pd.DataFrame(X, index=src.obs_names.astype(str), columns=src.var_names.astype(str))
    else:
        raise TypeError(f"rna= must be an AnnData (var = genes) or a DataFrame, not {type(src).__name__}")
    table = table.copy()
    table.index = table.index.astype(str)
    table.columns = [str(c) for c in table.columns]
    key = dict(getattr(src, "uns", None) or {}).get("link", {}).get("slides_key")
    if key is not None and key in obs.columns and not set(obs.index.astype(str)) & set(table.index):
        ids = obs[key].astype(object).where(obs[key].notna(), "\x00missing").astype(str)
        return table.reindex(pd.Index(ids.to_numpy())).set_axis(obs.index)
    if not set(obs.index.astype(str)) & set(table.index):
        raise KeyError(f"the RNA table's subjects ({list(table.index[:3])}...) share no id with the cohort's "
                       f"obs_names ({list(obs.index[:3])}...); link them first (pk.io.link)")
    return table.reindex(obs.index.astype(str)).set_axis(obs.index)


class SurvivalExplorer(StaticFallback):
    """Pick a covariate, score or gene and a cut-off; the Kaplan-Meier curves and the log-rank p update.

    Subjects with ``covariate > cutoff`` form the group ``"high"``, the others ``"low"``; subjects with a
    missing value are left out (the label says how many). KM figure: ``pk.pl.kaplan_meier``; test:
    ``pk.tl.logrank``.

    The first split of each covariate is at its median (pre-specified). A cut-off moved by the user (slider
    or :meth:`set_cutoff`) was chosen by looking at the curves, so its plain log-rank p-value is too small:
    the label marks it **exploratory** and adds the p-value corrected for choosing the cut-off (maximally
    selected log-rank statistic, Lausen & Schumacher 1992 / Lausen et al. 1994, as R's ``maxstat``; cut-offs
    between the ``minprop`` and ``1 - minprop`` quantiles) and the best cut-off with its corrected p.

    Parameters
    ----------
    cohort
        AnnData (columns from ``obs``; genes from ``obsm["rna"]``), MuData or DataFrame. Of a MuData (e.g.
        :func:`pathkit.link`'s), the rows are those of the modality whose ``obs`` holds `time` and `event`
        (``"slides"`` first) and the genes come from its ``"rna"`` modality (var = genes).
    time, event
        Survival columns (``event`` = 1 when observed).
    covariates
        Columns or genes offered in the dropdown; default: every numeric obs column with at least two values
        that is not an outcome or bookkeeping column (see ``excluded``), then the genes (all of them when
        there are at most ``max_genes``; any gene can still be picked with :meth:`set_covariate`).
    covariate
        Initial covariate (default: the first).
    cutoff
        Initial cut-off (default: the median).
    rna
        An AnnData (var = genes), a MuData with an ``"rna"`` modality, or a DataFrame of expression to take
        genes from: indexed like the cohort's rows, or by patient with ``uns["link"]["slides_key"]`` naming
        the cohort's column that holds the patient (as :func:`pathkit.link` writes). Any of its genes can be
        picked by name (`covariate`, :meth:`set_covariate`), offered or not.
    minprop
        Cut-offs considered by the correction: between the ``minprop`` and ``1 - minprop`` quantiles.

    Notes
    -----
    Programmatic API: :meth:`set_covariate`, :meth:`set_cutoff`; state ``covariate``, ``cutoff``,
    ``groups`` (pd.Series "high"/"low"), ``logrank`` (``pk.tl.logrank`` result or None), ``p_value``
    (plain log-rank), ``exploratory``, ``p_corrected`` (selection-corrected; NaN for a pre-specified split),
    ``maxstat`` (best cut-off and its corrected p), ``excluded`` (column -> why it is not offered); widgets
    ``figure`` (FigureWidget), ``covariate_dropdown``, ``cutoff_slider``, ``label``.
    """

    def __init__(self, cohort, time: str, event: str, covariates=None, covariate: str | None = None,
                 cutoff: float | None = None, *, rna=None, max_genes: int = 50, minprop: float = 0.1,
                 steps: int = 200):
        import ipywidgets as W
        import plotly.graph_objects as go

        subjects = _subjects(cohort, time, event)
        obs = subjects.obs if hasattr(subjects, "obs") else subjects
        if not isinstance(obs, pd.DataFrame):
            raise TypeError(f"cohort must be an AnnData, MuData or DataFrame, not {type(cohort).__name__}")
        for c, role in ((time, "time"), (event, "event")):
            if c not in obs.columns:
                raise KeyError(f"{role} column {c!r} not found; columns: {list(obs.columns)}")
        self.cohort, self.time, self.event, self.steps, self.minprop = cohort, time, event, steps, minprop
        self._obs = obs
        self._genes = _gene_table(cohort, rna, obs)
        info = subjects.uns.get("survival") if hasattr(subjects, "uns") else None
        self.excluded = excluded_columns(obs, time, event, info)
        if covariates is None:
            covariates = _numeric_columns(obs, exclude=self.excluded)
            if self._genes is not None and self._genes.shape[1] <= max_genes:
                covariates += [g for g in self._genes.columns if g not in covariates]
        covariates = [str(c) for c in covariates]
        missing = [c for c in covariates if not self._known(c)]
        if missing:
            raise KeyError(f"covariates {missing} are neither obs columns nor genes; columns: "
                           f"{list(obs.columns)}")
        if not covariates:
            raise ValueError("no numeric covariate to split on; pass covariates=[...]")
        covariate = covariate or covariates[0]
        if covariate not in covariates:
            if not (self._genes is not None and covariate in self._genes.columns):
                why = f" ({self.excluded[covariate]})" if covariate in self.excluded else ""
                raise KeyError(f"covariate {covariate!r} is neither among {covariates}{why} nor a gene")
            covariates.append(covariate)   # any gene, by name, even when not all genes are offered

        self.covariate_dropdown = W.Dropdown(options=covariates, value=covariate, description="covariate")
        self.cutoff_slider = W.FloatSlider(description="cut-off", continuous_update=False,
                                           readout_format=".4g", layout=W.Layout(width="420px"))
        self.label = W.HTML()
        self.figure = go.FigureWidget()
        self.covariate: str | None = None
        self.cutoff: float | None = None
        self.groups: pd.Series | None = None
        self.logrank = None
        self.p_value = float("nan")
        self.p_corrected = float("nan")
        self.exploratory = False
        self.maxstat = None
        self._quiet = False
        self.set_covariate(covariate, cutoff=cutoff)
        self.covariate_dropdown.observe(self.callback(lambda ch: self._on_covariate(ch["new"])), names="value")
        self.cutoff_slider.observe(self.callback(lambda ch: self._on_cutoff(ch["new"])), names="value")
        self.widget = W.VBox([W.HBox([self.covariate_dropdown, self.cutoff_slider],
                                     layout=W.Layout(flex_flow="row wrap")),
                              self.label, self._error_widget(), self.figure, self._marker()])

    def static_figures(self) -> list:
        return [static_copy(self.figure)]

    def static_summary(self) -> str:
        import re as _re

        return "SurvivalExplorer: " + _re.sub(r"<[^>]+>", "", self.label.value)

    def _known(self, key) -> bool:
        return key in self._obs.columns or (self._genes is not None and key in self._genes.columns)

    def _values(self, key) -> pd.Series:
        if key in self._obs.columns:
            s = self._obs[key]
        elif self._genes is not None and key in self._genes.columns:
            s = self._genes[key]
        else:
            raise KeyError(f"covariate {key!r} is neither an obs column nor a gene")
        try:
            return pd.to_numeric(s).astype(float)
        except (ValueError, TypeError):
            raise ValueError(f"covariate {key!r} is not numeric") from None

    # -- programmatic API -------------------------------------------------------------------------------
    def set_covariate(self, key: str, cutoff: float | None = None):
        """Split on ``key`` (an offered covariate, or any gene of the RNA table) at ``cutoff`` (default: its
        median, a pre-specified split)."""
        if key not in self.covariate_dropdown.options:
            is_gene = self._genes is not None and key in self._genes.columns
            if not is_gene:
                why = f" ({self.excluded[key]})" if key in self.excluded else ""
                raise KeyError(f"covariate {key!r} is not among {list(self.covariate_dropdown.options)}{why}")
            self.covariate_dropdown.options = list(self.covariate_dropdown.options) + [key]
        v = self._values(key).dropna()
        if v.empty:
            raise ValueError(f"covariate {key!r} has no values")
        lo, hi = float(v.min()), float(v.max())
        cut = float(np.median(v)) if cutoff is None else float(cutoff)
        self._quiet = True
        try:
            if self.covariate_dropdown.value != key:
                self.covariate_dropdown.value = key
            s = self.cutoff_slider
            # widen first so the new min/max never clamp the value half-way
            s.min, s.max = min(s.min, lo), max(s.max, hi)
            s.min, s.max = lo, hi if hi > lo else lo + 1
            s.step = (hi - lo) / self.steps if hi > lo else 1
            s.value = min(max(cut, lo), hi)
        finally:
            self._quiet = False
        self.covariate = key
        vals = self._values(key)
        try:
            self.maxstat = maxstat(vals, self._obs[self.time], self._obs[self.event], self.minprop,
                                   1 - self.minprop)
        except ValueError:
            self.maxstat = None  # too few distinct values to scan cut-offs
        self.exploratory = False
        self._update(cut)
        return self

    def set_cutoff(self, value: float):
        """Move the cut-off (what dragging the slider does); the split becomes exploratory."""
        self._quiet = True
        try:
            self.cutoff_slider.value = min(max(float(value), self.cutoff_slider.min), self.cutoff_slider.max)
        finally:
            self._quiet = False
        self.exploratory = True
        self._update(float(value))
        return self

    # -- callbacks ------------------------------------------------------------------------------------
    def _on_covariate(self, key):
        if not self._quiet:
            self.set_covariate(key)

    def _on_cutoff(self, value):
        if not self._quiet:
            self.exploratory = True
            self._update(float(value))

    def _correction_text(self, v: pd.Series, cut: float) -> str:
        ms = self.maxstat
        if ms is None:
            self.p_corrected = float("nan")
            return " (too few distinct values to correct for the choice of cut-off)"
        keep = v.notna() & self._obs[self.time].notna() & self._obs[self.event].notna()
        from ._maxstat import logrank_scores

        scores = logrank_scores(self._obs[self.time][keep], self._obs[self.event][keep])
        b = standardized((v[keep] <= cut).to_numpy(), scores)
        self.p_corrected = p_lausen94(b, ms.n, ms.counts)
        return (f"; corrected for choosing the cut-off: p = {self.p_corrected:.3g} (maximally selected log-rank, "
                f"Lausen 1994, cut-offs between the {ms.minprop:.0%} and {ms.maxprop:.0%} quantiles). "
                f"Best cut-off there: {ms.cutpoint:.4g} (corrected p = {ms.p_lau94:.3g})")

    def _update(self, cut: float):
        from .. import pl, tl

        self.cutoff = cut
        v = self._values(self.covariate)
        keep = v.notna()
        df = pd.DataFrame({self.time: self._obs[self.time], self.event: self._obs[self.event]})[keep]
        groups = pd.Series(np.where(v[keep] > cut, HIGH, LOW), index=df.index, name="group")
        present = [g for g in (LOW, HIGH) if (groups == g).any()]
        df["group"] = pd.Categorical(groups, categories=present)
        self.groups = groups
        n_out = int((~keep).sum())
        counts = ", ".join(f"{g}: n={int((groups == g).sum())}" for g in (LOW, HIGH))
        note = f"; {n_out} without {self.covariate} left out" if n_out else ""
        title = f"{self.covariate} > {cut:.4g} (high) vs ≤ (low)"
        kind = "EXPLORATORY cut-off (chosen by looking at the data)" if self.exploratory else \
            "pre-specified cut-off" + (" (median)" if cut == float(np.median(v.dropna())) else "")
        self.p_corrected = float("nan")
        if len(present) == 2:
            self.logrank = tl.logrank(df, self.time, self.event, "group")
            self.p_value = float(self.logrank.p_value)
            text = f"{kind}: log-rank p = {self.p_value:.3g} (χ² = {self.logrank.statistic:.3g}); {counts}{note}"
            if self.exploratory:
                text = (f"{kind}: log-rank p = {self.p_value:.3g} uncorrected (biased low: the cut-off was "
                        f"chosen after seeing the curves){self._correction_text(v, cut)}; {counts}{note}")
        else:
            self.logrank, self.p_value = None, float("nan")
            text = (f"log-rank p = n/a: only the {present[0]!r} group is non-empty at this cut-off; "
                    f"{counts}{note}")
        if self.exploratory and len(present) == 2:
            title += (f"<br><sup>exploratory: log-rank p = {self.p_value:.3g} uncorrected, "
                      f"{self.p_corrected:.3g} corrected for choosing the cut-off</sup>")
            fig = pl.kaplan_meier(df, self.time, self.event, groupby="group", title=title, logrank=False)
        else:
            fig = pl.kaplan_meier(df, self.time, self.event, groupby="group", title=title)
        replace_figure(self.figure, fig)
        self.label.value = html.escape(text)
        self.refresh_static()
