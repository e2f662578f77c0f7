"""Synthetic slides (structure, metadata, pixels, geometry, streaming) and the sample slide (env, cache,
offline fallback)."""
from __future__ import annotations

import hashlib
import shutil
import tracemalloc

import numpy as np
import pytest
import tifffile
import tiffslide

import pathkit as pk
from pathkit import datasets


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_synthetic_structure(tmp_path):
    p = datasets.synthetic_slide(tmp_path / "s.svs", width=3000, height=2000, mpp=0.25, levels=3, tile=256)
    assert p == tmp_path / "s.svs" and p.is_file()
    with tifffile.TiffFile(p) as tf:
        assert tf.is_svs
        base = tf.series[0]
        assert [lvl.shape[:2] for lvl in base.levels] == [(2000, 3000), (500, 750), (125, 187)]
        for lvl in base.levels:
            page = lvl.pages[0]
            assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
            assert page.compression == tifffile.COMPRESSION.JPEG
    ts = tiffslide.TiffSlide(p)
    assert ts.properties["tiffslide.vendor"] == "aperio"
    assert ts.properties["tiffslide.mpp-x"] == pytest.approx(0.25)
    assert ts.properties["tiffslide.objective-power"] == 40
    s = pk.read_slide(p)
    assert s.level_downsamples[1] == pytest.approx(4.0, rel=1e-3)
    truth = datasets.synthetic_truth(p)
    assert truth["width"] == 3000 and truth["mpp"] == 0.25 and truth["levels"] == 3
    assert truth["blobs"] == datasets.default_blobs(3000, 2000)


def test_synthetic_pixels_follow_geometry(tmp_path):
    blobs = [{"kind": "rect", "x0": 256, "y0": 256, "x1": 768, "y1": 512},
             {"kind": "disc", "cx": 1400, "cy": 700, "r": 200}]
    p = datasets.synthetic_slide(tmp_path / "g.tif", width=2048, height=1024, mpp=0.5, blobs=blobs)
    s = pk.read_slide(p)
    img = s.read_region((0, 0), 0, (2048, 1024)).astype(float)
    lum = img.mean(axis=2)
    truth = datasets.truth_mask(datasets.synthetic_truth(p), 1.0)
    # tissue pixels are H&E coloured (darker, red > green), glass is near white
    assert lum[truth].mean() < 195 and lum[~truth].mean() > 240
    r, g = img[..., 0], img[..., 1]
    assert (r[truth] - g[truth]).mean() > 40
    assert truth.sum() - 512 * 256 == pytest.approx(np.pi * 200 ** 2, rel=0.01)
    # JPEG edges aside, a plain threshold recovers the geometry
    assert ((lum < 215) == truth).mean() > 0.99


def test_synthetic_deterministic_and_atomic(tmp_path):
    a = datasets.synthetic_slide(tmp_path / "a.svs", width=1024, height=1024, seed=3)
    b = datasets.synthetic_slide(tmp_path / "b.svs", width=1024, height=1024, seed=3)
    c = datasets.synthetic_slide(tmp_path / "c.svs", width=1024, height=1024, seed=4)
    assert np.array_equal(pk.read_slide(a).read_region((0, 0), 0, (1024, 1024)),
                          pk.read_slide(b).read_region((0, 0), 0, (1024, 1024)))
    assert not np.array_equal(pk.read_slide(a).read_region((256, 256), 0, (256, 256)),
                              pk.read_slide(c).read_region((256, 256), 0, (256, 256)))
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a.svs", "a.svs.json", "b.svs", "b.svs.json",
                                                         "c.svs", "c.svs.json"]  # no temporary left


def test_synthetic_streams_tiles(tmp_path):
    # 8192 x 8192 RGB is 201 MB raw; tiles are rendered one at a time, so Python-side peak memory stays small
    tracemalloc.start()
    p = datasets.synthetic_slide(tmp_path / "big.svs", width=8192, height=8192, mpp=0.5, blobs="full")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 100e6
    assert pk.read_slide(p).level_dimensions == [(8192, 8192), (2048, 2048)]
    assert len(pk.pp.tile(p)) == 32 * 32


def test_synthetic_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        datasets.synthetic_slide(tmp_path / "x.svs", width=512, height=512, blobs=[{"kind": "star"}])
    with pytest.raises(ValueError, match="mpp"):
        datasets.synthetic_slide(tmp_path / "x.svs", width=512, height=512, mpp=0)
    with pytest.raises(FileNotFoundError):
        datasets.synthetic_truth(tmp_path / "none.svs")


# ------------------------------------------------------------------------------------------ sample slide
def test_sample_sha_matches_shared_copy(shared_data):
    assert _sha(shared_data / "slides" / "CMU-1-Small-Region.svs") == datasets.SAMPLE_SHA256


def test_sample_from_env(monkeypatch, tmp_path, shared_data):
    monkeypatch.setenv("PATHKIT_SAMPLE_SLIDE", str(shared_data / "slides" / "CMU-1-Small-Region.svs"))
    path, info = datasets.sample_slide(return_info=True)
    assert info["source"] == "env" and path.name == "CMU-1-Small-Region.svs"
    monkeypatch.setenv("PATHKIT_SAMPLE_SLIDE", str(tmp_path / "nope.svs"))
    with pytest.raises(FileNotFoundError, match="PATHKIT_SAMPLE_SLIDE"):
        datasets.sample_slide()


def test_sample_from_cache(monkeypatch, tmp_path, shared_data):
    monkeypatch.delenv("PATHKIT_SAMPLE_SLIDE", raising=False)
    shutil.copy(shared_data / "slides" / "CMU-1-Small-Region.svs", tmp_path / datasets.SAMPLE_NAME)
    path, info = datasets.sample_slide(cache_dir=tmp_path, return_info=True)
    assert info["source"] == "cache" and path == tmp_path / datasets.SAMPLE_NAME


def test_sample_offline_fallback(monkeypatch, tmp_path):
    import pooch

    def offline(*args, **kwargs):
        raise ConnectionError("network unreachable (test)")

    monkeypatch.delenv("PATHKIT_SAMPLE_SLIDE", raising=False)
    monkeypatch.setattr(pooch, "retrieve", offline)
    # a cached copy with the wrong checksum is not used
    (tmp_path / datasets.SAMPLE_NAME).write_bytes(b"corrupt")
    with pytest.warns(UserWarning, match="SYNTHETIC"):
        path, info = datasets.sample_slide(cache_dir=tmp_path, return_info=True)
    assert info["source"] == "synthetic" and "network unreachable" in info["error"]
    s = pk.read_slide(path)
    assert s.vendor == "aperio" and s.mpp == 0.5 and s.dimensions == (4096, 3072)
    assert len(pk.pp.tile(s)) > 20
    with pytest.warns(UserWarning, match="SYNTHETIC"):  # second call reuses the generated file
        again = datasets.sample_slide(cache_dir=tmp_path)
    assert again == path
    with pytest.raises(OSError, match="could not download"):
        datasets.sample_slide(offline_ok=False, cache_dir=tmp_path)
