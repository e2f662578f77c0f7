"""Resolving a `color=` key (obs column, gene of obsm["rna"], feature index) into values and a palette."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

MISSING = "NA"
MISSING_COLOR = "#bbbbbb"


@dataclass
class ColorSpec:
    """What a figure needs to colour its points by one key."""

    key: str | None
    source: str                      # "obs", "rna", "feature", "none"
    categorical: bool
    values: np.ndarray | None        # numeric values (float) or category labels (str), one per row
    categories: list = field(default_factory=list)
    colors: list = field(default_factory=list)  # one per category

    def color_of(self, category) -> str:
        return self.colors[self.categories.index(category)]


def _obs(data) -> pd.DataFrame:
    return data.obs if hasattr(data, "obs") else data


def _is_categorical(s: pd.Series) -> bool:
    return (isinstance(s.dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(s)
            or pd.api.types.is_object_dtype(s) or pd.api.types.is_string_dtype(s))


def default_palette(n: int) -> list[str]:
    """Qualitative colours: plotly's 10, then D3+Alphabet (36), then evenly sampled Turbo."""
    import plotly.colors as pc

    if n <= 10:
        return list(pc.qualitative.Plotly[:n])
    pool = list(pc.qualitative.Dark24) + list(pc.qualitative.Light24)
    if n <= len(pool):
        return pool[:n]
    return pc.sample_colorscale("Turbo", [i / max(n - 1, 1) for i in range(n)])


def available_keys(data) -> list[str]:
    """The keys `resolve_color` accepts, obs columns first (for dropdowns)."""
    keys = [str(c) for c in _obs(data).columns]
    rna = getattr(data, "obsm", {}).get("rna") if hasattr(data, "obsm") else None
    if isinstance(rna, pd.DataFrame):
        keys += [str(c) for c in rna.columns]
    return keys


def resolve_color(data, key: str | None, palette=None, use_rep: str | None = None) -> ColorSpec:
    """Values for `key`: an obs (or DataFrame) column, else a gene column of ``obsm["rna"]``, else a feature
    (a var name of X, e.g. ``"12"``). Categorical columns get one colour per category: ``palette`` (list or
    dict category -> colour), else ``uns[key + "_colors"]`` (scanpy's convention), else a default palette."""
    if key is None:
        return ColorSpec(None, "none", False, None)
    obs = _obs(data)
    if key in obs.columns:
        s = obs[key]
        if _is_categorical(s):
            return _categorical(data, key, s, palette)
        return ColorSpec(key, "obs", False, pd.to_numeric(s, errors="raise").to_numpy(dtype=float))
    if hasattr(data, "obsm"):
        rna = data.obsm.get("rna") if "rna" in data.obsm else None
        if isinstance(rna, pd.DataFrame) and key in rna.columns:
            if not rna.index.equals(obs.index):
                rna = rna.reindex(obs.index)
            return ColorSpec(key, "rna", False, rna[key].to_numpy(dtype=float))
        if use_rep is not None and use_rep in data.obsm and str(key).isdigit():
            F = np.asarray(data.obsm[use_rep])
            j = int(key)
            if j >= F.shape[1]:
                raise KeyError(f"color={key!r}: obsm[{use_rep!r}] has {F.shape[1]} features (0..{F.shape[1] - 1})")
            return ColorSpec(key, "feature", False, F[:, j].astype(float))
        if key in data.var_names:
            col = data[:, key].X
            col = col.toarray() if hasattr(col, "toarray") else np.asarray(col)
            return ColorSpec(key, "feature", False, col.reshape(-1).astype(float))
    where = "obs columns" if hasattr(data, "obs") else "columns"
    extra = (", genes of obsm['rna'], feature indices of obsm[use_rep] or var_names") if hasattr(data, "obsm") else ""
    raise KeyError(f"color={key!r} is not one of the {where}{extra}; obs columns: {list(obs.columns)}")


def _categorical(data, key, s: pd.Series, palette) -> ColorSpec:
    cat = s.astype("category") if not isinstance(s.dtype, pd.CategoricalDtype) else s
    categories = [str(c) for c in cat.cat.categories]
    labels = cat.astype(str).to_numpy(dtype=object)
    missing = cat.isna().to_numpy()
    stored = None
    uns = getattr(data, "uns", None)
    if uns is not None and f"{key}_colors" in uns and len(uns[f"{key}_colors"]) == len(categories):
        stored = list(uns[f"{key}_colors"])
    if isinstance(palette, dict):
        unknown = [c for c in categories if c not in palette]
        if unknown:
            raise KeyError(f"palette has no colour for categories {unknown} of {key!r}")
        colors = [palette[c] for c in categories]
    elif palette is not None:
        palette = list(palette)
        if len(palette) < len(categories):
            raise ValueError(f"palette has {len(palette)} colours; {key!r} has {len(categories)} categories")
        colors = palette[:len(categories)]
    else:
        colors = stored or default_palette(len(categories))
    if missing.any():
        labels[missing] = MISSING
        categories = categories + [MISSING]
        colors = list(colors) + [MISSING_COLOR]
    present = set(labels)
    keep = [i for i, c in enumerate(categories) if c in present]  # unused categories get no trace/legend
    return ColorSpec(key, "obs", True, labels, [categories[i] for i in keep], [colors[i] for i in keep])


def format_value(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "nan" if np.isnan(v) else f"{v:.4g}"
    return str(v)
