"""Figures for association tables (volcano, heatmap) and encoder probes (plotly)."""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["association_heatmap", "encoder_comparison", "volcano"]


def _table(data, key: str) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        return data
    uns = getattr(data, "uns", {})
    if key not in uns:
        raise KeyError(f"uns[{key!r}] not found: run pk.tl.associate(...) first or pass its table")
    return uns[key]


def volcano(data, *, key: str = "associations", q: float = 0.05, label_top: int = 10, title: str | None = None):
    """Volcano plot of an association table: statistic against -log10 p, tests with ``qvalue < q`` coloured.

    Parameters
    ----------
    data
        The table from :func:`pathkit.tl.associate`, or the MuData / AnnData holding it in ``uns[key]``.
    key
        ``uns`` key when ``data`` is not a table.
    q
        FDR threshold drawn (significant tests in red; the dashed line is the largest p-value below it).
    label_top
        Number of most significant tests labelled ``feature ~ target``.
    title
        Figure title.

    Returns
    -------
    plotly.graph_objects.Figure
    """
    import plotly.graph_objects as go

    t = _table(data, key).dropna(subset=["pvalue"])
    y = -np.log10(np.clip(t["pvalue"].to_numpy(float), 1e-300, 1))
    sig = (t["qvalue"] < q).to_numpy()
    text = (t["feature"].astype(str) + " ~ " + t["target"].astype(str)).to_numpy()
    fig = go.Figure()
    for mask, name, colour in ((~sig, f"q >= {q}", "#9e9e9e"), (sig, f"q < {q}", "#d62728")):
        fig.add_trace(go.Scattergl(x=t["statistic"].to_numpy()[mask], y=y[mask], mode="markers", name=name,
                                   text=text[mask], marker={"color": colour, "size": 5},
                                   hovertemplate="%{text}<br>statistic %{x:.3g}<br>-log10 p %{y:.2f}<extra></extra>"))
    top = np.argsort(-y)[:label_top]
    for i in top:
        fig.add_annotation(x=float(t["statistic"].iloc[i]), y=float(y[i]), text=text[i], showarrow=False,
                           yshift=9, font={"size": 9})
    if sig.any():
        fig.add_hline(y=float(-np.log10(t["pvalue"].to_numpy()[sig].max())), line_dash="dash", line_color="#d62728")
    fig.update_layout(template="plotly_white", title=title or f"associations ({int(sig.sum())} with q < {q})",
                      xaxis_title="statistic", yaxis_title="-log10 p")
    return fig


def association_heatmap(data, *, key: str = "associations", features=None, targets=None, top: int = 30,
                        q: float = 0.05, title: str | None = None):
    """Heatmap of the association statistic, features x targets; ``*`` marks ``qvalue < q``.

    Parameters
    ----------
    data
        The table from :func:`pathkit.tl.associate`, or the object holding it in ``uns[key]``.
    key
        ``uns`` key when ``data`` is not a table.
    features, targets
        Rows / columns to show (default: the ``top`` targets with the smallest p-value, every feature).
    top
        Number of targets shown when ``targets`` is not given.
    q
        FDR threshold of the ``*`` marks.
    title
        Figure title.

    Returns
    -------
    plotly.graph_objects.Figure
    """
    import plotly.graph_objects as go

    t = _table(data, key)
    if features is not None:
        t = t[t["feature"].isin(list(features))]
    if targets is None:
        targets = t.groupby("target")["pvalue"].min().sort_values().index[:top].tolist()
    t = t[t["target"].isin(list(targets))]
    stat = t.pivot_table(index="feature", columns="target", values="statistic", aggfunc="first")
    stat = stat.reindex(columns=[c for c in targets if c in stat.columns])
    qv = t.pivot_table(index="feature", columns="target", values="qvalue", aggfunc="first").reindex_like(stat)
    marks = np.where(qv.to_numpy() < q, "*", "")
    lim = float(np.nanmax(np.abs(stat.to_numpy()))) if stat.size else 1.0
    fig = go.Figure(go.Heatmap(z=stat.to_numpy(), x=list(stat.columns), y=list(stat.index), text=marks,
                               texttemplate="%{text}", colorscale="RdBu_r", zmin=-lim, zmax=lim,
                               colorbar={"title": "statistic"}))
    fig.update_layout(template="plotly_white", title=title or f"associations (* q < {q})",
                      xaxis_title="target", yaxis_title="feature")
    return fig


def encoder_comparison(table: pd.DataFrame, *, metric: str = "auroc", title: str | None = None):
    """Bar chart of one probe metric per representation, with its confidence interval (from
    :func:`pathkit.tl.compare_encoders`).

    Returns
    -------
    plotly.graph_objects.Figure
    """
    import plotly.graph_objects as go

    t = table[table["metric"] == metric]
    if t.empty:
        raise KeyError(f"metric {metric!r} not in the table (metrics: {sorted(set(table['metric']))})")
    fig = go.Figure(go.Bar(x=t["use_rep"], y=t["value"],
                           error_y={"type": "data", "symmetric": False, "array": (t["ci_high"] - t["value"]).to_numpy(),
                                        "arrayminus": (t["value"] - t["ci_low"]).to_numpy()},
                           text=[f"{v:.3f}" for v in t["value"]], textposition="outside"))
    fig.update_layout(template="plotly_white", title=title or f"{metric} per representation",
                      xaxis_title="representation", yaxis_title=metric)
    return fig
