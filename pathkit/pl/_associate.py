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
    xs = t["statistic"].to_numpy(float)
    for i, (ax, ay) in zip(top, _label_offsets(xs, y, [text[i] for i in top], top)):
        fig.add_annotation(x=float(xs[i]), y=float(y[i]), text=text[i], showarrow=True, ax=ax, ay=ay,
                           arrowhead=0, arrowwidth=0.6, arrowcolor="#777", font={"size": 9})
    if sig.any():
        fig.add_hline(y=float(-np.log10(t["pvalue"].to_numpy()[sig].max())), line_dash="dash", line_color="#d62728")
    fig.update_layout(template="plotly_white", title=title or f"associations ({int(sig.sum())} with q < {q})",
                      xaxis_title="statistic", yaxis_title="-log10 p", width=VOLCANO_PX[0], height=VOLCANO_PX[1])
    return fig


#: The volcano's size in px, and the plot area inside it that the label placement assumes.
VOLCANO_PX = (760, 520)
_PLOT_PX = (VOLCANO_PX[0] - 160, VOLCANO_PX[1] - 180)
_CHAR_PX, _LINE_PX = 5.4, 12.0     # a 9-px label: average character width, line height


def label_boxes(xs, ys, texts, offsets, rows):
    """Pixel boxes (x0, y0, x1, y1; y down) of labels drawn at ``offsets`` (ax, ay) from points ``rows``."""
    xr = (np.nanmin(xs), np.nanmax(xs))
    yr = (np.nanmin(ys), np.nanmax(ys))
    out = []
    for r, s, (ax, ay) in zip(rows, texts, offsets):
        px = (xs[r] - xr[0]) / ((xr[1] - xr[0]) or 1) * _PLOT_PX[0]
        py = _PLOT_PX[1] - (ys[r] - yr[0]) / ((yr[1] - yr[0]) or 1) * _PLOT_PX[1]
        w = _CHAR_PX * len(s) + 4
        cx, cy = px + ax, py + ay
        out.append((cx - w / 2, cy - _LINE_PX / 2, cx + w / 2, cy + _LINE_PX / 2))
    return out


def _label_offsets(xs, ys, texts, rows):
    """Arrow offsets (ax, ay) in px that keep the labels of the most significant tests from overlapping one
    another (greedy, most significant first): above or below the point, then further out, then sideways."""
    placed, out = [], []
    steps = [(0, d * s) for d in (18, 32, 46, 60, 74, 88, 102, 116) for s in (-1, 1)]
    for r, s in zip(rows, texts):
        w = _CHAR_PX * len(s) + 4
        cands = steps + [(side * (w / 2 + 10), ay) for _, ay in steps for side in (-1, 1)]
        choice = cands[0]
        for c in cands:
            (box,) = label_boxes(xs, ys, [s], [c], [r])
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                choice = c
                break
        placed.extend(label_boxes(xs, ys, [s], [choice], [r]))
        out.append(choice)
    return out


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
