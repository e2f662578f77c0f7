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


@pytest.mark.parametrize("mode", ["garbage", "half_zero", "not_jpeg"])
def test_tifffile_path_refuses_the_same_tiles_with_the_same_message(slides, mode):
    """The tifffile path (read_tile) decoded a half-zeroed tile silently (libjpeg only warns): now it raises
    the raw path's one-line error, word for word."""
    x, y = slides["xy"]
    s = pk.read_slide(slides[mode])
    with pytest.raises(SlideReadError) as tif:
        s.read_tile(x, y, 256, 0.5)
    reader, why = raw_reader(s, 256, 0.5)
    assert reader is not None, why
    with pytest.raises(SlideReadError) as raw:
        reader.read_batch([x], [y], 256)
    assert str(tif.value) == str(raw.value)
    assert str(tif.value).startswith(f"{slides[mode]}: failed to read level 0 region at ({x}, {y}) size 256x256 "
                                     f"(stored tile {TILE}): ")
    assert "\n" not in str(tif.value)


def test_tiles_padded_after_their_end_marker_still_read(tmp_path):
    """Zero bytes after a tile's EOI (writers may pad) are not damage: both paths read the tile as before."""
    import numpy as np

    p = pk.datasets.synthetic_slide(tmp_path / "p.svs", width=1024, height=768, blobs="full", seed=5)
    ref = pk.read_slide(p).read_tile(256, 256, 256, 0.5)
    with tifffile.TiffFile(p) as t:
        pg = t.pages[0]
        nx = -(-pg.imagewidth // pg.tilewidth)
        idx = nx + 1
        off, cnt = pg.dataoffsets[idx], pg.databytecounts[idx]
        cnt_at = pg.tags["TileByteCounts"].valueoffset
        count_type = pg.tags["TileByteCounts"].dtype
    assert cnt_at  # the counts are stored out of line, one per tile
    b = bytearray(p.read_bytes())
    # move the tile to the end of the file with 14 zero bytes after its EOI, and point its offset and count there
    b += b[off:off + cnt] + bytes(14)
    new_off = len(b) - cnt - 14
    sizes = {3: 2, 4: 4, 16: 8}  # TIFF SHORT, LONG, LONG8
    width = sizes[int(count_type)]
    with tifffile.TiffFile(p) as t:
        offs_at = t.pages[0].tags["TileOffsets"].valueoffset
        off_width = {3: 2, 4: 4, 16: 8}[int(t.pages[0].tags["TileOffsets"].dtype)]
        order = "little" if t.byteorder == "<" else "big"
    b[offs_at + idx * off_width:offs_at + (idx + 1) * off_width] = new_off.to_bytes(off_width, order)
    b[cnt_at + idx * width:cnt_at + (idx + 1) * width] = (cnt + 14).to_bytes(width, order)
    q = tmp_path / "padded.svs"
    q.write_bytes(bytes(b))
    s = pk.read_slide(q)
    np.testing.assert_array_equal(s.read_tile(256, 256, 256, 0.5), ref)
    reader, why = raw_reader(s, 256, 0.5)
    assert reader is not None, why
    np.testing.assert_array_equal(reader.read_batch([256], [256], 256)[0].numpy(), ref)
