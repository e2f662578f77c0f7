"""The OpenSlide backend: the same pixels as tiffslide on CMU-1, a Hamamatsu VMS and a generic tiled TIFF made
here (no MRXS / SCN / BIF sample is available: they share this code path), and the shared rules."""
from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

import pathkit as pk
from pathkit.errors import NotBrightfieldError, SlideReadError

pytest.importorskip("openslide")
CMU1 = "slides/CMU-1-Small-Region.svs"


def _make_vms(d):
    """A minimal Hamamatsu VMS: an index file and one JPEG with a restart marker per MCU row (OpenSlide
    needs them to seek), 4:4:4 so that an MCU row is 8 px."""
    img = np.full((512, 768, 3), 235, np.uint8)
    img[100:400, 200:600] = (170, 80, 150)
    img[120:140, 220:700] = (90, 40, 110)
    Image.fromarray(img).save(d / "img.jpg", quality=95, restart_marker_rows=1, subsampling=0)
    Image.fromarray(img[::8, ::8]).save(d / "map.jpg", quality=95, restart_marker_rows=1, subsampling=0)
    (d / "slide.vms").write_text(
        "[Virtual Microscope Specimen]\nNoLayers=1\nNoJpegColumns=1\nNoJpegRows=1\nImageFile=img.jpg\n"
        "MapFile=map.jpg\nPhysicalWidth=384000\nPhysicalHeight=256000\nSourceLens=20\n")
    return d / "slide.vms", d / "img.jpg"


def test_cmu1_same_pixels_as_tiffslide(shared_data):
    p = shared_data / CMU1
    o = pk.read_slide(p, backend="openslide")
    t = pk.read_slide(p)
    assert (o.backend, t.backend) == ("openslide", "tiffslide")
    assert "OpenSlide 4" in o.backend_version and o.info()["backend"] == "openslide"
    assert o.dimensions == t.dimensions == (2220, 2967)
    assert o.mpp == t.mpp == pytest.approx(0.499) and o.vendor == "aperio" and o.magnification == 20
    assert o.properties["pathkit.mpp-origin"] == t.properties["pathkit.mpp-origin"]
    # both decode the Aperio JPEG tiles with libjpeg-turbo: every pixel is equal (measured: 0 differ)
    w, h = o.dimensions
    np.testing.assert_array_equal(o.read_region((0, 0), 0, (w, h)), t.read_region((0, 0), 0, (w, h)))
    np.testing.assert_array_equal(o.read_tile(1000, 1500), t.read_tile(1000, 1500))
    a, b = o.associated_images(), t.associated_images()
    assert set(a) == set(b) == {"label", "macro", "thumbnail"}
    assert a["label"].size == b["label"].size
    from pathkit._raw_tiles import raw_reader

    assert raw_reader(o, 256, 0.5)[0] is None  # the raw-JPEG path is tiffslide's only


def test_vms_made_here(tmp_path):
    vms, jpg = _make_vms(tmp_path)
    s = pk.read_slide(vms)  # auto: the .vms index goes to OpenSlide
    assert s.backend == "openslide" and s.vendor == "hamamatsu"
    assert s.dimensions == (768, 512)
    assert s.mpp == pytest.approx(384000 / 768 / 1000)  # PhysicalWidth is in nm
    assert s.magnification == 20
    with Image.open(jpg) as im:
        ref = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(s.read_region((0, 0), 0, (768, 512)), ref)
    np.testing.assert_array_equal(s.read_region((700, 480), 0, (100, 50))[:32, :68], ref[480:, 700:])
    assert (s.read_region((700, 480), 0, (100, 50))[32:] == 255).all()
    tiles = pk.pp.tile(s, tile_px=64, mpp=0.5, min_tissue=0.5)
    xy = set(zip(tiles.obs["x"], tiles.obs["y"]))
    assert (256, 192) in xy and (0, 0) not in xy  # inside the pink block / on the glass


def test_generic_tiled_tiff_same_as_tiffslide(tmp_path):
    rng = np.random.default_rng(0)
    img = np.full((600, 700, 3), 236, np.uint8)
    img[100:500, 150:600] = rng.integers(80, 200, (400, 450, 3), dtype=np.uint8)
    p = tmp_path / "tiled.tif"
    tifffile.imwrite(p, img, photometric="rgb", tile=(256, 256), compression="zlib",
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    o = pk.read_slide(p, backend="openslide")
    t = pk.read_slide(p)
    assert o.vendor == "generic-tiff" and o.mpp == pytest.approx(0.5) == t.mpp
    np.testing.assert_array_equal(o.read_region((0, 0), 0, (700, 600)), img)
    np.testing.assert_array_equal(t.read_region((0, 0), 0, (700, 600)), img)


def test_shared_rules_hold(shared_data, tmp_path):
    with pytest.raises(NotBrightfieldError, match="fluorescence"):
        pk.read_slide(shared_data / "slides/Stritt_test3-DAPI.ndpi", backend="openslide")
    with pytest.warns(UserWarning, match="fluorescence"):
        s = pk.read_slide(shared_data / "slides/Stritt_test3-DAPI.ndpi", backend="openslide",
                          allow_non_brightfield=True)
    # OpenSlide sees 7 NDPI levels where tiffslide sees 4 (the README); the mpp is the same
    assert s.level_count == 7 and s.mpp == pytest.approx(0.2275, abs=1e-3)
    plain = tmp_path / "plain.jpg"
    Image.new("RGB", (64, 64), "white").save(plain)
    with pytest.raises(SlideReadError, match=r"plain\.jpg.*OpenSlide does not recognise"):
        pk.read_slide(plain, mpp=0.5, backend="openslide")


def test_missing_extra_named(shared_data, monkeypatch):
    monkeypatch.setitem(sys.modules, "openslide", None)
    with pytest.raises(SlideReadError, match=r'pip install "pathkit\[openslide\]"'):
        pk.read_slide(shared_data / CMU1, backend="openslide")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pk.read_slide(shared_data / CMU1).backend == "tiffslide"
