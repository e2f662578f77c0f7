"""Linking a slide cohort with clinical and RNA-seq tables.

``pk.link(cohort, clinical, rna)`` joins at the level the user names (patient by default), keeps every slide
row, and writes a report of everything that did not line up: unmatched ids on each side, missing ids,
duplicate ids (exact copies or conflicting), ids that are not TCGA barcodes, columns whose values conflict
between the cohort and the clinical table, and how several slides per patient were handled. Nothing is
dropped without being listed in ``uns["link_report"]`` and summarised in a warning.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import TableError
from ..tcga import parse_barcodes
from .survival_columns import normalise_survival

__all__ = ["link", "cohort_from_table", "read_table", "to_mudata", "LinkWarning"]

SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".qptiff",
                    ".dcm", ".czi", ".svslide", ".h5", ".h5ad", ".pt")
ID_COLUMNS = ("patient_id", "case_id", "bcr_patient_barcode", "submitter_id", "sample_id", "slide_id")
POLICIES = ("all", "first_dx", "largest", "mean")
MAX_LISTED = 50  # ids listed per problem in the report; counts are always complete


class LinkWarning(UserWarning):
    """Something did not line up while linking tables (details in ``uns["link_report"]``)."""


# ---------------------------------------------------------------------------------------------- inputs
def read_table(table, what: str = "table") -> pd.DataFrame:
    """A DataFrame from a DataFrame or a CSV/TSV/parquet path; a CSV's unnamed first column (a saved pandas
    index) becomes the index. ``N/A``, ``NA``, empty cells read as missing (pandas' defaults)."""
    if isinstance(table, pd.DataFrame):
        return table
    if isinstance(table, (str, Path)):
        p = Path(table)
        if not p.is_file():
            raise TableError(f"{what} file not found: {p}")
        if p.suffix == ".parquet":
            return pd.read_parquet(p)
        df = pd.read_csv(p, sep="\t" if p.suffix in (".tsv", ".txt") else ",")
        first = str(df.columns[0]) if len(df.columns) else ""
        if first.startswith("Unnamed: 0") or first == "":
            df = df.set_index(df.columns[0])
            df.index.name = None
        return df
    raise TableError(f"{what} must be a DataFrame or a path to a CSV/TSV/parquet file, got {type(table).__name__}")


def _slide_stem(name) -> str:
    if not isinstance(name, str):
        return name
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    for ext in SLIDE_EXTENSIONS:
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


def cohort_from_table(table):
    """A cohort AnnData (no features yet) from a slide table (DataFrame or CSV path), one row per slide.

    ``slide_id`` values that are file names lose their extension (the original stays in ``file_name``);
    obs_names are the slide ids when unique.
    """
    import anndata as ad

    df = read_table(table, "cohort").copy()
    df.columns = [str(c) for c in df.columns]
    if "slide_id" in df.columns:
        stems = df["slide_id"].map(_slide_stem)
        if not stems.equals(df["slide_id"]) and "file_name" not in df.columns:
            df["file_name"] = df["slide_id"]
        df["slide_id"] = stems
        names = df["slide_id"].astype(str)
        ok = df["slide_id"].notna().all() and names.is_unique
        df.index = names if ok else pd.RangeIndex(len(df)).astype(str)
    else:
        df.index = pd.RangeIndex(len(df)).astype(str)
    df.index.name = None
    return ad.AnnData(obs=df)


def _as_cohort(cohort):
    import anndata as ad

    if isinstance(cohort, ad.AnnData):
        return cohort.copy()
    return cohort_from_table(cohort)


# ---------------------------------------------------------------------------------------------- ids
def _level_ids(values: pd.Series, level: str) -> tuple[pd.Series, pd.Series]:
    """(ids at ``level``, whether each value is a TCGA barcode). Non-TCGA ids are kept as written
    (stripped) so they can still match a table using the same scheme; missing stays missing."""
    s = pd.Series(values, copy=True).astype(object)
    s = s.where(s.notna(), None)
    s = s.map(lambda v: v.strip() if isinstance(v, str) else v)
    s = s.map(lambda v: None if (isinstance(v, str) and v == "") else v)
    if level in ("patient", "sample"):
        parsed = parse_barcodes(s.map(lambda v: v if isinstance(v, str) else None), errors="coerce")
        tcga = parsed["error"].isna()
        part = parsed[level]
        out = s.copy()
        out[tcga] = part[tcga]
        if level == "sample":
            # a patient-level barcode has no sample: it cannot be matched at sample level
            out[tcga & part.isna()] = None
        nonstr = s.notna() & ~s.map(lambda v: isinstance(v, str))
        out[nonstr] = s[nonstr].map(str)
        return out, tcga & s.notna()
    out = s.map(lambda v: v if v is None or isinstance(v, str) else str(v))
    if level == "slide":
        out = out.map(_slide_stem)
    tcga = parse_barcodes(out.map(lambda v: v if isinstance(v, str) else None), errors="coerce")["error"].isna()
    return out, tcga & out.notna()


def _pick_id_column(df: pd.DataFrame, key, what: str, level: str) -> pd.Series:
    if key is not None:
        if key == "index":
            return pd.Series(df.index, index=df.index)
        if key not in df.columns:
            raise TableError(f"{what}: id column {key!r} not found; columns are {list(df.columns)[:20]}")
        return df[key]
    prefer = {"patient": ID_COLUMNS, "sample": ("sample_id", "sample", "barcode") + ID_COLUMNS,
              "slide": ("slide_id", "file_name")}.get(level, (level,))
    for c in prefer:
        if c in df.columns:
            return df[c]
    if not isinstance(df.index, pd.RangeIndex):
        return pd.Series(df.index, index=df.index)
    raise TableError(f"{what}: no id column found (looked for {list(prefer)} and a named index); pass "
                     f"the column name (e.g. clinical_key='case_id')")


def _listed(values) -> list:
    vals = [str(v) for v in values]
    return vals[:MAX_LISTED]


# ---------------------------------------------------------------------------------------------- tables
def _side_table(df: pd.DataFrame, key, what: str, level: str, duplicates: str, numeric: bool = False):
    """Index a clinical / RNA table by id at ``level``; returns (table indexed by id, report dict)."""
    raw_ids = _pick_id_column(df, key, what, level)
    ids, tcga = _level_ids(pd.Series(raw_ids.values, index=df.index), level)
    key_col = raw_ids.name if (key != "index" and raw_ids.name in df.columns) else None
    body = df.drop(columns=[key_col]) if key_col is not None else df.copy()
    body.columns = [str(c) for c in body.columns]
    if "slide_id" in body.columns and not numeric:
        body["slide_id"] = body["slide_id"].map(_slide_stem)  # "x.svs" and "x" name the same slide
    if numeric:
        nonnum = [c for c in body.columns if not pd.api.types.is_numeric_dtype(body[c])]
        if nonnum:
            raise TableError(f"{what}: expected a numeric patients x genes table; non-numeric column(s) "
                             f"{nonnum[:10]} (pass the id column as rna_key, or drop them)")
    present = ids.notna()
    rep = {"n_rows": int(len(df)), "n_nan_ids": int((~present).sum()),
           "n_ids": int(ids[present].nunique()),
           "n_not_tcga_ids": int(ids[present & ~tcga].nunique()),
           "not_tcga_ids": _listed(pd.unique(ids[present & ~tcga]))}
    b = body[present.values].copy()
    b.index = pd.Index(ids[present].values, name=None)
    dup_mask = b.index.duplicated(keep=False)
    dup_ids = pd.unique(b.index[dup_mask])
    exact, conflicting, conflict_cols = [], [], set()
    if len(dup_ids):
        d = b[dup_mask]
        for i, grp in d.groupby(level=0, sort=False):
            g = grp.astype(object).where(grp.notna(), "<NA>")
            cols = [c for c in g.columns if g[c].nunique() > 1]
            if numeric and cols:
                cols = ["<values>"]
            (conflicting if cols else exact).append(i)
            conflict_cols.update(cols)
    rep.update(n_duplicate_ids=int(len(dup_ids)), n_duplicate_rows=int(dup_mask.sum() - len(dup_ids)),
               duplicate_ids=_listed(dup_ids), n_exact_duplicate_ids=len(exact),
               n_conflicting_duplicate_ids=len(conflicting), conflicting_duplicate_ids=_listed(conflicting),
               conflicting_duplicate_columns=sorted(conflict_cols), duplicates_policy=duplicates)
    if len(dup_ids):
        if duplicates == "raise":
            raise TableError(f"{what}: {len(dup_ids)} duplicate id(s) at {level} level, e.g. "
                             f"{_listed(dup_ids)[:5]}; {len(conflicting)} of them with differing values. Pass "
                             "duplicates='first' or 'last' to keep one row per id, or remove the duplicates")
        if duplicates in ("first", "last"):
            b = b[~b.index.duplicated(keep=duplicates)]
        elif duplicates == "mean":
            if not numeric:
                raise TableError(f"{what}: duplicates='mean' only applies to numeric (RNA) tables")
            b = b.groupby(level=0, sort=False).mean()
        else:
            raise ValueError(f"duplicates must be 'first', 'last', 'mean' or 'raise', got {duplicates!r}")
    return b, rep


def _match_report(rep: dict, cohort_ids: pd.Series, table_ids: pd.Index) -> None:
    present = cohort_ids.notna()
    cids = pd.unique(cohort_ids[present])
    tset = set(table_ids)
    matched = [i for i in cids if i in tset]
    unmatched = [i for i in cids if i not in tset]
    row_hit = cohort_ids.map(lambda v: v in tset if v is not None else False).astype(bool)
    cset = set(cids)
    rep.update(n_matched_ids=len(matched), n_cohort_ids_unmatched=len(unmatched),
               cohort_ids_unmatched=_listed(unmatched), n_cohort_rows_matched=int(row_hit.sum()),
               n_cohort_rows_unmatched=int((~row_hit).sum()),
               n_table_ids_unmatched=int(sum(1 for t in table_ids if t not in cset)))


def _equal(a: pd.Series, b: pd.Series) -> pd.Series:
    """Elementwise equality of two aligned columns, numbers compared with a tolerance."""
    an = pd.to_numeric(a, errors="coerce")
    bn = pd.to_numeric(b, errors="coerce")
    num = an.notna() & bn.notna()
    eq = a.astype(str) == b.astype(str)
    eq[num] = np.isclose(an[num].astype(float), bn[num].astype(float), rtol=1e-6, atol=1e-9)
    return eq


def _join_clinical(adata, ids: pd.Series, table: pd.DataFrame, rep: dict) -> None:
    obs = adata.obs
    rows = table.reindex(pd.Index(ids.where(ids.notna(), "\x00missing").values))
    rows.index = obs.index
    added, conflicts, filled = [], {}, {}
    for c in table.columns:
        new = rows[c]
        if c not in obs.columns:
            obs[c] = new.values
            added.append(c)
            continue
        old = obs[c].astype(object)
        newo = new.astype(object)
        both = old.notna() & newo.notna()
        diff = both & ~_equal(old.where(both), newo.where(both))
        if diff.any():
            bad_ids = pd.unique(ids[diff.values].dropna())
            conflicts[c] = {"n_rows": int(diff.sum()), "n_ids": int(len(bad_ids)), "ids": _listed(bad_ids)}
            obs[f"{c}_clinical"] = new.values
            added.append(f"{c}_clinical")
        fill = old.isna() & newo.notna()
        if fill.any():
            obs[c] = old.where(~fill, newo).infer_objects()
            filled[c] = int(fill.sum())
    rep.update(columns_added=added, conflicts=conflicts, n_conflicting_columns=len(conflicts), filled=filled)


# ---------------------------------------------------------------------------------------------- policies
def _apply_policy(adata, ids: pd.Series, policy: str, size_key):
    """Returns (adata, ids, report) after keeping / merging slides of the same id."""
    present = ids.notna()
    counts = ids[present].value_counts()
    several = counts[counts > 1]
    rep = {"policy": policy, "n_ids_with_several_slides": int(len(several)),
           "max_slides_per_id": int(counts.max()) if len(counts) else 0,
           "ids_with_several_slides": _listed(several.index), "dropped_slides": [], "n_dropped_slides": 0}
    if policy == "all" or not len(several):
        return adata, ids, rep
    obs = adata.obs
    pos = pd.Series(np.arange(adata.n_obs), index=obs.index)
    groups = {i: pos[(ids == i).values].values for i in several.index}
    if policy in ("first_dx", "largest"):
        keep = np.ones(adata.n_obs, bool)
        if policy == "first_dx":
            sid = obs["slide_id"] if "slide_id" in obs.columns else pd.Series(obs.index, index=obs.index)
            parsed = parse_barcodes(sid.map(lambda v: v if isinstance(v, str) else None).reset_index(drop=True),
                                    errors="coerce")
            dx = (parsed["slide_type"] == "DX").values
            num = pd.to_numeric(parsed["slide_number"], errors="coerce").fillna(np.inf).values
            no_dx = []
            for i, idx in groups.items():
                cand = idx[dx[idx]]
                if not len(cand):
                    no_dx.append(i)
                    cand = idx
                best = cand[np.argmin(num[cand])] if np.isfinite(num[cand]).any() else cand[0]
                keep[idx] = False
                keep[best] = True
            rep["ids_without_dx_slide"] = _listed(no_dx)
        else:
            if size_key is None:
                size_key = next((c for c in ("n_tiles", "size", "file_size", "tissue_area") if c in obs.columns),
                                None)
            if size_key is None or size_key not in obs.columns:
                raise TableError("slides_per_patient='largest' needs a size column in obs (n_tiles, size, "
                                 "file_size or tissue_area); pass size_key=")
            size = pd.to_numeric(obs[size_key], errors="coerce").fillna(-np.inf).values
            for idx in groups.values():
                keep[idx] = False
                keep[idx[np.argmax(size[idx])]] = True
            rep["size_key"] = size_key
        dropped = obs.index[~keep]
        rep.update(dropped_slides=_listed(dropped), n_dropped_slides=int(len(dropped)))
        return adata[keep].copy(), ids[keep].reset_index(drop=True).set_axis(obs.index[keep]), rep
    if policy == "mean":
        import anndata as ad

        order, seen = [], set()
        for k, i in enumerate(ids.tolist()):
            if i is None or i not in groups:
                order.append(np.array([k]))
            elif i not in seen:
                seen.add(i)
                order.append(groups[i])
        first = [g[0] for g in order]
        new_obs = obs.iloc[first].copy()
        names = obs.index.to_numpy()
        new_obs["n_slides"] = [len(g) for g in order]
        new_obs["slide_ids"] = [";".join(map(str, names[g])) for g in order]
        new_obs.index = [str(ids.iloc[g[0]]) if len(g) > 1 else names[g[0]] for g in order]

        def agg(a):
            a = a.toarray() if hasattr(a, "toarray") else np.asarray(a)
            return np.stack([np.nanmean(a[g], axis=0) if len(g) > 1 else a[g[0]] for g in order])

        X = None if adata.X is None or adata.n_vars == 0 else agg(adata.X)
        out = ad.AnnData(X=X, obs=new_obs, var=adata.var.copy() if X is not None else None,
                         uns=dict(adata.uns))
        for k, v in adata.obsm.items():
            if isinstance(v, pd.DataFrame):
                out.obsm[k] = pd.DataFrame(agg(v.to_numpy(dtype=float)), index=new_obs.index, columns=v.columns)
            else:
                out.obsm[k] = agg(v)
        merged = [names[g].tolist() for g in order if len(g) > 1]
        rep.update(n_merged_ids=len(merged), n_merged_slides=int(sum(len(m) for m in merged)))
        new_ids = pd.Series([ids.iloc[g[0]] for g in order], index=new_obs.index, dtype=object)
        return out, new_ids, rep
    raise ValueError(f"slides_per_patient must be one of {POLICIES}, got {policy!r}")


# ---------------------------------------------------------------------------------------------- link
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
    AnnData
        A copy of the cohort with: ``obs[<level>_id]`` (the join id), clinical columns in ``obs``
        (``<col>_clinical`` next to a cohort column whose values conflict), ``obsm["rna"]`` (DataFrame indexed
        like obs, NaN where an id has no RNA), ``uns["link_report"]`` and ``uns["survival"]``
        (normalised columns, their source and unit).
    """
    import anndata as ad

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

    if rna is not None:
        if isinstance(rna, ad.AnnData):
            X = rna.X.toarray() if hasattr(rna.X, "toarray") else np.asarray(rna.X)
            rdf = pd.DataFrame(X, index=rna.obs_names, columns=rna.var_names)
            rkey = rna_key if rna_key is not None else "index"
            if rna_key not in (None, "index"):
                rdf.insert(0, rna_key, rna.obs[rna_key].values)
        else:
            rdf = read_table(rna, "rna")
            rkey = rna_key if rna_key is not None else "index"
        table, rep = _side_table(rdf, rkey, "rna", level if level != "column" else on,
                                 rna_duplicates or duplicates, numeric=True)
        _match_report(rep, ids, table.index)
        rep["n_genes"] = int(table.shape[1])
        lookup = ids.where(ids.notna(), "\x00missing")
        m = table.reindex(pd.Index(lookup.values)).astype(float)
        m.index = adata.obs.index
        m.columns = [str(c) for c in m.columns]
        adata.obsm["rna"] = m
        report["rna"] = rep

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
    return adata


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


def to_mudata(adata, rna_key: str = "rna"):
    """A MuData with modality ``"slides"`` (the cohort without ``obsm[rna_key]``) and ``"rna"`` (the slide
    rows that have RNA, genes as variables); rows share the cohort's obs_names. Needs ``mudata``."""
    try:
        import mudata as md
    except ImportError as exc:  # optional dependency
        raise ImportError("to_mudata needs the optional package 'mudata' (pip install mudata)") from exc
    import anndata as ad

    if rna_key not in adata.obsm:
        raise TableError(f"obsm[{rna_key!r}] not found: run pk.link(cohort, rna=...) first")
    rna = adata.obsm[rna_key]
    rna = rna if isinstance(rna, pd.DataFrame) else pd.DataFrame(rna, index=adata.obs_names)
    has = rna.notna().any(axis=1)
    slides = adata.copy()
    del slides.obsm[rna_key]
    r = ad.AnnData(X=rna[has].to_numpy(dtype=np.float32), obs=pd.DataFrame(index=rna.index[has]),
                   var=pd.DataFrame(index=[str(c) for c in rna.columns]))
    try:  # mudata >= 0.3.x warns unless the future behaviour is chosen explicitly
        with md.set_options(pull_on_update=False):
            return md.MuData({"slides": slides, "rna": r})
    except (TypeError, ValueError, KeyError):
        return md.MuData({"slides": slides, "rna": r})
