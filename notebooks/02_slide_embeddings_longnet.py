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
# Data: tile embeddings made here, with pathkit, from a public slide (`pk.datasets.tile_bag`: the OpenSlide
# sample CMU-1-Small-Region shipped with pathkit, 256-px tiles at 0.5 µm/px, the tile model `TILE_MODEL`).

# %%
import pathkit as pk

# %% tags=["parameters"]
BAG = None                # None: pk.datasets.tile_bag(TILE_MODEL) of the CMU-1 sample; or a pathkit tile .h5ad
TILE_MODEL = "kaiko_vits16"   # the tile model of the example bag (with real weights: "gigapath_tile", gated)
SLIDE_MODEL = "longnet_small"   # with real weights: "gigapath_slide" (needs 1536-d gigapath_tile features)
SLIDE_WEIGHTS = "random"        # with real weights: None (the HF hub, gated) or a local slide_encoder.pth
OUT = "pathkit_out"          # folder for the results

# %% [markdown]
# > **Weights used here.** The released `gigapath_slide` encoder takes 1,536-d `gigapath_tile` features
# > (gated on the Hugging Face hub); the example bag holds `TILE_MODEL` features, and CI has no internet. So this
# > notebook registers a **small LongNet with random weights** (2 layers, 64-d, same dilated attention, same
# > grid, same position embeddings) whose input width is that of the bag. Every *mechanism* below — coordinates, ordering,
# > pooling, grid errors — is exactly that of the real model; the embedding *values* carry no biology.
# > With real weights, set in the parameter cell `SLIDE_MODEL = "gigapath_slide"`, `SLIDE_WEIGHTS = None`
# > (accept the licence of `prov-gigapath/prov-gigapath` on the Hugging Face hub and `huggingface-cli login`
# > first) and point `BAG` at a tile AnnData made with `pk.tl.embed_tiles(slide, "gigapath_tile", ...)`:
# > the slide vectors then separate cancer types and mutation status in linear probes (Xu et al., Nature 2024).

# %%
import numpy as np
import plotly.express as px

if BAG is None:
    # tissue, 256-px tiles at 0.5 mpp and TILE_MODEL's embeddings of the public CMU-1 sample (X = the features)
    bag = pk.datasets.tile_bag(TILE_MODEL, progress=False)
else:
    import anndata as ad
    bag = ad.read_h5ad(BAG)
    bag.X = bag.obsm[f"X_{TILE_MODEL}"]
SLIDE_MPP = float(bag.uns["slide"]["mpp"])   # the grid conversion needs the scan's µm/px
print(bag.n_obs, "tiles x", bag.n_vars, "features; level-0 x from", bag.obs.x.min(), "to", bag.obs.x.max(),
      f"at {SLIDE_MPP} µm/px")
px.scatter(bag.obs, x="x", y="y", color=np.linalg.norm(bag.X, axis=1), title="tiles at their level-0 positions",
           labels={"color": "feature norm"}, height=450).update_yaxes(autorange="reversed", scaleanchor="x")

# %% [markdown]
# ## A small slide encoder as a registry entry
#
# Models are data in pathkit: a `ModelSpec` names the architecture (`pathkit:longnet`) and its arguments. The
# real entry is `gigapath_slide`; the small one below differs only in size and input width.

# %%
small = pk.models.ModelSpec(
    name="longnet_small", kind="slide", arch="pathkit:longnet", embed_dim=64,
    kwargs={"in_chans": bag.n_vars, "embed_dim": 64, "depth": 2, "heads": 4, "mlp_ratio": 2,
            "slide_ngrids": 1000, "tile_size": 256, "max_wsi_size": 262144},
    description=f"2-layer LongNet for {bag.n_vars}-d tile features (demonstration, random weights)")
pk.models.register(small, overwrite=True)
pk.list_models("slide")[["architecture", "embed_dim", "weights", "gated", "description"]]

# %%
import warnings
warnings.filterwarnings("ignore", message=".*RANDOM weights")   # said once, loudly, above

# the features are in bag.X (use_rep="X"); coords="grid", pool="mean" by default
pk.tl.embed_slide(bag, model=SLIDE_MODEL, use_rep="X", weights=SLIDE_WEIGHTS)
vec = bag.uns["slide_embeddings"][SLIDE_MODEL]
info = bag.uns["slide_embeddings_info"][SLIDE_MODEL]
print("slide vector:", vec.shape, "| stored in uns['slide_embeddings'][%r]" % SLIDE_MODEL)
{k: v for k, v in info.items() if k != "tile_order"}

# %% [markdown]
# ## Coordinates: `"grid"` vs `"level0"`
#
# `coords="grid"` maps each tile to the 256-px, 0.5-mpp cell that holds its top-left corner (TRIDENT's and the
# authors' convention), whatever the scan's resolution. `coords="level0"` is what the reference code does with raw level-0 pixels: cells of 256 level-0 px.
# On this 20x scan (0.499 µm/px) a tile is 256 level-0 px wide, so both put a tile in the same cell. On a 40x
# scan (0.25 µm/px, most TCGA diagnostic slides) a tile is 512 level-0 px wide: the grid still puts neighbours one
# cell apart, raw pixels put them **two** cells apart, and the position embeddings the model sees are not the
# ones it was trained with. Below, the same tiles as a 40x scan of this tissue would give them (level-0
# positions doubled, mpp halved).

# %%
import pandas as pd

def as_40x(a):
    """The same tiles with the level-0 frame of a scan at twice the resolution."""
    b = a.copy()
    b.obs[["x", "y"]] = b.obs[["x", "y"]] * 2
    b.obsm["spatial"] = np.asarray(b.obsm["spatial"]) * 2
    b.uns["slide"] = {**b.uns["slide"], "mpp": SLIDE_MPP / 2}
    ts = dict(b.uns["tile_spec"])
    b.uns["tile_spec"] = {**ts, "slide_mpp": SLIDE_MPP / 2, "size_level0": ts["size_level0"] * 2,
                          "stride_level0": ts["stride_level0"] * 2}
    return b

def to_grid(xy, mpp0, tile_px=256, mpp=0.5):
    """What coords="grid" does: the 0.5-mpp pixel position of the 256-px cell holding each tile's top-left corner
    (half a level-0 pixel in, so that corners rounded by the tiler never fall into the cell before)."""
    return np.floor((xy + 0.5) * mpp0 / mpp / tile_px) * tile_px

bag40 = as_40x(bag)
x20, x40 = bag.obs["x"].to_numpy(float)[:5], bag40.obs["x"].to_numpy(float)[:5]
cells = pd.DataFrame({"x_level0 (20x)": x20, "x_level0 (40x)": x40,
                      "cell grid (both)": to_grid(x40, SLIDE_MPP / 2) / 256,
                      "cell level0 (20x)": np.floor(x20 / 256), "cell level0 (40x)": np.floor(x40 / 256)})
for key, adata, coords in [("grid40", bag40, "grid"), ("level0", bag, "level0"), ("level0_40", bag40, "level0")]:
    pk.tl.embed_slide(adata, model=SLIDE_MODEL, use_rep="X", weights=SLIDE_WEIGHTS, coords=coords, key_added=key)
v_level0 = bag.uns["slide_embeddings"]["level0"]
cosine = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
print(f"grid, 20x vs 40x frame:   cosine {cosine(vec, bag40.uns['slide_embeddings']['grid40']):.4f} (same cells)")
print(f"level0, 20x vs 40x frame: cosine {cosine(v_level0, bag40.uns['slide_embeddings']['level0_40']):.4f} "
      "-> other position embeddings, another slide vector")
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
pk.tl.embed_slide(shuffled, model=SLIDE_MODEL, use_rep="X", weights=SLIDE_WEIGHTS)
v_shuffled = shuffled.uns["slide_embeddings"][SLIDE_MODEL]
print("embed_slide, shuffled obs: max |difference| =", float(np.abs(v_shuffled - vec).max()))

net, _ = pk.models.longnet.load_slide_encoder(SLIDE_MODEL, weights=SLIDE_WEIGHTS)
order = bag.uns["slide_embeddings_info"][SLIDE_MODEL]["tile_order"]   # the order embed_slide used
xy = bag.obs[["x", "y"]].to_numpy(float)
grid_xy = to_grid(xy, SLIDE_MPP)
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
# coordinates beyond it into other rows; pathkit raises `GridError` and says what to do. Here the tiles of the
# 40x frame are spread 80 times wider (as on a very large or mis-scaled slide, about 89 mm) and encoded with raw
# level-0 coordinates (256-px cells: off the grid), then with the grid (0.5-mpp cells: on it):

# %%
wide = bag40.copy()
wide.obs["x"] = wide.obs["x"] * 80
try:
    pk.tl.embed_slide(wide, model=SLIDE_MODEL, use_rep="X", weights=SLIDE_WEIGHTS, coords="level0")
except pk.errors.GridError as e:
    print("GridError:", e)
pk.tl.embed_slide(wide, model=SLIDE_MODEL, use_rep="X", weights=SLIDE_WEIGHTS, coords="grid", key_added="wide")
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
pk.tl.embed_slide(bag, model=SLIDE_MODEL, use_rep="X", weights=SLIDE_WEIGHTS, pool="cls", key_added="cls")
pk.tl.embed_slide(bag, model="mean", use_rep="X")
v_cls, v_mean = bag.uns["slide_embeddings"]["cls"], bag.uns["slide_embeddings"]["mean"]
print("plain mean == bag.X.mean(0):", np.allclose(v_mean, bag.X.mean(0), atol=1e-6), v_mean.shape)
pk.tl.embed_slide(bag, model=SLIDE_MODEL, use_rep="X", weights=SLIDE_WEIGHTS, layers="all", key_added="all_layers")
layers = bag.uns["slide_embeddings"]["all_layers"]
print("layers='all':", layers.shape, "(input tokens + each layer, pooled)")
vecs = {"grid, mean": vec, "grid, cls": v_cls, "level0 (40x), mean": bag40.uns["slide_embeddings"]["level0_40"],
        "raw encoder, shuffled": raw(perm)}
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
