"""DICOMweb: a whole-slide series read over QIDO-RS / WADO-RS by wsidicom's web client
(``pip install "pathkit[dicom]"``).

The slide is named by its series URL, ``http(s)://HOST[:PORT][/PREFIX]/studies/<StudyUID>/series/<SeriesUID>``;
``HOST[/PREFIX]`` is the DICOMweb service root. Options (``pk.read_slide(url, **options)``):

``session``
    a ``requests.Session`` that carries the credentials (``session.auth = ...`` or an ``Authorization``
    header); its headers and auth go with every request.
``client``
    a ready ``wsidicom.WsiDicomWebClient`` or ``dicomweb_client.DICOMwebClient`` (its own timeout and retry
    settings are kept; for services with their own login flow).
``timeout``
    seconds per request (connect and read; default 20).
``retries``
    how many times a refused connection, a timed-out request or a 429 / 502 / 503 / 504 answer is retried
    (default 2), so an unreachable server fails in about ``(retries + 1) * timeout`` seconds, never hangs.
"""
from __future__ import annotations

import hashlib
import re

from ..errors import SlideReadError

_URL = re.compile(r"^(?P<root>https?://[^/?#]+(?:/[^?#]*?)?)/studies/(?P<study>[0-9.]+)/series/(?P<series>[0-9.]+)/?$")
OPTIONS = ("client", "session", "timeout", "retries")
_EXTRA = 'pip install "pathkit[dicom]"'


def is_dicomweb_url(path) -> bool:
    """Whether `path` is a string that names a DICOMweb series (see the module docstring)."""
    return isinstance(path, str) and bool(_URL.match(path.strip()))


def parse_url(url: str) -> tuple[str, str, str]:
    """``(service root, study UID, series UID)`` of a series URL; SlideReadError when it is not one."""
    m = _URL.match(url.strip())
    if m is None:
        raise SlideReadError(f"{url}: not a DICOMweb series URL; expected "
                             f"http(s)://HOST[/PREFIX]/studies/<StudyInstanceUID>/series/<SeriesInstanceUID>")
    return m["root"], m["study"], m["series"]


def _web_client(root: str, client=None, session=None, timeout: float = 20.0, retries: int = 2):
    """The WsiDicomWebClient for `root`: `client` as given, else one over `session` (or a new one) with
    bounded retries and a per-request timeout."""
    try:
        import requests
        from dicomweb_client import DICOMwebClient
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry
        from wsidicom import WsiDicomWebClient
    except ImportError as exc:
        raise SlideReadError(f"DICOMweb slides need wsidicom and dicomweb-client: {_EXTRA} ({exc})") from exc
    if client is not None:
        if session is not None:
            raise ValueError("pass either client= or session=, not both (a client carries its own session)")
        return client if isinstance(client, WsiDicomWebClient) else WsiDicomWebClient(client)
    session = requests.Session() if session is None else session
    # connection-level retries (refused, reset, timed out) with a short back-off; the status retries of
    # dicomweb-client (5 attempts, exponential waits of seconds) are replaced by urllib3's bounded ones
    retry = Retry(total=retries, connect=retries, read=retries, status=retries, backoff_factor=0.2,
                  status_forcelist=(429, 502, 503, 504), allowed_methods=("GET",), raise_on_status=False)
    for prefix in ("http://", "https://"):
        session.mount(prefix, HTTPAdapter(max_retries=retry))
    dw = DICOMwebClient(root, session=session, timeout=float(timeout))
    dw.set_http_retry_params(retry=False)
    return WsiDicomWebClient(dw)


def _fail(url: str, study: str, series: str, exc: BaseException) -> SlideReadError:
    """The SlideReadError for a failed DICOMweb request: the URL, the cause and what to do."""
    import requests

    cause = f"{type(exc).__name__}: {exc}"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        what = "refused the credentials" if status == 403 else "asks for credentials"
        return SlideReadError(
            f"{url}: the DICOMweb server {what} (HTTP {status}). Pass them: "
            f"s = requests.Session(); s.auth = (user, password) or s.headers['Authorization'] = 'Bearer TOKEN'; "
            f"pk.read_slide(url, session=s), or a ready client: pk.read_slide(url, client=WsiDicomWebClient(...)) "
            f"({cause})")
    if status == 404:
        return SlideReadError(f"{url}: not found on the DICOMweb server (HTTP 404): no study {study} / series "
                              f"{series} there; check the UIDs and the service root in the URL ({cause})")
    if isinstance(exc, (requests.Timeout, requests.ConnectionError)):
        return SlideReadError(f"{url}: the DICOMweb server did not answer ({cause}). Check that it runs and is "
                              f"reachable from here (host, port, proxy, VPN); a slow server: pass timeout=SECONDS "
                              f"(and retries=N)")
    if type(exc).__name__ == "WsiDicomNotFoundError":
        return SlideReadError(f"{url}: no whole-slide image levels (VL WSI, ImageType ...\\VOLUME) in study "
                              f"{study} series {series} on the DICOMweb server; check the UIDs ({cause})")
    return SlideReadError(f"{url}: cannot read this DICOMweb series ({cause})")


def open_dicomweb(url: str, **options):
    """A :class:`~pathkit.backends.dicom.DicomBackend` over the DICOMweb series `url` (see the module
    docstring for `options`)."""
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise TypeError(f"unknown DICOMweb option(s) {sorted(unknown)}; known: {', '.join(OPTIONS)}")
    root, study, series = parse_url(url)
    from .dicom import DicomBackend, _imports

    wsidicom, _ = _imports()
    client = _web_client(root, **options)
    try:
        wsi = wsidicom.WsiDicom.open_web(client, study, series)
    except Exception as exc:
        raise _fail(url, study, series, exc) from exc
    be = DicomBackend(url, wsi=wsi)
    be.name = "wsidicom"
    be.version = f"wsidicom {wsidicom.__version__} (DICOMweb)"
    be.read = _guarded(be.read, url, study, series)
    return be


def _guarded(read, url, study, series):
    def read_region(*args):
        try:
            return read(*args)
        except Exception as exc:
            raise _fail(url, study, series, exc) from exc
    return read_region


def instance_uids(backend) -> list[str]:
    """The SOP instance UIDs of the series' levels, thumbnails, labels and overviews, sorted."""
    wsi = backend.wsi
    groups = [g for p in wsi.pyramids for g in [*p.groups, *(p.thumbnails or [])]]
    groups += [*(wsi.labels or []), *(wsi.overviews or [])]
    uids = {str(ds.uids.instance) for g in groups for ds in g.datasets}
    return sorted(uids)


def sha256_url(url: str, backend) -> str:
    """sha256 of a DICOMweb slide: of its URL and its instance UIDs, one a line (the pixels are not hashed:
    that would download the whole series; a UID names one immutable instance in DICOM)."""
    h = hashlib.sha256(f"{url.strip()}\n".encode())
    for uid in instance_uids(backend):
        h.update(f"{uid}\n".encode())
    return h.hexdigest()
