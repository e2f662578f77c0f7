"""HoVer-Net (PanNuke, fast mode) against the authors' code: network, tile-mode stitching, post-processing.

Fixtures: tests/fixtures/parity/hovernet/make_hovernet.py ran github:vqdang/hover_net @ 67e2ce5 on a 256-px
crop of CMU-1 read at 0.25 um/px, fp32, CPU: ``HoVerNet(mode="fast", nr_types=6)`` with seeded random weights
(tests/_seg_weights.py, random BatchNorm statistics); ``infer/tile.py``'s patching and stitching and
``post_proc.process`` with a small stand-in network of the same interface (tests/_hovernet_standin.py: dark
blobs, hv pointing out of them); and ``post_proc.process`` on crafted maps of 22 drawn nuclei of known types
(random weights give noise maps; these look like a trained network's).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _hovernet_standin import StandIn
from _seg_weights import seeded_state_dict
from PIL import Image

from pathkit.cells._features import measure_cells
from pathkit.cells._hovernet_net import HoVerNet
from pathkit.cells._hovernet_post import hovernet_maps, np_hv_instances, type_votes
from pathkit.models.cell_segmenters import PANNUKE_CLASSES

FIX = Path(__file__).parent / "fixtures" / "parity" / "hovernet"
TOL = 1e-4


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIX / "hovernet_parity.npz"))


@pytest.fixture(scope="module")
def image():
    return np.asarray(Image.open(FIX / "input_256.png").convert("RGB"))


@pytest.fixture(scope="module")
def net():
    m = HoVerNet(nr_types=6, mode="fast").eval()
    sd = seeded_state_dict(m)
    sd["upsample2x.unpool_mat"] = torch.ones(2, 2)
    m.load_state_dict(sd, strict=True)
    return m


def test_state_dict_names_are_the_authors_checkpoint_names():
    theirs = set((FIX / "checkpoint_keys.txt").read_text().split())
    ours = {k for k in HoVerNet(6, "fast").state_dict() if not k.endswith("num_batches_tracked")}
    assert len(theirs) == 668
    assert ours == theirs


@pytest.mark.slow  # the full network: ~20 s a 256-px patch on a loaded 2-core CPU
def test_network_matches_the_authors(ref, image, net):
    with torch.no_grad():
        res = net(torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float())
    logits = torch.cat([res["tp"], res["np"], res["hv"]], 1)[0].double().numpy()
    assert logits.shape == (10, 164, 164)
    err = np.abs(logits[:, ::3, ::3] - ref["single_sub3"]).max()
    assert err <= TOL, err
    # every pixel, through the per-channel sums: consistent with <= TOL per pixel
    np.testing.assert_allclose(logits.sum((1, 2)), ref["single_sum"], rtol=0, atol=TOL * 164 * 164)
    np.testing.assert_allclose((logits ** 2).sum((1, 2)), ref["single_sumsq"], rtol=1e-5)


def test_tile_mode_stitching_and_instances_match_the_authors(ref, image):
    prob, hv, types = hovernet_maps(StandIn(), image, device="cpu", batch_size=4)
    assert prob.shape == (256, 256) and hv.shape == (256, 256, 2)
    ours = np.concatenate([prob[::2, ::2, None], hv[::2, ::2]], -1)
    err = np.abs(ours - ref["tile_np_hv_sub2"]).max()
    assert err <= TOL, err
    assert (types == ref["tile_tp"]).mean() >= 0.9999
    labels = np_hv_instances(prob, hv)
    assert len(np.unique(labels)) - 1 == 64  # the stand-in's maps hold dark blobs to separate
    np.testing.assert_array_equal(labels, ref["tile_inst"])


def _check_types(labels, type_map, ids, their_types, their_prob, their_xy):
    """Our per-cell types (the runner's vote maps through measure_cells) against the authors', matched by
    centroid; cells touching the image border are dropped by measure_cells and not compared."""
    h = np.zeros(labels.shape, np.float32)
    table, _ = measure_cells(labels, h, 1.0, (0.0, 0.0), 1.0, type_votes(type_map, 5), PANNUKE_CLASSES)
    assert len(table) >= 0.5 * len(ids)
    # measure_cells puts a pixel's centre at +0.5; OpenCV's moments at +0
    d = np.hypot(table["x"].to_numpy()[:, None] - 0.5 - their_xy[None, :, 0],
                 table["y"].to_numpy()[:, None] - 0.5 - their_xy[None, :, 1])
    j = d.argmin(1)
    assert d[np.arange(len(j)), j].max() < 1e-6
    names = np.array([None, *PANNUKE_CLASSES], dtype=object)[their_types[j]]
    assert list(table["cell_type"]) == list(names)
    typed = their_types[j] > 0
    np.testing.assert_allclose(table["cell_type_prob"].to_numpy()[typed], their_prob[j][typed], rtol=1e-5)
    return table, names


def test_tile_mode_types_match_the_authors(ref):
    _check_types(ref["tile_inst"], ref["tile_tp"], ref["tile_inst_ids"], ref["tile_types"],
                 ref["tile_type_prob"], ref["tile_centroid"])


def test_crafted_maps_post_processing_matches_the_authors(ref):
    np_prob = ref["crafted_np_u8"].astype(np.float32) / 255
    hv = (ref["crafted_hv_u8"].astype(np.float32) - 127) / 127
    labels = np_hv_instances(np_prob, hv)
    np.testing.assert_array_equal(labels, ref["crafted_inst"])
    truth = ref["crafted_truth"]
    assert labels.max() == truth.max() == 22  # every drawn nucleus, touching pairs split
    for k in range(1, truth.max() + 1):  # each drawn nucleus is mostly one instance
        hit = labels[truth == k]
        assert np.bincount(hit[hit > 0]).max() >= 0.8 * hit.size
    table, _ = _check_types(labels, ref["crafted_tp_u8"], ref["crafted_ids"], ref["crafted_types"],
                                ref["crafted_type_prob"], ref["crafted_centroid"])
    assert table["cell_type"].isna().sum() == 1  # the nucleus of background votes only has no type
