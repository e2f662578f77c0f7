# %% [markdown]
# # 01 · Quickstart: slide → tissue → tiles → embeddings → UMAP
#
# A real H&E slide (the public OpenSlide sample CMU-1-Small-Region, shipped with pathkit) goes through the
# whole spine: tissue detection, tiles at 0.5 µm/px, tile embeddings from a pathology foundation model, and
# a UMAP of the tiles with Leiden clusters.
#
# > **Weights.** The default tile model is `kaiko_vits16` (Kaiko.ai's ViT-S/16, ungated: its weights download
# > once from GitHub). Gated models (`gigapath_tile`, `uni`, `virchow2`, ...) need a Hugging Face login; see
# > `pk.list_models()`. The documentation and CI run this notebook offline with `TILE_MODEL = "vit_tiny_test"`
# > (a 2-block ViT with **random** weights): shapes and keys are then exactly what real weights give, but the
# > clusters carry no biology.

# %%
import pathkit as pk

# %% tags=["parameters"]
SLIDE = None                 # None: the CMU-1 sample shipped with pathkit; or a path to your .svs/.ndpi/.tif
TILE_MODEL = "kaiko_vits16"  # any tile model of pk.list_models("tile")
WEIGHTS = None               # None: the registry's source; or a local file
OUT = "pathkit_out"          # folder for the results

# %%
from pathlib import Path

out = Path(OUT)
out.mkdir(parents=True, exist_ok=True)
slide = pk.read_slide(SLIDE) if SLIDE else pk.datasets.cmu1_small()
print(slide.dimensions, slide.level_count, "levels,", slide.mpp, "mpp from", slide.mpp_source)
slide.thumbnail(400)

# %% [markdown]
# ## Tissue and tiles

# %%
tissue = pk.pp.find_tissue(slide)
tiles = pk.pp.tile(slide, tile_px=256, mpp=0.5, min_tissue=0.1, tissue=tissue, focus=True)  # focus: sharpness
print(f"{tissue.fraction:.1%} tissue, {tiles.n_obs} tiles")
tiles.obs.head()

# %% [markdown]
# ## Tile embeddings

# %%
pk.tl.embed_tiles(tiles, slide, TILE_MODEL, weights=WEIGHTS)   # -> tiles.obsm["X_<model>"]
tiles.write_h5ad(out / f"{slide.slide_id}.h5ad")
tiles

# %% [markdown]
# ## UMAP and clusters, on the slide

# %%
pk.tl.umap(tiles, use_rep=f"X_{TILE_MODEL}", leiden=True)
pk.pl.umap(tiles, color="leiden")

# %%
pk.pl.slide(tiles, color="leiden", slide=slide)
