"""InstanSeg in pathkit against the authors' inference (instanseg-torch's ``InstanSeg_Torchscript``, scripted as
they export it): fixtures made by tests/fixtures/parity/make_instanseg.py in a scratch venv.

- crafted: a network output built from real H&E nuclei (seed map, embeddings pointing to nucleus centres,
  noise) and a hand-set pixel classifier, run through the authors' module: identical instances;
- tiny: the authors' TorchScript export of a small random InstanSeg (random BatchNorm statistics, seed bias
  raised so seeds exist), converted to safetensors by pathkit, run on a real H&E crop: the same network output
  and identical instances.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import pathkit as pk
from pathkit.cells import InstanSegParams, convert_instanseg, write_rgb_slide
from pathkit.cells._instanseg import InstanSegModel
from pathkit.cells._instanseg_post import PixelClassifier, _seeds, instanseg_labels
from pathkit.cells._models import cell_segmenter
from pathkit.errors import ParameterError, WeightsError

FIX = Path(__file__).parent / "fixtures" / "parity" / "instanseg"


def _same_instances(a: np.ndarray, b: np.ndarray):
    """Relabel-invariant equality: same background, and a one-to-one map between the instances."""
    assert a.shape == b.shape
    assert np.array_equal(a > 0, b > 0)
    fg = a > 0
    pairs = np.unique(np.stack([a[fg], b[fg]]), axis=1)
    n_a, n_b = len(np.unique(a[fg])), len(np.unique(b[fg]))
    assert pairs.shape[1] == n_a == n_b
    return n_a


@pytest.fixture(scope="module")
def crafted():
    z = np.load(FIX / "crafted.npz")
    clf = PixelClassifier(4, 10)
    clf.load_state_dict({k[4:].replace("_", ".", 1): torch.from_numpy(z[k]) for k in z.files if k.startswith("clf_")})
    return z, clf.eval()


def test_crafted_output_gives_the_authors_instances(crafted):
    z, clf = crafted
    out = torch.from_numpy(z["output"].astype(np.float32))
    ours = instanseg_labels(out, clf, InstanSegParams()).numpy()
    n = _same_instances(ours, z["labels"])
    # a meaningful fixture: many nuclei, some with several seeds joined by the overlap merge
    n_seeds = len(_seeds(out[-1] / 15 + 0.5, 5, 0.7))
    assert n >= 20 and n_seeds > n
    nc = instanseg_labels(out, clf, InstanSegParams(cleanup_fragments=False)).numpy()
    _same_instances(nc, z["labels_no_cleanup"])
    assert (nc > 0).sum() > (ours > 0).sum()  # the clean-up dropped background fragments


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = convert_instanseg(FIX / "tiny.pt", tmp_path_factory.mktemp("instanseg") / "tiny.safetensors")
    return path, np.load(FIX / "tiny.npz")


def _crop(shared_data, z):
    import tifffile

    image = tifffile.imread(shared_data / "nuclei" / "instanseg" / "HE_example.tif")
    (r, c), (h, w) = z["at"], z["shape"]
    return image[r:r + h, c:c + w]


def test_converted_torchscript_matches_the_authors_end_to_end(tiny, shared_data):
    path, z = tiny
    model = InstanSegModel(path, device="cpu")
    assert model.pixel_size == 0.5 and (model.dim_coords, model.n_sigma, model.dim_seeds) == (2, 2, 1)
    assert model.params == InstanSegParams()  # the export's defaults, read from the TorchScript attributes
    rgb = _crop(shared_data, z)
    out = model.output(rgb)
    assert out.shape == (5, *rgb.shape[:2])
    assert (out - torch.from_numpy(z["output"])).abs().max().item() <= 1e-4
    n = _same_instances(model(rgb), z["labels"])
    assert n >= 5


def test_segment_cells_with_instanseg(tiny, tmp_path):
    path, _ = tiny
    from pathkit.cells import synthetic_nuclei

    rgb, _ = synthetic_nuclei(512, 512, 0.5, n=40, random_state=3)
    slide = pk.read_slide(write_rgb_slide(tmp_path / "gen.tif", rgb, 0.5))
    tiles = pk.pp.tile(slide, tile_px=256, mpp=0.5, min_tissue=0.0, qc=False)
    cells = pk.tl.segment_cells(tiles, slide, model="instanseg", weights=path, progress=False)
    assert cells.n_obs > 0 and tiles.obs["cells_count"].sum() == cells.n_obs
    assert cells.uns["cells"]["model"] == "instanseg"
    assert cells.uns["cells"]["params"]["seed_threshold"] == 0.7
    assert np.isfinite(cells.obs[["x", "y", "area_um2", "hematoxylin_od"]].to_numpy()).all()
    fewer = pk.tl.segment_cells(tiles, slide, model="instanseg", weights=path, progress=False,
                                params={"seed_threshold": 0.9})
    assert fewer.n_obs < cells.n_obs


def test_instanseg_weights_errors(tiny, tmp_path):
    path, _ = tiny
    with pytest.raises(WeightsError, match="convert_instanseg"):
        InstanSegModel(FIX / "tiny.pt")  # TorchScript is never run: convert first
    with pytest.raises(WeightsError, match="convert_instanseg"):
        cell_segmenter("instanseg")  # no weights: how to get and convert them
    with pytest.raises(ParameterError, match="seed_treshold"):
        InstanSegModel(path, params={"seed_treshold": 0.5})
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(WeightsError, match="not InstanSeg weights"):
        InstanSegModel(other)


def test_convert_from_the_release_zip(tiny, tmp_path):
    """The authors ship brightfield_nuclei.zip holding instanseg.pt (with rdf.yaml beside it): the zip converts
    to the same tensors and defaults as the .pt, and is refused as weights= before conversion."""
    import zipfile

    from safetensors import safe_open

    path, _ = tiny
    release = tmp_path / "brightfield_nuclei.zip"
    with zipfile.ZipFile(release, "w") as z:
        z.write(FIX / "tiny.pt", "brightfield_nuclei/instanseg.pt")
        z.writestr("brightfield_nuclei/rdf.yaml", "name: test\n")
    with pytest.raises(WeightsError, match="convert_instanseg"):
        InstanSegModel(release)
    again = convert_instanseg(release, tmp_path / "from_zip.safetensors")
    with safe_open(str(path), "pt") as a, safe_open(str(again), "pt") as b:
        names = sorted(a.keys())
        assert names == sorted(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in names)
        assert a.metadata()["params"] == b.metadata()["params"]
    assert not any(k.startswith("fcn.pixel_classifier.") for k in names)  # the classifier is kept once
