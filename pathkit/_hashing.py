"""File checksums, computed once per file version: slides and checkpoints are GBs, and a cohort run, the
slide's provenance and a manifest check would otherwise each read the whole file again."""
from __future__ import annotations

import hashlib
from pathlib import Path

_SHA_CACHE: dict = {}


def sha256_file(path, chunk: int = 1 << 22) -> str:
    """sha256 of a file, cached per (resolved path, size, mtime, ctime, inode): an edit whose mtime was set
    back (``os.utime``, ``touch -r``, a copy that keeps times) still changes the ctime."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(chunk), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def sha256_path(path) -> str:
    """sha256 of a slide: of its file, or for a DICOM series folder, of its DICOM files' names and sha256s."""
    return _per_file(path, sha256_file)


def stat_path(path) -> tuple:
    """(size, mtime_ns, ctime_ns, inode) of a slide file; for a DICOM series folder, the sum of its files' sizes,
    the newest mtime and ctime, and the folder's inode (a changed, added or removed file changes them).

    The ctime cannot be set back by a user (``os.utime`` sets it to now), so a file rewritten in place with
    its size and mtime restored no longer matches. It also changes on chmod, a rename or a new hard link:
    then the file is hashed again, which costs time, not correctness."""
    path = Path(path)
    if not path.is_dir():
        st = path.stat()
        return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    from .backends.dicom import dicom_files

    sts = [f.stat() for f in dicom_files(path)]
    return (sum(s.st_size for s in sts) + len(sts), max((s.st_mtime_ns for s in sts), default=0),
            max((s.st_ctime_ns for s in sts), default=0), path.stat().st_ino)


SAMPLE_BLOCKS = 16          # evenly spaced blocks, besides the first and the last
SAMPLE_BLOCK_BYTES = 1 << 16


def sample_hash_file(path, blocks: int = SAMPLE_BLOCKS, block: int = SAMPLE_BLOCK_BYTES) -> str:
    """sha256 of a file's size, first and last `block` bytes and `blocks` evenly spaced blocks between them
    (the whole file when it is no larger than those): ~1 MiB read from a multi-GB slide.

    A cheap second check beside :func:`stat_path` where a file system's ctime is not trustworthy: it sees a
    slide replaced by another of the same size (other header, other tiles, a cut-and-padded copy) but not an
    edit that falls between the sampled blocks; a changed ctime makes the caller hash the whole file.
    """
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(f"{size}\0".encode())
    with open(path, "rb") as f:
        if size <= (blocks + 2) * block:
            h.update(f.read())
        else:
            step = (size - block) / (blocks + 1)
            for i in range(blocks + 2):  # offsets 0 .. size - block, first and last included
                f.seek(round(i * step))
                h.update(f.read(block))
    return h.hexdigest()


def sample_hash_path(path) -> str:
    """:func:`sample_hash_file` of a slide file, or of each DICOM file of a series folder (with its name)."""
    return _per_file(path, sample_hash_file)


def _per_file(path, digest) -> str:
    """`digest` of a slide file, or for a DICOM series folder, a sha256 over its DICOM files' names and digests."""
    path = Path(path)
    if not path.is_dir():
        return digest(path)
    from .backends.dicom import dicom_files

    h = hashlib.sha256()
    for f in dicom_files(path):
        h.update(f"{f.name}\0{digest(f)}\n".encode())
    return h.hexdigest()
