"""The sample slide for ``pathkit demo``: the real CMU-1-Small-Region slide shipped inside the package."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from .._hashing import sha256_file
from . import _fetch
from ._synthetic import _truth_path, synthetic_slide

SAMPLE_URL = "https://openslide.cs.cmu.edu/download/openslide-testdata/Aperio/CMU-1-Small-Region.svs"
SAMPLE_SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
SAMPLE_NAME = "CMU-1-Small-Region.svs"
SYNTHETIC_SAMPLE_NAME = "synthetic-sample.svs"


def _cache_dir() -> Path:
    import pooch

    env = os.environ.get("PATHKIT_CACHE")
    return Path(env) if env else Path(pooch.os_cache("pathkit"))


def sample_slide(offline_ok: bool = True, *, cache_dir=None, timeout: float = 10.0,
                 return_info: bool = False):
    """The public OpenSlide sample ``CMU-1-Small-Region.svs`` (Aperio, 2220 x 2967, 0.499 mpp, CC0).

    Looked for, in order: ``$PATHKIT_SAMPLE_SLIDE`` (a local copy), the cache (``$PATHKIT_CACHE`` or
    pooch's user cache), the copy shipped inside pathkit (``pathkit/data/``), then a download from
    openslide.cs.cmu.edu checked against its sha256. When none works (a package installed without its
    data) and `offline_ok`, a synthetic slide is generated into the cache instead and a warning says so.

    Returns
    -------
    The path, or ``(path, info)`` with ``return_info=True``; ``info["source"]`` is "env", "cache",
    "package", "download" or "synthetic".
    """
    info = {"url": SAMPLE_URL, "sha256": SAMPLE_SHA256}

    def done(p, source, **extra):
        info.update(source=source, path=str(p), **extra)
        return (Path(p), info) if return_info else Path(p)

    env = os.environ.get("PATHKIT_SAMPLE_SLIDE")
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"PATHKIT_SAMPLE_SLIDE={env} is not a file")
        return done(p, "env")
    cache = Path(cache_dir) if cache_dir else _cache_dir()
    target = cache / SAMPLE_NAME
    if target.is_file() and sha256_file(target) == SAMPLE_SHA256:
        return done(target, "cache")
    packaged = _fetch.packaged_path("slides/" + SAMPLE_NAME)
    if packaged is not None and sha256_file(packaged) == SAMPLE_SHA256:
        return done(packaged, "package")
    cache.mkdir(parents=True, exist_ok=True)
    error = None
    try:
        import pooch

        got = pooch.retrieve(SAMPLE_URL, known_hash=f"sha256:{SAMPLE_SHA256}", fname=SAMPLE_NAME,
                             path=cache, downloader=pooch.HTTPDownloader(timeout=timeout, progressbar=False))
        return done(got, "download")
    except Exception as exc:  # noqa: BLE001 - offline, proxy, checksum mismatch: say which, then fall back
        error = f"{type(exc).__name__}: {exc}"
    if not offline_ok:
        raise OSError(f"could not download the sample slide {SAMPLE_URL}: {error}")
    synth = cache / SYNTHETIC_SAMPLE_NAME
    if not (synth.is_file() and _truth_path(synth).is_file()):
        synthetic_slide(synth, width=4096, height=3072, mpp=0.5, seed=0)
    warnings.warn(f"the real sample slide could not be downloaded ({error}); using a SYNTHETIC slide "
                  f"generated at {synth}", stacklevel=2)
    return done(synth, "synthetic", error=error)
