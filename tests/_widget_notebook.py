"""A one-run notebook with pk.pl.slide, pk.pl.umap and both widgets, for the weight / static-fallback tests
(executed by nbclient) and the real-browser test (executed in JupyterLab)."""
from __future__ import annotations

from pathlib import Path

SETUP = '''\
import numpy as np, pandas as pd, anndata as ad
import pathkit as pk
path = pk.datasets.synthetic_slide(WORKDIR + "/syn.svs", width=3072, height=2048, mpp=0.5)
slide = pk.read_slide(path)
t = pk.pp.tile(slide, tile_px=32, mpp=4.0, min_tissue=0.0)
if not hasattr(t, "obs"):  # before the contract: a DataFrame with attrs["tile_spec"]
    spec = dict(t.attrs["tile_spec"])
    t = ad.AnnData(obs=t.reset_index(drop=True).rename(index=str))
    t.obs["slide_id"] = slide.slide_id
    t.obsm["spatial"] = t.obs[["x", "y"]].to_numpy(dtype=float)
    t.uns["tile_spec"] = spec
    t.uns["slide"] = {"path": str(path), "slide_id": slide.slide_id, "mpp": slide.mpp,
                      "mpp_source": "metadata"}
tiles = t
rng = np.random.default_rng(0)
n = tiles.n_obs
tiles.obsm["X_uni"] = rng.normal(size=(n, 16)).astype(np.float32)
tiles.uns["models"] = {"X_uni": {"name": "uni"}}
tiles.obsm["X_umap"] = rng.normal(size=(n, 2))
tiles.obs["leiden"] = pd.Categorical(rng.choice(["0", "1", "2"], size=n))
tiles.obs["score"] = rng.uniform(size=n)
tiles.obs.loc[tiles.obs_names[:4], "score"] = np.nan
m = 120
risk = rng.normal(size=m)
tt = rng.exponential(np.exp(-1.2 * risk) * 30)
cc = rng.exponential(60, m)
cohort = ad.AnnData(obs=pd.DataFrame({"time_months": np.minimum(tt, cc), "event": (tt <= cc).astype(float),
                                      "survival_months": np.minimum(tt, cc), "train": rng.integers(0, 2, m),
                                      "risk": risk, "age": rng.normal(60, 9, m)},
                                     index=[f"P{i}" for i in range(m)]))
print(n, "tiles")
'''

CELLS = [
    SETUP,
    "pk.pl.slide(tiles, 'score')",
    "pk.pl.umap(tiles, color='leiden')",
    "sx = pk.widgets.SlideExplorer(tiles, 'leiden')\nsx",
    "sv = pk.widgets.SurvivalExplorer(cohort, time='time_months', event='event')\nsv",
]


def write_notebook(path: Path, workdir: Path, extra_cells=()) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(CELLS[0].replace("WORKDIR", repr(str(workdir))))]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in CELLS[1:] + list(extra_cells)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path
