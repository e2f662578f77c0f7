"""Issue 28, item 17: files whose structure is damaged (a cut or patched TIFF, a corrupt HDF5 / h5ad bag, a
broken checkpoint, a corrupt parquet table, a JSON file cut in half). Each must give a PathkitError whose one
message names the file, the cause and the next step, never a raw h5py / tifffile / json / pyarrow traceback.
Files pathkit itself keeps as caches (a cohort's state, a per-slide h5ad it would recompute) are rebuilt
instead, with a warning."""
from __future__ import annotations

import json
import re
import struct
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

import pathkit as pk
from pathkit.errors import PathkitError

AGAIN = r"copy or download it again|download it again|write it again|export it again|save it again"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("structure")
    return pk.datasets.synthetic_slide(d / "base.svs", width=2048, height=1536, levels=2, blobs="full", seed=4)


def _tiff_edit(base: Path, dst: Path, edit) -> Path:
    """A copy of `base` with `edit(bytes, tifffile.TiffFile, put)` applied; put(offset, value, size) writes an
    integer in the file's byte order."""
    b = bytearray(base.read_bytes())
    with tifffile.TiffFile(base) as tf:
        order = "little" if tf.byteorder == "<" else "big"

        def put(offset, value, size):
            b[offset:offset + size] = int(value).to_bytes(size, order)

        edit(b, tf, put)
    dst.write_bytes(bytes(b))
    return dst


def _tag(tf, page: int, name: str):
    return tf.pages[page].tags[name]


_SIZES = {1: 1, 3: 2, 4: 4, 16: 8}


def _set_tag(put, tag, value):
    put(tag.valueoffset, value, _SIZES[int(tag.dtype)])


def _read_all(path):
    s = pk.read_slide(path)
    for lvl in range(s.level_count):
        w, h = s.level_dimensions[lvl]
        ds = s.level_downsamples[lvl]
        for y in range(0, h, 512):
            for x in range(0, w, 512):
                s.read_region((round(x * ds), round(y * ds)), lvl, (512, 512))


# --------------------------------------------------------------------------------------------- slides
def tiff_cut_at_60_percent(tmp_path, base):
    p = tmp_path / "cut.svs"
    p.write_bytes(base.read_bytes()[: int(base.stat().st_size * 0.6)])
    return lambda: _read_all(p), p, AGAIN


def tiff_first_ifd_past_the_end(tmp_path, base):
    def edit(b, tf, put):
        if tf.is_bigtiff:
            put(8, len(b) + 4096, 8)
        else:
            put(4, len(b) + 4096, 4)
    p = _tiff_edit(base, tmp_path / "ifd0.svs", edit)
    return lambda: pk.read_slide(p), p, AGAIN


def tiff_first_ifd_into_pixel_data(tmp_path, base):
    def edit(b, tf, put):
        off = int(tf.pages[0].dataoffsets[3]) + 10
        if tf.is_bigtiff:
            put(8, off, 8)
        else:
            put(4, off, 4)
    p = _tiff_edit(base, tmp_path / "ifd_data.svs", edit)
    return lambda: pk.read_slide(p), p, AGAIN


def tiff_next_ifd_past_the_end(tmp_path, base):
    def edit(b, tf, put):
        pg = tf.pages[0]
        n = len(pg.tags)
        # the next-IFD pointer follows the entries: count (2 or 8 bytes) + n entries (12 or 20 bytes)
        at = pg.offset + (8 + n * 20 if tf.is_bigtiff else 2 + n * 12)
        put(at, len(b) + 8192, 8 if tf.is_bigtiff else 4)
    p = _tiff_edit(base, tmp_path / "next.svs", edit)
    return lambda: pk.read_slide(p), p, AGAIN


def tiff_tile_offset_past_the_end(tmp_path, base):
    def edit(b, tf, put):
        tag = _tag(tf, 0, "TileOffsets")
        size = _SIZES[int(tag.dtype)]
        put(tag.valueoffset + 5 * size, len(b) + 100, size)
    p = _tiff_edit(base, tmp_path / "tileoff.svs", edit)
    return lambda: pk.read_slide(p), p, AGAIN


def tiff_tile_count_short(tmp_path, base):
    """The TileOffsets / TileByteCounts entries claim half the tiles the level needs."""
    def edit(b, tf, put):
        for name in ("TileOffsets", "TileByteCounts"):
            tag = _tag(tf, 0, name)
            # the entry's count field: entry start + 4 (tag code 2 + type 2)
            put(tag.offset + 4, tag.count // 2, 8 if tf.is_bigtiff else 4)
    p = _tiff_edit(base, tmp_path / "short.svs", edit)
    return lambda: _read_all(p), p, AGAIN


def tiff_level_of_zero_width(tmp_path, base):
    def edit(b, tf, put):
        _set_tag(put, _tag(tf, len(tf.pages) - 1, "ImageWidth"), 0)
    p = _tiff_edit(base, tmp_path / "zero_level.svs", edit)
    return lambda: _read_all(p), p, AGAIN


def tiff_level0_of_zero_height(tmp_path, base):
    def edit(b, tf, put):
        _set_tag(put, _tag(tf, 0, "ImageLength"), 0)
    p = _tiff_edit(base, tmp_path / "zero_height.svs", edit)
    return lambda: _read_all(p), p, AGAIN


def tiff_level_larger_than_its_tiles(tmp_path, base):
    def edit(b, tf, put):
        tag = _tag(tf, 0, "ImageWidth")
        _set_tag(put, tag, tf.pages[0].imagewidth * 4)
    p = _tiff_edit(base, tmp_path / "wide.svs", edit)
    return lambda: _read_all(p), p, AGAIN


def tiff_unknown_compression(tmp_path, base):
    def edit(b, tf, put):
        _set_tag(put, _tag(tf, 0, "Compression"), 50999)
    p = _tiff_edit(base, tmp_path / "codec.svs", edit)
    return lambda: pk.read_slide(p).read_tile(512, 512, 256, 0.5), p, r"compression|codec"


# --------------------------------------------------------------------------------------- HDF5 / h5ad
def _bag(tmp_path) -> Path:
    import h5py

    p = tmp_path / "TCGA-AA-0001-01Z-00-DX1.h5"
    with h5py.File(p, "w") as f:
        f["features"] = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
        f["coords"] = np.arange(100).reshape(50, 2) * 256
    return p


def h5_bag_cut_in_half(tmp_path, base):
    p = _bag(tmp_path)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return lambda: pk.io.read_h5_bag(p), p, AGAIN


def h5_bag_zero_bytes(tmp_path, base):
    p = _bag(tmp_path)
    p.write_bytes(b"")
    return lambda: pk.io.read_h5_bag(p), p, AGAIN


def h5_bag_that_is_text(tmp_path, base):
    p = _bag(tmp_path)
    p.write_text("slide,feature\nA,1\n")
    return lambda: pk.io.read_h5_bag(p), p, AGAIN


def h5ad_bags_cut_in_half_for_mil(tmp_path, base):
    import anndata as ad

    d = tmp_path / "bags"
    d.mkdir()
    for i in range(2):
        a = ad.AnnData(obs=pd.DataFrame({"slide_id": f"s{i}"}, index=[str(j) for j in range(20)]))
        a.obsm["X_vit_tiny_test"] = np.random.default_rng(i).standard_normal((20, 8)).astype(np.float32)
        a.write_h5ad(d / f"s{i}.h5ad")
    p = d / "s1.h5ad"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    cohort = pd.DataFrame({"label": [0, 1]}, index=["s0", "s1"])
    return (lambda: pk.tl.MIL("abmil", epochs=1, progress=False).fit(d, cohort, "label"), p, AGAIN)


def h5ad_tiles_cut_in_half_for_composition(tmp_path, base):
    import anndata as ad

    a = ad.AnnData(obs=pd.DataFrame({"slide_id": "s0", "cluster": pd.Categorical(["a", "b"] * 10)},
                                    index=[str(j) for j in range(20)]))
    p = tmp_path / "s0.h5ad"
    a.write_h5ad(p)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    cohort = ad.AnnData(obs=pd.DataFrame({"slide_id": ["s0"], "tile_file": [str(p)]}, index=["s0"]))
    return lambda: pk.tl.tile_composition(cohort, "cluster"), p, AGAIN


# ------------------------------------------------------------------------------------------ weights
def _weights(tmp_path) -> Path:
    from safetensors.torch import save_file

    enc = pk.models.build_tile_encoder("vit_tiny_test", device="cpu")
    p = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in enc.net.state_dict().items()}, str(p))
    return p


def safetensors_zero_bytes(tmp_path, base):
    p = tmp_path / "empty.safetensors"
    p.write_bytes(b"")
    return lambda: pk.models.load_tile_encoder("vit_tiny_test", weights=p), p, AGAIN


def safetensors_header_length_garbage(tmp_path, base):
    p = _weights(tmp_path)
    b = bytearray(p.read_bytes())
    b[:8] = struct.pack("<Q", 2 ** 60)
    p.write_bytes(bytes(b))
    return lambda: pk.models.load_tile_encoder("vit_tiny_test", weights=p), p, AGAIN


def pth_that_is_text(tmp_path, base):
    p = tmp_path / "model.pth"
    p.write_text("<html>403 Forbidden</html>")
    return lambda: pk.models.load_tile_encoder("vit_tiny_test", weights=p), p, AGAIN


def pth_zip_cut_in_half(tmp_path, base):
    import torch

    p = tmp_path / "model.bin"
    torch.save(pk.models.build_tile_encoder("vit_tiny_test", device="cpu").net.state_dict(), p)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return lambda: pk.models.load_tile_encoder("vit_tiny_test", weights=p), p, AGAIN


def hub_config_cut_in_half(tmp_path, base):
    w = tmp_path / "model.safetensors"
    w.write_bytes(b"not read: the config beside it is read first")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "vit", "hidden_size": 768, "num_hidden_layers": 12})[:30])
    return lambda: pk.models.load_tile_encoder("phikon", weights=w), cfg, AGAIN


def mil_config_cut_in_half(tmp_path, base):
    d = tmp_path / "mil"
    d.mkdir()
    (d / "config.json").write_text('{"format": "pathkit-mil-1", "model": "ab')
    _weights(tmp_path).rename(d / "model.safetensors")
    return lambda: pk.tl.MIL.load(d), d / "config.json", r"save it again|MIL\.save|write it again"


# --------------------------------------------------------------------------------- tables, JSON
def parquet_cut_in_half(tmp_path, base):
    p = tmp_path / "clinical.parquet"
    pd.DataFrame({"case_id": [f"TCGA-AA-{i:04d}" for i in range(50)], "age": np.arange(50)}).to_parquet(p)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return lambda: pk.io.read_table(p), p, AGAIN


def parquet_that_is_csv(tmp_path, base):
    p = tmp_path / "clinical.parquet"
    p.write_text("case_id,age\nTCGA-AA-0001,50\n")
    return lambda: pk.io.read_table(p), p, AGAIN


def geojson_cut_in_half(tmp_path, base):
    p = tmp_path / "objects.geojson"
    p.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Po')
    return lambda: pk.io.read_geojson(p), p, r"export|QuPath"


def gmt_that_is_binary(tmp_path, base):
    p = tmp_path / "sets.gmt"
    p.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    return lambda: pk.tl.pathway_scores(_tiny_rna(), p), p, AGAIN


def _tiny_rna():
    return pd.DataFrame(np.ones((3, 2)), index=["a", "b", "c"], columns=["TP53", "EGFR"])


STRUCTURE = [tiff_cut_at_60_percent, tiff_first_ifd_past_the_end, tiff_first_ifd_into_pixel_data,
             tiff_next_ifd_past_the_end, tiff_tile_offset_past_the_end, tiff_tile_count_short,
             tiff_level_of_zero_width, tiff_level0_of_zero_height, tiff_level_larger_than_its_tiles,
             tiff_unknown_compression,
             h5_bag_cut_in_half, h5_bag_zero_bytes, h5_bag_that_is_text, h5ad_bags_cut_in_half_for_mil,
             h5ad_tiles_cut_in_half_for_composition,
             safetensors_zero_bytes, safetensors_header_length_garbage, pth_that_is_text, pth_zip_cut_in_half,
             hub_config_cut_in_half, mil_config_cut_in_half,
             parquet_cut_in_half, parquet_that_is_csv, geojson_cut_in_half, gmt_that_is_binary]


def test_zeroed_jpeg_tables_are_one_clear_error(shared_data, tmp_path):
    """CMU-1's tiles share one JPEGTables tag (the synthetic slide's tiles carry their own tables): zeroed, every
    tile fails to decode; the error names the stored tile and the fix."""
    def edit(b, tf, put):
        tag = _tag(tf, 0, "JPEGTables")
        b[tag.valueoffset + 2:tag.valueoffset + tag.count - 2] = bytes(tag.count - 4)
    p = _tiff_edit(shared_data / "slides" / "CMU-1-Small-Region.svs", tmp_path / "tables.svs", edit)
    with pytest.raises(PathkitError) as e:
        pk.read_slide(p).read_tile(512, 512, 256, 0.5)
    msg = str(e.value)
    assert re.match(rf"{re.escape(str(p))}: failed to read level \d+ region at \(\d+, \d+\) size \d+x\d+ "
                    r"\(stored tile \d+\): JPEG decode failed: ", msg), msg
    assert re.search(AGAIN, msg) and "\n" not in msg, msg


@pytest.mark.parametrize("case", STRUCTURE, ids=lambda c: c.__name__)
def test_damaged_structure_is_one_clear_error(case, tmp_path, base):
    call, path, todo = case(tmp_path, base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception) as e:
            call()
    msg = str(e.value)
    assert isinstance(e.value, PathkitError), f"{type(e.value).__name__}: {msg}"
    assert str(path) in msg, msg
    assert re.search(todo, msg), msg
    assert "\n" not in msg.strip(), msg


# ----------------------------------------------------------------------- caches pathkit rebuilds itself
def _fake_tiles(job, tiles=None):
    import hashlib

    import anndata as ad

    seed = int(hashlib.sha256(Path(job.path).read_bytes()).hexdigest()[:8], 16)
    obs = pd.DataFrame({"x": np.arange(4) * 256, "y": 0}, index=[str(i) for i in range(4)])
    tiles = ad.AnnData(obs=obs)
    tiles.obsm[job.feature_key] = np.random.default_rng(seed).standard_normal((4, 4)).astype(np.float32)
    return tiles


def _cohort(tmp_path, monkeypatch):
    from pathkit.tl import cohort as cohort_mod

    monkeypatch.setattr(cohort_mod, "_embed_slide_tiles", _fake_tiles)
    d = tmp_path / "slides"
    d.mkdir()
    slides = []
    for i in range(2):
        slides.append(d / f"s{i}.svs")
        slides[-1].write_bytes(f"slide {i}".encode() * 50)

    def run():
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            c = pk.tl.embed_cohort(slides, tmp_path / "out", tile_model="vit_tiny_test", progress=False)
        return c, [str(w.message) for w in rec]
    return run, tmp_path / "out"


@pytest.mark.parametrize("damage", ["state_cut_in_half", "state_not_json", "slide_h5ad_cut_in_half",
                                    "slide_h5ad_zero_bytes"])
def test_damaged_cohort_files_are_rebuilt_and_said(tmp_path, monkeypatch, damage):
    """A resumed cohort whose own files were damaged (a disk that filled up, a copy cut short) recomputes
    what it cannot trust, says so naming the file, and ends with every slide usable."""
    run, out = _cohort(tmp_path, monkeypatch)
    first, _ = run()
    ref = np.asarray(first.obsm.get("X_mean_vit_tiny_test")) if "X_mean_vit_tiny_test" in first.obsm else None
    target = {"state_cut_in_half": out / "cohort_state.json", "state_not_json": out / "cohort_state.json",
              "slide_h5ad_cut_in_half": out / "s1.h5ad", "slide_h5ad_zero_bytes": out / "s1.h5ad"}[damage]
    if damage.endswith("cut_in_half"):
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "state_not_json":
        target.write_bytes(bytes(range(256)))
    else:
        target.write_bytes(b"")
    again, said = run()
    assert again.obs["status"].isin(["ok", "skipped"]).all(), again.obs[["status", "error"]]
    if ref is not None:
        np.testing.assert_array_equal(np.asarray(again.obsm["X_mean_vit_tiny_test"]), ref)
    assert any(str(target) in m for m in said), said


def test_unreadable_lock_file_is_named_not_broken(tmp_path, monkeypatch):
    """A lock file that is not JSON may be a live run's, half written: never broken, named with the fix."""
    run, out = _cohort(tmp_path, monkeypatch)
    out.mkdir()
    lock = out / ".pathkit.lock"
    lock.write_bytes(b"\x00\x01 not a lock {")
    with pytest.raises(pk.errors.CohortError, match=rf"{re.escape(str(lock))}; if no other pathkit run .* delete"):
        run()
    assert lock.exists()


# ------------------------------------------------------------------------------------------------ zarr
def _zarr_cases(tmp_path):
    as_file = tmp_path / "cells.zarr"
    as_file.write_bytes(b"PK\x03\x04 a zip, not a store")
    broken = tmp_path / "broken.zarr"
    (broken / "tables").mkdir(parents=True)
    (broken / ".zgroup").write_text('{"zarr_format": 2')  # cut in half
    return as_file, broken


def test_damaged_zarr_store_is_one_clear_error(tmp_path, monkeypatch):
    """spatialdata / zarr raise their own errors (KeyError, JSONDecodeError, GroupNotFoundError ...) for a
    damaged store: from_spatialdata names the store and the fix (a stand-in reader raises here; the test
    below uses the real one where spatialdata is installed)."""
    from pathkit.errors import CorruptFileError
    from pathkit.spatial import _sdata

    class Stub:
        @staticmethod
        def read_zarr(path):
            raise KeyError("multiscales")

    monkeypatch.setattr(_sdata, "_need", lambda: Stub)
    as_file, broken = _zarr_cases(tmp_path)
    with pytest.raises(CorruptFileError, match=rf"{re.escape(str(as_file))}: not a zarr store .* sdata\.write"):
        pk.io.from_spatialdata(as_file)
    with pytest.raises(CorruptFileError, match=rf"{re.escape(str(broken))}: cannot read this SpatialData zarr "
                                               r"store \(KeyError: 'multiscales'\); .*write it again"):
        pk.io.from_spatialdata(broken)


def test_damaged_zarr_store_with_the_real_reader(tmp_path):
    pytest.importorskip("spatialdata")
    from pathkit.errors import CorruptFileError

    _, broken = _zarr_cases(tmp_path)
    with pytest.raises(CorruptFileError, match=re.escape(str(broken))):
        pk.io.from_spatialdata(broken)
