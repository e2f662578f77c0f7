"""The `pathkit` command line: info, tile, embed, demo, fetch, list-models; errors exit 2 in one line."""
from __future__ import annotations

import subprocess
import sys
import types
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import pathkit as pk
from pathkit.cli import main

MODEL = "vit_tiny_test"


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    blobs = [{"kind": "rect", "x0": 256, "y0": 256, "x1": 1280, "y1": 768}]  # 4 x 2 whole tiles
    return pk.datasets.synthetic_slide(tmp_path_factory.mktemp("cli") / "clislide.svs",
                                       width=1536, height=1024, mpp=0.5, blobs=blobs)


def test_info(synth, capsys):
    assert main(["info", str(synth)]) == 0
    out = capsys.readouterr().out
    assert "clislide" in out and "1536 x 1024 px" in out
    assert "0.5000 um/px (metadata)" in out and "aperio" in out


def test_info_mpp_override(synth, capsys):
    with pytest.warns(UserWarning, match="0.25"):  # the override differs from the metadata: said so
        assert main(["info", str(synth), "--mpp", "0.25"]) == 0
    assert "0.2500 um/px (user)" in capsys.readouterr().out


def test_tile_h5ad_equals_pp_tile_and_embeds(synth, tmp_path, capsys):
    out = tmp_path / "t" / "tiles.h5ad"
    assert main(["tile", str(synth), "--tile-px", "256", "--target-mpp", "0.5", "--min-tissue", "0.5",
                 "--out", str(out)]) == 0
    got = ad.read_h5ad(out)
    slide = pk.read_slide(synth)
    ref = pk.pp.tile(slide, tile_px=256, mpp=0.5, min_tissue=0.5)
    assert len(got) == len(ref) == 8  # the 4 x 2 tissue rectangle
    np.testing.assert_array_equal(got.obs[["x", "y"]].to_numpy(), ref.obs[["x", "y"]].to_numpy())
    np.testing.assert_allclose(got.obs["tissue"].to_numpy(), ref.obs["tissue"].to_numpy())
    assert got.uns["tile_spec"]["min_tissue"] == 0.5
    assert f"{len(ref)} tiles" in capsys.readouterr().out
    with pytest.warns(UserWarning, match="RANDOM weights"):  # the file the CLI wrote is what embed_tiles takes
        pk.tl.embed_tiles(got, slide, MODEL, num_workers=0, progress=False)
    assert got.obsm[f"X_{MODEL}"].shape == (8, 192)
    assert main(["tile", str(synth), "--out", str(tmp_path / "tiles.csv")]) == 2
    assert ".h5ad" in capsys.readouterr().err


def test_embed_writes_h5ad_equal_to_api(synth, tmp_path, capsys):
    out = tmp_path / "emb"
    with pytest.warns(UserWarning, match="RANDOM weights"):
        rc = main(["embed", str(synth), "--model", MODEL, "--out", str(out), "--device", "cpu",
                   "--batch-size", "4", "--num-workers", "0", "--no-progress"])
    assert rc == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["clislide.h5ad", "cohort_state.json"]  # atomic writes: no temporary file left
    got = ad.read_h5ad(out / "clislide.h5ad")
    slide = pk.read_slide(synth)
    ref = pk.pp.tile(slide)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pk.tl.embed_tiles(ref, slide, MODEL, device="cpu", num_workers=0, progress=False)
    key = f"X_{MODEL}"
    assert got.obsm[key].shape == ref.obsm[key].shape == (8, 192)
    np.testing.assert_array_equal(got.obsm[key], ref.obsm[key])
    np.testing.assert_array_equal(got.obs["x"].to_numpy(), ref.obs["x"].to_numpy())
    assert got.uns["models"][key]["name"] == MODEL and got.uns["slide"]["sha256"] == slide.sha256()
    assert "clislide: ok, 8 tiles" in capsys.readouterr().out


def test_embed_skip_existing_checks_parameters(synth, tmp_path, capsys):
    """--skip-existing reuses a file only when slide and parameters match; other parameters recompute."""
    out = tmp_path / "emb"
    base = ["embed", str(synth), "--model", MODEL, "--out", str(out), "--num-workers", "0", "--no-progress"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(base) == 0
        assert main(base + ["--skip-existing"]) == 0
        assert "clislide: skipped" in capsys.readouterr().out
        assert main(base + ["--skip-existing", "--min-tissue", "0.9"]) == 0
        assert "clislide: ok" in capsys.readouterr().out
    assert ad.read_h5ad(out / "clislide.h5ad").uns["tile_spec"]["min_tissue"] == 0.9


def test_embed_many_slides_one_bad(synth, shared_data, tmp_path, capsys):
    out = tmp_path / "emb"
    dicom = shared_data / "slides" / "pathml_small_dicom.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["embed", str(dicom), str(synth), "--model", MODEL, "--out", str(out), "--device", "cpu",
                   "--num-workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert (out / "clislide.h5ad").is_file()  # the good slide is still done
    assert "pathml_small_dicom.dcm" in err and "1 of 2 slides failed" in err


def test_unknown_model_exits_2(synth, tmp_path, capsys):
    rc = main(["embed", str(synth), "--model", "no_such_model", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("pathkit: error:") and "no_such_model" in err and len(err.strip().splitlines()) == 1


def test_list_models(capsys):
    assert main(["list-models"]) == 0
    out = capsys.readouterr().out
    assert "vit_tiny_test" in out and "gigapath_tile" in out


def test_fetch_delegates_to_manifest(monkeypatch, tmp_path, capsys):
    calls = []

    def fake_fetch(manifest, dest, **kw):
        calls.append((manifest, dest))
        return pd.DataFrame({"file": ["a", "b"]})

    fake = types.ModuleType("pathkit.io.manifest")
    fake.fetch_manifest = fake_fetch
    monkeypatch.setitem(sys.modules, "pathkit.io.manifest", fake)
    monkeypatch.setattr(pk.io, "manifest", fake, raising=False)
    assert main(["fetch", "m.csv", "--dest", str(tmp_path)]) == 0
    assert calls == [("m.csv", str(tmp_path))]
    assert "fetched 2 files" in capsys.readouterr().out


def test_usage_error_returns_2(capsys):
    assert main(["embed"]) == 2  # argparse: --model/--out/SLIDE missing
    assert main(["--version"]) == 0


def test_console_module_subprocess(synth, shared_data):
    ok = subprocess.run([sys.executable, "-m", "pathkit", "info", str(synth)], capture_output=True, text=True,
                        timeout=300, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "1536 x 1024 px" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "pathkit", "info",
                          str(shared_data / "slides" / "pathml_small_dicom.dcm")],
                         capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    lines = bad.stderr.strip().splitlines()
    # a DICOM slide is read now (issue 24); this one has no mpp: one line naming the file and --mpp, and no
    # pydicom validation warning about the file's over-long UID on top of it
    assert len(lines) == 1 and lines[0].startswith("pathkit: error:"), lines
    assert "pathml_small_dicom.dcm" in lines[0] and "--mpp" in lines[0]


@pytest.mark.slow
def test_demo_real_sample(shared_data, tmp_path, monkeypatch, capsys):
    from PIL import Image

    cmu = shared_data / "slides" / "CMU-1-Small-Region.svs"
    monkeypatch.setenv("PATHKIT_SAMPLE_SLIDE", str(cmu))
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "real public OpenSlide sample" in out and "RANDOM weights" in out
    h5 = tmp_path / "demo" / "CMU-1-Small-Region.h5ad"
    png = tmp_path / "demo" / "CMU-1-Small-Region_tiles.png"
    got = ad.read_h5ad(h5)
    assert got.n_obs == pk.pp.tile(pk.read_slide(cmu)).n_obs and got.obsm["X_vit_tiny_test"].shape[1] == 192
    img = Image.open(png)
    assert max(img.size) == 1024 and img.mode == "RGB"
    assert str(h5) in out and str(png) in out


@pytest.mark.slow
def test_demo_offline_uses_synthetic(tmp_path, monkeypatch, capsys):
    import pooch

    def offline(*a, **k):
        raise ConnectionError("no network (test)")

    monkeypatch.delenv("PATHKIT_SAMPLE_SLIDE", raising=False)
    monkeypatch.setenv("PATHKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pooch, "retrieve", offline)
    # offline, the demo uses the real H&E slide shipped inside pathkit
    assert main(["demo", "--out", str(tmp_path / "real")]) == 0
    out = capsys.readouterr().out
    assert "real public OpenSlide sample" in out and "shipped with pathkit" in out and "SYNTHETIC" not in out
    assert (tmp_path / "real" / "CMU-1-Small-Region.h5ad").is_file()
    # an install without its package data falls back to a synthetic slide, and says so
    monkeypatch.setattr(pk.datasets._fetch, "packaged_path", lambda name: None)
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "no network (test)" in out
    h5 = next((tmp_path / "demo").glob("*.h5ad"))
    got = ad.read_h5ad(h5)
    assert got.n_obs > 0 and got.obsm["X_vit_tiny_test"].shape[1] == 192
    assert (tmp_path / "demo" / f"{h5.stem}_tiles.png").is_file()
