"""Kaplan-Meier figures (plotly): step curves, CI bands, censoring ticks, numbers at risk, log-rank p."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["kaplan_meier"]


def _nice_ticks(tmax: float, n: int = 8) -> np.ndarray:
    """Round tick positions (1, 2, 2.5, 5 x 10^k steps) from 0 to ``tmax``."""
    if tmax <= 0:
        return np.array([0.0])
    raw = tmax / max(n - 1, 1)
    mag = 10 ** np.floor(np.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    return np.arange(0, tmax + 1e-9 * tmax, step)


def _steps(t: np.ndarray, v: np.ndarray, t_end: float) -> tuple[np.ndarray, np.ndarray]:
    """Points of a right-continuous step function drawn as a polygon edge."""
    x = np.repeat(t, 2)[1:]
    y = np.repeat(v, 2)[:-1]
    return np.r_[x, t_end], np.r_[y, v[-1]]


def _hex_to_rgba(color: str, alpha: float) -> str:
    c = color.lstrip("#")
    if len(c) == 6:
        r, g, b = (int(c[i:i + 2], 16) for i in (0, 2, 4))
        return f"rgba({r},{g},{b},{alpha})"
    return color


def _fmt_p(p: float) -> str:
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def _atomic_save(fig, path: Path, scale: float):
    from .._io import atomic_write

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".html", ".png", ".svg", ".pdf", ".jpg", ".jpeg", ".webp"):
        raise ValueError(f"save={path}: use .html, .png, .svg or .pdf")
    with atomic_write(path, suffix=suffix) as tmp:
        if suffix == ".html":
            fig.write_html(tmp, include_plotlyjs="cdn")
            return
        try:
            fig.write_image(tmp, scale=scale)
        except Exception as e:  # kaleido needs a Chrome/Chromium it can start
            raise RuntimeError(f"static export to {path} failed ({type(e).__name__}: {e}); it needs kaleido "
                               f"and a Chrome/Chromium browser (`plotly_get_chrome` or apt install chromium). "
                               f"Save as .html instead to keep the interactive figure") from e


def kaplan_meier(data, time, event, groupby=None, *, ci: bool = True, at_risk: bool = True,
                 censor_ticks: bool = True, logrank: bool = True, conf_type: str = "log-log",
                 dropna: bool = False, title: str | None = None, time_label: str | None = None,
                 at_risk_times: Sequence[float] | None = None, colors: Sequence[str] | None = None,
                 width: int = 760, height: int | None = None, save: str | Path | None = None,
                 scale: float = 2.0):
    """Kaplan-Meier curves as an interactive plotly figure.

    Parameters
    ----------
    data, time, event, groupby
        As :func:`pathkit.tl.kaplan_meier` (AnnData obs or DataFrame; ``event`` 1 = observed).
    ci
        Shade the confidence band of each curve (``conf_type`` as in ``tl.kaplan_meier``).
    at_risk
        Numbers at risk per group under the x axis, at the x ticks (or ``at_risk_times``).
    censor_ticks
        Mark censored times with ``|`` ticks on the curves.
    logrank
        With two or more groups, run :func:`pathkit.tl.logrank` and put its p-value in the title.
    title, time_label
        Figure title (the log-rank p is appended) and x-axis label (default: the time column's name).
    colors
        One colour per group (hex); default plotly's qualitative palette.
    save
        Write the figure: ``.html`` (interactive), or ``.png`` / ``.svg`` / ``.pdf`` via kaleido (needs
        Chrome/Chromium; a clear error otherwise). Written atomically.

    Returns
    -------
    plotly.graph_objects.Figure
    """
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    from ..tl.survival import kaplan_meier as km_fit
    from ..tl.survival import logrank as lr_test

    km = km_fit(data, time, event, groupby, dropna=dropna, conf_type=conf_type)
    groups = list(km.fitters)
    palette = list(colors) if colors is not None else list(qualitative.Plotly)
    tmax = float(km.curves["time"].max())
    ticks = np.asarray(at_risk_times, dtype=float) if at_risk_times is not None else _nice_ticks(tmax)
    n_rows = 2 if at_risk else 1
    fig = make_subplots(rows=n_rows, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        row_heights=[0.78, 0.22] if at_risk else [1.0])
    time_label = time_label or km.time
    for i, g in enumerate(groups):
        color = palette[i % len(palette)]
        cur = km.curves[km.curves["group"] == g]
        t, s = cur["time"].to_numpy(), cur["survival"].to_numpy()
        name = str(g) if groupby is not None else "all"
        legend = f"{name} (n={km.counts.loc[g, 'n']})"
        if ci:
            lo, hi = cur["ci_lower"].to_numpy(), cur["ci_upper"].to_numpy()
            ok = np.isfinite(lo) & np.isfinite(hi)
            if ok.sum() > 1:
                xl, yl = _steps(t[ok], lo[ok], t[ok][-1])
                xh, yh = _steps(t[ok], hi[ok], t[ok][-1])
                fig.add_trace(go.Scatter(x=np.r_[xh, xl[::-1]], y=np.r_[yh, yl[::-1]], fill="toself",
                                         fillcolor=_hex_to_rgba(color, 0.18), line={"width": 0},
                                         hoverinfo="skip", showlegend=False, legendgroup=name,
                                         name=f"{name} CI"), row=1, col=1)
        fig.add_trace(go.Scatter(
            x=t, y=s, mode="lines", line={"shape": "hv", "color": color, "width": 2}, name=legend, legendgroup=name,
            customdata=np.c_[cur["ci_lower"], cur["ci_upper"], cur["at_risk"]],
            hovertemplate=(f"<b>{name}</b><br>{time_label}: %{{x:.4g}}<br>survival: %{{y:.3f}} "
                           "(%{customdata[0]:.3f}-%{customdata[1]:.3f})<br>at risk: %{customdata[2]}"
                           "<extra></extra>")), row=1, col=1)
        if censor_ticks:
            cens = cur[cur["censored"] > 0]
            if len(cens):
                fig.add_trace(go.Scatter(
                    x=cens["time"], y=cens["survival"], mode="markers", legendgroup=name, showlegend=False,
                    marker={"symbol": "line-ns-open", "size": 9, "color": color, "line": {"width": 1.5}},
                    name=f"{name} censored",
                    hovertemplate=f"<b>{name}</b> censored at %{{x:.4g}}<extra></extra>"), row=1, col=1)
        if at_risk:
            durations = np.asarray(km.fitters[g].durations, dtype=float)
            counts = [int((durations >= tk).sum()) for tk in ticks]
            fig.add_trace(go.Scatter(x=ticks, y=[name] * len(ticks), mode="text", text=[str(c) for c in counts],
                                     textfont={"color": color, "size": 12}, showlegend=False, hoverinfo="skip",
                                     name=f"{name} at risk"), row=2, col=1)
    full_title = title or (f"Kaplan-Meier by {km.groupby}" if groupby is not None else "Kaplan-Meier")
    if logrank and groupby is not None and len(groups) >= 2:
        res = lr_test(data, time, event, groupby, dropna=dropna)
        full_title += f"<br><sup>log-rank p = {_fmt_p(res.p_value)} (chi2 = {res.statistic:.2f}, df = {res.dof})</sup>"
        fig.layout.meta = {"logrank_p": res.p_value, "logrank_statistic": res.statistic}
    fig.update_yaxes(title_text="survival probability", range=[-0.02, 1.05], row=1, col=1)
    fig.update_xaxes(range=[-0.01 * tmax, tmax * 1.03], tickvals=ticks, row=1, col=1)
    if at_risk:
        fig.update_xaxes(title_text=time_label, tickvals=ticks, showgrid=False, row=2, col=1)
        fig.update_yaxes(title_text="at risk", type="category", range=[len(groups) - 0.4, -0.6],
                         showgrid=False, zeroline=False, categoryorder="array",
                         categoryarray=[str(g) if groupby is not None else "all" for g in groups], row=2, col=1)
    else:
        fig.update_xaxes(title_text=time_label, row=1, col=1)
    fig.update_layout(title={"text": full_title, "x": 0.5}, template="plotly_white", width=width,
                      height=height or (560 if at_risk else 440), hovermode="closest",
                      # beside the curves, not on them: survival curves fill the top right corner where legends sit
                      legend={"yanchor": "top", "y": 1, "xanchor": "left", "x": 1.02})
    if save is not None:
        _atomic_save(fig, Path(save), scale)
    return fig
