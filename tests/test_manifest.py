"""Manifests: the shipped ones validate; fetch resumes with HTTP Range, verifies checksums, renames atomically
(tested against a loopback HTTP server in a thread)."""
from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pandas as pd
import pytest

from pathkit.errors import ChecksumError, TableError
from pathkit.io.manifest import FetchError, fetch_manifest, read_manifest, resolve_gdc, validate_manifest

MANIFESTS = Path(__file__).resolve().parents[1] / "data_manifests"


# ------------------------------------------------------------------------------------------ loopback server
class _Handler(http.server.BaseHTTPRequestHandler):
    root: Path
    log: list
    honour_range = True

    def do_GET(self):  # noqa: N802 - http.server's naming
        f = self.root / self.path.lstrip("/")
        self.log.append((self.path, self.headers.get("Range")))
        if not f.is_file():
            self.send_error(404)
            return
        data = f.read_bytes()
        rng = self.headers.get("Range")
        if rng and self.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802 - a stand-in for the GDC /files endpoint
        import json

        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.log.append((self.path, body["filters"]["content"]["field"]))
        names = body["filters"]["content"]["value"]
        hits = [h for h in self.gdc if h["file_name"] in names]
        out = json.dumps({"data": {"hits": hits, "pagination": {"total": len(hits)}}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    handler = type("H", (_Handler,), {"root": root, "log": [], "honour_range": True, "gdc": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


def _files(root: Path) -> dict:
    out = {}
    for i, n in enumerate((150_000, 3_000_001)):  # one bigger than a read chunk
        data = hashlib.sha256(str(i).encode()).digest() * (n // 32 + 1)
        data = data[:n]
        (root / f"slide{i}.svs").write_bytes(data)
        out[f"slide{i}.svs"] = data
    return out


def _manifest(files: dict, url: str, **over) -> pd.DataFrame:
    rows = []
    for name, data in files.items():
        rows.append(dict(file_name=name, patient_id="", slide_id=Path(name).stem, gdc_file_id="",
                         size=len(data), md5=hashlib.md5(data).hexdigest(),
                         sha256=hashlib.sha256(data).hexdigest(), url=f"{url}/{name}"))
    df = pd.DataFrame(rows)
    for k, v in over.items():
        df[k] = v
    return df


# ------------------------------------------------------------------------------------------ fetch
def test_fetch_verifies_then_skips(server, tmp_path):
    root, url, h = server
    files = _files(root)
    dest = tmp_path / "dest"
    res = fetch_manifest(_manifest(files, url), dest, progress=False)
    assert res["status"].tolist() == ["downloaded", "downloaded"]
    assert res["verified"].tolist() == ["md5+sha256"] * 2
    for name, data in files.items():
        assert (dest / name).read_bytes() == data
    assert not list(dest.glob(".*.part"))
    n = len(h.log)
    res2 = fetch_manifest(_manifest(files, url), dest, progress=False)
    assert res2["status"].tolist() == ["skipped", "skipped"] and res2["verified"].tolist() == ["recorded"] * 2
    assert len(h.log) == n  # no request at all
    # a file changed on disk is noticed (size/mtime differ from the record), re-fetched and verified
    (dest / "slide0.svs").write_bytes(b"garbage")
    res3 = fetch_manifest(_manifest(files, url), dest, progress=False)
    assert res3["status"].tolist() == ["downloaded", "skipped"]
    assert (dest / "slide0.svs").read_bytes() == files["slide0.svs"]


def test_fetch_resumes_partial_with_range(server, tmp_path):
    root, url, h = server
    files = _files(root)
    dest = tmp_path / "dest"
    dest.mkdir()
    data = files["slide1.svs"]
    (dest / ".slide1.svs.part").write_bytes(data[:1_234_567])
    res = fetch_manifest(_manifest(files, url), dest, progress=False).set_index("file_name")
    assert res.loc["slide1.svs", "status"] == "resumed" and res.loc["slide0.svs", "status"] == "downloaded"
    assert ("/slide1.svs", "bytes=1234567-") in h.log
    assert (dest / "slide1.svs").read_bytes() == data
    assert not (dest / ".slide1.svs.part").exists()


def test_fetch_server_without_range_and_corrupt_partial(server, tmp_path):
    root, url, h = server
    files = _files(root)
    dest = tmp_path / "dest"
    dest.mkdir()
    data = files["slide1.svs"]
    # a corrupt partial: resumed bytes give a wrong checksum -> one retry from scratch succeeds
    (dest / ".slide1.svs.part").write_bytes(b"\0" * 1000)
    res = fetch_manifest(_manifest(files, url), dest, progress=False).set_index("file_name")
    assert res.loc["slide1.svs", "status"] == "downloaded"
    assert (dest / "slide1.svs").read_bytes() == data
    assert [r for p, r in h.log if p == "/slide1.svs"] == ["bytes=1000-", None]
    # a server that ignores Range (200): start over rather than append
    h.honour_range = False
    (dest / "slide1.svs").unlink()
    (dest / ".slide1.svs.part").write_bytes(data[:5000])
    res = fetch_manifest(_manifest(files, url), dest, progress=False).set_index("file_name")
    assert res.loc["slide1.svs", "status"] == "downloaded"
    assert (dest / "slide1.svs").read_bytes() == data


def test_fetch_checksum_mismatch(server, tmp_path):
    root, url, _ = server
    files = _files(root)
    bad = _manifest(files, url)
    bad.loc[0, "sha256"] = "0" * 64
    bad.loc[0, "md5"] = ""
    dest = tmp_path / "dest"
    with pytest.raises(ChecksumError, match=r"slide0\.svs: downloaded file rejected: sha256 .* differs") as e:
        fetch_manifest(bad, dest, progress=False)
    assert e.value.report.set_index("file_name").loc["slide1.svs", "status"] == "downloaded"
    assert not (dest / "slide0.svs").exists() and not (dest / ".slide0.svs.part").exists()
    rec = fetch_manifest(bad, dest, progress=False, errors="record").set_index("file_name")
    assert rec.loc["slide0.svs", "status"] == "failed" and rec.loc["slide1.svs", "status"] == "skipped"
    # size mismatch and a missing file are reported too
    bad2 = _manifest(files, url)
    bad2.loc[0, "size"] = 10
    bad2.loc[1, "url"] = f"{url}/nope.svs"
    res = fetch_manifest(bad2, tmp_path / "d2", progress=False, errors="record").set_index("file_name")
    assert "manifest says 10" in res.loc["slide0.svs", "error"]
    assert "404" in res.loc["slide1.svs", "error"]
    with pytest.raises(FetchError):
        fetch_manifest(bad2, tmp_path / "d3", progress=False)


# ------------------------------------------------------------------------------------------ validation
def test_validator_lists_every_problem():
    df = pd.DataFrame({
        "file_name": ["a.svs", "a.svs", "../evil.svs", "", "TCGA-AD-6964-01Z-00-DX1.svs"],
        "patient_id": ["", "", "", "", "TCGA-AD-0000"],
        "size": ["1", "x", "-3", "", "5"],
        "md5": ["abc", "", "", "", ""],
        "sha256": ["", "", "", "", "f" * 64],
        "url": ["ftp://x", "", "", "", "https://x/y"],
        "gdc_file_id": ["", "not-a-uuid", "", "", ""],
    })
    with pytest.raises(TableError) as e:
        validate_manifest(df)
    msg = str(e.value)
    for part in ("empty file_name at line(s) [5]", "bare name", "'../evil.svs'", "duplicate file_name: ['a.svs']",
                 "size must be a non-negative integer", "'x'", "'-3'", "md5 must be 32 hex digits",
                 "gdc_file_id must be a UUID", "url must start with http", ("line 6: patient_id 'TCGA-AD-0000' "
                  "differs from the file name's barcode 'TCGA-AD-6964'")):
        assert part in msg, part
    with pytest.raises(TableError, match="required column 'file_name'"):
        validate_manifest(pd.DataFrame({"name": ["x"]}))


@pytest.mark.parametrize("project", ["coadread", "blca"])
def test_shipped_tcga_manifests(shared_data, project):
    m = validate_manifest(MANIFESTS / f"tcga_{project}_dx.csv")
    s = pd.read_csv(shared_data / "tcga" / project / "slides_survival.csv", index_col=0)
    assert m["file_name"].tolist() == s["slide_id"].tolist()
    assert m["patient_id"].tolist() == s["case_id"].tolist()
    # the UUID in a TCGA slide file name is not a GDC file id: left empty rather than guessed
    assert (m["gdc_file_id"] == "").all() and m["size"].isna().all()
    assert m["project"].str.startswith("TCGA-").all()


def test_shipped_test_slide_manifest_matches_files(shared_data):
    m = validate_manifest(MANIFESTS / "shared_test_slides.csv")
    # the single-file slides; slides/dicom/ holds DICOM series folders, read as slides by pk.read_slide (issue 24)
    assert sorted(m["file_name"]) == sorted(p.name for p in (shared_data / "slides").iterdir() if p.is_file())
    for _, r in m.iterrows():
        data = (shared_data / "slides" / r["file_name"]).read_bytes()
        assert len(data) == r["size"] and hashlib.sha256(data).hexdigest() == r["sha256"]
    assert read_manifest(MANIFESTS / "shared_test_slides.csv").loc[0, "url"].startswith("https://openslide")


def test_resolve_gdc_then_fetch(server, tmp_path):
    """GDC ids, md5 and size looked up by file name (a local stand-in for the GDC API), then downloaded."""
    root, url, h = server
    files = _files(root)
    name = "TCGA-AD-6964-01Z-00-DX1.83AF88B9-C59B-48C6-A739-85ACB8F8ECA9.svs"
    data = files["slide1.svs"]
    fid = "0b7c8d7e-5a5e-4c1e-9c89-2c3b0d1f2e3a"
    (root / "data").mkdir()
    (root / "data" / fid).write_bytes(data)
    h.gdc = [{"file_id": fid, "file_name": name, "md5sum": hashlib.md5(data).hexdigest(), "file_size": len(data)}]
    man = pd.DataFrame({"file_name": [name, "TCGA-AA-0000-01Z-00-DX1.svs"], "patient_id": ["TCGA-AD-6964", ""]})
    res = resolve_gdc(man, api=url)
    assert res.loc[0, "gdc_file_id"] == fid and res.loc[0, "size"] == len(data)
    assert res.loc[0, "url"] == f"https://api.gdc.cancer.gov/data/{fid}"
    assert res.attrs["unresolved"] == ["TCGA-AA-0000-01Z-00-DX1.svs"] and res.loc[1, "gdc_file_id"] == ""
    assert ("/files", "file_name") in h.log
    got = fetch_manifest(res.iloc[:1].assign(url=f"{url}/data/{fid}"), tmp_path / "d", progress=False)
    assert got.loc[0, "verified"] == "md5" and (tmp_path / "d" / name).read_bytes() == data
