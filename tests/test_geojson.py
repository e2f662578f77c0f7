"""QuPath GeoJSON round trip: a real QuPath 0.5 export (NKI-AI/dlup's fixture, tests/fixtures/geojson/README.md),
tissue contours with holes, tiles with classes and measurements, and bad files."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from skimage.measure import points_in_poly

import pathkit as pk
from pathkit.io import GeoJSONError
from pathkit.pp.tissue import TissueMask

QUPATH05 = Path(__file__).parent / "fixtures" / "geojson" / "qupath05.geojson"


def _tiles(w=10000, h=7000, size=64, step=64, x0=8000, y0=5300, x1=10000, y1=6700):
    xs, ys = np.meshgrid(np.arange(x0, x1 - size + 1, step), np.arange(y0, y1 - size + 1, step))
    obs = pd.DataFrame({"x": xs.ravel().astype(np.int64), "y": ys.ravel().astype(np.int64)})
    obs.index = [str(i) for i in range(len(obs))]
    a = ad.AnnData(obs=obs)
    a.uns["tile_spec"] = {"tile_px": size, "mpp": 0.5, "size_level0": float(size)}
    a.uns["slide"] = {"slide_id": "s", "dimensions": [w, h]}
    return a


def _shoelace(ring):
    r = np.asarray(ring, float)
    x, y = r[:, 0], r[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def test_read_real_qupath_export():
    df = pk.io.read_geojson(QUPATH05)
    raw = json.loads(QUPATH05.read_text())["features"]
    assert list(df["name"]) == ["UT", "I", "I"] and (df["object_type"] == "annotation").all()
    assert df["classification"].isna().all() and df["color"].tolist() == [[255, 0, 0]] * 3
    assert list(df["id"]) == [f["id"] for f in raw]
    for g, f in zip(df["geometry"], raw):
        assert g.is_valid
        assert g.area == pytest.approx(_shoelace(f["geometry"]["coordinates"][0]))
    with pytest.raises(GeoJSONError, match="outside"):
        pk.io.read_geojson(QUPATH05, slide=(9000, 7000))  # the "I" regions reach x = 9891
    assert len(pk.io.read_geojson(QUPATH05, slide=(10000, 7000))) == 3


def test_annotate_tiles_real_export():
    tiles = _tiles()
    pk.tl.annotate_tiles(tiles, QUPATH05, label="name")
    raw = json.loads(QUPATH05.read_text())["features"]
    cx = tiles.obs["x"].to_numpy() + 32.0
    cy = tiles.obs["y"].to_numpy() + 32.0
    exp = np.full(len(cx), None, dtype=object)
    for f in raw:  # independent point-in-polygon (skimage), polygons do not overlap here
        inside = points_in_poly(np.c_[cx, cy], np.asarray(f["geometry"]["coordinates"][0], float))
        exp[inside] = f["properties"]["name"]
    got = tiles.obs["annotation"].astype(object).where(tiles.obs["annotation"].notna(), None).to_numpy()
    assert (got == exp).all()
    counts = tiles.uns["annotation"]["counts"]
    assert counts["UT"] == (exp == "UT").sum() > 5 and counts["I"] == (exp == "I").sum() > 10
    assert tiles.uns["annotation"]["n_labelled"] == (exp != None).sum()
    # "classification" is empty in this export: the name is the fallback label
    assert (pk.tl.annotate_tiles(tiles, QUPATH05, copy=True).obs["annotation"].astype(object)
            .where(lambda s: s.notna(), None).to_numpy() == exp).all()
    # by overlap: a tile half inside is labelled with min_overlap=0.5 iff half its area is inside
    t2 = pk.tl.annotate_tiles(tiles, QUPATH05, label="name", min_overlap=1.0, copy=True)
    assert t2.obs["annotation"].notna().sum() < tiles.obs["annotation"].notna().sum()


def test_tiles_round_trip(tmp_path):
    tiles = _tiles(x0=0, y0=0, x1=1024, y1=768)
    rng = np.random.default_rng(0)
    tiles.obs["leiden"] = pd.Categorical(rng.choice(["0", "1", "2"], tiles.n_obs))
    tiles.obs["attention"] = rng.random(tiles.n_obs)
    path = pk.io.write_geojson(tiles, tmp_path / "tiles.geojson", classification="leiden",
                               measurements=["attention"])
    back = pk.io.read_geojson(path, slide=(10000, 7000))
    assert len(back) == tiles.n_obs and (back["object_type"] == "tile").all()
    assert back["classification"].tolist() == tiles.obs["leiden"].astype(str).tolist()
    np.testing.assert_allclose(back["attention"], tiles.obs["attention"])
    fresh = _tiles(x0=0, y0=0, x1=1024, y1=768)
    pk.tl.annotate_tiles(fresh, path, key_added="leiden")
    assert (fresh.obs["leiden"].astype(str).to_numpy() == tiles.obs["leiden"].astype(str).to_numpy()).all()
    colours = {c: tuple(col) for c, col in zip(back["classification"], back["color"])}
    assert len(set(colours.values())) == 3  # one colour per class


def test_tissue_contours_with_holes(tmp_path):
    m = np.zeros((40, 50), bool)
    m[5:30, 5:30] = True
    m[10:15, 12:20] = False  # a hole
    m[32:36, 40:46] = True  # an island
    pen = np.zeros_like(m)
    pen[0:3, 0:4] = True
    tm = TissueMask(mask=m, downsample=16.0, threshold=200.0, slide_dimensions=(800, 640), pen_mask=pen)
    path = pk.io.write_geojson(tm, tmp_path / "tissue.geojson")
    back = pk.io.read_geojson(path, slide=(800, 640))
    tissue = back[back["classification"] == "Tissue"]
    assert len(tissue) == 2 and (back["classification"] == "Pen").sum() == 1
    assert sorted(len(g.interiors) for g in tissue["geometry"]) == [0, 1]
    assert sum(g.area for g in tissue["geometry"]) == pytest.approx(m.sum() * 16.0 ** 2)
    # rasterise back at mask-pixel centres: the same mask
    import shapely

    u = shapely.union_all(list(tissue["geometry"]))
    jj, ii = np.meshgrid(np.arange(50), np.arange(40))
    again = shapely.contains_xy(u, (jj + 0.5) * 16, (ii + 0.5) * 16)
    np.testing.assert_array_equal(again, m)
    # a real mask from a slide
    slide = pk.read_slide(pk.datasets.synthetic_slide(tmp_path / "s.svs", width=1024, height=768, mpp=0.5))
    tm2 = pk.pp.find_tissue(slide)
    back2 = pk.io.read_geojson(pk.io.write_geojson(tm2, tmp_path / "t2.geojson"), slide=slide)
    assert sum(back2["geometry"].map(lambda g: g.area)) == pytest.approx(tm2.mask.sum() * tm2.downsample ** 2)


def _write(tmp_path, doc, name="x.geojson"):
    p = tmp_path / name
    p.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return p


def test_bad_geojson(tmp_path):
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]}
    feat = {"type": "Feature", "id": "bow", "geometry": bowtie,
            "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "colorRGB": -65536}}}
    with pytest.warns(UserWarning, match="bow.*invalid.*Self-intersection"):
        df = pk.io.read_geojson(_write(tmp_path, {"type": "FeatureCollection", "features": [feat]}))
    g = df["geometry"].iloc[0]
    assert g.is_valid and g.area == pytest.approx(50.0)  # two triangles of 25
    assert df["color"].iloc[0] == [255, 0, 0]  # QuPath 0.2's packed colorRGB
    plain = {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": bowtie, "properties": {}}]}
    with pytest.raises(GeoJSONError, match="not a QuPath export"):
        pk.io.read_geojson(_write(tmp_path, plain))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(pk.io.read_geojson(_write(tmp_path, plain), qupath=False)) == 1
    with pytest.raises(GeoJSONError, match="bare Polygon"):
        pk.io.read_geojson(_write(tmp_path, bowtie))
    with pytest.raises(GeoJSONError, match="not JSON"):
        pk.io.read_geojson(_write(tmp_path, "{oops"))
    with pytest.raises(GeoJSONError, match="no features"):
        pk.io.read_geojson(_write(tmp_path, {"type": "FeatureCollection", "features": []}))
    with pytest.raises(GeoJSONError, match="no geometry"):
        pk.io.read_geojson(_write(tmp_path, [{"type": "Feature", "properties": {"objectType": "annotation"}}]))
    far = dict(feat, geometry={"type": "Polygon", "coordinates": [[[0, 0], [50, 0], [50, 5000], [0, 0]]]})
    with pytest.raises(GeoJSONError, match="outside"):
        pk.tl.annotate_tiles(_tiles(w=1000, h=1000, x0=0, y0=0, x1=512, y1=512),
                             _write(tmp_path, [far], "far.geojson"))
    # QuPath 0.2 measurements as a list, a bare list of features
    old = dict(feat, geometry={"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 0]]]},
               properties={"object_type": "detection", "classification": {"name": "Tumor"},
                           "measurements": [{"name": "Score", "value": 0.7}]})
    df = pk.io.read_geojson(_write(tmp_path, [old]))
    assert df["object_type"].iloc[0] == "detection" and df["Score"].iloc[0] == 0.7
    with pytest.raises(TypeError, match="write_geojson"):
        pk.io.write_geojson(np.zeros((3, 3)), tmp_path / "no.geojson")
    with pytest.raises(pk.errors.TableError, match="lacks"):
        pk.io.write_geojson(_tiles(), tmp_path / "no.geojson", classification="leiden")
