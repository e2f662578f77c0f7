# %% [markdown]
# # 08 · Spatial transcriptomics: H&E tiles meet spots
#
# A real HER2-positive breast cancer section (her2st, patient C, section C2; Andersson et al., Nat Commun
# 2021): legacy Spatial Transcriptomics, 187 spots of 100 µm with 15,706 genes each, on the H&E JPEG they
# were captured on. The notebook
#
# 1. reads the spots into an AnnData that scanpy and squidpy accept as is (`pk.io.read_st`),
# 2. checks them: spots on tissue, UMIs and genes per spot,
# 3. cuts one H&E tile centred on each spot (`pk.pp.tile_spots`, HEST's convention) and embeds it,
# 4. predicts a gene panel from the tiles with the HEST-Benchmark protocol and **spatial block
#    cross-validation** (`pk.tl.predict_expression(..., level="spot")`), against a mean predictor and
#    permutations,
# 5. compares Moran's I of measured and predicted genes (squidpy), draws them over the H&E,
# 6. writes a SpatialData zarr that napari-spatialdata and `spatialdata.read_zarr` open.
#
# > **Weights.** The default tile model is `kaiko_vits16` (ungated; its weights download once). The
# > documentation and CI run this notebook offline with `TILE_MODEL = "vit_tiny_test"`, a 2-block ViT with
# > **random** weights: every step, shape and key is what real weights give, but the features are only what
# > an untrained network makes of colour and texture (that alone predicts some genes above the permutation
# > baseline: cellular, tumour-rich spots look different), not a pathology foundation model.

# %%
import pathkit as pk

# %% tags=["parameters"]
TILE_MODEL = "kaiko_vits16"   # any tile model of pk.list_models("tile")
WEIGHTS = None                # None: the registry's source; or a local file
N_PERMUTATIONS = 200          # permutations of the baseline
FOLDS = 5                     # spatial blocks of the section
IMAGE_MPP = None              # resolution of the H&E in the SpatialData zarr (None: the slide's own)
OUT = "pathkit_out"           # folder for the results

# %%
import warnings
from pathlib import Path

import numpy as np

out = Path(OUT)
out.mkdir(parents=True, exist_ok=True)
slide, spots = pk.datasets.her2st("C2")   # the JPEG has no mpp: 0.7 µm/px from the 200-µm spot pitch
print(slide)
spots

# %% [markdown]
# ## The spots AnnData
#
# Raw UMIs sit in `layers["counts"]` (and in `X` until you normalise), spot centres in `obsm["spatial"]` in
# pixels of the slide, scanpy's `uns["spatial"]` holds a 2000-px copy of the H&E and the scale factors, and
# `uns["spot_spec"]` the spot diameter, the mpp and the link to the slide (path, sha256). Spots of the spot
# file without counts, or counts without a spot, would be listed in its `report`.

# %%
print(spots.uns["spot_spec"]["report"])
spots.obs[["total_counts", "n_genes_by_counts"]].describe().T

# %% [markdown]
# ## Tiles centred on spots, and QC
#
# One 224-px tile at 0.5 µm/px (112 µm, about one spot) around each spot; `obs["on_tissue"]` is the tissue
# mask at the spot centre, `obs["tissue"]` the tissue share of its tile.

# %%
pk.pp.tile_spots(slide, spots, tile_px=224, mpp=0.5)
print(spots.uns["spot_spec"]["qc"])
pk.pl.spatial(spots, color="total_counts", slide=slide)

# %% [markdown]
# ## Embed the tiles
#
# `spots` now carries the tiles contract (`obs` `x`, `y`, `uns["tile_spec"]`), so the ordinary tile embedder
# writes `spots.obsm["X_<model>"]`.

# %%
pk.tl.embed_tiles(spots, slide, TILE_MODEL, weights=WEIGHTS)
key = f"X_{TILE_MODEL}"
spots.obsm[key].shape

# %% [markdown]
# ## Predict a gene panel (HEST-Benchmark protocol, spatial blocks)
#
# The HER2 amplicon (ERBB2, GRB7, STARD3, PGAP3, MIEN1), immune (CD74, IGKC) and stromal (COL1A1, COL3A1, FN1,
# LUM) markers. log1p counts, PCA-256 of the standardised embeddings, ridge; folds are spatially contiguous
# blocks of the section (random folds would leak: neighbouring spots share signal). `r` is the held-out
# Pearson r, `mean_r2` the R² of predicting the training mean, `null_q95` the 95th percentile of r when the
# spots are shuffled.

# %%
PANEL = ["ERBB2", "GRB7", "STARD3", "PGAP3", "MIEN1", "CD74", "IGKC", "COL1A1", "COL3A1", "FN1", "LUM"]
res = pk.tl.predict_expression(spots, key, level="spot", genes=PANEL, folds=FOLDS,
                               n_permutations=N_PERMUTATIONS, random_state=0)
res.round(3)

# %% [markdown]
# ## Moran's I of measured and predicted expression (squidpy)

# %%
import squidpy as sq

spots.layers["log1p"] = np.log1p(spots.layers["counts"])
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    sq.gr.spatial_neighbors(spots, coord_type="generic", n_neighs=6)
    measured = sq.gr.spatial_autocorr(spots, mode="moran", genes=PANEL, layer="log1p", copy=True)
    predicted = sq.gr.spatial_autocorr(spots, mode="moran", genes=PANEL, layer="predicted", copy=True)
moran = measured[["I"]].rename(columns={"I": "I_measured"}).join(predicted[["I"]].rename(
    columns={"I": "I_predicted"}))
moran.join(res.set_index("gene")["r"]).round(3)

# %% [markdown]
# ## Measured and predicted, over the H&E

# %%
pk.pl.spatial(spots, color="ERBB2", slide=slide)

# %%
pk.pl.spatial(spots, color="COL1A1", slide=slide)

# %% [markdown]
# ## SpatialData
#
# The H&E as a multiscale image read lazily from the slide, the spots as circles and their table; the zarr
# opens with `spatialdata.read_zarr` (and napari-spatialdata); `pk.io.from_spatialdata` reads it back.

# %%
sdata = pk.io.to_spatialdata(spots, slide, image_mpp=IMAGE_MPP)
sdata.write(out / "her2st_C2.zarr", overwrite=True)
back = pk.io.from_spatialdata(out / "her2st_C2.zarr", "spots")
assert np.array_equal(back.obsm[key], spots.obsm[key])
sdata
