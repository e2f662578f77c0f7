"""Slide-opening errors (issue 28, items 15-16): mpp metadata that is not a number or not valid, an opted-in
mpp that would make millions of tiles, file-system errors, and no file handle kept by a refused slide."""
from __future__ import annotations

import errno
import os
import warnings

import numpy as np
import pytest
import tifffile

import pathkit as pk
from pathkit.errors import MppError, NotBrightfieldError, SlideReadError


def _aperio(path, mpp):
    img = np.full((256, 256, 3), 230, np.uint8)
    tifffile.imwrite(path, img, photometric="rgb", tile=(128, 128),
                     description=f"Aperio Image Library v10.0\n256x256 -> 256x256 - |AppMag = 20|MPP = {mpp}")
    return path


# ------------------------------------------------------------------------------------------ item 15
def test_mpp_not_a_number(tmp_path):
    p = _aperio(tmp_path / "abc.svs", "abc")
    with pytest.raises(MppError, match=r"abc\.svs.*aperio MPP.*'abc'.*not a number.*mpp="):
        pk.read_slide(p)
    with pytest.warns(UserWarning, match=r"'abc'.*Using mpp=0.5 given by you"):
        assert pk.read_slide(p, mpp=0.5).mpp == 0.5  # the way out works


@pytest.mark.parametrize("value", ["0", "nan", "-0.5"])
def test_mpp_invalid_not_missing(tmp_path, value):
    p = _aperio(tmp_path / "bad.svs", value)
    with pytest.raises(MppError) as e:
        pk.read_slide(p)
    msg = str(e.value)
    assert "invalid" in msg and "no microns-per-pixel" not in msg and "aperio MPP" in msg




def test_huge_opted_in_mpp(tmp_path):
    img = np.full((2000, 2000, 3), 230, np.uint8)
    p = tmp_path / "big.tif"
    tifffile.imwrite(p, img, photometric="rgb", tile=(256, 256))
    with pytest.warns(UserWarning, match=r"about 2,441,406 tiles of 256 px"):
        s = pk.read_slide(p, mpp=100, allow_implausible_mpp=True)
    assert s.mpp == 100
    with warnings.catch_warnings(record=True) as rec:  # a plausible mpp: no such warning
        warnings.simplefilter("always")
        pk.read_slide(p, mpp=0.5)
    assert not [w for w in rec if "tiles of 256 px" in str(w.message)]


# ------------------------------------------------------------------------------------------ item 16
def test_symlink_loop(tmp_path):
    a, b = tmp_path / "a.svs", tmp_path / "b.svs"
    a.symlink_to(b)
    b.symlink_to(a)
    with pytest.raises(SlideReadError, match=r"a\.svs: a loop of symbolic links"):
        pk.read_slide(a)


def test_dangling_link_names_link_and_target(tmp_path):
    link = tmp_path / "slide.svs"
    link.symlink_to(tmp_path / "gone" / "real.svs")
    with pytest.raises(SlideReadError) as e:
        pk.read_slide(link)
    msg = str(e.value)
    assert msg.startswith(str(link)) and "real.svs" in msg and "symbolic link" in msg


def test_permission_denied(tmp_path, monkeypatch):
    p = _aperio(tmp_path / "locked.svs", "0.5")
    real_stat = os.stat

    def stat(path, *a, **k):  # a folder without x permission (root ignores chmod, so simulate it)
        if os.fspath(path) == str(p):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_stat(path, *a, **k)

    monkeypatch.setattr(os, "stat", stat)
    with pytest.raises(SlideReadError, match=r"locked\.svs: permission denied"):
        pk.read_slide(p)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path):
    p = _aperio(tmp_path / "noread.svs", "0.5")
    p.chmod(0)
    with pytest.raises(SlideReadError, match=r"noread\.svs.*not readable"):
        pk.read_slide(p)


def test_folder_that_is_not_a_slide(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SlideReadError, match=r"a folder, not a slide"):
        pk.read_slide(tmp_path)


def _open_fds_on(path) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                n += 1
        except OSError:
            pass
    return n


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_refused_slide_keeps_no_file_handle(shared_data):
    p = (shared_data / "slides/pathml_small_vectra.qptiff").resolve()
    with pytest.raises(NotBrightfieldError) as e:
        pk.read_slide(p)
    # the exception's traceback still holds the half-built Slide: its file must be closed already
    assert e.value is not None and _open_fds_on(p) == 0
    p2 = (shared_data / "slides/TCGA-CR-7395-01A-01-TS1.svs").resolve()
    with pytest.raises(MppError):
        pk.read_slide(p2)
    assert _open_fds_on(p2) == 0
