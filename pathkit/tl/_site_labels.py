"""The tissue source site of each slide or patient (from an obs column or the TCGA barcodes), used by the site
diagnostics and by site-preserved folds."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import TableError


def _ad(adata):
    import mudata as md

    return adata.mod["slides"] if isinstance(adata, md.MuData) else adata


def _barcode_column(obs: pd.DataFrame, index) -> pd.Series:
    for c in ("patient_id", "slide_id", "case_id", "barcode"):
        if c in obs.columns:
            return obs[c].astype(str)
    return pd.Series(np.asarray(index, dtype=str), index=obs.index)


def site_labels(adata, key: str = "tss") -> pd.Series:
    """The site of each row: ``obs[key]`` when it exists, else (``key="tss"``) the tissue source site parsed
    from the TCGA barcodes in ``obs["patient_id"]`` / ``slide_id`` / ``case_id`` or the obs names."""
    from ..tcga import parse_barcodes

    a = _ad(adata)
    if key in a.obs.columns:
        s = a.obs[key]
        return s.astype(str).where(s.notna(), None)
    if key != "tss":
        raise TableError(f"site key {key!r} is not an obs column ({list(a.obs.columns)[:20]}); pass "
                         "key='tss' to take the site from TCGA barcodes")
    ids = _barcode_column(a.obs, a.obs_names)
    parts = parse_barcodes(ids, errors="coerce")
    site = parts["patient"].str.split("-").str[1]
    if site.isna().all():
        raise TableError(f"no TCGA barcode found to read the tissue source site from (obs 'patient_id', "
                         f"'slide_id', 'case_id' or obs names, e.g. {ids.iloc[0]!r}); add an obs column of "
                         "sites and pass its name as key")
    return site
