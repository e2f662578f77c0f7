# %% [markdown]
# # Tutorial 1 — What a whole-slide image is
#
# A whole-slide image (WSI) is a scan of an entire glass slide: a tissue section, a few micrometres thick,
# stained with haematoxylin (nuclei, blue-purple) and eosin (cytoplasm and stroma, pink). Scanned at 20x or
# 40x it is tens of thousands of pixels on each side — far too big to hold in memory as one picture. This
# tutorial explains the three ideas every computational-pathology pipeline rests on:
#
# 1. **pyramids** — the file stores the image at several resolutions (levels);
# 2. **microns per pixel (mpp)** — the physical size of a pixel, which is what makes slides from different
#    scanners comparable;
# 3. **tissue detection and tiling** — most of a slide is empty glass; models look at small tiles of tissue.
#
# You will use real slides: a public Aperio H&E sample (CMU-1), a TCGA frozen section and a fluorescence scan.

# %%
import pathkit as pk

# %% tags=["parameters"]
SLIDE = None   # None: the CMU-1 sample shipped with pathkit; or a path to your own slide

# %% [markdown]
# ## 1. Opening a slide
#
# `pk.read_slide` opens the file lazily: nothing but the metadata is read until you ask for pixels.

# %%
slide = pk.read_slide(SLIDE) if SLIDE else pk.datasets.cmu1_small()
print("size at level 0 (w, h):", slide.dimensions)
print("levels:", slide.level_count, slide.level_dimensions)
print("downsamples:", slide.level_downsamples)
print("mpp:", slide.mpp, "from", slide.mpp_source, "| vendor:", slide.vendor)

# %% [markdown]
# The **mpp** (micrometres per pixel) says how much tissue one pixel covers. 0.25 mpp is a "40x" scan,
# 0.5 mpp a "20x" scan. A cell nucleus is about 5-10 µm across, so at 0.5 mpp it spans 10-20 pixels.
# Foundation models for pathology are trained on tiles at a fixed mpp (usually 0.5): feeding them tiles at
# another scale changes what they see, so pathkit always tiles at a *physical* resolution, not a level number.
#
# **Exercise 1.** How wide is this slide in millimetres?

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# width_mm = slide.dimensions[0] * slide.mpp / 1000
# print(f"{width_mm:.2f} mm")
# ```
# </details>

# %% [markdown]
# ## 2. Thumbnails and pyramids
#
# A thumbnail is read from the coarsest level that is big enough, so it is cheap even for a huge slide.

# %%
slide.thumbnail(512)

# %% [markdown]
# Not every file has the metadata we need. This TCGA frozen section (JPEG 2000 tiles) has **no mpp** in its
# header. pathkit refuses to guess — a wrong mpp silently changes every tile — and tells you what to do:

# %%
tcga = pk.datasets.fetch("slides/TCGA-CR-7395-01A-01-TS1.svs")   # downloaded once, sha256 checked
try:
    pk.read_slide(tcga)
except pk.errors.MppError as e:
    print("MppError:", e)
frozen = pk.read_slide(tcga, mpp=0.25)  # from the scan's known 40x objective
print(frozen.mpp, frozen.mpp_source)
frozen.thumbnail(400)

# %% [markdown]
# Fluorescence scans (here DAPI, a nuclear stain, on a black background) are not H&E. A tissue detector and an
# H&E foundation model would both give nonsense, so pathkit stops unless you say you know what you are doing:

# %%
ndpi = pk.datasets.fetch("slides/Stritt_test3-DAPI.ndpi")
try:
    pk.read_slide(ndpi)
except pk.errors.NotBrightfieldError as e:
    print("NotBrightfieldError:", e)

# %% [markdown]
# ## 3. Finding tissue
#
# pathkit follows the Prov-GigaPath preprocessing: an **Otsu threshold** on a low-resolution image.
# Otsu picks the grey level that best separates two populations of pixels — bright glass and darker
# stained tissue — by maximising the variance between them.

# %%
tissue = pk.pp.find_tissue(slide)
print(f"tissue covers {tissue.fraction:.1%} of the slide; Otsu threshold {tissue.threshold:.3f}")
print("mask shape", tissue.mask.shape, "- one mask pixel =", tissue.downsample, "level-0 pixels")

# %%
import matplotlib.pyplot as plt
fig, ax = plt.subplots(1, 2, figsize=(10, 4))
ax[0].imshow(slide.thumbnail(512)); ax[0].set_title("thumbnail")
ax[1].imshow(tissue.mask, cmap="gray"); ax[1].set_title("tissue mask")
for a in ax: a.axis("off")

# %% [markdown]
# ## 4. Tiles
#
# Models see **tiles**: 256 x 256 pixels at 0.5 mpp (128 µm on a side) by default. A tile is kept when at
# least `min_tissue` of its area is tissue. Coordinates are always level-0 pixels of the tile's top-left
# corner, whatever level the pixels are read from.

# %%
tiles = pk.pp.tile(slide, tile_px=256, mpp=0.5, min_tissue=0.1)   # an AnnData: one row per tile
print(tiles.n_obs, "tiles"); print(tiles.uns["tile_spec"])
tiles.obs.head()

# %%
import numpy as np
best = tiles.obs.sort_values("tissue", ascending=False).iloc[0]
plt.imshow(slide.read_tile(int(best.x), int(best.y), tile_px=256, mpp=0.5)); plt.axis("off");

# %% [markdown]
# **Exercise 2.** How many tiles do you get with `min_tissue=0.5`? Why does the count drop, and which tiles
# are lost (look at where they are)?

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# strict = pk.pp.tile(slide, min_tissue=0.5)
# print(strict.n_obs, "tiles instead of", tiles.n_obs)
# # the lost tiles are on the tissue border: they are partly glass
# ```
# </details>

# %% [markdown]
# **Exercise 3.** The NDPI above is a 0.228-mpp scan. Open it with `allow_non_brightfield=True` and tile it at
# 0.5 mpp: how many level-0 pixels does one 256-px tile span?

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# fl = pk.read_slide(ndpi, allow_non_brightfield=True)
# t = pk.pp.tile(fl, tissue=None, min_tissue=0.0)
# print(t.uns["tile_spec"]["size_level0"])   # 256 * 0.5 / 0.228 ≈ 561 px, resampled to 256
# ```
# </details>

# %% [markdown]
# ## Summary
# - A WSI is a pyramid; always think in **mpp**, not levels.
# - Missing or implausible mpp and non-H&E images are errors on purpose.
# - Tissue detection (Otsu) and tiling at a physical resolution give the table every later step uses.
#
# Next: *Tutorial 2 — from tiles to foundation-model embeddings*.
