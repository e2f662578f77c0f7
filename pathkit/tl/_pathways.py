"""Gene-set (pathway) scores on the RNA modality, through scanpy's ``score_genes`` or decoupler."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import TableError

__all__ = ["pathway_scores", "read_gene_sets"]

DECOUPLER_METHODS = ("ulm", "mlm", "aucell", "zscore", "waggr", "viper", "gsva", "ora")


def read_gene_sets(gene_sets) -> dict[str, list[str]]:
    """Gene sets as ``{name: [genes]}`` from a dict, a wide table (one column per set, genes down the rows,
    e.g. MSigDB hallmarks), a long table with ``source`` / ``target`` columns (decoupler's network), or a
    CSV / GMT path. Duplicate genes within a set are dropped."""
    if isinstance(gene_sets, (str, Path)):
        p = Path(gene_sets)
        if not p.is_file():
            raise TableError(f"gene-set file not found: {p}")
        if p.suffix.lower() == ".gmt":
            out = {}
            try:
                text = p.read_text()
            except UnicodeDecodeError:
                from .._files import looks_like

                raise TableError(f"{p}: not a text GMT file (it looks like {looks_like(p)}); copy or download "
                                 "it again (MSigDB: the .gmt 'gene symbols' file)") from None
            for line in text.splitlines():
                parts = [x for x in line.rstrip("\n").split("\t") if x]
                if len(parts) >= 3:
                    out[parts[0]] = parts[2:]
            gene_sets = out
        else:
            gene_sets = pd.read_csv(p, sep="\t" if p.suffix.lower() in (".tsv", ".txt") else ",")
    if isinstance(gene_sets, pd.DataFrame):
        if {"source", "target"} <= set(gene_sets.columns):
            gene_sets = {str(k): g["target"].astype(str).tolist() for k, g in gene_sets.groupby("source")}
        else:
            gene_sets = {str(c): gene_sets[c].dropna().astype(str).tolist() for c in gene_sets.columns}
    if not isinstance(gene_sets, dict) or not gene_sets:
        raise TableError("gene_sets must be a non-empty dict {name: genes}, a DataFrame (one column per set, "
                         "or source/target columns) or a CSV/GMT path")
    return {str(k): list(dict.fromkeys(str(g) for g in v)) for k, v in gene_sets.items()}


def _rna_adata(rna):
    import mudata as md

    if isinstance(rna, md.MuData):
        if "rna" not in rna.mod:
            raise TableError(f"MuData has modalities {list(rna.mod)}; no 'rna' (link with pk.io.link(..., rna=))")
        return rna.mod["rna"]
    return rna


def pathway_scores(rna, gene_sets, *, method: str = "score_genes", key_added: str | None = None,
                   min_genes: int = 5, layer: str | None = None, ctrl_size: int = 50, random_state=0,
                   copy: bool = False):
    """Score gene sets (e.g. MSigDB hallmarks) for each RNA row.

    Parameters
    ----------
    rna
        The RNA AnnData (rows x genes, log-expression), e.g. ``mdata["rna"]``, or the MuData (its ``"rna"``
        modality is scored in place).
    gene_sets
        ``{name: [genes]}``, a wide DataFrame (one column per set), a decoupler network (``source`` /
        ``target`` [/ ``weight``]) or a CSV / GMT path; see :func:`read_gene_sets`.
    method
        ``"score_genes"`` (scanpy: mean of the set minus the mean of expression-matched control genes,
        Tirosh et al. 2016); or a decoupler method: ``"ulm"`` (univariate linear model t-value), ``"mlm"``,
        ``"aucell"``, ``"zscore"``, ``"waggr"``, ``"viper"``, ``"gsva"``, ``"ora"`` (needs
        ``pip install decoupler``).
    key_added
        ``obsm`` key of the scores; default ``"pathways_<method>"``.
    min_genes
        Sets with fewer genes measured are dropped (with a warning that counts them).
    layer
        Score this layer instead of ``X``.
    ctrl_size
        Control genes per set (``score_genes`` only).
    random_state
        Seed of the control-gene draw (``score_genes``).
    copy
        Return a scored copy instead of writing in place.

    Returns
    -------
    None, or the AnnData when ``copy=True``. Sets the following fields:

    ``obsm[key_added]``
        DataFrame rows x sets of scores.
    ``uns[key_added]``
        ``method``, ``n_genes`` (genes of each set that were measured), ``dropped`` (sets with too few).
    """
    import scanpy as sc

    adata = _rna_adata(rna)
    if copy:
        adata = adata.copy()
    sets = read_gene_sets(gene_sets)
    key = key_added or f"pathways_{method}"
    if method != "score_genes" and method not in DECOUPLER_METHODS:
        raise ValueError(f"method must be 'score_genes' or one of {DECOUPLER_METHODS}, got {method!r}")
    X = adata.layers[layer] if layer is not None else adata.X
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X, dtype=np.float64)
    if np.isnan(X).any():
        bad = adata.var_names[np.isnan(X).any(axis=0)]
        raise TableError(f"RNA {'layer ' + repr(layer) if layer else 'X'} has NaN in {len(bad)} gene(s) "
                         f"(e.g. {list(bad[:5])}): impute them or drop those genes before scoring")
    genes = set(adata.var_names)
    n_genes = {k: sum(g in genes for g in v) for k, v in sets.items()}
    dropped = sorted(k for k, n in n_genes.items() if n < min_genes)
    if dropped:
        warnings.warn(f"pathway_scores: {len(dropped)} of {len(sets)} gene set(s) have fewer than {min_genes} "
                      f"measured genes and were dropped (e.g. {dropped[:3]}); see uns[{key!r}]['dropped']",
                      UserWarning, stacklevel=2)
    kept = {k: [g for g in v if g in genes] for k, v in sets.items() if k not in dropped}
    if not kept:
        raise TableError(f"no gene set has {min_genes} or more genes among the {adata.n_vars} measured ones; "
                         "check the gene naming (symbols vs Ensembl ids)")
    tmp = sc.AnnData(X=X, obs=pd.DataFrame(index=adata.obs_names), var=pd.DataFrame(index=adata.var_names))
    if method == "score_genes":
        cols = {}
        for name, g in kept.items():
            sc.tl.score_genes(tmp, g, ctrl_size=ctrl_size, score_name="_score", random_state=random_state)
            cols[name] = tmp.obs["_score"].to_numpy(copy=True)
        scores = pd.DataFrame(cols, index=adata.obs_names)
    else:
        try:
            import decoupler as dc
        except ImportError as exc:
            raise ImportError(f"method={method!r} needs decoupler (pip install 'pathkit[rna]' or decoupler); "
                              "method='score_genes' needs only scanpy") from exc
        net = pd.DataFrame([(k, g) for k, v in kept.items() for g in v], columns=["source", "target"])
        getattr(dc.mt, method)(tmp, net, tmin=min_genes)
        scores = pd.DataFrame(tmp.obsm[f"score_{method}"], index=adata.obs_names)
        scores = scores[[k for k in kept if k in scores.columns]]
    adata.obsm[key] = scores
    adata.uns[key] = {"method": method, "n_genes": {k: int(n) for k, n in n_genes.items()},
                      "dropped": dropped, "min_genes": int(min_genes)}
    return adata if copy else None
