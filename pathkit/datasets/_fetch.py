"""The registry of public example data and :func:`fetch`: download once, verify sha256, return the path.

Every file pathkit's notebooks, tutorials and tests read is a registry entry named by its relative path
(``slides/CMU-1-Small-Region.svs``, ``tcga/coadread/clinical.csv``, ...), with its upstream URL pinned to a
commit or a stable id, sha256, size, licence and citation. Files are kept under :func:`data_dir`
(``$PATHKIT_DATA_DIR``, default the user cache) at that relative path, so a folder holding copies of the
files serves them offline with the same checksums.
"""
from __future__ import annotations

import os
import shutil
import zipfile
from functools import lru_cache
from importlib import resources
from pathlib import Path

import pandas as pd

from .._hashing import sha256_file
from .._io import atomic_write
from ..errors import ChecksumError, PathkitError
from ._convert import _convert

ENV_DIR = "PATHKIT_DATA_DIR"
ENV_MIRROR = "PATHKIT_DATA_MIRROR"
PACKAGED = {"slides/CMU-1-Small-Region.svs": "CMU-1-Small-Region.svs"}  # name -> file in pathkit/data/


class DataNotAvailableError(PathkitError, OSError):
    """A registry file is not cached and could not be downloaded (offline, or no public URL is known)."""


@lru_cache(maxsize=1)
def _table() -> pd.DataFrame:
    text = resources.files("pathkit.datasets").joinpath("_registry.csv").read_text(encoding="utf-8")
    from io import StringIO

    df = pd.read_csv(StringIO(text), keep_default_na=False, dtype={"size": "int64"})
    return df.set_index("name", drop=False)


def get_registry() -> pd.DataFrame:
    """The registry: one row per file (name, url, sha256, size, license, citation, source, ...)."""
    cols = ["name", "description", "size", "license", "citation", "url", "mirrors", "source", "member",
            "derived_from", "sha256"]
    return _table()[cols].copy()


def data_dir() -> Path:
    """Where fetched files live: ``$PATHKIT_DATA_DIR``, else ``<user cache>/pathkit/data``."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("pathkit")) / "data"


def packaged_path(name: str) -> Path | None:
    """The copy shipped inside the package (only ``slides/CMU-1-Small-Region.svs``), or None."""
    fname = PACKAGED.get(name)
    if fname is None:
        return None
    p = Path(str(resources.files("pathkit").joinpath("data", fname)))
    return p if p.is_file() else None


def _entry(name: str) -> pd.Series:
    t = _table()
    name = str(name).replace("\\", "/").lstrip("/")
    if name not in t.index:
        import difflib

        close = difflib.get_close_matches(name, list(t.index), n=3, cutoff=0.4)
        hint = f"; did you mean {close}?" if close else ""
        raise KeyError(f"{name!r} is not in pathkit's data registry (pk.datasets.registry lists "
                       f"{len(t)} files){hint}")
    return t.loc[name]


def _urls(e: pd.Series) -> list[str]:
    mirror = os.environ.get(ENV_MIRROR)
    if mirror:
        return [mirror.rstrip("/") + "/" + e["name"]]
    return [u for u in [e["url"], *str(e["mirrors"]).split()] if u]


def _download(url: str, dest: Path, timeout: float, progress: bool) -> None:
    """Download url to dest atomically (a temporary file next to it, then rename)."""
    import pooch

    with atomic_write(dest) as tmp:
        pooch.HTTPDownloader(timeout=timeout, progressbar=progress)(url, str(tmp), None)


def _get(e: pd.Series, target: Path, timeout: float, progress: bool) -> None:
    """Put the entry's bytes at target from its URL(s): a plain file, a zip member, or a conversion."""
    if e["derived_from"] and not os.environ.get(ENV_MIRROR):
        src = fetch(e["derived_from"], timeout=timeout, progress=progress)
        _convert(e["name"], src, target)
        return
    urls = _urls(e)
    if not urls:
        raise DataNotAvailableError(
            f"{e['name']}: no public download is known for this file ({e['source']}). Put your copy at "
            f"{target} (sha256 {e['sha256']}), or set {ENV_DIR} to a folder that holds it at {e['name']}.")
    errors = []
    for url in urls:
        try:
            if e["member"] and not os.environ.get(ENV_MIRROR):
                archive = target.parent / ".archives" / url.rstrip("/").split("/")[-1]
                if not archive.is_file():
                    _download(url, archive, timeout, progress)
                _extract(archive, e["member"], target)
            else:
                _download(url, target, timeout, progress)
            return
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            errors.append(f"{url}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        except Exception as exc:  # noqa: BLE001 - requests' errors; all are reported below
            errors.append(f"{url}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
    how = f"download {urls[0]}"
    if e["member"]:
        how += f", extract {e['member']} from it"
    raise DataNotAvailableError(
        f"{e['name']}: could not download it ({'; '.join(errors)}). To use it offline, {how} and put the "
        f"file at {target} (sha256 {e['sha256']}, {e['size']} bytes), or set {ENV_DIR} to a folder holding "
        f"it at {e['name']}.")


def _extract(archive: Path, member: str, target: Path) -> None:
    with atomic_write(target) as tmp, zipfile.ZipFile(archive) as z, z.open(member) as src, \
            open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst)


def fetch(name: str, *, timeout: float = 60.0, progress: bool = False) -> Path:
    """Path to a registry file, downloaded once into :func:`data_dir` and checked against its sha256.

    Parameters
    ----------
    name
        The file's registry name: its relative path, e.g. ``"tcga/coadread/clinical.csv"``
        (``pk.datasets.registry.name`` lists them).
    timeout
        Seconds to wait for the server.
    progress
        Show a download progress bar.

    Returns
    -------
    The local path ``<data_dir>/<name>`` (for ``slides/CMU-1-Small-Region.svs``, the copy shipped in the
    package when the data folder has none).

    Raises
    ------
    ChecksumError
        The file on disk differs from the registry's sha256 even after one fresh download; the message
        names the file, the expected and the actual sha256.
    DataNotAvailableError
        The file is not there and could not be downloaded; the message says which URL to fetch and where
        to put the file.
    KeyError
        The name is not in the registry.
    """
    e = _entry(name)
    root = data_dir()
    target = root / e["name"]
    want = e["sha256"]
    stale = None
    if target.is_file():
        got = sha256_file(target)
        if got == want:
            return target
        stale = got
    elif (p := packaged_path(e["name"])) is not None and sha256_file(p) == want:
        return p
    if stale is not None:
        import warnings

        warnings.warn(f"{target}: sha256 {stale} differs from the registry's {want} (corrupt or truncated); "
                      "downloading it again", stacklevel=2)
    _get(e, target, timeout, progress)
    got = sha256_file(target)
    if got != want:
        raise ChecksumError(f"{target}: sha256 {got} but the registry expects {want} for {e['name']} "
                            f"({e['size']} bytes expected, {target.stat().st_size} on disk). The upstream file "
                            f"may have changed; delete it and report this, or put a correct copy there.")
    return target
