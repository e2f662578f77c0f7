"""Issue 28, items 11 and 18: the command line answers a user's mistake with one line and exit code 2 (no
traceback unless --debug), has flags for the opt-ins its messages suggest, and keeps the Dask dashboard on
this machine unless asked."""
from __future__ import annotations

import os

import numpy as np
import pytest

from pathkit.cli import main


@pytest.fixture
def screenshot(tmp_path):
    import tifffile

    p = tmp_path / "screenshot.tif"
    img = np.full((256, 256, 3), 200, np.uint8)
    img[64:192, 64:192] = (150, 60, 120)
    tifffile.imwrite(p, img, photometric="rgb", resolution=(96, 96), resolutionunit="INCH")
    return p


@pytest.mark.parametrize("flag,value,said", [
    ("--tile-px", "0", "must be >= 1"), ("--tile-px", "-5", "must be >= 1"),
    ("--target-mpp", "0", "must be a number > 0"), ("--target-mpp", "-1", "must be a number > 0"),
    ("--target-mpp", "nan", "must be a number > 0"), ("--min-tissue", "2", "between 0 and 1"),
    ("--min-tissue", "nan", "between 0 and 1"), ("--mpp", "0", "must be a number > 0")])
def test_bad_numbers_are_usage_errors(screenshot, capsys, flag, value, said):
    assert main(["tile", str(screenshot), flag, value]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and said in err.splitlines()[-1] and flag in err.splitlines()[-1]


@pytest.mark.filterwarnings("ignore:.*using mpp=0.5 given by you")
def test_file_system_mistakes_are_one_line(tmp_path, screenshot, capsys):
    loop = tmp_path / "loop.svs"
    os.symlink(loop, loop)
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    (tmp_path / "dir.h5ad").mkdir()
    cases = [(["info", str(loop)], "symbolic links"),
             (["info", str(tmp_path / "missing.svs")], "No such file"),
             (["tile", str(screenshot), "--mpp", "0.5", "--out", str(tmp_path / "dir.h5ad")], "is a folder"),
             (["tile", str(screenshot), "--mpp", "0.5", "--out", str(a_file / "t.h5ad")], "taken"),
             (["cohort", str(tmp_path), "--tile-model", "vit_tiny_test", "--out", str(a_file)], "is a file"),
             (["cohort", str(tmp_path), "--tile-model", "VIT-tiny-tst", "--out", str(tmp_path / "o")],
              "Did you mean 'vit_tiny_test'"),
             (["cohort", str(tmp_path), "--tile-model", "vit_tiny_test", "--device", "gpu", "--out",
               str(tmp_path / "o")], "did you mean 'cuda'")]
    for argv, said in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("pathkit: error:") and said in err, (argv, err)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "info", str(tmp_path / "missing.svs")])


def test_opt_in_flags_exist_and_are_suggested(screenshot, capsys):
    assert main(["info", str(screenshot)]) == 2
    err = capsys.readouterr().err
    assert "--allow-implausible-mpp" in err and err.count("\n") == 1
    with pytest.warns(UserWarning, match="96-dpi"):
        assert main(["info", str(screenshot), "--allow-implausible-mpp"]) == 0
    assert "264.5833 um/px" in capsys.readouterr().out


def test_dask_dashboard_stays_on_this_machine(tmp_path, monkeypatch):
    import distributed

    seen = {}

    class Stop(Exception):
        pass

    def fake_cluster(**kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(distributed, "LocalCluster", fake_cluster)
    argv = ["cohort", str(tmp_path), "--tile-model", "vit_tiny_test", "--out", str(tmp_path / "o"),
            "--dask-workers", "2"]
    assert main(argv) == 1  # the stand-in cluster's exception: reported as a bug, in one line
    assert seen["dashboard_address"] == "127.0.0.1:8787" and seen["host"] == "127.0.0.1"
    main([*argv, "--dashboard", "none"])
    assert seen["dashboard_address"] is None
