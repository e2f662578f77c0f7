"""TITAN slide encoder: parity with MahmoodLab/TITAN's vision tower (HF remote code), random weights, reduced
(tests/fixtures/parity/make_titan.py: 40 tiles on an irregular grid with a hole, 40x coordinates), through
pathkit's loader / key map and through pk.tl.embed_slide."""
from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _hf import hf_cache
from safetensors.torch import save_file

import pathkit as pk
from pathkit.errors import GridError, WeightsError
from pathkit.models import get_spec
from pathkit.models.titan import TitanSlideEncoder, alibi_slopes, level0_cells, load_titan

FIXTURE = Path(__file__).parent / "fixtures" / "parity" / "titan.pt"
SMALL = {"in_chans": 24, "embed_dim": 48, "depth": 2, "heads": 6, "mlp_ratio": 4.0, "pool_heads": 4}


@pytest.fixture(scope="module")
def ref():
    return torch.load(FIXTURE, weights_only=True)


def _hf_files(ref) -> dict:
    """The fixture as the HF repository lays it out: model.safetensors with the vision tower under
    `vision_encoder.` (captioning pooler included) and a text tower, config.json with a `vision_config`."""
    sd = {f"vision_encoder.{k}": v.contiguous() for k, v in ref["state_dict"].items()}
    sd["text_encoder.token_embedding.weight"] = torch.zeros(10, 48)
    c = ref["config"]
    cfg = {"model_type": "titan", "vision_config": {
        "embed_dim": c["embed_dim"], "depth": c["depth"], "num_heads": c["num_heads"], "mlp_ratio": c["mlp_ratio"],
        "mlp_patch_embed_dim": c["mlp_patch_embed_dim"], "attn_pooler_heads": c["attn_pooler_heads"]}}
    return {"model.safetensors": lambda p: save_file(sd, str(p)),
            "config.json": lambda p: p.write_text(json.dumps(cfg))}


def _hf_repo(ref, tmp_path) -> Path:
    for name, write in _hf_files(ref).items():
        write(tmp_path / name)
    return tmp_path / "model.safetensors"


def _small(**kw):
    """The registry entry at the fixture's reduced sizes (24-d features)."""
    spec = get_spec("titan")
    return dataclasses.replace(spec, name="titan_small_test", kwargs=SMALL, extra={**spec.extra, "in_chans": 24},
                               **kw)


def test_titan_matches_reference_vision_tower(ref, tmp_path):
    net, info = load_titan("titan", weights=_hf_repo(ref, tmp_path))
    assert info["config"] == str(tmp_path / "config.json") and info["weights_sha256"]
    assert (net.in_chans, net.embed_dim, len(net.blocks), net.heads) == (24, 48, 2, 6)
    cells = level0_cells(ref["coords"], ref["patch_size_lv0"])
    with torch.no_grad():
        out = net(ref["features"], cells)
        out_b = net(ref["features_b"], level0_cells(ref["coords_b"], ref["patch_size_lv0"]))
        perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
        shuffled = net(ref["features"][perm], cells[perm])
    err = (out - ref["out"]).abs().max().item()
    err_b = (out_b - ref["out_b"]).abs().max().item()
    print(f"PARITY titan {err:.2e} (duplicate + background tiles: {err_b:.2e})")
    assert err < 1e-4 and err_b < 1e-4, (err, err_b)
    torch.testing.assert_close(shuffled, out, atol=1e-5, rtol=1e-5)  # tiles placed by coordinates, not order
    # positions matter (ALiBi): one tile moved into the hole, or no ALiBi at all, gives another vector
    moved = cells.clone()
    moved[0] = torch.tensor([4, 3])
    net = copy.deepcopy(net)  # load_titan caches the module it returns: change a copy
    with torch.no_grad():
        assert (net(ref["features"], moved) - ref["out"]).abs().max() > 1e-4
        net.slopes.zero_()
        assert (net(ref["features"], cells) - ref["out"]).abs().max() > 1e-3


def test_titan_entry_and_loader_refusals(tmp_path):
    spec = get_spec("titan", kind="slide")
    assert spec.extra["tile_model"] == "conch_v15" and spec.extra["in_chans"] == 768 == spec.kwargs["in_chans"]
    assert (spec.extra["tile_px"], spec.extra["mpp"]) == (512, 0.5) and spec.embed_dim == 768 and spec.gated
    assert get_spec("conch_v15").kind == "tile" and get_spec("conch_v15").extra["mpp"] == spec.extra["mpp"]
    # ALiBi slopes for 12 heads: 8 of 2^-1..2^-8, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5
    np.testing.assert_allclose(alibi_slopes(12).numpy(), [2.0 ** -i for i in range(1, 9)]
                               + [2.0 ** -(i + 0.5) for i in range(4)], rtol=1e-6)
    save_file({"vision_encoder.cls_token": torch.zeros(1, 1, 768)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsError, match="titan"):
        load_titan("titan", weights=tmp_path / "bad.safetensors")
    with pytest.warns(UserWarning, match="RANDOM"):
        net, _ = load_titan("titan", weights="random")
    assert isinstance(net, TitanSlideEncoder) and sum(p.numel() for p in net.parameters()) == spec.n_params
    with torch.no_grad():
        assert net(torch.randn(10, 768), torch.randint(0, 5, (10, 2))).shape == (768,)


def _tiles(ref, n=40, **spec):
    import anndata as ad
    import pandas as pd

    xy = ref["coords"][:n].numpy()
    obs = pd.DataFrame({"slide_id": "S1", "x": xy[:, 0], "y": xy[:, 1]}, index=[str(i) for i in range(n)])
    a = ad.AnnData(obs=obs)
    a.obsm["X_conch_v15"] = ref["features"][:n].numpy()
    a.obsm["spatial"] = xy.astype(np.float64)
    # a 40x slide tiled with pk.pp.tile(slide, tile_px=512, mpp=0.5): 1024 level-0 px per tile
    a.uns["tile_spec"] = {"tile_px": 512, "mpp": 0.5, "overlap": 0, "slide_mpp": 0.25, "size_level0": 1024.0,
                          "stride_level0": 1024.0, **spec}
    a.uns["slide"] = {"slide_id": "S1", "mpp": 0.25}
    a.uns["models"] = {"X_conch_v15": {"name": "conch_v15"}}
    return a


def test_titan_through_embed_slide(ref, tmp_path):
    w = _hf_repo(ref, tmp_path)
    small = _small()
    a = _tiles(ref)
    assert pk.tl.embed_slide(a, small, weights=w, dtype="float32") is None
    got = a.uns["slide_embeddings"]["titan_small_test"]
    info = a.uns["slide_embeddings_info"]["titan_small_test"]
    err = float(np.abs(got - ref["out"].numpy()).max())
    print(f"PARITY titan via embed_slide {err:.2e}")
    assert got.shape == (48,) and err < 1e-4
    assert info["use_rep"] == "X_conch_v15" and info["grid_step_level0"] == 1024.0 and info["n_cells"] == 40
    # obs order does not matter; a 20x slide (512 level-0 px per tile) gives the same grid
    b = _tiles(ref)[::-1].copy()
    b.obs["x"], b.obs["y"] = (b.obs["x"] - 3072) // 2, (b.obs["y"] - 5120) // 2
    b.uns["tile_spec"].update(slide_mpp=0.5, size_level0=512.0, stride_level0=512.0)
    pk.tl.embed_slide(b, small, weights=w, dtype="float32", key_added="t20x")
    np.testing.assert_allclose(b.uns["slide_embeddings"]["t20x"], got, atol=1e-5)


def test_titan_refuses_other_features_and_geometry(ref, tmp_path):
    w = _hf_repo(ref, tmp_path)
    small = _small()
    a = _tiles(ref)
    a.uns["models"] = {"X_conch_v15": {"name": "uni"}}  # features recorded as another tile model's
    with pytest.raises(ValueError, match="expects 'conch_v15'"):
        pk.tl.embed_slide(a, small, weights=w)
    a = _tiles(ref)
    a.obsm["X_uni"] = a.obsm.pop("X_conch_v15")
    with pytest.raises(KeyError, match="X_conch_v15"):
        pk.tl.embed_slide(a, small, weights=w)
    for bad in ({"tile_px": 224}, {"mpp": 1.0}):
        with pytest.raises(GridError, match=r"pk\.pp\.tile\(slide, tile_px=512, mpp=0\.5\)"):
            pk.tl.embed_slide(_tiles(ref, **bad), small, weights=w)
    a = _tiles(ref)
    del a.uns["tile_spec"]
    with pytest.raises(GridError, match="tile_spec"):
        pk.tl.embed_slide(a, small, weights=w)
    a = _tiles(ref)
    for k in ("size_level0", "stride_level0", "slide_mpp"):
        del a.uns["tile_spec"][k]
    with pytest.raises(GridError, match="slide_mpp"):
        pk.tl.embed_slide(a, small, weights=w)
    with pytest.raises(GridError, match="overlap"):
        pk.tl.embed_slide(_tiles(ref, overlap=64), small, weights=w)
    with pytest.raises(ValueError, match="768-d"):  # the registry entry itself: 768-d CONCH v1.5 features
        pk.tl.embed_slide(_tiles(ref), "titan", weights=w)
    with pytest.raises(ValueError, match="layers='last'"):
        pk.tl.embed_slide(_tiles(ref), small, weights=w, layers="all")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the geometry above is accepted without a warning
        pk.tl.embed_slide(_tiles(ref, mpp=0.503), small, weights=w, dtype="float32")


def test_titan_from_the_hub_cache(ref, tmp_path, monkeypatch):
    """weights=None reads the entry's source, hf_hub:MahmoodLab/TITAN, from a local HF cache (offline)."""
    hub = tmp_path / "hub"
    snap = hf_cache(hub, "MahmoodLab/TITAN", _hf_files(ref))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a = _tiles(ref)
    pk.tl.embed_slide(a, _small(), dtype="float32")
    info = a.uns["slide_embeddings_info"]["titan_small_test"]
    assert info["weights"] == "hf_hub:MahmoodLab/TITAN" and info["weights_sha256"]
    np.testing.assert_allclose(a.uns["slide_embeddings"]["titan_small_test"], ref["out"].numpy(), atol=1e-4)
    assert load_titan(_small())[1]["config"] == str(snap / "config.json")  # sizes from the snapshot's config


def test_grid_cells_absorb_rounded_corners():
    """pk.pp.tile rounds level-0 corners of a non-integer step (a 0.2527-mpp scan: 1013.06 px per 512-px tile
    at 0.5 mpp): the one-pixel guard keeps every tile in its own cell, where the reference's bare floor
    division (exact on TRIDENT's integer steps) would misplace about half of them."""
    from pathkit.pp.tiling import grid_positions
    from pathkit.tl._slide_grid import grid_cells

    step = 512 * 0.5 / 0.2527
    xs = grid_positions(100_000, step, step)
    cells = grid_cells(np.stack([xs, xs[::-1]], axis=1).astype(np.float64), step)
    np.testing.assert_array_equal(cells, np.stack([np.arange(len(xs)), np.arange(len(xs))[::-1]], axis=1))
    floor = level0_cells(torch.as_tensor(np.stack([xs, xs], axis=1)), step)[:, 0].numpy()
    assert (floor != np.arange(len(xs))).sum() > 10


def test_grid_cells_floor_like_the_reference_off_grid():
    """A tile off the regular grid goes to the cell holding its corner (the reference floors), not the nearest
    cell: 2.6 steps from the origin is cell 2 (rounding gave 3); integer steps are untouched."""
    from pathkit.tl._slide_grid import grid_cells

    step = 512.0
    xy = np.array([[0.0, 0.0], [512.0, 1024.0], [2.6 * step, 0.0], [3 * step - 1, 0.0]])
    with pytest.warns(UserWarning, match="floor"):
        cells = grid_cells(xy, step)
    np.testing.assert_array_equal(cells, [[0, 0], [1, 2], [2, 0], [3, 0]])
    ref = torch.floor(torch.as_tensor(xy[:3]) / step).numpy().astype(np.int64)  # the reference's rule
    np.testing.assert_array_equal(cells[:3], ref)


def test_grid_step_error_names_a_function_that_exists():
    """The unknown-step error names pk.io.read_h5_bag (it once named a pk.io.read_bag that does not exist)."""
    import re

    import anndata as ad
    import pandas as pd

    import pathkit as pk
    from pathkit.errors import GridError
    from pathkit.models.registry import get_spec
    from pathkit.tl._slide_grid import check_geometry

    spec = get_spec("titan", kind="slide")
    a = ad.AnnData(obs=pd.DataFrame({"x": [0, 512], "y": [0, 0]}, index=["0", "1"]))
    a.uns["tile_spec"] = {"tile_px": spec.extra["tile_px"], "mpp": spec.extra["mpp"]}
    with pytest.raises(GridError) as exc:
        check_geometry(a, spec)
    for name in re.findall(r"pk\.io\.(\w+)\(", str(exc.value)):
        assert hasattr(pk.io, name), name
    assert "pk.io.read_h5_bag(" in str(exc.value)
