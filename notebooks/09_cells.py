# %% [markdown]
# # 09 · Cells: nuclei, per-tile composition, a cell graph, QuPath
#
# pathkit reads tiles; a pathologist reads cells. This notebook segments the nuclei of two real H&E images,
# the CMU-1 sample region and an H&E tissue-microarray core (InstanSeg's example OME-TIFF, 0.5 µm/px), into a
# **cells AnnData** (one row per nucleus: centroid in level-0 px, area, perimeter, shape, haematoxylin
# staining, the tile it belongs to, its outline), then
#
# - counts cells per tile (`tiles.obs["cells_count"]`, `cells_per_mm2`) and per slide (`pk.tl.cell_composition`,
#   ready for `pk.tl.associate`),
# - builds a Delaunay cell graph with squidpy and tests neighbourhood enrichment,
# - writes the cells for QuPath (GeoJSON detections) and reads them back.
#
# > **Models.** `model="watershed"` needs no weights (colour deconvolution to haematoxylin, a threshold and a
# > distance-transform watershed, as HistomicsTK's classic nuclei segmentation): it finds nuclei but does not
# > classify them. The registry also lists `instanseg` and `hovernet` (PanNuke cell types); `hovernet` runs
# > with the authors' PanNuke weights file (`weights=`), `instanseg`'s inference is not in pathkit yet; without
# > weights both raise an error saying how to get them.

# %%
import numpy as np
import pandas as pd

import pathkit as pk

# %% tags=["parameters"]
SEGMENTER = "watershed"      # a cell segmenter of pk.list_models("cell_segmenter")
MAX_TILES = 60               # tiles of CMU-1 to segment (None: every tissue tile)
RUN_CO_OCCURRENCE = True     # squidpy's co-occurrence curve (compiles numba kernels: about a minute once)
OUT = "pathkit_out"          # folder for the QuPath file

# %%
from pathlib import Path

out = Path(OUT)
out.mkdir(parents=True, exist_ok=True)
pk.list_models("cell_segmenter")[["description", "license"]]

# %% [markdown]
# ## Nuclei of the CMU-1 sample
# Tiles are read with a 16-µm margin, so a nucleus cut by a tile edge is seen whole; it is kept by the one
# tile that owns its centroid, never twice.

# %%
slide = pk.datasets.cmu1_small()
tiles = pk.pp.tile(slide, tile_px=256, mpp=0.5, min_tissue=0.5)
if MAX_TILES is not None and tiles.n_obs > MAX_TILES:
    tiles = tiles[np.linspace(0, tiles.n_obs - 1, MAX_TILES).round().astype(int)].copy()
cells = pk.tl.segment_cells(tiles, slide, model=SEGMENTER)
print(f"{cells.n_obs} nuclei in {tiles.n_obs} tiles")
cells.obs.drop(columns="polygon_wkb").describe().T[["mean", "50%", "min", "max"]]

# %%
pk.pl.slide(tiles, color="cells_per_mm2", slide=slide)

# %% [markdown]
# A close-up with the nucleus outlines (many cells are drawn as thinned centroids instead).

# %%
x0, y0 = cells.obs["x"].median(), cells.obs["y"].median()
pk.pl.cells(cells, slide=slide, color="area_um2", region=(x0 - 200, y0 - 200, x0 + 200, y0 + 200))

# %% [markdown]
# ## The tissue-microarray core
# An OME-TIFF opened like any slide; every tile with tissue is segmented.

# %%
core = pk.read_slide(pk.datasets.fetch("nuclei/instanseg/HE_example.tif"))
core_tiles = pk.pp.tile(core, tile_px=256, mpp=0.5, min_tissue=0.2)
core_cells = pk.tl.segment_cells(core_tiles, core, model=SEGMENTER)
print(f"{core_cells.n_obs} nuclei in {core_tiles.n_obs} tiles of {core.slide_id}")
pk.pl.cells(core_cells, slide=core, color="hematoxylin_od", max_outlines=0)

# %% [markdown]
# ## Nucleus classes and a cell graph
# The watershed does not classify. For the graph we name two **morphological** classes by a simple rule
# (small, round nuclei look like lymphocytes; the rest are "other"): an illustration, not a cell-type
# classifier. With a classifying model `obs["cell_type"]` comes from the model.

# %%
for c in (cells, core_cells):
    small_round = (c.obs["area_um2"] < 30) & (c.obs["eccentricity"] < 0.75)
    c.obs["cell_type"] = pd.Categorical(np.where(small_round, "small_round", "other"),
                                        categories=["small_round", "other"])
core_cells.obs["cell_type"].value_counts()

# %%
import squidpy as sq

sq.gr.spatial_neighbors(core_cells, coord_type="generic", delaunay=True)
sq.gr.nhood_enrichment(core_cells, cluster_key="cell_type", seed=0, n_perms=200, show_progress_bar=False)
pd.DataFrame(core_cells.uns["cell_type_nhood_enrichment"]["zscore"],
             index=core_cells.obs["cell_type"].cat.categories, columns=core_cells.obs["cell_type"].cat.categories)

# %%
if RUN_CO_OCCURRENCE:
    um = core.mpp
    sq.gr.co_occurrence(core_cells, cluster_key="cell_type", interval=np.linspace(5, 100, 12) / um,
                        show_progress_bar=False)
    occ = core_cells.uns["cell_type_co_occurrence"]
    print("P(small_round | other) / P(small_round) by distance (um):")
    print(pd.Series(occ["occ"][1, 0], index=np.round(occ["interval"][1:] * um, 1)).round(2).to_string())

# %% [markdown]
# ## Per-slide composition, ready for associations
# One row per slide: number of nuclei, density per mm² of the segmented tiles, mean nucleus size and
# staining, share of each class. With a cohort AnnData (`pk.tl.embed_cohort`) the columns go into
# `cohort.obs` and `cohort.obsm["cells_composition"]`, the `features` of `pk.tl.associate`.

# %%
pk.tl.cell_composition({slide.slide_id: cells, core.slide_id: core_cells})

# %% [markdown]
# ## QuPath
# Each nucleus becomes a QuPath detection with its class and measurements (File > Import objects in
# QuPath); QuPath's own cell detections read back the same way.

# %%
path = pk.io.write_geojson(core_cells, out / f"{core.slide_id}_cells.geojson")
back = pk.io.read_qupath_cells(path, core)
print(path, back.n_obs, "detections read back")
back.obs[["x", "y", "area_um2", "cell_type"]].head()
