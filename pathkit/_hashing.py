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
