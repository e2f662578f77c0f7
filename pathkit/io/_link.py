"""Linking a slide cohort with clinical and RNA-seq tables.

``pk.io.link(cohort, clinical, rna)`` joins at the level the user names (patient by default), keeps every slide
row, and writes a report of everything that did not line up: unmatched ids on each side, missing ids,
duplicate ids (exact copies or conflicting), ids that are not TCGA barcodes, columns whose values conflict
between the cohort and the clinical table, and how several slides per patient were handled. Nothing is
dropped without being listed in ``uns["link_report"]`` and summarised in a warning.

RNA becomes its own modality: a MuData with ``"slides"`` (one row per slide) and ``"rna"`` (one row per
patient / sample / slide at the join level, genes as variables), never copied per slide.
"""
from __future__ import annotations

import warnings

import pandas as pd

from .._io import h5ad_safe_obs
from ..errors import TableError
from ..tcga import parse_barcodes
from ._link_policies import POLICIES, _apply_policy
from ._link_tables import (
    _as_cohort,
    _join_clinical,
    _level_ids,
    _listed,
    _match_report,
    _side_table,
    cohort_from_table,
    read_table,
)
from ._mudata import _rna_table, make_mudata, split_mudata
from .survival_columns import normalise_survival

__all__ = ["LinkWarning", "cohort_from_table", "link", "read_table", "summarise_report"]


class LinkWarning(UserWarning):
    """Something did not line up while linking tables (details in ``uns["link_report"]``)."""


def link(cohort, clinical=None, rna=None, *, on: str = "patient", slides_per_patient: str = "all",
         cohort_key: str | None = None, clinical_key: str | None = None, rna_key: str | None = None,
         duplicates: str = "first", rna_duplicates: str | None = None, size_key: str | None = None,
         survival: bool = True, clinical_name: str = "clinical", warn: bool = True):
    """Link a slide cohort with a clinical table and an RNA-seq table.

    Parameters
    ----------
    cohort
        Cohort AnnData (one row per slide, e.g. from :func:`pathkit.tl.embed_cohort`), or a slide table
        (DataFrame / CSV path with ``slide_id`` and/or ``case_id``/``patient_id``).
    clinical
        DataFrame or CSV path; one row per id. Its columns are added to ``obs``.
    rna
        patients x genes DataFrame / CSV (ids in the index or ``rna_key``) or an AnnData (ids in obs_names).
    on
        Join level: ``"patient"`` (TCGA barcodes cut to 12 characters), ``"sample"`` (15 characters),
        ``"slide"``, or the name of a column present on both sides (ids compared as written).
    slides_per_patient
        ``"all"`` keep every slide (default); ``"first_dx"`` one slide per id, the diagnostic slide with the
        lowest number (DX1); ``"largest"`` the slide with the largest ``size_key`` (n_tiles / size);
        ``"mean"`` one row per id, features and ``obsm`` averaged, ``obs["n_slides"]``, ``obs["slide_ids"]``.
    cohort_key, clinical_key, rna_key
        Id column of each side (``"index"`` for the index); found automatically otherwise
        (patient_id, case_id, bcr_patient_barcode, submitter_id, sample_id, slide_id, then a named index).
    duplicates, rna_duplicates
        Duplicate ids in the clinical / RNA table: ``"first"`` (default), ``"last"``, ``"raise"``, or
        (RNA only) ``"mean"``. Always reported.
    survival
        Normalise survival columns (``censorship`` -> ``event``; ``OS``/``OS.time`` -> ``event``,
        ``time_days``; ``survival_months`` -> ``time_months``) on both sides first.
    clinical_name
        Key of the clinical table's entry in the report (link twice with different names to add a second
        clinical source, e.g. ``"tcga_cdr"``).

    Returns
    -------
    MuData or AnnData
        A MuData when ``rna`` is given or ``cohort`` is a MuData (linking again keeps its ``"rna"``), else an
        AnnData (the slides alone). New objects; the input is not modified. Sets the following fields:

        - ``mdata["slides"]`` (AnnData, one row per slide, as the cohort):
          ``obs[<level>_id]`` (the join id, e.g. ``patient_id``); clinical columns in ``obs``
          (``<col>_clinical`` next to a cohort column whose values conflict); ``uns["link_report"]`` (every
          problem, counted); ``uns["survival"]`` (normalised columns, their source and unit).
        - ``mdata["rna"]`` (AnnData, ids x genes):
          obs_names = the join ids that have RNA and slides, in cohort order; ``X`` the expression
          (float64, as read); ``var_names`` the genes; ``obs["n_slides"]``; ``uns["link"]``
          (``{"on": ..., "slides_key": <level>_id}``: ``slides.obs[slides_key]`` names each slide's row).

        Slides whose id has no RNA simply have no row in ``"rna"`` (counted in the report).
    """
    import mudata as md

    if isinstance(cohort, md.MuData):
        cohort, old_rna = split_mudata(cohort)
    else:
        old_rna = None
    if slides_per_patient not in POLICIES:
        raise ValueError(f"slides_per_patient must be one of {POLICIES}, got {slides_per_patient!r}")
    adata = _as_cohort(cohort)
    level = on if on in ("patient", "sample", "slide") else "column"
    id_col = f"{on}_id" if level != "column" else on
    obs = adata.obs.copy()
    surv = {}
    if survival:
        obs, surv = normalise_survival(obs)

    # cohort ids
    if level == "column":
        if on not in obs.columns:
            raise TableError(f"cohort: join column {on!r} not in obs")
        raw = obs[on]
    else:
        key = cohort_key
        if key is None:
            pref = {"patient": ("patient_id", "case_id", "slide_id"), "sample": ("sample_id", "slide_id"),
                    "slide": ("slide_id",)}[level]
            key = next((c for c in pref if c in obs.columns), "index")
        raw = pd.Series(obs.index, index=obs.index) if key == "index" else obs[key]
        if key != "index" and key not in obs.columns:
            raise TableError(f"cohort: id column {key!r} not in obs")
    ids, tcga = _level_ids(pd.Series(raw.values, index=obs.index), level if level != "column" else "column")
    crep = {"n_rows": int(adata.n_obs), "n_nan_ids": int(ids.isna().sum()), "n_ids": int(ids.nunique()),
            "n_not_tcga_ids": int(ids[ids.notna() & ~tcga].nunique()),
            "not_tcga_ids": _listed(pd.unique(ids[ids.notna() & ~tcga])),
            "nan_id_rows": _listed(obs.index[ids.isna().values])}
    # TCGA parts of each slide, when its id is a barcode
    if "slide_id" in obs.columns:
        parts = parse_barcodes(obs["slide_id"].map(lambda v: v if isinstance(v, str) else None)
                               .reset_index(drop=True), errors="coerce")
        for src, dst in (("patient", "patient_id"), ("sample", "sample_id"), ("slide_type", "slide_type"),
                         ("tissue", "sample_tissue")):
            if dst not in obs.columns and parts[src].notna().any():
                obs[dst] = parts[src].values
    if level != "column":
        obs[id_col] = ids.values
    adata.obs = obs
    ids = pd.Series(ids.values, index=obs.index, dtype=object)

    # several slides per id
    if level in ("patient", "sample", "column"):
        adata, ids, prep = _apply_policy(adata, ids, slides_per_patient, size_key)
    else:
        prep = {"policy": "all (join on slide)"}
    crep["slides_per_id"] = prep

    report = {"on": on, "slides_per_patient": slides_per_patient, "cohort": crep}

    if clinical is not None:
        ctab = read_table(clinical, "clinical")
        if survival:
            ctab, csurv = normalise_survival(ctab)
            surv.update({f"{k} ({clinical_name})": v for k, v in csurv.items()})
        table, rep = _side_table(ctab, clinical_key, clinical_name, level if level != "column" else on,
                                 duplicates)
        if level == "column":
            table.columns = [c for c in table.columns]
        _match_report(rep, ids, table.index)
        _join_clinical(adata, ids, table, rep)
        report[clinical_name] = rep

    rna_mod = None
    if rna is not None:
        rdf, rkey = _rna_table(rna, rna_key)
        table, rep = _side_table(rdf, rkey, "rna", level if level != "column" else on,
                                 rna_duplicates or duplicates, numeric=True)
        _match_report(rep, ids, table.index)
        _refuse_transposed(table, ids, level if level != "column" else "column")
        rep["n_genes"] = int(table.shape[1])
        report["rna"] = rep
        rna_mod = (table, {"on": on, "slides_key": id_col})
    elif old_rna is not None:
        rna_mod = old_rna

    adata.obs = h5ad_safe_obs(adata.obs)  # pathkit's outputs are always writable
    summary = summarise_report(report)
    old = adata.uns.get("link_report")
    if isinstance(old, dict):  # linking again (another table): earlier tables' entries stay, same names replaced
        merged = dict(old)
        merged.update(report)
        report = merged
    adata.uns["link_report"] = report
    if surv:
        prev = dict(adata.uns.get("survival", {}))
        prev.update(surv)
        adata.uns["survival"] = prev
    if warn and summary:
        warnings.warn(summary, LinkWarning, stacklevel=2)
    if rna_mod is None:
        return adata
    return make_mudata(adata, rna_mod)


def _refuse_transposed(table: pd.DataFrame, ids: pd.Series, level: str) -> None:
    """An RNA table with genes as rows: none of its row ids is a cohort id, but its column names are."""
    want = set(ids.dropna().astype(str))
    if not want or set(map(str, table.index)) & want:
        return
    cols, _ = _level_ids(pd.Series(list(map(str, table.columns))), level)
    hits = sorted(set(cols.dropna()) & want)
    if hits:
        raise TableError(f"rna: no row id is a cohort id, but {len(hits)} column name(s) are (e.g. {hits[:3]}): the "
                         "table looks transposed (genes as rows). Pass rna.T (ids as rows, genes as columns)")


def summarise_report(report: dict) -> str:
    """One paragraph naming every problem in a link report (empty when everything matched)."""
    out = []
    c = report.get("cohort", {})
    if c.get("n_nan_ids"):
        out.append(f"cohort: {c['n_nan_ids']} row(s) without an id")
    if c.get("n_not_tcga_ids"):
        out.append(f"cohort: {c['n_not_tcga_ids']} id(s) are not TCGA barcodes")
    sp = c.get("slides_per_id", {})
    if sp.get("n_dropped_slides"):
        out.append(f"cohort: {sp['n_dropped_slides']} slide(s) dropped by slides_per_patient={sp['policy']!r}")
    if sp.get("n_merged_ids"):
        out.append(f"cohort: {sp['n_merged_slides']} slides averaged into {sp['n_merged_ids']} row(s)")
    for name, r in report.items():
        if name in ("on", "slides_per_patient", "cohort") or not isinstance(r, dict):
            continue
        bits = []
        if r.get("n_cohort_ids_unmatched"):
            bits.append(f"{r['n_cohort_ids_unmatched']} cohort id(s) ({r['n_cohort_rows_unmatched']} rows) "
                        "not found")
        if r.get("n_table_ids_unmatched"):
            bits.append(f"{r['n_table_ids_unmatched']} of its ids not in the cohort")
        if r.get("n_nan_ids"):
            bits.append(f"{r['n_nan_ids']} row(s) without an id")
        if r.get("n_duplicate_ids"):
            bits.append(f"{r['n_duplicate_ids']} duplicate id(s) ({r['n_conflicting_duplicate_ids']} with "
                        f"differing values; kept {r['duplicates_policy']!r})")
        if r.get("n_not_tcga_ids"):
            bits.append(f"{r['n_not_tcga_ids']} id(s) are not TCGA barcodes")
        if r.get("conflicts"):
            cols = ", ".join(f"{k} ({v['n_ids']} ids)" for k, v in r["conflicts"].items())
            bits.append(f"values conflicting with the cohort in {cols} (cohort kept, table's in <col>_clinical)")
        if bits:
            out.append(f"{name}: " + "; ".join(bits))
    if not out:
        return ""
    return "link: " + " | ".join(out) + ". Details in adata.uns['link_report']."
