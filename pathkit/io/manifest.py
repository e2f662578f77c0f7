"""Slide manifests (``data_manifests/*.csv``): validation and resumable, verified downloads.

Format (CSV, one row per file; see ``data_manifests/README.md``)::

    file_name, patient_id, slide_id, gdc_file_id, size, md5, sha256, url

``file_name`` is required and unique (a bare name, no folders); every other column may be empty. A file is
downloaded from ``url``, or from ``https://api.gdc.cancer.gov/data/<gdc_file_id>`` when only the GDC id is
known. Extra columns (``source``, ``licence``...) are kept and ignored.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd

from .._io import atomic_write, write_text_atomic
from ..errors import ChecksumError, PathkitError, TableError

COLUMNS = ("file_name", "patient_id", "slide_id", "gdc_file_id", "size", "md5", "sha256", "url")
GDC_DATA_URL = "https://api.gdc.cancer.gov/data/{}"
STATE_FILE = ".pathkit_fetch.json"
_MD5 = re.compile(r"^[0-9a-f]{32}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_CHUNK = 1 << 20


class FetchError(PathkitError, OSError):
    """One or more manifest files could not be downloaded (``.report`` holds the per-file table)."""

    def __init__(self, msg, report=None):
        super().__init__(msg)
        self.report = report


# ---------------------------------------------------------------------------------------------- validate
def read_manifest(path) -> pd.DataFrame:
    """Read a manifest CSV as strings (empty cells -> ""), without validating it."""
    p = Path(path)
    if not p.is_file():
        raise TableError(f"manifest not found: {p}")
    return pd.read_csv(p, dtype=str, keep_default_na=False)


def validate_manifest(manifest) -> pd.DataFrame:
    """Check a manifest and return it normalised (strings, ``size`` as Int64, checksums lower case).

    Parameters
    ----------
    manifest
        Path to a manifest CSV, or a DataFrame.

    Raises
    ------
    TableError
        listing every problem found (missing columns, empty / duplicate / unsafe file names, bad sizes,
        malformed md5 / sha256 / GDC ids / URLs, duplicate slide ids, a patient id that disagrees with the
        TCGA barcode of the file name).
    """
    from ..tcga import parse_barcode

    name = str(manifest) if isinstance(manifest, (str, Path)) else "manifest"
    df = read_manifest(manifest) if isinstance(manifest, (str, Path)) else manifest.copy()
    df.columns = [str(c).strip() for c in df.columns]
    problems: list[str] = []
    if "file_name" not in df.columns:
        raise TableError(f"{name}: required column 'file_name' missing; columns are {list(df.columns)}")
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = ""
    for c in COLUMNS:
        if c != "size":
            df[c] = df[c].map(lambda v: "" if v is None or (isinstance(v, float) and v != v) else str(v).strip())
    df["md5"] = df["md5"].str.lower()
    df["sha256"] = df["sha256"].str.lower()
    df["gdc_file_id"] = df["gdc_file_id"].str.lower()

    def rows(mask):
        idx = [int(i) + 2 for i in range(len(df)) if mask.iloc[i]]  # CSV line numbers (header = line 1)
        return f"line(s) {idx[:10]}{' ...' if len(idx) > 10 else ''}"

    fn = df["file_name"]
    empty = fn == ""
    if empty.any():
        problems.append(f"empty file_name at {rows(empty)}")
    unsafe = fn.map(lambda v: v != "" and ("/" in v or "\\" in v or v in (".", "..") or v.startswith(".")))
    if unsafe.any():
        problems.append(f"file_name must be a bare name (no folders, not hidden): {fn[unsafe].tolist()[:10]}")
    dup = fn.duplicated(keep=False) & ~empty
    if dup.any():
        problems.append(f"duplicate file_name: {sorted(set(fn[dup]))[:10]}")
    sid = df["slide_id"]
    dup = sid.duplicated(keep=False) & (sid != "")
    if dup.any():
        problems.append(f"duplicate slide_id: {sorted(set(sid[dup]))[:10]}")
    size_raw = df["size"].map(lambda v: "" if v is None or (isinstance(v, float) and v != v) else str(v).strip())
    size = pd.to_numeric(size_raw.where(size_raw != ""), errors="coerce")
    bad = (size_raw != "") & (size.isna() | (size < 0) | (size.fillna(0) % 1 != 0))
    if bad.any():
        problems.append(f"size must be a non-negative integer (bytes) at {rows(bad)}: {size_raw[bad].tolist()[:5]}")
    df["size"] = size.where(~bad).astype("Int64")
    for col, rx, what in (("md5", _MD5, "32 hex digits"), ("sha256", _SHA256, "64 hex digits"),
                          ("gdc_file_id", _UUID, "a UUID")):
        bad = (df[col] != "") & ~df[col].map(lambda v, rx=rx: bool(rx.match(v)))
        if bad.any():
            problems.append(f"{col} must be {what} at {rows(bad)}: {df[col][bad].tolist()[:3]}")
    bad = (df["url"] != "") & ~df["url"].str.match(r"^https?://[^\s]+$")
    if bad.any():
        problems.append(f"url must start with http:// or https:// at {rows(bad)}: {df['url'][bad].tolist()[:3]}")
    for i, (f, pid) in enumerate(zip(fn, df["patient_id"])):
        if pid and f.upper().startswith("TCGA-"):
            try:
                bp = parse_barcode(f).patient
            except TableError as exc:
                problems.append(f"line {i + 2}: {exc}")
                continue
            if bp != pid.upper():
                problems.append(f"line {i + 2}: patient_id {pid!r} differs from the file name's barcode {bp!r}")
    if problems:
        raise TableError(f"{name}: {len(problems)} problem(s): " + "; ".join(problems))
    return df


def manifest_from_files(paths, *, urls=None, patient_ids=None, source=None) -> pd.DataFrame:
    """A manifest of local files with their size and sha256 (and md5), e.g. to share a test set.

    ``urls`` / ``patient_ids``: optional dicts file name -> value. ``source``: optional dict file name -> note.
    """
    from ..tcga import parse_barcode

    recs = []
    for p in map(Path, paths):
        md5, sha = _hash_file(p, ("md5", "sha256"))
        pid = (patient_ids or {}).get(p.name, "")
        if not pid:
            try:
                pid = parse_barcode(p.name).patient
            except TableError:
                pid = ""
        rec = dict(file_name=p.name, patient_id=pid, slide_id=p.stem, gdc_file_id="", size=p.stat().st_size,
                   md5=md5, sha256=sha, url=(urls or {}).get(p.name, ""))
        if source is not None:
            rec["source"] = source.get(p.name, "")
        recs.append(rec)
    return validate_manifest(pd.DataFrame(recs))


def write_manifest(df: pd.DataFrame, path) -> Path:
    """Write a manifest CSV atomically (validated first)."""
    df = validate_manifest(df)
    path = Path(path)
    cols = list(COLUMNS) + [c for c in df.columns if c not in COLUMNS]
    with atomic_write(path) as tmp:
        df[cols].to_csv(tmp, index=False)
    return path


# ---------------------------------------------------------------------------------------------- GDC
def resolve_gdc(manifest, *, api: str = "https://api.gdc.cancer.gov", batch: int = 200,
                timeout: float = 60.0, overwrite: bool = False) -> pd.DataFrame:
    """Fill ``gdc_file_id``, ``size``, ``md5`` and ``url`` of TCGA rows from the GDC ``/files`` endpoint,
    looked up by ``file_name`` (needs network). The UUID inside a TCGA slide file name is NOT its GDC file
    id, which is why the shipped TCGA manifests leave these columns empty.

    Returns the completed manifest (validated); rows the GDC does not know keep their empty cells and are
    listed in ``df.attrs["unresolved"]``. ``api``: base URL (tests point it at a local server).
    """
    df = validate_manifest(manifest)
    todo = df.index[(df["gdc_file_id"] == "") | overwrite].tolist()
    found: dict = {}
    names = df.loc[todo, "file_name"].tolist()
    for i in range(0, len(names), batch):
        chunk = names[i:i + batch]
        body = json.dumps({
            "filters": {"op": "in", "content": {"field": "file_name", "value": chunk}},
            "fields": "file_id,file_name,md5sum,file_size", "format": "JSON", "size": len(chunk) * 2,
        }).encode()
        req = urllib.request.Request(f"{api.rstrip('/')}/files", data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "pathkit-fetch"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                hits = json.loads(resp.read())["data"]["hits"]
        except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
            raise FetchError(f"GDC files query at {api} failed: {exc}") from exc
        for h in hits:
            found.setdefault(h["file_name"], []).append(h)
    unresolved, ambiguous = [], []
    for i in todo:
        hits = found.get(df.at[i, "file_name"], [])
        if len(hits) != 1:
            (ambiguous if hits else unresolved).append(df.at[i, "file_name"])
            continue
        h = hits[0]
        df.at[i, "gdc_file_id"] = str(h["file_id"]).lower()
        df.at[i, "md5"] = str(h.get("md5sum") or "").lower()
        if h.get("file_size") is not None:
            df.at[i, "size"] = int(h["file_size"])
        if not df.at[i, "url"] or overwrite:
            df.at[i, "url"] = GDC_DATA_URL.format(df.at[i, "gdc_file_id"])
    df = validate_manifest(df)
    df.attrs["unresolved"] = unresolved
    df.attrs["ambiguous"] = ambiguous
    return df


# ---------------------------------------------------------------------------------------------- fetch
def _hash_file(path: Path, algos=("sha256",)) -> list[str]:
    hs = [hashlib.new(a) for a in algos]
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            for h in hs:
                h.update(chunk)
    return [h.hexdigest() for h in hs]


def _verify(path: Path, row) -> tuple[bool, str]:
    """(ok, message). Checks size, then md5 / sha256 where the manifest has them."""
    size = path.stat().st_size
    if pd.notna(row["size"]) and int(row["size"]) != size:
        return False, f"size {size} bytes, manifest says {int(row['size'])}"
    algos = [a for a in ("md5", "sha256") if row[a]]
    if not algos:
        return True, "no checksum in the manifest"
    got = dict(zip(algos, _hash_file(path, algos)))
    for a in algos:
        if got[a] != row[a]:
            return False, f"{a} {got[a]} differs from the manifest's {row[a]}"
    return True, "+".join(algos)


def _load_state(dest: Path) -> dict:
    try:
        return json.loads((dest / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _save_state(dest: Path, state: dict) -> None:
    write_text_atomic(dest / STATE_FILE, json.dumps(state, indent=1, sort_keys=True))


def _download(url: str, part: Path, *, timeout: float, bar=None, headers=None) -> str:
    """Download ``url`` into ``part``, resuming from its current length with an HTTP Range request.
    Returns "resumed" or "downloaded"."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers=dict(headers or {}))
    req.add_header("User-Agent", "pathkit-fetch")
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            return "resumed"  # nothing left to fetch: the part file is complete (verified next)
        raise
    with resp:
        mode = "wb"
        how = "downloaded"
        if have and resp.status == 206:
            rng = resp.headers.get("Content-Range", "")
            m = re.match(r"bytes (\d+)-", rng)
            if not m or int(m.group(1)) != have:
                raise FetchError(f"{url}: server answered Range {have}- with Content-Range {rng!r}")
            mode, how = "ab", "resumed"
        elif have and bar is not None:
            bar.update(-have)  # the server ignored Range: start over
        with open(part, mode) as fh:
            while chunk := resp.read(_CHUNK):
                fh.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        fh_size = part.stat().st_size
        total = resp.headers.get("Content-Length")
        if total is not None and how == "downloaded" and fh_size != int(total):
            raise FetchError(f"{url}: connection closed after {fh_size} of {total} bytes (run again to resume)")
    return how


def fetch_manifest(manifest, dest, *, verify: bool = True, progress: bool = True, errors: str = "raise",
                   timeout: float = 60.0, retries: int = 2, headers: dict | None = None) -> pd.DataFrame:
    """Download the files of a manifest into ``dest``, resuming partial downloads and verifying checksums.

    Each file is downloaded to ``dest/.<file_name>.part`` (resumed with an HTTP Range request when a part
    is already there), checked against the manifest's size / md5 / sha256, and only then renamed to
    ``dest/<file_name>``. Files already present and verified are skipped; a small state file
    (``dest/.pathkit_fetch.json``, size + mtime of verified files) makes a second run instant.

    Parameters
    ----------
    manifest
        Manifest CSV path or DataFrame (validated with :func:`validate_manifest`).
    dest
        Destination folder (created).
    verify
        Check size and checksums (a file whose checksum is wrong is removed and reported).
    errors
        ``"raise"``: after trying every file, raise :class:`~pathkit.errors.ChecksumError` (checksum
        failures) or :class:`FetchError` naming each failed file; ``"record"``: only report them.
    headers
        Extra HTTP headers (e.g. ``{"X-Auth-Token": ...}`` for controlled GDC data; never stored).

    Returns
    -------
    DataFrame
        One row per file: ``file_name``, ``path``, ``status`` (downloaded / resumed / skipped / failed),
        ``verified`` (what was checked), ``bytes``, ``error``.
    """
    from .._progress import progress_bar

    df = validate_manifest(manifest)
    if errors not in ("raise", "record"):
        raise ValueError(f"errors must be 'raise' or 'record', got {errors!r}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    state = _load_state(dest)
    total = int(df["size"].fillna(0).sum()) or None
    bar = progress_bar(total=total, unit="B", unit_scale=True, desc="fetch", disable=not progress)
    out = []
    for _, row in df.iterrows():
        name = row["file_name"]
        final, part = dest / name, dest / f".{name}.part"
        rec = dict(file_name=name, path=str(final), status="", verified="", bytes=0, error="")
        try:
            if final.exists():
                st = final.stat()
                known = state.get(name)
                sig = [st.st_size, st.st_mtime_ns, row["md5"], row["sha256"]]
                if known == sig:
                    ok, how = True, "recorded"
                elif verify:
                    ok, how = _verify(final, row)
                else:
                    ok, how = True, "not verified"
                if ok:
                    rec.update(status="skipped", verified=how, bytes=st.st_size)
                    if verify:
                        state[name] = sig
                    bar.update(st.st_size)
                    out.append(rec)
                    continue
                # present but wrong: move it aside as the start of a fresh download
                final.unlink()
            url = row["url"] or (GDC_DATA_URL.format(row["gdc_file_id"]) if row["gdc_file_id"] else "")
            if not url:
                raise FetchError(f"{name}: no url and no gdc_file_id in the manifest")
            if part.exists():
                bar.update(part.stat().st_size)
            attempt, from_scratch = 0, False
            while True:
                attempt += 1
                try:
                    how = _download(url, part, timeout=timeout, bar=bar, headers=headers)
                except (urllib.error.URLError, OSError, FetchError) as exc:
                    if attempt > retries or isinstance(exc, urllib.error.HTTPError) and exc.code < 500:
                        raise FetchError(f"{name}: download from {url} failed: {exc}") from exc
                    time.sleep(min(2 ** attempt, 10))
                    continue
                ok, what = _verify(part, row) if verify else (True, "not verified")
                if ok:
                    break
                part.unlink()
                if how == "resumed" and not from_scratch:
                    from_scratch = True  # the earlier partial data may be the culprit: once more, from 0
                    continue
                raise ChecksumError(f"{name}: downloaded file rejected: {what} (removed; url {url})")
            os.replace(part, final)
            st = final.stat()
            if verify:
                state[name] = [st.st_size, st.st_mtime_ns, row["md5"], row["sha256"]]
            _save_state(dest, state)
            rec.update(status=how, verified=what, bytes=st.st_size)
        except (ChecksumError, FetchError) as exc:
            rec.update(status="failed", error=str(exc), kind=type(exc).__name__)
        out.append(rec)
    bar.close()
    _save_state(dest, state)
    res = pd.DataFrame(out, columns=["file_name", "path", "status", "verified", "bytes", "error", "kind"])
    failed = res[res["status"] == "failed"]
    if len(failed) and errors == "raise":
        msg = f"{len(failed)} of {len(res)} file(s) failed: " + " | ".join(failed["error"].tolist()[:10])
        if (failed["kind"] == "ChecksumError").all():
            err = ChecksumError(msg)
            err.report = res
            raise err
        raise FetchError(msg, report=res)
    return res.drop(columns="kind")
