"""DICOMweb slides (pk.read_slide on a series URL) against a stub QIDO-RS / WADO-RS server on 127.0.0.1 that
serves the real DICOM files of shared/data: pixels equal the same files read locally, the auth hook is used,
401 / 404 / unreachable servers give bounded, worded errors. Loopback only."""
from __future__ import annotations

import json
import pickle
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

import pathkit as pk
from pathkit.errors import SlideReadError

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("wsidicom")
requests = pytest.importorskip("requests")

CAMELYON = "slides/dicom/ezwsi/multiframe_camelyon_challenge_image.dcm"
BOXES = ("slides/dicom/openslide-python/boxes_0.dcm", "slides/dicom/openslide-python/boxes_1.dcm")
TOKEN = "Bearer pathkit-test-token"
PIXEL_DATA = "7FE00010"


def _frames(ds) -> list[bytes]:
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        from pydicom.encaps import generate_frames

        return list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))
    n = int(ds.get("NumberOfFrames", 1))
    size = len(ds.PixelData) // n
    return [bytes(ds.PixelData[i * size:(i + 1) * size]) for i in range(n)]


class _Store:
    """The instances the stub serves, by UIDs; `requests` logs each request's path and Authorization."""

    def __init__(self, files):
        self.instances = {}
        for f in files:
            ds = pydicom.dcmread(f)
            meta = ds.to_json_dict(bulk_data_threshold=1 << 30)
            meta.pop(PIXEL_DATA, None)
            self.instances[(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)] = (
                ds, meta, _frames(ds), str(ds.file_meta.TransferSyntaxUID))
        self.requests: list[tuple[str, str | None]] = []


def _handler(store: _Store):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def _send(self, code, body=b"", ctype="application/dicom+json"):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            url = urlparse(self.path)
            store.requests.append((url.path, self.headers.get("Authorization")))
            if self.headers.get("Authorization") != TOKEN:
                return self._send(401, b'{"error": "authentication required"}', "application/json")
            parts = url.path.split("/")[2:]  # after /dicomweb
            study = parts[1] if len(parts) > 1 and parts[0] == "studies" else None
            mine = {k: v for k, v in store.instances.items() if k[0] == study}
            if not mine:
                return self._send(404, b'{"error": "no such study"}', "application/json")
            if len(parts) == 3 and parts[2] == "instances":  # QIDO-RS: search the study's instances
                q = parse_qs(url.query)
                series = {s for v in q.get("0020000E", []) for s in v.split(",")}
                out = []
                for (_, se, sop), (ds, _, _, ts) in mine.items():
                    if (series and se not in series) or str(ds.SOPClassUID) not in q.get("00080016", [ds.SOPClassUID]):
                        continue
                    out.append({"00080016": {"vr": "UI", "Value": [str(ds.SOPClassUID)]},
                                "00080018": {"vr": "UI", "Value": [sop]},
                                "0020000E": {"vr": "UI", "Value": [se]},
                                "00080060": {"vr": "CS", "Value": [ds.Modality]},
                                "00083002": {"vr": "UI", "Value": [ts]}})
                return self._send(200, json.dumps(out).encode())
            if len(parts) >= 6 and parts[2] == "series" and parts[4] == "instances":
                hit = mine.get((study, parts[3], parts[5]))
                if hit is None:
                    return self._send(404, b'{"error": "no such instance"}', "application/json")
                ds, meta, frames, ts = hit
                if len(parts) == 7 and parts[6] == "metadata":  # WADO-RS metadata
                    return self._send(200, json.dumps([meta]).encode())
                if len(parts) == 8 and parts[6] == "frames":  # WADO-RS frames, multipart/related
                    m = re.search(r"transfer-syntax=\"?([0-9.*]+)", self.headers.get("Accept", ""))
                    if m and m.group(1) not in (ts, "*"):
                        return self._send(406, b"", "text/plain")
                    mtype = "image/jpeg" if ts == "1.2.840.10008.1.2.4.50" else "application/octet-stream"
                    bnd = "pathkitboundary"
                    body = b""
                    for n in parts[7].split(","):
                        body += (f"--{bnd}\r\nContent-Type: {mtype}; transfer-syntax={ts}\r\n\r\n").encode()
                        body += frames[int(n) - 1] + b"\r\n"
                    body += f"--{bnd}--".encode()
                    return self._send(200, body, f'multipart/related; type="{mtype}"; boundary={bnd}')
            return self._send(400, b'{"error": "not served by the stub"}', "application/json")

    return Handler


@pytest.fixture(scope="module")
def server(shared_data):
    store = _Store([shared_data / CAMELYON] + [shared_data / b for b in BOXES])
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(store))
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/dicomweb", store
    httpd.shutdown()
    httpd.server_close()


def _series_url(root, path):
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return f"{root}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}", ds


def _session():
    s = requests.Session()
    s.headers["Authorization"] = TOKEN
    return s


@pytest.mark.parametrize("rel", [CAMELYON, BOXES[0]])
def test_pixels_equal_local_file(server, shared_data, rel):
    root, store = server
    url, ds = _series_url(root, shared_data / rel)
    n0 = len(store.requests)
    s = pk.read_slide(url, allow_implausible_mpp=True, session=_session(), timeout=5)
    local = pk.read_slide(shared_data / rel, allow_implausible_mpp=True)
    assert all(a == TOKEN for _, a in store.requests[n0:])  # every request carried the session's auth
    assert s.backend == "wsidicom" and "DICOMweb" in s.backend_version
    assert s.slide_id == ds.SeriesInstanceUID
    assert s.dimensions == local.dimensions == (ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows)
    assert s.level_dimensions == local.level_dimensions and s.mpp == pytest.approx(local.mpp)
    for lvl, (w, h) in enumerate(s.level_dimensions):
        web = s._read_level(lvl, 0, 0, w, h)
        assert int(np.count_nonzero(web != local._read_level(lvl, 0, 0, w, h))) == 0
    assert web.std() > 0  # real image content, not blank padding
    if rel == CAMELYON:  # the tiling runs on a URL slide and finds the same tissue tiles as the local file
        tw = pk.pp.tile(s, tile_px=64, mpp=s.mpp, min_tissue=0.05)
        tl = pk.pp.tile(local, tile_px=64, mpp=local.mpp, min_tissue=0.05)
        assert tw.n_obs == tl.n_obs > 0
        assert np.array_equal(tw.obs[["x", "y"]].to_numpy(), tl.obs[["x", "y"]].to_numpy())
        assert tw.uns["slide"]["path"] == url
    info = s.info()
    assert info["path"] == url and info["slide_id"] == ds.SeriesInstanceUID
    # sha256 = sha256(URL + instance UIDs, one a line): an independent recomputation
    import hashlib

    uids = sorted(k[2] for k in store.instances if k[1] == ds.SeriesInstanceUID)
    want = hashlib.sha256("".join(f"{x}\n" for x in [url, *uids]).encode()).hexdigest()
    assert info["sha256"] == want
    # a pickle reopens from the URL with the same options (session included)
    s2 = pickle.loads(pickle.dumps(s))
    assert s2._backend is None
    assert int(np.count_nonzero(s2._read_level(0, 0, 0, 16, 16) != local._read_level(0, 0, 0, 16, 16))) == 0
    s.close(), s2.close(), local.close()


def test_two_file_series_and_ready_client(server, shared_data):
    """The boxes series is two instances (a JPEG level, a native thumbnail); a ready dicomweb-client works."""
    from dicomweb_client import DICOMwebClient

    root, _ = server
    url, _ = _series_url(root, shared_data / BOXES[0])
    client = DICOMwebClient(root, headers={"Authorization": TOKEN}, timeout=5)
    with pk.read_slide(url, backend="wsidicom", client=client) as s, pk.read_slide(shared_data / BOXES[0]) as local:
        assert s.dimensions == local.dimensions and s.level_dimensions == local.level_dimensions
        w, h = s.dimensions
        web = s._read_level(0, 0, 0, w, h)
        assert int(np.count_nonzero(web != local._read_level(0, 0, 0, w, h))) == 0 and web.std() > 0
        # both instances were found: the JPEG level and the native (Explicit VR) thumbnail
        from pathkit.backends.dicomweb import instance_uids

        assert len(instance_uids(s.reader)) == 2


def test_auth_missing_is_401_error(server, shared_data):
    root, store = server
    url, _ = _series_url(root, shared_data / CAMELYON)
    with pytest.raises(SlideReadError, match=r"asks for credentials \(HTTP 401\).*session=") as e:
        pk.read_slide(url, timeout=5)
    assert url in str(e.value)
    assert store.requests[-1][1] is None  # the stub saw no Authorization header


def test_not_found_names_uids(server, shared_data):
    root, _ = server
    study = "1.2.3.4.5.6"
    url = f"{root}/studies/{study}/series/7.8.9"
    with pytest.raises(SlideReadError, match=r"HTTP 404.*study 1\.2\.3\.4\.5\.6 / series 7\.8\.9"):
        pk.read_slide(url, session=_session(), timeout=5)
    # a known study without that series: no levels, named
    url2, ds = _series_url(root, shared_data / CAMELYON)
    url2 = url2.rsplit("/", 1)[0] + "/7.8.9"
    with pytest.raises(SlideReadError, match=rf"no whole-slide image levels .*{re.escape(ds.StudyInstanceUID)} "
                                             r"series 7\.8\.9"):
        pk.read_slide(url2, session=_session(), timeout=5)


def test_silent_server_times_out_within_bound():
    """A server that accepts connections and never answers: 3 attempts of 0.5 s, then the error."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)  # never accepted: the kernel completes the handshake, no byte ever comes back
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/dicomweb/studies/1.2.3/series/4.5.6"
    t0 = time.monotonic()
    try:
        with pytest.raises(SlideReadError, match=r"did not answer .*timeout=SECONDS") as e:
            pk.read_slide(url, timeout=0.5, retries=2)
    finally:
        sock.close()
    elapsed = time.monotonic() - t0
    assert 1.4 <= elapsed < 10, elapsed  # three 0.5-s attempts, then a bounded stop
    assert url in str(e.value)


def test_refused_connection_and_bad_options():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    url = f"http://127.0.0.1:{port}/studies/1.2.3/series/4.5.6"
    with pytest.raises(SlideReadError, match=r"did not answer .*Connection"):
        pk.read_slide(url, timeout=1, retries=1)
    with pytest.raises(SlideReadError, match="not a DICOMweb series URL; expected"):
        pk.read_slide(f"http://127.0.0.1:{port}/slides/CMU-1.svs")
    with pytest.raises(TypeError, match="unknown DICOMweb option"):
        pk.read_slide(url, sesion=None)
    with pytest.raises(ValueError, match="backend='wsidicom'"):
        pk.read_slide(url, backend="tiffslide")
