# %% [markdown]
# # 02 · Slide embeddings with the Prov-GigaPath LongNet encoder
#
# The slide encoder reads all of a slide's tile embeddings *with their positions* and returns one vector per
# slide. pathkit's reimplementation needs no flash-attn, runs on CPU and GPU, and matches the reference code
# (parity-tested to 1e-4). Two details decide whether you get the right numbers:
#
# 1. **coordinates**: the model was trained on 256-px tiles at 0.5 mpp, each placed in a cell of a
#    1000 x 1000 grid. pathkit converts level-0 pixels of any scan to that grid (`coords="grid"`). The
#    reference code used raw level-0 pixels (`coords="level0"`), so on a 40x scan its tiles sit two cells apart.
# 2. **tile order**: dilated attention cuts the sequence into segments and keeps every r-th token, so the order
#    of tiles changes the result. pathkit sorts tiles row-major before encoding.
# 3. **which layer, which pooling**: for `gigapath_slide` the default is the hidden state after block 11 of 12,
#    mean of the tile tokens (`layers=11, pool="mean"`): the layer the authors' fine-tuning (`--feat_layer 11`)
#    and TRIDENT read, with TRIDENT's pooling for frozen embeddings. `pool="cls"` is the authors' fine-tuning
#    readout, `layers="last"` the reference's plain `forward`. The table in the docs' model page lists them.
#
# Data: real 512-d tile embeddings of a whole TCGA colon adenocarcinoma slide (TCGA-AD-6964, MSI-high),
# 777 tiles, coordinates stored on disk as (y, x).

# %%
import pathkit as pk

# %% tags=["parameters"]
BAG = None                # None: the TCGA-AD-6964 bag from pk.datasets; or an .h5 bag / a pathkit tile .h5ad
SLIDE_MPP = 0.25          # level-0 µm/px of the scan the bag came from (TCGA diagnostic slides: 40x, 0.25)
SLIDE_MODEL = "longnet_small_512"   # with real weights: "gigapath_slide" (needs 1536-d gigapath_tile features)
WEIGHTS = "random"        # with real weights: None (the HF hub, gated) or a local slide_encoder.pth
OUT = "pathkit_out"          # folder for the results

# %% [markdown]
# > **Weights used here.** The released `gigapath_slide` encoder takes 1,536-d `gigapath_tile` features; the
# > bag of `pk.datasets.tcga_coad_bag()` holds 512-d features from another tile model, and CI has no internet. So this
# > notebook registers a **small LongNet with random weights** (2 layers, 64-d, same dilated attention, same
# > grid, same position embeddings) whose input is 512-d. Every *mechanism* below — coordinates, ordering,
# > pooling, grid errors — is exactly that of the real model; the embedding *values* carry no biology.
# > With real weights, set in the parameter cell `SLIDE_MODEL = "gigapath_slide"`, `WEIGHTS = None`
# > (accept the licence of `prov-gigapath/prov-gigapath` on the Hugging Face hub and `huggingface-cli login`
# > first) and point `BAG` at a tile AnnData made with `pk.tl.embed_tiles(slide, "gigapath_tile", ...)`:
# > the slide vectors then separate cancer types and mutation status in linear probes (Xu et al., Nature 2024).

# %%
import numpy as np
import plotly.express as px

if BAG is None:
    # an .h5 bag does not record the scan's mpp; the grid conversion needs it (tiles here are 512 level-0 px
    # apart = 256 px at 0.5 mpp on a 0.25-mpp scan)
    bag = pk.datasets.tcga_coad_bag(slide_mpp=SLIDE_MPP)
elif str(BAG).endswith(".h5ad"):
    import anndata as ad
    bag = ad.read_h5ad(BAG)
else:
    bag = pk.io.read_h5_bag(BAG, coords_order="yx", tile_px=256, mpp=0.5, slide_mpp=SLIDE_MPP)
print(bag.n_obs, "tiles x", bag.n_vars, "features; level-0 x from", bag.obs.x.min(), "to", bag.obs.x.max())
px.scatter(bag.obs, x="x", y="y", color=np.linalg.norm(bag.X, axis=1), title="tiles at their level-0 positions",
           labels={"color": "feature norm"}, height=450).update_yaxes(autorange="reversed", scaleanchor="x")

# %% [markdown]
# ## A small slide encoder as a registry entry
#
# Models are data in pathkit: a `ModelSpec` names the architecture (`pathkit:longnet`) and its arguments. The
# real entry is `gigapath_slide`; the small one below differs only in size and input width.

# %%
small = pk.models.ModelSpec(
    name="longnet_small_512", kind="slide", arch="pathkit:longnet", embed_dim=64,
    kwargs={"in_chans": 512, "embed_dim": 64, "depth": 2, "heads": 4, "mlp_ratio": 2,
            "slide_ngrids": 1000, "tile_size": 256, "max_wsi_size": 262144},
    description="2-layer LongNet for 512-d tile features (demonstration, random weights)")
pk.models.register(small, overwrite=True)
pk.list_models("slide")[["architecture", "embed_dim", "weights", "gated", "description"]]

# %%
import warnings
warnings.filterwarnings("ignore", message=".*RANDOM weights")   # said once, loudly, above

# the features are in bag.X (use_rep="X"); coords="grid", pool="mean" by default
pk.tl.embed_slide(bag, model=SLIDE_MODEL, use_rep="X", weights=WEIGHTS)
vec = bag.uns["slide_embeddings"][SLIDE_MODEL]
info = bag.uns["slide_embeddings_info"][SLIDE_MODEL]
print("slide vector:", vec.shape, "| stored in uns['slide_embeddings'][%r]" % SLIDE_MODEL)
{k: v for k, v in info.items() if k != "tile_order"}

# %% [markdown]
# ## Coordinates: `"grid"` vs `"level0"`
#
# `coords="grid"` maps each tile to the 256-px, 0.5-mpp cell that holds its centre: on this 0.25-mpp scan a
# level-0 step of 512 px is one cell. `coords="level0"` is what the reference code does with raw level-0
# pixels: cells are 256 level-0 px, so neighbouring tiles are two cells apart and the position embeddings the
# model sees are not the ones it was trained with.

# %%
import pandas as pd
xy = bag.obs[["x", "y"]].to_numpy(float)
mpp0 = float(bag.uns["slide"].get("mpp", SLIDE_MPP))
def to_grid(xy, tile_px=256, mpp=0.5):
    """What coords="grid" does: the 0.5-mpp pixel position of the 256-px cell holding each tile's centre."""
    size0 = tile_px * mpp / mpp0                      # a tile's side in level-0 px (512 here)
    return np.floor((xy + size0 / 2) * mpp0 / 0.5 / 256) * 256
cells = pd.DataFrame({"x_level0": xy[:5, 0], "cell_grid": to_grid(xy)[:5, 0] / 256,
                      "cell_level0": np.floor(xy[:5, 0] / 256)})
pk.tl.embed_slide(bag, model=SLIDE_MODEL, use_rep="X", weights=WEIGHTS, coords="level0", key_added="level0")
v_level0 = bag.uns["slide_embeddings"]["level0"]
cos = float(vec @ v_level0 / np.linalg.norm(vec) / np.linalg.norm(v_level0))
print(f"cosine(grid, level0) = {cos:.4f}  -> different position embeddings, a different slide vector")
cells

# %% [markdown]
# ## Tile order
#
# `embed_slide` sorts tiles row-major (grid y, then x) before encoding, so shuffling the rows of the AnnData
# gives the *same* vector. The raw encoder (`pk.models.longnet.LongNetSlideEncoder`) encodes tokens in the
# order given; its dilated branches keep every r-th token of a segment, so a different order gives a
# different vector. Always go through `embed_slide`, or sort the way it does.

# %%
import torch
rng = np.random.default_rng(0)
perm = rng.permutation(bag.n_obs)
shuffled = bag[perm].copy()
pk.tl.embed_slide(shuffled, model=SLIDE_MODEL, use_rep="X", weights=WEIGHTS)
v_shuffled = shuffled.uns["slide_embeddings"][SLIDE_MODEL]
print("embed_slide, shuffled obs: max |difference| =", float(np.abs(v_shuffled - vec).max()))

net, _ = pk.models.longnet.load_slide_encoder(SLIDE_MODEL, weights=WEIGHTS)
order = bag.uns["slide_embeddings_info"][SLIDE_MODEL]["tile_order"]   # the order embed_slide used
grid_xy = to_grid(xy)
def raw(idx):
    with torch.inference_mode():
        f = torch.from_numpy(bag.X[idx])[None]
        c = torch.from_numpy(grid_xy[idx])[None]
        return net(f, c, pool="mean")[0].numpy()
print("raw encoder, sorted order:  max |difference| =", float(np.abs(raw(order) - vec).max()))
print("raw encoder, shuffled order: max |difference| =", float(np.abs(raw(perm) - vec).max()),
      "(vector entries are ~1 after the final layer norm)")

# %% [markdown]
# ## Off the grid
#
# The grid has 1000 x 1000 cells of 256 px at 0.5 mpp: 128 mm on a side. The reference code silently wraps
# coordinates beyond it into other rows; pathkit raises `GridError` and says what to do. Here the tiles are
# spread ten times wider (as on a very large or mis-scaled slide) and encoded with raw level-0 coordinates:

# %%
wide = bag.copy()
wide.obs["x"] = wide.obs["x"] * 10
try:
    pk.tl.embed_slide(wide, model=SLIDE_MODEL, use_rep="X", weights=WEIGHTS, coords="level0")
except pk.errors.GridError as e:
    print("GridError:", e)
pk.tl.embed_slide(wide, model=SLIDE_MODEL, use_rep="X", weights=WEIGHTS, coords="grid", key_added="wide")
v_wide = wide.uns["slide_embeddings"]["wide"]
print("coords='grid' fits it on the grid:", v_wide.shape)

# %% [markdown]
# ## Pooling: mean of LongNet tokens vs plain mean of tiles
#
# Two different things are both called "mean":
# - `pool="mean"` (default for LongNet) averages the encoder's *output* tokens (after attention mixed the tiles)
#   and applies the final norm — how TRIDENT reads frozen Prov-GigaPath slide embeddings; `pool="cls"` reads
#   the CLS token, the authors' fine-tuning readout (their fine-tuning trains it along with a head).
# - `layers` picks the hidden state: the small model here has no default layer, so it reads the last one;
#   `gigapath_slide` reads layer 11 of 12 unless told otherwise.
# - `model="mean"` is the plain mean of the *input* tile features, no network at all — a strong, cheap
#   baseline for slide-level tasks.

# %%
pk.tl.embed_slide(bag, model=SLIDE_MODEL, use_rep="X", weights=WEIGHTS, pool="cls", key_added="cls")
pk.tl.embed_slide(bag, model="mean", use_rep="X")
v_cls, v_mean = bag.uns["slide_embeddings"]["cls"], bag.uns["slide_embeddings"]["mean"]
print("plain mean == bag.X.mean(0):", np.allclose(v_mean, bag.X.mean(0), atol=1e-6), v_mean.shape)
pk.tl.embed_slide(bag, model=SLIDE_MODEL, use_rep="X", weights=WEIGHTS, layers="all", key_added="all_layers")
layers = bag.uns["slide_embeddings"]["all_layers"]
print("layers='all':", layers.shape, "(input tokens + each layer, pooled)")
vecs = {"grid, mean": vec, "grid, cls": v_cls, "level0, mean": v_level0, "raw encoder, shuffled": raw(perm)}
cos = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in vecs.values()] for a in vecs.values()])
px.imshow(cos, x=list(vecs), y=list(vecs), text_auto=".3f", zmin=0, zmax=1, color_continuous_scale="Blues",
          title="cosine similarity between LongNet slide vectors of the same slide", height=420)

# %%
sorted(bag.uns["slide_embeddings"])   # every embedding above is kept with its provenance; bag.write_h5ad() saves them

# %% [markdown]
# ## With the released weights
#
# ```python
# tiles = pk.tl.embed_tiles(slide, "gigapath_tile", weights="hf_hub:prov-gigapath/prov-gigapath")  # 1536-d
# vec = pk.tl.embed_slide(tiles, model="gigapath_slide")            # weights from the HF hub (gated), 768-d
# vecs = pk.tl.embed_slide(tiles, model="gigapath_slide", layers="all")   # 13 x 768, for linear probes per layer
# ```
# On a GPU it runs in bfloat16 by default (`dtype="float32"` for exact parity with the reference);
# for a cohort, `pk.tl.embed_cohort(..., slide_model="gigapath_slide")` keeps one loaded encoder for all slides.
