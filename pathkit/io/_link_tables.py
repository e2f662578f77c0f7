"""Reading and indexing the tables that :func:`pathkit.io.link` joins: ids at a barcode level, duplicates,
matches and clinical columns, each counted for the link report."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .._ids import slide_id_from_path
from ..errors import TableError
from ..tcga import parse_barcodes

ID_COLUMNS = ("patient_id", "case_id", "bcr_patient_barcode", "submitter_id", "sample_id", "slide_id")
MAX_LISTED = 50  # ids listed per problem in the report; counts are always complete

# ---------------------------------------------------------------------------------------------- inputs
def read_table(table, what: str = "table", id_columns=()) -> pd.DataFrame:
    """A DataFrame from a DataFrame or a CSV/TSV/parquet/Excel path; a CSV's unnamed first column (a saved
    pandas index) becomes the index. ``N/A``, ``NA``, empty cells read as missing (pandas' defaults).

    Text files: the separator is the one of ``, ; tab |`` the header uses most (``;`` files, as Excel writes
    them in many locales, read with a decimal comma); UTF-8, else Latin-1 with a warning. Id columns
    (``patient_id``, ``case_id``, ``bcr_patient_barcode``... and `id_columns`) are read as text, so ``0012``
    stays ``0012`` and ``1001`` does not become ``1001.0`` when a value is missing."""
    if isinstance(table, pd.DataFrame):
        return table
    if not isinstance(table, (str, Path)):
        raise TableError(f"{what} must be a DataFrame or a path to a CSV/TSV/parquet/xlsx file, got "
                         f"{type(table).__name__}")
    p = Path(table)
    if not p.is_file():
        raise TableError(f"{what} file not found: {p}")
    if p.stat().st_size == 0:
        raise TableError(f"{what} file {p} is empty (0 bytes); export the table again")
    as_text = {c: str for c in (*ID_COLUMNS, *TEXT_ID_COLUMNS, *id_columns)}
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        try:
            return pd.read_parquet(p)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            from .._files import damaged

            raise damaged(p, f"{what} (parquet)", exc, "a parquet file",
                          "copy or download it again, or export the table again") from None
    if suffix in (".xlsx", ".xlsm"):
        try:
            import openpyxl  # noqa: F401
        except ImportError:
            raise TableError(f"{what} file {p}: reading .xlsx needs openpyxl: pip install openpyxl") from None
        df = pd.read_excel(p, dtype=as_text)
    elif suffix == ".xls":
        raise TableError(f"{what} file {p}: the old Excel .xls format is not read; save it as .xlsx or CSV")
    else:
        df = _read_text(p, what, as_text)
    if df.shape[1] == 0:
        raise TableError(f"{what} file {p} has no columns; export the table again")
    first = str(df.columns[0]) if len(df.columns) else ""
    if first.startswith("Unnamed: 0") or first == "":
        df = df.set_index(df.columns[0])
        df.index.name = None
    return df


TEXT_ID_COLUMNS = ("barcode", "sample", "file_name", "case_submitter_id", "patient")
_SEPARATORS = (",", ";", "\t", "|")


def _read_text(p: Path, what: str, as_text: dict) -> pd.DataFrame:
    import warnings

    head = p.read_bytes()[:65536]
    try:
        head.decode("utf-8")
        encoding = "utf-8-sig"
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not only a character cut at the end of the sample
            encoding = "latin-1"
        else:
            encoding = "utf-8-sig"
    header = next((ln for ln in head.decode(encoding, errors="replace").splitlines() if ln.strip()), "")
    counts = {c: header.count(c) for c in _SEPARATORS}
    sep = max(counts, key=counts.get) if any(counts.values()) else ("\t" if p.suffix.lower() in (".tsv", ".txt")
                                                                    else ",")
    decimal = "," if sep == ";" else "."
    try:
        try:
            df = pd.read_csv(p, sep=sep, decimal=decimal, encoding=encoding, dtype=as_text)
        except UnicodeDecodeError:
            encoding = "latin-1"
            df = pd.read_csv(p, sep=sep, decimal=decimal, encoding=encoding, dtype=as_text)
    except pd.errors.EmptyDataError:
        raise TableError(f"{what} file {p} holds no table (only blank lines); export the table again") from None
    except pd.errors.ParserError as e:
        raise TableError(f"{what} file {p}: cannot read it as {sep!r}-separated text ({' '.join(str(e).split())}); "
                         "check the separator and quoting, or read it with pandas and pass the DataFrame") from None
    if encoding == "latin-1":
        warnings.warn(f"{what} file {p} is not UTF-8: read as Latin-1 (check accented names); save it as UTF-8 "
                      "to silence this", UserWarning, stacklevel=4)
    return df


def _separator_hint(df: pd.DataFrame) -> str:
    if len(df.columns) == 1:
        return (f". The table has one column named {str(df.columns[0])[:60]!r}: its separator was not recognised; "
                "read it with pandas (sep=...) and pass the DataFrame")
    return ""


def _slide_stem(name):
    """The slide id of a file name (pathkit's one rule, :func:`pathkit._ids.slide_id_from_path`)."""
    return slide_id_from_path(name)


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
        out[nonstr] = s[nonstr].map(_id_text)
        return out, tcga & s.notna()
    out = s.map(lambda v: v if v is None or isinstance(v, str) else _id_text(v))
    if level == "slide":
        out = out.map(_slide_stem)
    tcga = parse_barcodes(out.map(lambda v: v if isinstance(v, str) else None), errors="coerce")["error"].isna()
    return out, tcga & out.notna()


def _id_text(v) -> str:
    """An id that is not text, as text: 1001.0 (a column of ints turned float by a missing value) -> "1001"."""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def _pick_id_column(df: pd.DataFrame, key, what: str, level: str) -> pd.Series:
    if key is not None:
        if key == "index":
            return pd.Series(df.index, index=df.index)
        if key not in df.columns:
            close = [c for c in df.columns if str(c).strip().lower() == str(key).strip().lower()]
            hint = f"; did you mean {close[0]!r}?" if close else ";"
            raise TableError(f"{what}: id column {key!r} not found{hint} columns are {list(df.columns)[:20]}"
                             f"{_separator_hint(df)}")
        return df[key]
    prefer = {"patient": ID_COLUMNS, "sample": ("sample_id", "sample", "barcode") + ID_COLUMNS,
              "slide": ("slide_id", "file_name")}.get(level, (level,))
    for c in prefer:
        if c in df.columns:
            return df[c]
    if not isinstance(df.index, pd.RangeIndex):
        return pd.Series(df.index, index=df.index)
    raise TableError(f"{what}: no id column found (looked for {list(prefer)} and a named index; columns are "
                     f"{list(df.columns)[:20]}); pass the column name (e.g. clinical_key='case_id')"
                     f"{_separator_hint(df)}")


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
        dupcols = pd.unique(body.columns[body.columns.duplicated()])
        if len(dupcols):
            raise TableError(f"{what}: {len(dupcols)} gene name(s) appear in more than one column, e.g. "
                             f"{list(dupcols[:10])}; make them unique (e.g. Ensembl ids) or combine them (e.g. "
                             "df.T.groupby(level=0).mean().T) before linking")
        nonnum = [c for c in body.columns if not pd.api.types.is_numeric_dtype(body[c])]
        if nonnum:
            raise TableError(f"{what}: expected a numeric patients x genes table; non-numeric column(s) "
                             f"{nonnum[:10]} (pass the id column as rna_key, or drop them)")
        vals = body.to_numpy(dtype=float)
        inf = np.isinf(vals)
        if inf.any():
            cols = list(body.columns[inf.any(axis=0)][:10])
            raise TableError(f"{what}: {int(inf.sum())} infinite value(s) in {int(inf.any(axis=0).sum())} column(s), "
                             f"e.g. {cols} (a log of 0?); replace them (e.g. log1p, or NaN) before linking")
    present = ids.notna()
    rep = {"n_rows": len(df), "n_nan_ids": int((~present).sum()),
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
    rep.update(n_duplicate_ids=len(dup_ids), n_duplicate_rows=int(dup_mask.sum() - len(dup_ids)),
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
            conflicts[c] = {"n_rows": int(diff.sum()), "n_ids": len(bad_ids), "ids": _listed(bad_ids)}
            obs[f"{c}_clinical"] = new.values
            added.append(f"{c}_clinical")
        fill = old.isna() & newo.notna()
        if fill.any():
            obs[c] = old.where(~fill, newo).infer_objects()
            filled[c] = int(fill.sum())
    rep.update(columns_added=added, conflicts=conflicts, n_conflicting_columns=len(conflicts), filled=filled)
