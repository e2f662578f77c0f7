"""Security: access tokens never reach outputs, provenance, logs or warnings; manifests are verified before
their files are used (a download or a local file whose checksum differs is refused or fetched again)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pathkit as pk
from _hf import hf_cache
from pathkit.errors import ChecksumError
from pathkit.io.manifest import FetchError

TOKEN = "hf_secretPATHKITtest0123456789abcdefXYZ"  # never a real token: a marker to look for
REPO = "pathkit-test/tiny-vit"


def _tiny_weights(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(3)
    enc = pk.models.build_tile_encoder("vit_tiny_test", device="cpu")
    save_file({k: v.contiguous() for k, v in enc.net.state_dict().items()}, str(path))


def _strings(obj):
    """Every string (keys and values) inside nested dicts / lists / arrays of uns."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, np.ndarray) and obj.dtype.kind in "OUS":
        for v in obj.ravel():
            yield str(v)
    else:
        yield str(obj)


def _files_under(root: Path):
    return [p for p in root.rglob("*") if p.is_file()]


def test_token_never_written_to_outputs_logs_or_provenance(tmp_path, monkeypatch, caplog, capfd):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = tmp_path / "hub"
    snap = hf_cache(hub, REPO, {"model.safetensors": _tiny_weights})
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    slide = pk.datasets.synthetic_slide(tmp_path / "slides" / "tok.svs", width=768, height=512, blobs="full")
    source = f"hf_hub:{REPO}"

    hf_log = logging.getLogger("huggingface_hub")
    old_level = hf_log.level
    hf_log.setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    try:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            path = pk.models.weights.resolve(source)
            a = pk.pp.tile(slide)
            pk.tl.embed_tiles(a, slide, "vit_tiny_test", weights=source, num_workers=0, progress=True)
            out = tmp_path / "out" / "tok.h5ad"
            pk._io.write_h5ad_atomic(a, out)
            c = pk.tl.embed_cohort([slide], tmp_path / "cohort", tile_model="vit_tiny_test", weights=source,
                                   slide_model="mean", embed_kwargs={"num_workers": 0}, progress=True)
    finally:
        hf_log.setLevel(old_level)

    # the weights really came from the offline cache, and the run did what it should
    assert path == snap / "model.safetensors"
    m = a.uns["models"]["X_vit_tiny_test"]
    assert m["weights"] == source and m["weights_sha256"] == pk.models.weights.sha256_file(path)
    assert a.obsm["X_vit_tiny_test"].shape == (6, 192) and c.obs["status"].tolist() == ["ok"]
    # ... and the token is nowhere
    assert not any(TOKEN in s for s in _strings(a.uns))
    assert not any(TOKEN in s for s in _strings(c.uns))
    for f in _files_under(tmp_path / "out") + _files_under(tmp_path / "cohort"):
        assert TOKEN.encode() not in f.read_bytes(), f
    assert not any(TOKEN in str(v) for v in c.obs.to_numpy().ravel())
    assert TOKEN not in caplog.text
    assert not any(TOKEN in str(w.message) for w in rec)
    std = capfd.readouterr()
    assert TOKEN not in std.out and TOKEN not in std.err
    # a failing hub lookup with the token set does not echo it either
    with pytest.raises(pk.errors.WeightsError) as e:
        pk.models.load_tile_encoder("vit_tiny_test", weights="hf_hub:pathkit-test/not-cached")
    assert TOKEN not in str(e.value) and "HF_HUB_OFFLINE is set" in str(e.value)


# ------------------------------------------------------------------------------------------ manifests
def _row(name, data, url, **over):
    row = {"file_name": name, "size": len(data), "md5": hashlib.md5(data).hexdigest(),
           "sha256": hashlib.sha256(data).hexdigest(), "url": f"{url}/{name}"}
    row.update(over)
    return row


def test_fetch_refuses_a_download_whose_checksum_differs(loopback, tmp_path):
    root, url, _ = loopback
    real, served = b"the released slide" * 500, b"a tampered slide!!" * 500  # same size: only hashes tell
    assert len(real) == len(served)
    (root / "s.svs").write_bytes(served)
    man = pd.DataFrame([_row("s.svs", real, url)])
    dest = tmp_path / "dest"
    with pytest.raises(ChecksumError, match="s.svs: downloaded file rejected: md5"):
        pk.io.fetch_manifest(man, dest, progress=False)
    assert not (dest / "s.svs").exists() and not (dest / ".s.svs.part").exists()
    rep = pk.io.fetch_manifest(man, dest, progress=False, errors="record")
    assert rep["status"].tolist() == ["failed"] and "rejected" in rep["error"][0]
    assert not (dest / "s.svs").exists()
    # with the right content the same manifest succeeds and the file is verified by both hashes
    (root / "s.svs").write_bytes(real)
    rep = pk.io.fetch_manifest(man, dest, progress=False)
    assert rep["status"].tolist() == ["downloaded"] and rep["verified"][0] == "md5+sha256"
    assert (dest / "s.svs").read_bytes() == real


def test_local_file_with_bad_checksum_is_fetched_again(loopback, tmp_path):
    root, url, seen = loopback
    real = os.urandom(50_000)
    (root / "s.svs").write_bytes(real)
    man = pd.DataFrame([_row("s.svs", real, url)])
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "s.svs").write_bytes(bytes(50_000))  # right size, wrong bytes
    rep = pk.io.fetch_manifest(man, dest, progress=False)
    assert rep["status"].tolist() == ["downloaded"] and (dest / "s.svs").read_bytes() == real
    assert len(seen) == 1
    # verified once: a second run skips it without a request ...
    rep = pk.io.fetch_manifest(man, dest, progress=False)
    assert rep["status"].tolist() == ["skipped"] and len(seen) == 1
    # ... and a later change of the file (new mtime) is noticed and repaired
    (dest / "s.svs").write_bytes(b"x" * 50_000)
    rep = pk.io.fetch_manifest(man, dest, progress=False)
    assert rep["status"].tolist() == ["downloaded"] and (dest / "s.svs").read_bytes() == real and len(seen) == 2
    # with nowhere to fetch from, a bad local file is reported, never kept as valid
    (dest / "s.svs").write_bytes(b"y" * 50_000)
    rep = pk.io.fetch_manifest(man.assign(url=""), dest, progress=False, errors="record")
    assert rep["status"].tolist() == ["failed"] and "no url" in rep["error"][0]


def test_cohort_refuses_a_slide_that_differs_from_its_manifest(tmp_path):
    src = tmp_path / "slides"
    good = pk.datasets.synthetic_slide(src / "a.svs", width=512, height=512, blobs="full", seed=0)
    other = pk.datasets.synthetic_slide(tmp_path / "b_real.svs", width=512, height=512, blobs="full", seed=1)
    swapped = src / "b.svs"
    swapped.write_bytes(other.read_bytes())
    data_a = good.read_bytes()
    man = pd.DataFrame([_row("a.svs", data_a, "https://example.org"),
                        _row("b.svs", b"the file the manifest describes", "https://example.org")])
    with pytest.warns(UserWarning, match="1 of 2"):
        c = pk.tl.embed_cohort(man, tmp_path / "out", tile_model="vit_tiny_test", slide_dir=src,
                               embed_kwargs={"num_workers": 0}, progress=False)
    assert c.obs["status"].tolist() == ["ok", "failed"]
    err = c.obs["error"].iloc[1]
    assert err.startswith("ChecksumError") and str(swapped) in err and "re-download" in err
    assert not (tmp_path / "out" / "b.h5ad").exists()


def test_fetch_headers_are_used_but_never_stored(loopback, tmp_path):
    root, url, seen = loopback
    data = b"controlled-access slide" * 100
    (root / "c.svs").write_bytes(data)
    man = pd.DataFrame([_row("c.svs", data, url), _row("missing.svs", b"zz", url)])
    dest = tmp_path / "dest"
    with pytest.raises(FetchError) as e:
        pk.io.fetch_manifest(man, dest, progress=False, retries=0, headers={"X-Auth-Token": TOKEN})
    assert ("/c.svs", TOKEN) in seen  # the header was sent
    assert TOKEN not in str(e.value) and not e.value.report.astype(str).apply(
        lambda col: col.str.contains(TOKEN)).any().any()
    for f in _files_under(dest):
        assert TOKEN.encode() not in f.read_bytes(), f
    state = json.loads((dest / ".pathkit_fetch.json").read_text())
    assert list(state) == ["c.svs"]
