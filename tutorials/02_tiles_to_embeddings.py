# %% [markdown]
# # Tutorial 2 — From tiles to foundation-model embeddings
#
# A 256-px tile holds a few hundred cells. A **foundation model** — a vision transformer trained by
# self-supervision on hundreds of thousands of slides (Prov-GigaPath, UNI, Virchow2, ...) — turns each tile
# into a vector of numbers (an *embedding*) in which similar-looking tissue lies close together. Downstream
# questions (is this tumour MSI-high? how long will the patient live?) are answered by small models trained on
# those vectors, instead of on raw pixels.
#
# This tutorial shows: what the model expects as input, how a slide becomes a tiles x features **AnnData**, and
# how to look at real embeddings.

# %%
import pathkit as pk

# %% tags=["parameters"]
SLIDE = None                   # None: the CMU-1 sample shipped with pathkit; or a path to your own slide
TILE_MODEL = "kaiko_vits16"    # ungated; gated: "gigapath_tile", "uni", "virchow2", ...
WEIGHTS = None                 # None: the registry's source; or a local file

# %% [markdown]
# ## 1. The model zoo
#
# Each model is a registry entry: its exact architecture, the preprocessing its authors used (resize, crop,
# mean/std), which token is the embedding, and where its weights live. Most are gated on the Hugging Face hub:
# you accept the licence there, log in, and pathkit downloads them once.

# %%
pk.list_models()[["architecture", "embed_dim", "input", "pool", "license"]]

# %% [markdown]
# > **Weights.** The default `kaiko_vits16` (Kaiko.ai's ViT-S/16 trained on TCGA) has ungated weights,
# > downloaded once. The documentation and CI run this tutorial offline with `vit_tiny_test`, a 2-block ViT
# > with **random** weights: every number is then *structurally* right (shapes, keys, coordinates) but carries
# > no biology. With real weights, tiles of the same tissue type cluster together in the UMAP.
#
# ## 2. Preprocessing
# The model's own normalisation matters: a model trained with ImageNet mean/std sees shifted colours if fed
# tiles normalised with 0.5/0.5. pathkit reads it from the registry:

# %%
spec = pk.models.get_spec(TILE_MODEL)
print("input", spec.input_size, "| resize", spec.resize, "| mean", spec.mean, "| std", spec.std, "| pool", spec.pool)

# %% [markdown]
# ## 3. Embedding a slide
# Tiles are read and decoded in background workers while the model runs; the result is an AnnData with one
# row per tile.

# %%
slide = pk.read_slide(SLIDE) if SLIDE else pk.datasets.cmu1_small()
tiles = pk.pp.tile(slide)
pk.tl.embed_tiles(tiles, slide, TILE_MODEL, weights=WEIGHTS)   # writes tiles.obsm["X_<model>"]
tiles

# %%
key = f"X_{TILE_MODEL}"
print(tiles.obs.head())
print("features:", tiles.obsm[key].shape, "| spatial (level-0 px):", tiles.obsm["spatial"][:3].tolist())
print("model provenance:", {k: tiles.uns["models"][key].get(k) for k in ("name", "arch", "weights")})

# %% [markdown]
# **Exercise 1.** Which tile has the largest embedding norm, and where is it on the slide?

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# import numpy as np
# i = int(np.linalg.norm(tiles.obsm[key], axis=1).argmax())
# tiles.obs.iloc[i][["x", "y"]]
# ```
# </details>

# %% [markdown]
# ## 4. Clusters of the embeddings
# A UMAP of the tiles with Leiden clusters (`pk.tl.umap` reads the features from `use_rep`). With real weights,
# clusters of tile embeddings usually correspond to tissue compartments (tumour epithelium, stroma,
# lymphocytes, mucin, necrosis). `pk.datasets.tile_bag(TILE_MODEL)` makes the same kind of bag in one call.

# %%
pk.tl.umap(tiles, use_rep=key, leiden=True)
pk.pl.umap(tiles, color="leiden", thumbnails=False)

# %% [markdown]
# Their spatial layout is visible by plotting the tile coordinates (`pk.pl.slide(tiles, color="leiden",
# slide=slide)` draws them over the slide):

# %%
import plotly.express as px
px.scatter(tiles.obs, x="x", y="y", color="leiden").update_yaxes(autorange="reversed", scaleanchor="x")

# %% [markdown]
# **Exercise 2.** A slide embedding can be as simple as the mean of its tiles. Compute it, then compare with
# `pk.tl.embed_slide(tiles, model="mean", use_rep=key)` (it writes `tiles.uns["slide_embeddings"]["mean"]`).

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# import numpy as np
# pk.tl.embed_slide(tiles, model="mean", use_rep=key)
# v = tiles.uns["slide_embeddings"]["mean"]
# np.allclose(v, tiles.obsm[key].mean(0))
# ```
# </details>

# %% [markdown]
# ## Summary
# Foundation models turn tiles into vectors; the registry keeps each model's exact preprocessing; an AnnData
# keeps features, coordinates and provenance together. Next: *Tutorial 3 — survival analysis with histology*.
