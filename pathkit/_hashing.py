"""File checksums, computed once per file version: slides and checkpoints are GBs, and a cohort run, the
slide's provenance and a manifest check would otherwise each read the whole file again."""
from __future__ import annotations

import hashlib
from pathlib import Path

_SHA_CACHE: dict = {}


def sha256_file(path, chunk: int = 1 << 22) -> str:
    """sha256 of a file, cached per (resolved path, size, mtime)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(chunk), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def sha256_path(path) -> str:
    """sha256 of a slide: of its file, or for a DICOM series folder, of its DICOM files' names and sha256s."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    from .backends.dicom import dicom_files

    h = hashlib.sha256()
    for f in dicom_files(path):
        h.update(f"{f.name}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def stat_path(path) -> tuple:
    """(size, mtime_ns) of a slide file; for a DICOM series folder, the sum of its files' sizes and the newest
    mtime (a changed, added or removed file changes it)."""
    path = Path(path)
    if not path.is_dir():
        st = path.stat()
        return (st.st_size, st.st_mtime_ns)
    from .backends.dicom import dicom_files

    sts = [f.stat() for f in dicom_files(path)]
    return (sum(s.st_size for s in sts) + len(sts), max((s.st_mtime_ns for s in sts), default=0))
