"""Bad inputs: one test per kind. Each checks the exception class (pathkit.errors), that the message names
the file / field at fault and that it says what to do; docs/reliability.md tabulates the results.
A cohort test checks that bad files among good ones are recorded, not fatal."""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import pathkit as pk
from pathkit.datasets import synthetic_slide
from pathkit.errors import (
    ChecksumError,
    GridError,
    MppError,
    NotBrightfieldError,
    SlideReadError,
    TableError,
    UnsafePickleError,
    WeightsError,
)
from pathkit.models.registry import ModelSpec

CMU = "slides/CMU-1-Small-Region.svs"


def _small_slide(path, **kw):
    kw.setdefault("width", 768)
    kw.setdefault("height", 768)
    kw.setdefault("blobs", "full")
    return synthetic_slide(path, **kw)


# ------------------------------------------------------------------------------------------ slide files
def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.svs"
    p.write_bytes(b"")
    with pytest.raises(SlideReadError) as e:
        pk.read_slide(p)
    msg = str(e.value)
    assert str(p) in msg and "empty (0 bytes)" in msg


@pytest.mark.parametrize("where", ["head", "tail"])
def test_truncated_svs(shared_data, tmp_path, where):
    """A cut copy of a real SVS. CMU-1-Small-Region keeps its IFDs near the end of the file, so a cut at half
    loses the first IFD ("head") and a cut at 90% loses the later pages ("tail")."""
    data = (shared_data / CMU).read_bytes()
    p = tmp_path / f"cut_{where}.svs"
    p.write_bytes(data[: len(data) // 2 if where == "head" else int(len(data) * 0.9)])
    with pytest.raises(SlideReadError) as e:
        pk.read_slide(p)
    msg = str(e.value)
    assert str(p) in msg
    assert "truncated" in msg and "download it again" in msg, msg


def test_text_file_renamed_svs(tmp_path):
    p = tmp_path / "notes.svs"
    p.write_text("patient notes, not an image\n")
    with pytest.raises(SlideReadError) as e:
        pk.read_slide(p)
    msg = str(e.value)
    assert str(p) in msg and "not a TIFF file" in msg and "looks like text" in msg
    assert "extension" in msg  # the hint: the extension is lying


def test_dicom(shared_data):
    p = shared_data / "slides/pathml_small_dicom.dcm"
    with pytest.raises(SlideReadError) as e:
        pk.read_slide(p, backend="tiffslide")
    msg = str(e.value)
    assert str(p) in msg and "DICOM" in msg and "backend='wsidicom'" in msg and 'pathkit[dicom]' in msg


def test_fluorescence_ndpi(shared_data):
    p = shared_data / "slides/Stritt_test3-DAPI.ndpi"
    with pytest.raises(NotBrightfieldError) as e:
        pk.read_slide(p)
    msg = str(e.value)
    assert str(p) in msg and "fluorescence" in msg and "allow_non_brightfield=True" in msg
    # opting in reads it, with a warning that stays visible
    with pytest.warns(UserWarning, match="fluorescence"):
        s = pk.read_slide(p, allow_non_brightfield=True)
    assert s.dimensions == (3968, 4864) and abs(s.mpp - 0.228) < 0.01
    assert s.properties["pathkit.modality"] == "non-brightfield"


def test_multiplex_qptiff(shared_data):
    p = shared_data / "slides/pathml_small_vectra.qptiff"
    with pytest.raises(NotBrightfieldError) as e:
        pk.read_slide(p)
    msg = str(e.value)
    assert str(p) in msg and "multiplex" in msg and "3 channel" in msg and "allow_non_brightfield=True" in msg


def test_non_pyramidal_tiff(shared_data):
    """A plain stripped RGB TIFF without mpp: readable (one level) once the user gives the mpp."""
    p = shared_data / "slides/histolab_kidney-48-5.tif"
    with pytest.raises(MppError) as e:
        pk.read_slide(p)
    msg = str(e.value)
    assert str(p) in msg and "mpp=" in msg
    s = pk.read_slide(p, mpp=0.5)
    assert (s.level_count, s.dimensions, s.mpp_source) == (1, (1493, 901), "user")
    tile = s.read_tile(0, 0, tile_px=256, mpp=0.5)
    assert tile.shape == (256, 256, 3) and tile.dtype == np.uint8
    # at 1 mpp the one level is resized: a 512-px level-0 square becomes 256 px
    assert s.read_tile(0, 0, tile_px=256, mpp=1.0).shape == (256, 256, 3)


def test_missing_mpp(shared_data):
    p = shared_data / "slides/TCGA-CR-7395-01A-01-TS1.svs"
    with pytest.raises(MppError) as e:
        pk.read_slide(p)
    msg = str(e.value)
    assert str(p) in msg and "no microns-per-pixel" in msg and "pk.read_slide(path, mpp=" in msg
    s = pk.read_slide(p, mpp=0.25)
    assert s.mpp == 0.25 and s.mpp_source == "user" and s.dimensions == (4443, 3567)


def test_implausible_mpp(shared_data, tmp_path):
    import tifffile

    # 1) a 96-dpi resolution tag (screen / print setting): 25400 / 96 = 264.58 um per pixel
    p = tmp_path / "screenshot.tif"
    img = np.full((512, 512, 3), 230, np.uint8)
    img[128:384, 128:384] = (180, 80, 150)
    tifffile.imwrite(p, img, photometric="rgb", resolution=(96, 96), resolutionunit="INCH")
    with pytest.raises(MppError) as e:
        pk.read_slide(p)
    msg = str(e.value)
    assert str(p) in msg and "96-dpi" in msg and "mpp=0.5" in msg and "allow_implausible_mpp=True" in msg
    with pytest.warns(UserWarning, match="96-dpi"):
        s = pk.read_slide(p, allow_implausible_mpp=True)
    assert s.mpp == pytest.approx(25400 / 96)
    assert pk.read_slide(p, mpp=0.5).mpp == 0.5  # the user's value wins and is plausible
    # 2) a user typo: mpp=12 (um/px) is not a microscope
    cmu = shared_data / CMU
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "differs from the metadata" warning; the error is what matters
        with pytest.raises(MppError) as e:
            pk.read_slide(cmu, mpp=12)
    msg = str(e.value)
    assert str(cmu) in msg and "mpp 12" in msg and "Check the value" in msg and "allow_implausible_mpp" in msg


def test_slide_without_tissue(tmp_path):
    p = _small_slide(tmp_path / "blank.svs", blobs="none")
    s = pk.read_slide(p)
    with pytest.warns(UserWarning) as rec:
        tiles = pk.pp.tile(s)
    msgs = [str(w.message) for w in rec]
    assert any("blank" in m and "no tissue" in m for m in msgs), msgs
    assert any("blank" in m and "no tiles" in m and "0.1" in m for m in msgs), msgs
    assert list(tiles.obs.columns) == ["slide_id", "x", "y", "tissue", "pen", "focus", "qc_pass"] and len(tiles) == 0
    assert tiles.uns["tile_spec"]["mpp"] == 0.5
    with pytest.warns(UserWarning, match="there are no tiles") as rec:
        pk.tl.embed_tiles(tiles, s, "vit_tiny_test", num_workers=0, progress=False)
    assert str(p) in str(rec[0].message)
    assert tiles.obsm["X_vit_tiny_test"].shape == (0, 192) and tiles.obsm["spatial"].shape == (0, 2)
    assert tiles.uns["slide"]["slide_id"] == "blank"
    assert tiles.uns["models"]["X_vit_tiny_test"]["name"] == "vit_tiny_test"


# ------------------------------------------------------------------------------------------ coordinates, tables
SMALL_LONGNET = ModelSpec(name="longnet_bad_inputs", kind="slide", arch="pathkit:longnet",
                          kwargs={"in_chans": 192, "embed_dim": 32, "depth": 1, "heads": 2, "mlp_ratio": 2,
                                  "slide_ngrids": 1000, "tile_size": 256, "max_wsi_size": 262144}, embed_dim=32)


def test_coordinates_off_the_longnet_grid():
    """A 'slide' 300 mm wide: tiles beyond 1000 cells of 256 px at 0.5 mpp do not fit the position grid."""
    n = 4
    xs = np.array([0, 256, 512_000, 600_000], np.int64)  # cell of the tile's corner: 0, 1, 2000, 2343
    a = ad.AnnData(obs=pd.DataFrame({"slide_id": "huge", "x": xs, "y": np.zeros(n, np.int64)},
                                    index=[str(i) for i in range(n)]))
    a.obsm["X_tiny"] = np.random.default_rng(0).standard_normal((n, 192)).astype(np.float32)
    a.uns["tile_spec"] = {"tile_px": 256, "mpp": 0.5, "slide_mpp": 0.5}
    a.uns["slide"] = {"slide_id": "huge", "mpp": 0.5}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RANDOM weights
        with pytest.raises(GridError) as e:
            pk.tl.embed_slide(a, SMALL_LONGNET, weights="random")
    msg = str(e.value)
    assert "'huge'" in msg and "obs 'x'/'y'" in msg  # the slide and the fields at fault
    assert "cells x 0..2343" in msg and "max allowed 999" in msg
    assert "crop the slide or split it into regions" in msg
    assert "slide_embeddings" not in a.uns  # nothing half-written


def test_nan_and_duplicate_ids_in_tables():
    slides = ["TCGA-AA-0001-01Z-00-DX1", "TCGA-AA-0002-01Z-00-DX1", "TCGA-AA-0003-01Z-00-DX1"]
    cohort = ad.AnnData(obs=pd.DataFrame({"slide_id": slides}, index=slides))
    clinical = pd.DataFrame({"case_id": ["TCGA-AA-0001", None, "TCGA-AA-0002", "TCGA-AA-0002"],
                             "stage": ["I", "II", "III", "IV"]})
    # default: the first row of a duplicate id is kept, and everything is reported
    with pytest.warns(pk.io.LinkWarning) as rec:
        out = pk.link(cohort, clinical)
    rep = out.uns["link_report"]["clinical"]
    assert rep["n_nan_ids"] == 1 and rep["duplicate_ids"] == ["TCGA-AA-0002"]
    assert rep["n_conflicting_duplicate_ids"] == 1 and rep["conflicting_duplicate_columns"] == ["stage"]
    assert rep["cohort_ids_unmatched"] == ["TCGA-AA-0003"]
    assert out.obs["stage"].tolist()[:2] == ["I", "III"] and pd.isna(out.obs["stage"].iloc[2])
    summary = str(rec[0].message)
    assert "1 row(s) without an id" in summary and "1 duplicate id(s) (1 with differing values; kept 'first')" \
        in summary and "link_report" in summary
    # refusing duplicates: TableError naming the table and the id
    with pytest.raises(TableError) as e:
        pk.link(cohort, clinical, duplicates="raise")
    msg = str(e.value)
    assert "clinical" in msg and "TCGA-AA-0002" in msg and "differing values" in msg
    # a missing barcode in a column parsed strictly
    with pytest.raises(TableError, match="missing value nan"):
        pk.tcga.parse_barcodes(pd.Series(["TCGA-AA-0001", np.nan], name="case_id"))
    coerced = pk.tcga.parse_barcodes(pd.Series(["TCGA-AA-0001", np.nan]), errors="coerce")
    assert coerced["patient"].tolist() == ["TCGA-AA-0001", None] and coerced["error"].tolist()[1] == "missing id"


def test_nan_and_duplicate_id_errors_say_what_to_do():
    cohort = ad.AnnData(obs=pd.DataFrame({"slide_id": ["TCGA-AA-0002-01Z-00-DX1"]}, index=["s"]))
    clinical = pd.DataFrame({"case_id": ["TCGA-AA-0002", "TCGA-AA-0002"], "stage": ["III", "IV"]})
    with pytest.raises(TableError) as e:
        pk.link(cohort, clinical, duplicates="raise")
    assert "duplicates='first'" in str(e.value), str(e.value)
    with pytest.raises(TableError) as e:
        pk.tcga.parse_barcodes(pd.Series(["TCGA-AA-0001", np.nan], name="case_id"))
    assert "case_id" in str(e.value) and "errors='coerce'" in str(e.value), str(e.value)


# ------------------------------------------------------------------------------------------ manifests
def test_manifest_checksum_mismatch(loopback, tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    root, url, _ = loopback
    data = b"slide bytes " * 1000
    (root / "a.svs").write_bytes(data)
    wrong = hashlib.sha256(b"another release").hexdigest()
    man = pd.DataFrame([{"file_name": "a.svs", "size": len(data), "sha256": wrong, "url": f"{url}/a.svs"}])
    dest = tmp_path / "dest"
    with pytest.raises(ChecksumError) as e:
        pk.io.fetch_manifest(man, dest, progress=False)
    msg = str(e.value)
    assert "a.svs" in msg and wrong in msg and hashlib.sha256(data).hexdigest() in msg and "removed" in msg
    assert not (dest / "a.svs").exists() and not (dest / ".a.svs.part").exists()  # nothing unverified kept
    rep = e.value.report
    assert rep["status"].tolist() == ["failed"]
    # a malformed checksum is caught before any download, naming the column and line
    with pytest.raises(TableError, match=r"sha256 must be 64 hex digits at line\(s\) \[2\]"):
        pk.io.validate_manifest(man.assign(sha256="abc"))


# ------------------------------------------------------------------------------------------ weights
@pytest.mark.slow  # the first identification builds every registry entry on the meta device (~15-30 s here)
def test_weights_for_the_wrong_architecture(tmp_path):
    """vit_tiny_test's weights given to kaiko_vits16 (ViT-S/16): the error lists what differs and names the
    registry entry the file does fit."""
    from safetensors.torch import save_file

    enc = pk.models.build_tile_encoder("vit_tiny_test", device="cpu")
    p = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in enc.net.state_dict().items()}, str(p))
    with pytest.raises(WeightsError) as e:
        pk.models.load_tile_encoder("kaiko_vits16", weights=p)
    msg = str(e.value)
    assert str(p) in msg and "'kaiko_vits16'" in msg
    assert "120 missing keys" in msg and "blocks.10." in msg and "wrong shapes" in msg and "(192,) vs model (384,)" in msg
    assert "pass model='vit_tiny_test'" in msg


def test_corrupted_weights_file(tmp_path):
    from safetensors.torch import save_file

    enc = pk.models.build_tile_encoder("vit_tiny_test", device="cpu")
    good = tmp_path / "good.safetensors"
    save_file({k: v.contiguous() for k, v in enc.net.state_dict().items()}, str(good))
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError) as e:
        pk.models.load_tile_encoder("vit_tiny_test", weights=bad)
    msg = str(e.value)
    assert str(bad) in msg and "corrupted or truncated" in msg
    pth = tmp_path / "cut.pth"
    torch.save(enc.net.state_dict(), tmp_path / "good.pth")
    pth.write_bytes((tmp_path / "good.pth").read_bytes()[:50_000])
    with pytest.raises(WeightsError, match="corrupted or truncated") as e:
        pk.models.load_tile_encoder("vit_tiny_test", weights=pth)
    assert str(pth) in str(e.value)


def test_corrupted_weights_error_says_what_to_do(tmp_path):
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(WeightsError) as e:
        pk.models.load_tile_encoder("vit_tiny_test", weights=bad)
    assert "download it again" in str(e.value), str(e.value)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "the pickle ran"))  # would create a file


def test_pickle_that_would_execute_code(tmp_path):
    marker = tmp_path / "payload_ran"
    p = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": _Payload(str(marker))}, p)
    with pytest.raises(UnsafePickleError) as e:
        pk.models.load_tile_encoder("vit_tiny_test", weights=p)
    msg = str(e.value)
    assert str(p) in msg and "refuses" in msg and "safetensors" in msg
    assert not marker.exists()
    # the payload is live: an unsafe load does run it, so the check above can fail
    torch.load(p, weights_only=False)
    assert marker.read_text() == "the pickle ran"


# ------------------------------------------------------------------------------------------ cohort
def test_cohort_records_bad_slides_and_embeds_good_ones(tmp_path):
    src = tmp_path / "slides"
    good = [_small_slide(src / f"good{i}.svs", seed=i) for i in range(2)]
    empty = src / "empty.svs"
    empty.write_bytes(b"")
    text = src / "text.svs"
    text.write_text("not a slide")
    cut = src / "cut.svs"
    cut.write_bytes(good[0].read_bytes()[:4000])
    blank = _small_slide(src / "blank.svs", blobs="none")
    slides = [good[0], empty, text, good[1], cut, blank]
    with pytest.warns(UserWarning, match=r"embed_cohort: 4 of 6 slide\(s\) failed"):
        c = pk.tl.embed_cohort(slides, tmp_path / "out", tile_model="vit_tiny_test", slide_model="mean",
                               embed_kwargs={"num_workers": 0}, progress=False)
    obs = c.obs
    assert obs["slide_id"].tolist() == ["good0", "empty", "text", "good1", "cut", "blank"]
    assert obs["status"].tolist() == ["ok", "failed", "failed", "ok", "failed", "failed"]
    err = dict(zip(obs["slide_id"], obs["error"]))
    assert err["good0"] == err["good1"] == ""
    assert err["empty"].startswith("SlideReadError") and "empty (0 bytes)" in err["empty"]
    assert err["text"].startswith("SlideReadError") and "not a TIFF" in err["text"]
    assert err["cut"].startswith("SlideReadError") and str(cut) in err["cut"] and "truncated" in err["cut"]
    assert err["blank"].startswith("TableError") and "no tissue tiles" in err["blank"]
    # 768 px at 0.5 mpp, all tissue: a 3 x 3 grid of 256-px tiles
    assert obs["n_tiles"].tolist() == [9, 0, 0, 9, 0, 0]
    X = c.obsm["X_mean_vit_tiny_test"]
    assert np.isfinite(X[[0, 3]]).all() and np.isnan(X[[1, 2, 4, 5]]).all()
    tile = ad.read_h5ad(tmp_path / "out" / "good1.h5ad")
    np.testing.assert_allclose(X[3], tile.obsm["X_vit_tiny_test"].mean(0), rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "out" / "empty.h5ad").exists()
    assert c.uns["cohort"]["n_failed"] == 4 and c.uns["cohort"]["n_ok"] == 2
