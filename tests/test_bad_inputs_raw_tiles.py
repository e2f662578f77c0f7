"""Issue 28, item 8: a corrupt stored JPEG tile gives the same error class and message on the raw-JPEG fast
path as on the tifffile path (read_tile): a one-line SlideReadError naming the file, level and region, also
when the tile is read in a DataLoader worker."""
from __future__ import annotations

import os
import warnings

import pytest
import tifffile

import pathkit as pk
from pathkit._raw_tiles import raw_reader
from pathkit.errors import SlideReadError

TILE = 20  # a level-0 stored tile inside the tissue


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("rawbad")
    p = pk.datasets.synthetic_slide(d / "good.svs", width=4096, height=3072, blobs="full", seed=3)
    with tifffile.TiffFile(p) as t:
        pg = t.pages[0]
        off, cnt = pg.dataoffsets[TILE], pg.databytecounts[TILE]
        nx = -(-pg.imagewidth // pg.tilewidth)
    out = {"xy": ((TILE % nx) * 256, (TILE // nx) * 256)}
    for mode in ("garbage", "half_zero", "not_jpeg"):
        b = bytearray(p.read_bytes())
        if mode == "garbage":
            b[off + 2:off + cnt] = os.urandom(cnt - 2)
        elif mode == "half_zero":
            b[off + cnt // 2:off + cnt] = bytes(cnt - cnt // 2)
        else:
            b[off:off + 2] = b"\0\0"
        out[mode] = d / f"{mode}.svs"
        out[mode].write_bytes(bytes(b))
    return out


@pytest.mark.parametrize("mode", ["garbage", "half_zero", "not_jpeg"])
def test_raw_path_error_is_a_one_line_slide_read_error(slides, mode):
    x, y = slides["xy"]
    s = pk.read_slide(slides[mode])
    reader, why = raw_reader(s, 256, 0.5)
    assert reader is not None, why
    with pytest.raises(SlideReadError) as e:
        reader.read_batch([x], [y], 256)
    msg = str(e.value)
    assert msg.startswith(f"{slides[mode]}: failed to read level 0 region at ({x}, {y}) size 256x256")
    assert "\n" not in msg and "copy or download it again" in msg
    if mode == "garbage":  # the tifffile path: same class, same start
        with pytest.raises(SlideReadError, match=rf"failed to read level 0 region at \({x}, {y}\) size 256x256"):
            s.read_tile(x, y, 256, 0.5)


@pytest.mark.parametrize("workers", [0, 1])
def test_embedding_a_corrupt_tile_names_it(slides, workers):
    s = pk.read_slide(slides["not_jpeg"] if workers else slides["garbage"])
    tiles = pk.pp.tile(s)
    with warnings.catch_warnings(), pytest.raises(SlideReadError) as e:
        warnings.simplefilter("ignore")
        pk.tl.embed_tiles(tiles, s, "vit_tiny_test", weights="random", device="cpu", num_workers=workers,
                          progress=False)
    assert "failed to read level 0 region" in str(e.value) and "Traceback" not in str(e.value)
