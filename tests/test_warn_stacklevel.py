"""Issue 29: a warning raised deep inside pathkit names the user's line (a notebook cell, a script), not
pathkit/tl/embed.py: each is captured here, from this file's call site."""
from __future__ import annotations

import warnings

import pytest

import pathkit as pk


def _caught(fn, match: str):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        fn()
    hits = [w for w in rec if match in str(w.message)]
    assert hits, f"no warning matching {match!r}: {[str(w.message) for w in rec]}"
    return hits


@pytest.fixture(scope="module")
def tiles_and_slide(tmp_path_factory):
    path = pk.datasets.synthetic_slide(tmp_path_factory.mktemp("warn") / "s.tiff", width=512, height=512, mpp=0.5,
                                       blobs=[{"kind": "rect", "x0": 0, "y0": 0, "x1": 512, "y1": 512}])
    slide = pk.read_slide(path)
    return pk.pp.tile(slide, tile_px=256, mpp=0.5), slide


def test_random_weights_warning_names_the_callers_line(tiles_and_slide):
    tiles, slide = tiles_and_slide
    from pathkit.tl.embed import clear_model_cache

    clear_model_cache()
    # first call: the warning comes from the loader (pathkit/models/tile_encoders.py), two frames down
    for w in _caught(lambda: pk.tl.embed_tiles(tiles, slide, "vit_tiny_test", progress=False), "RANDOM weights"):
        assert w.filename == __file__, w.filename
    # second call: the cached encoder warns again (pathkit/tl/embed.py), from another depth
    for w in _caught(lambda: pk.tl.embed_tiles(tiles, slide, "vit_tiny_test", progress=False), "RANDOM weights"):
        assert w.filename == __file__, w.filename


def test_slide_encoder_random_weights_warning_names_the_callers_line():
    for w in _caught(lambda: pk.models.longnet.load_slide_encoder("gigapath_slide", weights="random"),
                     "RANDOM weights"):
        assert w.filename == __file__, w.filename


def test_user_stacklevel_counts_pathkit_frames():
    from pathkit._warn import user_stacklevel

    assert user_stacklevel() == 1       # called from outside pathkit: the caller's own line
