"""One clear error for a damaged data file (an HDF5 / h5ad bag, a parquet table, a JSON record): what the file
looks like (empty, text, another format, cut short) and what to do, instead of h5py's, anndata's, pyarrow's or
json's own message and traceback."""
from __future__ import annotations

import contextlib
from pathlib import Path

from .errors import CorruptFileError, PathkitError

AGAIN = "copy or download it again, or write it again with the program that made it"
_MAGIC = {b"\x89HDF\r\n\x1a\n": "an HDF5 file", b"PAR1": "a parquet file", b"PK\x03\x04": "a zip archive",
          b"II*\x00": "a TIFF image", b"MM\x00*": "a TIFF image", b"\xff\xd8\xff": "a JPEG image",
          b"\x89PNG": "a PNG image", b"\x80\x02": "a Python pickle", b"\x1f\x8b": "a gzip archive"}


def looks_like(path) -> str:
    """A short description of what `path` holds, from its first bytes ("empty (0 bytes)", "text", "an HDF5
    file" ...)."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "empty (0 bytes)"
    with open(path, "rb") as fh:
        head = fh.read(64)
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            return what
    if head.lstrip()[:1] == b"<":
        return "text (HTML or XML: an error page saved in place of the file?)"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not only a character cut at the end of the sample
            return "not a known format"
    control = set(range(32)) - {9, 10, 12, 13}
    return "not a known format" if control & set(head) else "text"


def damaged(path, what: str, exc: BaseException | None = None, expected: str = "",
            todo: str = AGAIN) -> CorruptFileError:
    """The CorruptFileError for `path`, a `what` (e.g. "HDF5 feature bag") that could not be read: empty, of
    another kind than `expected` (e.g. "an HDF5 file"), or cut short / corrupt (the reader's first line)."""
    path = Path(path)
    try:
        kind = looks_like(path)
    except OSError as e:  # gone or unreadable since: say that
        return CorruptFileError(f"{path}: cannot read this {what}: {e.strerror or e}")
    if kind.startswith("empty"):
        why = "the file is empty (0 bytes)"
    elif expected and kind != expected:
        why = f"it is not {expected} but {kind}"
    else:
        first = str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else ""
        detail = f" ({type(exc).__name__}: {first})" if first else ""
        why = f"it is truncated or corrupt{detail}"
    return CorruptFileError(f"{path}: cannot read this {what}: {why}; {todo}")


def h5_file(path, what: str = "HDF5 file"):
    """``h5py.File(path, "r")``, or :func:`damaged`'s CorruptFileError when it cannot be opened."""
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise damaged(path, what, exc, "an HDF5 file") from None


@contextlib.contextmanager
def open_h5(path, what: str = "HDF5 file"):
    """:func:`h5_file` as a context; a dataset that fails to read inside the block raises the same
    CorruptFileError (pathkit's own errors pass unchanged)."""
    f = h5_file(path, what)
    try:
        yield f
    except OSError as exc:
        if isinstance(exc, PathkitError):
            raise
        raise damaged(path, what, exc, "an HDF5 file") from exc
    finally:
        f.close()


def read_h5ad(path, what: str = "h5ad file", **kw):
    """``anndata.read_h5ad(path, **kw)`` with :func:`damaged`'s error for a file it cannot read."""
    import anndata as ad

    try:
        return ad.read_h5ad(path, **kw)
    except PathkitError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise damaged(path, what, exc, "an HDF5 file") from exc
