"""The slides + RNA MuData that :func:`pathkit.io.link` returns, and the helpers that read it back.

``mdata["slides"]`` has one row per slide; ``mdata["rna"]`` one row per id at the join level (patient by
default), genes as variables. ``mdata["rna"].uns["link"]["slides_key"]`` names the slides' ``obs`` column
whose values are the RNA obs_names, so a slide finds its RNA row without any copy.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import TableError

__all__ = ["make_mudata", "rna_by_slide", "slides_and_rna", "split_mudata"]


def _rna_table(rna, rna_key):
    """(DataFrame ids x genes, id key) from a DataFrame / CSV path / AnnData."""
    import anndata as ad

    from ._link_tables import read_table

    if isinstance(rna, ad.AnnData):
        X = rna.X.toarray() if hasattr(rna.X, "toarray") else np.asarray(rna.X)
        rdf = pd.DataFrame(X, index=rna.obs_names, columns=rna.var_names)
        if rna_key not in (None, "index"):
            rdf.insert(0, rna_key, rna.obs[rna_key].values)
        return rdf, rna_key if rna_key is not None else "index"
    return read_table(rna, "rna"), rna_key if rna_key is not None else "index"


def _new_mudata(mods: dict):
    import mudata as md

    with md.set_options(pull_on_update=False):  # mudata >= 0.3 warns unless this choice is explicit
        mdata = md.MuData(mods)
    # without the pull mdata.obs has no columns at all (issue 29): copy every modality's obs columns in,
    # prefixed "<modality>:" (mudata's own convention); the modalities stay the source of truth
    mdata.pull_obs()
    return mdata


def make_mudata(slides, rna_mod):
    """MuData ``{"slides": slides, "rna": ...}``; ``rna_mod`` is ``(table ids x genes, link info)`` from a new
    link, or the ``"rna"`` AnnData of an earlier one (kept, restricted to the ids still among the slides)."""
    import anndata as ad

    if isinstance(rna_mod, ad.AnnData):
        info = dict(rna_mod.uns.get("link", {}))
        key = info.get("slides_key")
        if key not in slides.obs.columns:
            raise TableError(f"the 'rna' modality links through slides.obs[{key!r}], which the slides no longer "
                             "have; link the RNA table again with pk.io.link(cohort, rna=...)")
        ids = slides.obs[key]
        keep = rna_mod.obs_names.isin(pd.unique(ids.dropna().astype(str)))
        r = rna_mod[keep].copy()
    else:
        table, info = rna_mod
        key = info["slides_key"]
        ids = slides.obs[key]
        table = table.set_axis(table.index.map(str), axis=0)  # ids compared as text (a column join may be numeric)
        order = [i for i in pd.unique(ids.dropna().astype(str)) if i in table.index]
        m = table.loc[order]
        r = ad.AnnData(X=m.to_numpy(dtype=np.float64), obs=pd.DataFrame(index=order),
                       var=pd.DataFrame(index=[str(c) for c in m.columns]))
        r.uns["link"] = dict(info)
    counts = ids.dropna().astype(str).value_counts()
    r.obs["n_slides"] = counts.reindex(r.obs_names).fillna(0).astype(int).to_numpy()
    return _new_mudata({"slides": slides, "rna": r})


def split_mudata(mdata):
    """(slides AnnData copy, rna AnnData copy or None) of a linked MuData."""
    if "slides" not in mdata.mod:
        raise TableError(f"MuData has modalities {list(mdata.mod)}; pathkit expects 'slides' (and 'rna')")
    rna = mdata.mod["rna"].copy() if "rna" in mdata.mod else None
    return mdata.mod["slides"].copy(), rna


def slides_and_rna(data, rna=None):
    """(slides, rna, slides_key) from a linked MuData, or from ``data`` = slides AnnData and ``rna`` = the RNA
    AnnData. The objects are returned as they are (not copied)."""
    import mudata as md

    if isinstance(data, md.MuData):
        if "slides" not in data.mod or "rna" not in data.mod:
            raise TableError(f"MuData has modalities {list(data.mod)}; this needs 'slides' and 'rna' "
                             "(pk.io.link(cohort, rna=...) makes them)")
        slides, rna = data.mod["slides"], data.mod["rna"]
    else:
        slides = data
        if rna is None:
            raise TableError("pass a MuData from pk.io.link(cohort, rna=...), or the slides AnnData and rna=")
    key = rna.uns.get("link", {}).get("slides_key", "patient_id")
    if key not in slides.obs.columns:
        raise TableError(f"slides.obs has no column {key!r} linking slides to RNA rows; link with pk.io.link "
                         "or set rna.uns['link'] = {'slides_key': <column>}")
    return slides, rna, key


def rna_by_slide(mdata, genes=None, *, layer: str | None = None) -> pd.DataFrame:
    """Expression of each slide's patient (or sample), as a slides x genes DataFrame (NaN where none).

    A view for plotting and per-slide tables; the MuData itself stores each patient once.

    Parameters
    ----------
    mdata
        MuData from :func:`pathkit.io.link` with ``rna``.
    genes
        Gene names (default: all).
    layer
        A layer of ``mdata["rna"]`` instead of ``X``.
    """
    slides, rna, key = slides_and_rna(mdata)
    genes = list(rna.var_names) if genes is None else [genes] if isinstance(genes, str) else list(genes)
    missing = [g for g in genes if g not in rna.var_names]
    if missing:
        raise KeyError(f"gene(s) {missing[:10]} not in mdata['rna'].var_names")
    sub = rna[:, genes]
    X = sub.layers[layer] if layer is not None else sub.X
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    table = pd.DataFrame(X, index=rna.obs_names, columns=genes)
    ids = slides.obs[key].astype(object).where(slides.obs[key].notna(), "\x00missing").astype(str)
    out = table.reindex(pd.Index(ids.values))
    out.index = slides.obs_names
    return out
