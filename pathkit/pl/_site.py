"""The site effect figure: each representation's top two principal components coloured by site."""
from __future__ import annotations

import numpy as np

__all__ = ["site_effect"]


def site_effect(adata, use_reps, key: str = "tss", *, random_state: int = 0, title: str | None = None):
    """Scatter of the first two principal components of each representation, coloured by site, side by side
    (e.g. ``["X_uni", "X_uni_harmony"]`` for before / after :func:`pathkit.tl.harmonize`).

    Parameters
    ----------
    adata
        Slides (or tiles) AnnData / linked MuData.
    use_reps
        One ``obsm`` key or a list of them.
    key
        obs column of the site; ``"tss"``: parsed from TCGA barcodes (:func:`pathkit.tl.site_effect`).
    random_state
        Seed of the PCA.
    title
        Figure title.

    Returns
    -------
    plotly.graph_objects.Figure
        One panel per representation; a panel's title carries the site's kNN accuracy (with chance) and
        variance share when :func:`pathkit.tl.site_effect` stored them in ``uns["site_effect_<rep>"]``.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    from sklearn.decomposition import PCA

    from ..tl._site import _ad, _rep, site_labels
    from ._colors import default_palette

    a = _ad(adata)
    reps = [use_reps] if isinstance(use_reps, str) else list(use_reps)
    site = site_labels(a, key).astype(object).fillna("unknown").astype(str).to_numpy()
    sites = sorted(set(site))
    colors = dict(zip(sites, default_palette(len(sites))))
    names = []
    for r in reps:
        info = a.uns.get(f"site_effect_{r}")
        names.append(r if not info else f"{r}<br>kNN site acc {info['knn_accuracy']:.2f} (chance "
                     f"{info['chance']:.2f}), site variance {info['variance_share']:.0%}")
    fig = make_subplots(rows=1, cols=len(reps), subplot_titles=names)
    for j, r in enumerate(reps):
        X = _rep(a, r)
        ok = np.isfinite(X).all(1)
        pcs = np.full((len(X), 2), np.nan)
        pcs[ok] = PCA(n_components=2, random_state=random_state).fit_transform(X[ok])
        for s in sites:
            m = site == s
            fig.add_trace(go.Scattergl(x=pcs[m, 0], y=pcs[m, 1], mode="markers", name=s, legendgroup=s,
                                       showlegend=j == 0, marker={"color": colors[s], "size": 6},
                                       text=list(a.obs_names[m]), hovertemplate="%{text}<extra>" + s + "</extra>"),
                          row=1, col=j + 1)
        fig.update_xaxes(title_text="PC1", row=1, col=j + 1)
        fig.update_yaxes(title_text="PC2", row=1, col=j + 1)
    fig.update_layout(title=title or f"site effect ({key})", legend_title_text=key, template="plotly_white",
                      height=420, width=max(480, 420 * len(reps)))
    return fig
