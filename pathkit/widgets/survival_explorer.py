"""Survival explorer widget: split a cohort at a cut-off of a covariate, KM curves and log-rank p-value."""
from __future__ import annotations

import html

import numpy as np
import pandas as pd

from .slide_explorer import replace_figure

HIGH, LOW = "high", "low"


def _numeric_columns(df: pd.DataFrame, exclude) -> list[str]:
    out = []
    for c in df.columns:
        if c in exclude:
            continue
        s = df[c]
        if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
            continue
        if s.nunique(dropna=True) >= 2:
            out.append(str(c))
    return out


class SurvivalExplorer:
    """Pick a covariate or score and a cut-off; the Kaplan-Meier curves and the log-rank p-value update.

    Subjects with ``covariate > cutoff`` form the group ``"high"``, the others ``"low"``; subjects with a
    missing covariate are left out (the label says how many). KM figure: ``pk.pl.kaplan_meier`` with
    ``groupby="group"``; test: ``pk.tl.logrank``.

    Parameters
    ----------
    cohort
        AnnData (columns from ``obs``) or DataFrame.
    time, event
        Survival columns (``event`` = 1 when observed).
    covariates
        Columns offered in the dropdown; default: every numeric column with at least two values other than
        ``time`` and ``event`` (e.g. ``abmil_risk``, ages, zero-shot scores).
    covariate
        Initial covariate (default: the first).
    cutoff
        Initial cut-off (default: the covariate's median).

    Programmatic API: :meth:`set_covariate`, :meth:`set_cutoff`; state ``covariate``, ``cutoff``,
    ``groups`` (pd.Series "high"/"low"), ``logrank`` (``pk.tl.logrank`` result or None), ``p_value``;
    widgets ``figure`` (FigureWidget), ``covariate_dropdown``, ``cutoff_slider``, ``label``.
    """

    def __init__(self, cohort, time: str, event: str, covariates=None, covariate: str | None = None,
                 cutoff: float | None = None, *, steps: int = 200):
        import ipywidgets as W
        import plotly.graph_objects as go

        obs = cohort.obs if hasattr(cohort, "obs") else cohort
        if not isinstance(obs, pd.DataFrame):
            raise TypeError(f"cohort must be an AnnData or a DataFrame, not {type(cohort).__name__}")
        for c, role in ((time, "time"), (event, "event")):
            if c not in obs.columns:
                raise KeyError(f"{role} column {c!r} not found; columns: {list(obs.columns)}")
        self.cohort, self.time, self.event, self.steps = cohort, time, event, steps
        self._obs = obs
        if covariates is None:
            covariates = _numeric_columns(obs, exclude={time, event})
        covariates = [str(c) for c in covariates]
        missing = [c for c in covariates if c not in obs.columns]
        if missing:
            raise KeyError(f"covariates {missing} are not columns; columns: {list(obs.columns)}")
        if not covariates:
            raise ValueError("no numeric covariate to split on; pass covariates=[...]")
        covariate = covariate or covariates[0]
        if covariate not in covariates:
            raise KeyError(f"covariate {covariate!r} is not among {covariates}")

        self.covariate_dropdown = W.Dropdown(options=covariates, value=covariate, description="covariate")
        self.cutoff_slider = W.FloatSlider(description="cut-off", continuous_update=False,
                                           readout_format=".4g")
        self.label = W.HTML()
        self.figure = go.FigureWidget()
        self.covariate: str | None = None
        self.cutoff: float | None = None
        self.groups: pd.Series | None = None
        self.logrank = None
        self.p_value = float("nan")
        self._quiet = False
        self.set_covariate(covariate, cutoff=cutoff)
        self.covariate_dropdown.observe(lambda ch: self._on_covariate(ch["new"]), names="value")
        self.cutoff_slider.observe(lambda ch: self._on_cutoff(ch["new"]), names="value")
        self.widget = W.VBox([W.HBox([self.covariate_dropdown, self.cutoff_slider]), self.label, self.figure])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _values(self, key) -> pd.Series:
        s = self._obs[key]
        try:
            return pd.to_numeric(s).astype(float)
        except (ValueError, TypeError):
            raise ValueError(f"covariate {key!r} is not numeric") from None

    # -- programmatic API -------------------------------------------------------------------------------
    def set_covariate(self, key: str, cutoff: float | None = None):
        """Split on ``key`` at ``cutoff`` (default: its median)."""
        if key not in self.covariate_dropdown.options:
            raise KeyError(f"covariate {key!r} is not among {list(self.covariate_dropdown.options)}")
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
        self._update(cut)
        return self

    def set_cutoff(self, value: float):
        """Move the cut-off; the figure and p-value follow."""
        self._quiet = True
        try:
            self.cutoff_slider.value = min(max(float(value), self.cutoff_slider.min), self.cutoff_slider.max)
        finally:
            self._quiet = False
        self._update(float(value))
        return self

    # -- callbacks ------------------------------------------------------------------------------------
    def _on_covariate(self, key):
        if not self._quiet:
            self.set_covariate(key)

    def _on_cutoff(self, value):
        if not self._quiet:
            self._update(float(value))

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
        if len(present) == 2:
            self.logrank = tl.logrank(df, self.time, self.event, "group")
            self.p_value = float(self.logrank.p_value)
            text = f"log-rank p = {self.p_value:.3g} (χ² = {self.logrank.statistic:.3g}); {counts}{note}"
        else:
            self.logrank, self.p_value = None, float("nan")
            text = (f"log-rank p = n/a: only the {present[0]!r} group is non-empty at this cut-off; "
                    f"{counts}{note}")
        fig = pl.kaplan_meier(df, self.time, self.event, groupby="group", title=title)
        replace_figure(self.figure, fig)
        self.label.value = html.escape(text)
