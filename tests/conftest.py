"""Shared fixtures. Real data lives in ../shared/data (or $PATHKIT_TEST_DATA); never copied into the repo."""
from __future__ import annotations

import http.server
import os
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_root() -> Path:
    env = os.environ.get("PATHKIT_TEST_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: real slides, TCGA tables, a real embedding bag. Skips when absent, or fails when
    ``PATHKIT_REQUIRE_DATA=1`` (as in CI)."""
    root = _shared_root()
    if not root.is_dir():
        why = f"real test data not found at {root} (set PATHKIT_TEST_DATA to the shared/data folder)"
        if os.environ.get("PATHKIT_REQUIRE_DATA") == "1":  # CI: a test that needs real data never skips
            pytest.fail(why + "; PATHKIT_REQUIRE_DATA=1 forbids skipping", pytrace=False)
        pytest.skip(why)
    return root


@pytest.fixture(scope="session")
def shared_fixtures(shared_data) -> Path:
    """../shared/fixtures: reference outputs (e.g. the Prov-GigaPath slide encoder)."""
    root = shared_data.parent / "fixtures"
    if not root.is_dir():
        if os.environ.get("PATHKIT_REQUIRE_DATA") == "1":
            pytest.fail(f"reference fixtures not found at {root}; PATHKIT_REQUIRE_DATA=1 forbids skipping",
                        pytrace=False)
        pytest.skip(f"reference fixtures not found at {root}")
    return root


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Tests never download: the HF hub is offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


class _Files(http.server.BaseHTTPRequestHandler):
    """Serves files under `root`; records (path, X-Auth-Token header) of each request in `seen`."""
    root: Path
    seen: list

    def do_GET(self):
        self.seen.append((self.path, self.headers.get("X-Auth-Token")))
        f = self.root / self.path.lstrip("/")
        if not f.is_file():
            self.send_error(404)
            return
        body = f.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def loopback(tmp_path, monkeypatch):
    """A file server on 127.0.0.1 (never another address): yields (served folder, base url, requests seen)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    root = tmp_path / "served"
    root.mkdir()
    seen: list = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_Files,), {"root": root, "seen": seen}))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small bags and models: one intra-op thread is faster, and much faster on a loaded machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def real_tile_bag(shared_data):
    """The real tile bag of TCGA-AD-6964: (feats 777 x 512 float32, coords 777 x 2 stored as (y, x))."""
    import h5py

    with h5py.File(shared_data / "embeddings" / "TCGA-AD-6964-01Z-00-DX1.features.h5", "r") as f:
        return f["feats"][:], f["coords"][:]


@pytest.fixture(scope="session")
def clustered_bag(shared_data):
    """The real bag's features (float64) and a 2-cluster KMeans label per tile (planted-signal tests)."""
    from _planted import real_bag

    return real_bag(shared_data)


@pytest.fixture(scope="session")
def rna(shared_data):
    """The real TCGA COADREAD RNA table (log2, patients x genes, duplicated rows dropped)."""
    from _planted import real_rna

    return real_rna(shared_data)


@pytest.fixture(scope="session")
def real_feats(real_tile_bag):
    """The real bag's 777 x 512 tile features (the MIL tests plant signals in them)."""
    feats, coords = real_tile_bag
    assert feats.shape == (777, 512) and coords.shape == (777, 2)
    return feats
