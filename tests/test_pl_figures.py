"""pk.pl.umap and pk.pl.slide: trace data equal the inputs (scaling, colours per category, gene columns)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import pathkit as pk
from pathkit.pl._thumbs import decode_data_uri

TILE = 100          # tile side, level-0 px
W0, H0 = 2000, 1200  # level-0 size: a 20 x 12 grid of tiles


def block_color(x, y):
    """The colour FakeSlide paints the tile whose top-left is (x, y)."""
    return np.array([(x // TILE) * 12 % 256, (y // TILE) * 20 % 256, 128], dtype=np.uint8)


class FakeSlide:
    """Stand-in with the Slide contract's thumbnail/read_tile/dimensions: each 100-px tile is one colour."""

    def __init__(self, slide_id="fake", mpp=0.5):
        self.slide_id, self.mpp = slide_id, mpp
        self.dimensions = (W0, H0)
        gx, gy = np.meshgrid(np.arange(W0), np.arange(H0))
        self.array = np.stack([(gx // TILE) * 12 % 256, (gy // TILE) * 20 % 256, np.full_like(gx, 128)],
                              axis=-1).astype(np.uint8)
        self.calls = []

    def thumbnail(self, size=1024):
        s = size / max(W0, H0)
        return Image.fromarray(self.array).resize((round(W0 * s), round(H0 * s)), Image.BOX)

    def read_tile(self, x, y, tile_px=256, mpp=0.5):
        self.calls.append((x, y, tile_px, mpp))
        side = round(tile_px * mpp / self.mpp)
        crop = np.full((side, side, 3), 255, np.uint8)
        part = self.array[y:y + side, x:x + side]
        crop[:part.shape[0], :part.shape[1]] = part
        return np.asarray(Image.fromarray(crop).resize((tile_px, tile_px), Image.BOX))


def tile_table(n=60, seed=0):
    rng = np.random.default_rng(seed)
    cells = rng.choice(20 * 12, size=n, replace=False)
    df = pd.DataFrame({"x": (cells % 20) * TILE, "y": (cells // 20) * TILE}).astype("int64")
    df.attrs["tile_spec"] = {"tile_px": 50, "mpp": 1.0, "slide_mpp": 0.5, "size_level0": float(TILE),
                                 "stride_level0": float(TILE), "overlap": 0}
    return df


def tile_adata(n=60, seed=0, slide_id="fake"):
    import anndata as ad

    rng = np.random.default_rng(seed)
    df = tile_table(n, seed)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    a = ad.AnnData(X)
    a.obs_names = [str(i) for i in range(n)]
    a.var_names = [str(i) for i in range(8)]
    a.obs["slide_id"] = slide_id
    a.obs["x"], a.obs["y"] = df["x"].to_numpy(), df["y"].to_numpy()
    a.obs["score"] = rng.uniform(size=n)
    a.obs["leiden"] = pd.Categorical(rng.choice(["0", "1", "2"], size=n), categories=["0", "1", "2"])
    a.obsm["spatial"] = df[["x", "y"]].to_numpy(dtype=float)
    a.obsm["X_umap"] = rng.normal(size=(n, 2))
    genes = pd.DataFrame(rng.normal(size=(n, 3)), index=a.obs_names, columns=["TP53", "EGFR", "KRAS"])
    a.obsm["rna"] = genes
    a.uns["tile_spec"] = dict(df.attrs["tile_spec"])
    return a


@pytest.fixture
def fake_slide():
    return FakeSlide()


# ---------------------------------------------------------------------------------------------- pl.slide
def _trace(fig, name):
    return next(t for t in fig.data if t.name == name)


def test_slide_numeric_overlay_scaled_to_thumbnail(fake_slide):
    df = tile_table()
    df["score"] = np.linspace(0, 1, len(df))
    fig = pk.pl.slide(df, slide=fake_slide, color="score", thumbnail_size=500)
    sx, sy = 500 / W0, 300 / H0                       # thumbnail is 500 x 300
    assert fig.layout.meta["scale"] == [sx, sy]
    img = decode_data_uri(_trace(fig, "thumbnail").source)
    assert img.shape == (300, 500, 3)
    tiles = _trace(fig, "tiles")
    np.testing.assert_allclose(tiles.x, (df["x"] + TILE / 2) * sx)
    np.testing.assert_allclose(tiles.y, (df["y"] + TILE / 2) * sy)
    np.testing.assert_array_equal(np.asarray(tiles.customdata)[:, 0], np.arange(len(df)))
    # the heatmap cell of each tile holds its score, at the tile's position
    hm = _trace(fig, "overlay")
    assert hm.dx == pytest.approx(TILE * sx) and hm.dy == pytest.approx(TILE * sy)
    z = np.asarray(hm.z, dtype=float)
    col = ((df["x"] - df["x"].min()) // TILE).to_numpy()
    row = ((df["y"] - df["y"].min()) // TILE).to_numpy()
    np.testing.assert_allclose(z[row, col], df["score"])
    np.testing.assert_allclose(hm.x0 + col * hm.dx, tiles.x)
    np.testing.assert_allclose(hm.y0 + row * hm.dy, tiles.y)
    assert np.isnan(z).sum() == z.size - len(df)     # cells without a tile stay empty
    assert hm.opacity == 0.5
    assert "score: " + f"{df['score'].iloc[7]:.4g}" in tiles.hovertext[7]


def test_slide_categorical_colours_and_legend(fake_slide):
    a = tile_adata()
    pal = {"0": "#ff0000", "1": "#00ff00", "2": "#0000ff"}
    fig = pk.pl.slide(a, slide=fake_slide, color="leiden", palette=pal, thumbnail_size=400)
    legend = [t for t in fig.data if t.name in pal]
    assert [t.name for t in legend] == ["0", "1", "2"]
    assert [t.marker.color for t in legend] == ["#ff0000", "#00ff00", "#0000ff"]
    hm = _trace(fig, "overlay")
    z = np.asarray(hm.z, dtype=float)
    col = (a.obs["x"] // TILE - a.obs["x"].min() // TILE).to_numpy()
    row = (a.obs["y"] // TILE - a.obs["y"].min() // TILE).to_numpy()
    codes = z[row, col].astype(int)
    np.testing.assert_array_equal(codes, a.obs["leiden"].cat.codes.to_numpy())
    # each code maps to its category colour in the stepped colour scale
    scale = hm.colorscale
    for code, cat in enumerate(["0", "1", "2"]):
        frac = (code + 0.5) / 3
        color = next(c for (lo, c), (hi, _) in zip(scale[::2], scale[1::2]) if lo <= frac <= hi)
        assert color == pal[cat]


def test_slide_feature_colour_and_highlight(fake_slide):
    a = tile_adata()
    fig = pk.pl.slide(a, slide=fake_slide, color="3", thumbnail_size=500, highlight=[4, 9])
    z = np.asarray(_trace(fig, "overlay").z, dtype=float)
    col = ((a.obs["x"] - a.obs["x"].min()) // TILE).to_numpy()
    row = ((a.obs["y"] - a.obs["y"].min()) // TILE).to_numpy()
    np.testing.assert_allclose(z[row, col], a.X[:, 3], rtol=1e-6)
    sel = _trace(fig, "selected")
    xs = [v for v in sel.x if v is not None]
    s = 500 / W0
    assert xs[:5] == pytest.approx([a.obs["x"].iloc[4] * s, (a.obs["x"].iloc[4] + TILE) * s,
                                    (a.obs["x"].iloc[4] + TILE) * s, a.obs["x"].iloc[4] * s,
                                    a.obs["x"].iloc[4] * s])
    assert len(xs) == 10


def test_slide_off_grid_tiles_use_markers(fake_slide):
    df = pd.DataFrame({"x": [0, 130, 555], "y": [10, 400, 777], "v": [1.0, 2.0, 3.0]})
    fig = pk.pl.slide(df, slide=fake_slide, color="v", tile_size=100, thumbnail_size=1000)
    assert not any(t.name == "overlay" for t in fig.data)
    tiles = _trace(fig, "tiles")
    np.testing.assert_allclose(tiles.x, (df["x"] + 50) * 0.5)
    np.testing.assert_allclose(tiles.marker.color, [1.0, 2.0, 3.0])


def test_slide_errors(fake_slide):
    df = tile_table()
    with pytest.raises(KeyError, match="nope"):
        pk.pl.slide(df, slide=fake_slide, color="nope")
    bare = pd.DataFrame({"x": [0], "y": [0]})
    with pytest.raises(KeyError, match="tile_size"):
        pk.pl.slide(bare, slide=fake_slide)
    with pytest.raises(TypeError, match="tiles first"):
        pk.pl.slide(fake_slide, df)                          # the old (slide, tiles) order: a clear error
    with pytest.raises(TypeError, match="slide="):
        pk.pl.slide(df)                                       # a DataFrame has no uns['slide']['path']


# ---------------------------------------------------------------------------------------------- pl.umap
def test_umap_categorical_traces_match_inputs():
    a = tile_adata()
    fig = pk.pl.umap(a, color="leiden", thumbnails=False)
    assert [t.name for t in fig.data] == ["0", "1", "2"]
    import plotly.colors as pc
    assert [t.marker.color for t in fig.data] == list(pc.qualitative.Plotly[:3])
    for t in fig.data:
        rows = np.asarray(t.customdata)[:, 0].astype(int)
        assert (a.obs["leiden"].iloc[rows] == t.name).all()
        np.testing.assert_allclose(t.x, a.obsm["X_umap"][rows, 0])
        np.testing.assert_allclose(t.y, a.obsm["X_umap"][rows, 1])
    assert sum(len(t.x) for t in fig.data) == a.n_obs
    # scanpy's stored colours win over the default palette
    a.uns["leiden_colors"] = ["#111111", "#222222", "#333333"]
    fig = pk.pl.umap(a, color="leiden", thumbnails=False)
    assert [t.marker.color for t in fig.data] == ["#111111", "#222222", "#333333"]


def test_umap_numeric_and_gene_colour():
    a = tile_adata()
    fig = pk.pl.umap(a, color="score", thumbnails=False)
    (t,) = fig.data
    np.testing.assert_allclose(t.marker.color, a.obs["score"])
    assert t.marker.colorbar.title.text == "score"
    fig = pk.pl.umap(a, color="EGFR", thumbnails=False)
    np.testing.assert_allclose(fig.data[0].marker.color, a.obsm["rna"]["EGFR"].loc[a.obs_names])
    assert not np.allclose(fig.data[0].marker.color, a.obsm["rna"]["TP53"].loc[a.obs_names])
    with pytest.raises(KeyError, match="MYC"):
        pk.pl.umap(a, color="MYC", thumbnails=False)
    del a.obsm["X_umap"]
    with pytest.raises(KeyError, match="pk.tl.umap"):
        pk.pl.umap(a)


def test_umap_hover_thumbnails_read_from_slide(fake_slide):
    a = tile_adata()
    fig = pk.pl.umap(a, color="leiden", slide=fake_slide, thumbnails="hover", max_thumbnails=25, thumb_px=32)
    cd = np.concatenate([np.asarray(t.customdata, dtype=object) for t in fig.data])
    with_thumb = [(int(r), u) for r, u in cd if u]
    assert len(with_thumb) == 25 == fig.layout.meta["thumbnails"]
    for r, uri in with_thumb:
        img = decode_data_uri(uri)
        assert img.shape == (32, 32, 3)
        # the thumbnail shows this tile: FakeSlide paints every tile one colour
        assert (img.reshape(-1, 3) == block_color(a.obs["x"].iloc[r], a.obs["y"].iloc[r])).all()
    # read at the coarser mpp that maps 32 px onto the 100-px tile
    assert fake_slide.calls[0][2:] == (32, pytest.approx(TILE * 0.5 / 32))
    with pytest.raises(FileNotFoundError, match="slide="):
        pk.pl.umap(a, thumbnails=True)
    assert pk.pl.umap(a, thumbnails="auto").layout.meta["thumbnails"] == 0  # no slide: none, no error


def test_umap_many_slides_and_map_mode():
    import anndata as ad

    a1, a2 = tile_adata(20, 1, "s1"), tile_adata(20, 2, "s2")
    a = ad.concat([a1, a2], index_unique="-", uns_merge="first")
    a.obsm["X_umap"] = np.vstack([a1.obsm["X_umap"], a2.obsm["X_umap"]])
    slides = {"s1": FakeSlide("s1"), "s2": FakeSlide("s2")}
    fig = pk.pl.umap(a, color="slide_id", slide=slides, thumbnails="map", thumb_px=16)
    assert [t.name for t in fig.data] == ["s1", "s2"]
    assert len(fig.layout.images) == 40
    assert len(slides["s1"].calls) == 20 and len(slides["s2"].calls) == 20
    im = fig.layout.images[5]
    assert (im.x, im.y) == tuple(a.obsm["X_umap"][5])
    with pytest.raises(ValueError, match="dict"):
        pk.pl.umap(a, slide=slides["s1"], thumbnails=True)


# ------------------------------------------------------------------- a real Slide (synthetic TIFF pyramid)
def build_real_tiles(folder):
    """A synthetic Aperio-style slide, tiled by pk.pp.tile, with stand-in features (no model needed)."""
    import anndata as ad

    path = pk.datasets.synthetic_slide(folder / "syn.svs", width=2048, height=1536, mpp=0.5)
    slide = pk.read_slide(path)
    t = pk.pp.tile(slide, tile_px=32, mpp=4.0, min_tissue=0.0, overlap=8)
    if hasattr(t, "obs"):    # the contract's tile AnnData; a DataFrame before it
        df = t.obs[["x", "y", "tissue"]].copy()
        df.attrs["tile_spec"] = dict(t.uns["tile_spec"])
    else:
        df = t
    rng = np.random.default_rng(0)
    a = ad.AnnData(rng.normal(size=(len(df), 4)).astype(np.float32))
    a.obs_names = [str(i) for i in range(len(df))]
    a.obs["slide_id"] = slide.slide_id
    a.obs["x"], a.obs["y"], a.obs["tissue"] = df["x"].to_numpy(), df["y"].to_numpy(), df["tissue"].to_numpy()
    a.obsm["spatial"] = df[["x", "y"]].to_numpy(dtype=float)
    a.obsm["X_umap"] = rng.normal(size=(len(df), 2))
    a.uns["tile_spec"] = dict(df.attrs["tile_spec"])
    a.uns["slide"] = {"path": str(path), "slide_id": slide.slide_id, "mpp": slide.mpp,
                      "mpp_source": "metadata"}
    return slide, df, a


@pytest.fixture(scope="module")
def real_tiles(tmp_path_factory):
    return build_real_tiles(tmp_path_factory.mktemp("slide"))


def test_real_slide_overlay_with_overlapping_tiles(real_tiles):
    slide, df, _ = real_tiles
    spec = df.attrs["tile_spec"]
    assert spec["stride_level0"] < spec["size_level0"]          # overlap: grid step smaller than the tile
    fig = pk.pl.slide(df, slide=slide, color="tissue", thumbnail_size=512, image_format="png")
    sx, sy = fig.layout.meta["scale"]
    assert (sx, sy) == (512 / 2048, 384 / 1536)
    tiles = _trace(fig, "tiles")
    np.testing.assert_allclose(tiles.x, (df["x"] + spec["size_level0"] / 2) * sx)
    hm = _trace(fig, "overlay")
    assert hm.dx == pytest.approx(spec["stride_level0"] * sx)
    z = np.asarray(hm.z, dtype=float)
    col = np.rint(df["x"] / spec["stride_level0"]).astype(int)
    row = np.rint(df["y"] / spec["stride_level0"]).astype(int)
    np.testing.assert_allclose(z[row, col], df["tissue"])
    thumb = decode_data_uri(_trace(fig, "thumbnail").source)
    np.testing.assert_array_equal(thumb, np.asarray(slide.thumbnail(512)))


def test_real_slide_umap_thumbnails_from_uns_path(real_tiles):
    slide, _, a = real_tiles
    fig = pk.pl.umap(a, thumbnails=True, max_thumbnails=5, thumb_px=16)   # opens uns["slide"]["path"]
    cd = np.asarray(fig.data[0].customdata, dtype=object)
    rows = [int(r) for r, u in cd if u]
    assert len(rows) == 5
    r = rows[0]
    # same pixels as reading the tile's footprint at the mpp that makes it 16 px
    size0 = a.uns["tile_spec"]["size_level0"]
    ref = slide.read_tile(int(a.obs["x"].iloc[r]), int(a.obs["y"].iloc[r]), tile_px=16,
                          mpp=size0 * slide.mpp / 16)
    np.testing.assert_array_equal(decode_data_uri(cd[r, 1]), ref)


def test_cohort_umap_slide_thumbnails(real_tiles, tmp_path):
    import anndata as ad

    slide, _, _ = real_tiles
    c = ad.AnnData(obs=pd.DataFrame({"slide_id": ["a", "b", "c"], "path": [str(slide.path)] * 3,
                                     "age": [50.0, 60.0, 70.0]}, index=["a", "b", "c"]))
    c.obsm["X_umap"] = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.5]])
    fig = pk.pl.umap(c, color="age", thumbnails="hover", thumb_px=64)
    uri = fig.data[0].customdata[1][1]
    np.testing.assert_array_equal(decode_data_uri(uri), np.asarray(slide.thumbnail(64)))
    np.testing.assert_allclose(fig.data[0].marker.color, [50, 60, 70])


def test_slide_rejects_tiles_of_several_slides(fake_slide):
    import anndata as ad

    a = ad.concat([tile_adata(5, 1, "fake"), tile_adata(5, 2, "other")], index_unique="-", uns_merge="first")
    with pytest.raises(ValueError, match="2 slides"):
        pk.pl.slide(a, slide=fake_slide)
    with pytest.warns(UserWarning, match="'other'"):
        pk.pl.slide(tile_adata(5, 2, "other"), slide=fake_slide)


def test_slide_opens_uns_path_and_colours_by_obsm_feature(real_tiles):
    """The contract's tiles: X empty, features in obsm["X_<model>"]; the slide comes from uns["slide"]["path"]
    when not given; NaN scores become null (JSON-compliant) cells; the thumbnail is a small JPEG."""
    import json

    import anndata as ad
    import plotly.io as pio

    _, _, a0 = real_tiles
    a = ad.AnnData(obs=a0.obs.copy(), uns={k: a0.uns[k] for k in ("tile_spec", "slide")})
    a.obsm["spatial"] = a0.obsm["spatial"]
    a.obsm["X_uni"] = np.asarray(a0.X)
    a.obs["score"] = np.linspace(0, 1, a.n_obs)
    a.obs.loc[a.obs_names[:3], "score"] = np.nan
    fig = pk.pl.slide(a, "2", use_rep="X_uni", thumbnail_size=256)
    z = np.asarray(_trace(fig, "overlay").z, dtype=float)
    spec = a.uns["tile_spec"]
    col = np.rint(a.obs["x"] / spec["stride_level0"]).astype(int)
    row = np.rint(a.obs["y"] / spec["stride_level0"]).astype(int)
    np.testing.assert_allclose(z[row, col], a.obsm["X_uni"][:, 2], rtol=1e-6)
    assert _trace(fig, "thumbnail").source.startswith("data:image/jpeg;base64,")
    fig = pk.pl.slide(a, "score", thumbnail_size=256)
    raw = _trace(fig, "overlay").z
    row, col = row.to_numpy(), col.to_numpy()
    assert raw[row[0]][col[0]] is None and raw[row[5]][col[5]] == pytest.approx(a.obs["score"].iloc[5])
    json.dumps(json.loads(pio.to_json(fig)), allow_nan=False)   # what a FigureWidget sends: no NaN
    with pytest.raises(KeyError, match="X_uni"):
        pk.pl.slide(a, "999", use_rep="X_uni")
    a.uns["slide"] = dict(a.uns["slide"], path="/nonexistent/slide.svs")
    with pytest.raises(FileNotFoundError, match="slide="):
        pk.pl.slide(a, "score")


def test_umap_hover_thumbnails_in_a_notebook_warn(fake_slide, monkeypatch):
    """Issue 29: thumbnails="hover" in a notebook embedded 1.17 MB that JupyterLab never shows: it warns there
    (from the caller's line), and stays quiet in a script, where write_html's page shows the thumbnails."""
    import warnings

    import IPython

    a = tile_adata()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # a script: no warning
        pk.pl.umap(a, slide=fake_slide, thumbnails="hover", max_thumbnails=5, thumb_px=16)

    class Kernel:
        kernel = object()

    monkeypatch.setattr(IPython, "get_ipython", lambda: Kernel())
    with pytest.warns(UserWarning, match=r"embeds 5 PNG thumbnails .* never shows") as rec:
        pk.pl.umap(a, slide=fake_slide, thumbnails="hover", max_thumbnails=5, thumb_px=16)
    assert rec[0].filename == __file__
