"""``segment_cells(model="hovernet")``: weights from the authors' checkpoint layout, the random-weights
path end to end, and the 0.25 um/px reads, 256 -> 164 tiling and tile borders against generated nuclei of
known position (with a stand-in network whose maps come from the image)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from _seg_weights import seeded_state_dict
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

import pathkit as pk
from pathkit.cells import haematoxylin, synthetic_nuclei, write_rgb_slide
from pathkit.cells._hovernet import read_hovernet_weights
from pathkit.cells._hovernet_net import HoVerNet
from pathkit.errors import WeightsError
from pathkit.models.cell_segmenters import PANNUKE_CLASSES

MPP = 0.5


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    # nuclei at most 5.5 um (22 px at 0.25 um/px) across their half-axis, so that the stand-in network of
    # the last test sees whole every nucleus it outputs (a 256-px patch's 164-px centre has 46 px of context)
    rgb, truth = synthetic_nuclei(512, 512, MPP, n=40, radius_um=(3.0, 5.0), aspect=(1.0, 1.1), touching_pairs=0,
                                  border_cells=6, tile_px=256, random_state=3)
    path = write_rgb_slide(tmp_path_factory.mktemp("hovernet") / "nuclei.tif", rgb, MPP)
    return pk.read_slide(path), truth


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Seeded weights saved as the authors' conversion script does: ``{"desc": {name: tensor}}``, no
    BatchNorm step counters; in torch's zip format and in its legacy format."""
    sd = seeded_state_dict(HoVerNet(6, "fast"))
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    sd["upsample2x.unpool_mat"] = torch.ones(2, 2)
    folder = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for legacy in (False, True):
        paths[legacy] = folder / f"{'legacy' if legacy else 'zip'}" / "hovernet_fast_pannuke_type_tf2pytorch.tar"
        paths[legacy].parent.mkdir()
        torch.save({"desc": sd}, paths[legacy], _use_new_zipfile_serialization=not legacy)
    return sd, paths


@pytest.mark.parametrize("legacy", [False, True])
def test_authors_checkpoint_loads_without_pickled_code(checkpoints, legacy):
    sd, paths = checkpoints
    got = read_hovernet_weights(paths[legacy])
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)


@pytest.mark.slow  # one pass of the full network: ~20 s on a loaded 2-core CPU
def test_random_weights_end_to_end_from_a_file(generated, checkpoints):
    slide, _ = generated
    path = checkpoints[1][False]
    # one 64-px tile at 0.5 um/px: a 128 + 2 x 8 px read at 0.25 um/px, one 256-px network patch
    tiles = pk.pp.tile(slide, tile_px=64, mpp=MPP, min_tissue=0.0, qc=False)[:1].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # weights given: no random-weights warning
        cells = pk.tl.segment_cells(tiles, slide, model="hovernet", weights=str(path), halo_um=2.0,
                                    progress=False)
    assert cells.uns["cells"]["model"] == "hovernet" and cells.uns["cells"]["mpp"] == 0.25
    assert cells.uns["cells"]["weights"] == str(path)
    assert list(cells.obs["cell_type"].cat.categories) == list(PANNUKE_CLASSES)
    assert cells.n_obs == tiles.obs["cells_count"].sum()
    probs = cells.obs["cell_type_prob"].to_numpy()
    assert np.all((probs >= 0) & (probs <= 1))
    shares = tiles.obs[[f"cells_share_{c}" for c in PANNUKE_CLASSES]].to_numpy()
    ok = tiles.obs["cells_count"].to_numpy() > 0
    assert np.all(np.nan_to_num(shares[ok]).sum(1) <= 1 + 1e-9)


def test_missing_and_random_weights(generated):
    from pathkit.cells._models import cell_segmenter

    slide, _ = generated
    tiles = pk.pp.tile(slide, tile_px=128, mpp=MPP, min_tissue=0.0, qc=False)[:1].copy()
    with pytest.raises(WeightsError, match="weights_only=True"):
        pk.tl.segment_cells(tiles, slide, model="hovernet", progress=False)
    with pytest.warns(UserWarning, match="RANDOM"):
        seg = cell_segmenter("hovernet", weights="random", device="cpu")
    assert seg.weights_info == "random" and seg.mpp == 0.25 and seg.classes == PANNUKE_CLASSES


def test_weights_of_another_architecture_are_refused(checkpoints, tmp_path):
    path = tmp_path / "other.tar"
    # a segmentation-only checkpoint (no type branch) for the 5-type entry
    torch.save({"desc": {k: v for k, v in checkpoints[0].items() if not k.startswith("decoder.tp.")}}, path)
    from pathkit.models.registry import get_spec

    spec = get_spec("hovernet", kind="cell_segmenter")
    from pathkit.cells._hovernet import load_hovernet

    with pytest.raises(WeightsError, match="missing"):
        load_hovernet(spec, str(path), "cpu")


class _ImageMaps(torch.nn.Module):
    """A stand-in for the trained network: the maps a perfect HoVer-Net would give on generated nuclei
    (nucleus = haematoxylin above a threshold; hv from each blob's centre of mass; type 1 + blob size rank),
    computed on each 256-px patch and returned for its 164-px centre, as HoVer-Net's output is placed."""

    mode = "fast"

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        outs = {"tp": [], "np": [], "hv": []}
        for img in x.permute(0, 2, 3, 1).numpy().astype(np.uint8):
            blobs, _ = ndi.label(haematoxylin(img) > 0.1)
            hv = np.zeros((2, *blobs.shape), np.float32)
            for k, sl in enumerate(ndi.find_objects(blobs), 1):
                r, c = np.nonzero(blobs[sl] == k)
                for ch, d in ((0, c - c.mean()), (1, r - r.mean())):
                    d = d.astype(np.float64)
                    d[d < 0] /= -d.min() if (d < 0).any() else 1
                    d[d > 0] /= d.max() if (d > 0).any() else 1
                    hv[ch, r + sl[0].start, c + sl[1].start] = d
            inside = (blobs > 0).astype(np.float32)
            tp = np.zeros((6, *blobs.shape), np.float32)
            tp[0] = 1 - inside
            tp[1] = inside  # every nucleus neoplastic
            outs["np"].append(np.stack([1 - inside, inside]) * 10)
            outs["hv"].append(hv)
            outs["tp"].append(tp * 10)
        return {k: torch.from_numpy(np.stack(v)[:, :, 46:210, 46:210].copy()) for k, v in outs.items()}


@pytest.mark.parametrize("overlap", [0, 128])  # both grids cover the 512-px image
def test_generated_nuclei_through_the_hovernet_path(generated, monkeypatch, overlap):
    import pathkit.cells._hovernet as hn

    slide, truth = generated
    monkeypatch.setattr(hn, "load_hovernet", lambda spec, weights, device="auto": (_ImageMaps(), "stand-in"))
    tiles = pk.pp.tile(slide, tile_px=256, mpp=MPP, min_tissue=0.0, overlap=overlap, qc=False)
    cells = pk.tl.segment_cells(tiles, slide, model="hovernet", progress=False)
    assert abs(cells.n_obs - len(truth)) <= 0.05 * len(truth)
    d, idx = cKDTree(cells.obsm["spatial"]).query(truth[["x", "y"]].to_numpy())
    assert d.max() * MPP <= 2.0
    assert len(set(idx)) == len(truth)
    rel = cells.obs["area_um2"].to_numpy()[idx] / truth["area_um2"].to_numpy() - 1
    assert np.abs(np.median(rel)) <= 0.10
    border = truth[truth["kind"] == "border"][["x", "y"]].to_numpy()
    tree = cKDTree(cells.obsm["spatial"])
    assert [len(tree.query_ball_point(p, 3.0 / MPP)) for p in border] == [1] * len(border)
    assert set(cells.obs["cell_type"]) == {"neoplastic"}
    np.testing.assert_allclose(cells.obs["cell_type_prob"], 1.0)
