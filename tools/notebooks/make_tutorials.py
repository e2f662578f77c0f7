import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parents[2]
from nbtools import SETUP, build

R = str(REPO / "tutorials") + "/"

def solution(code):
    return f"<details><summary>Solution</summary>\n\n```python\n{code.strip()}\n```\n</details>"

build(R + "01_whole_slide_images.ipynb", [
("md", """
# Tutorial 1 — What a whole-slide image is

A whole-slide image (WSI) is a scan of an entire glass slide: a tissue section, a few micrometres thick,
stained with haematoxylin (nuclei, blue-purple) and eosin (cytoplasm and stroma, pink). Scanned at 20x or
40x it is tens of thousands of pixels on each side — far too big to hold in memory as one picture. This
tutorial explains the three ideas every computational-pathology pipeline rests on:

1. **pyramids** — the file stores the image at several resolutions (levels);
2. **microns per pixel (mpp)** — the physical size of a pixel, which is what makes slides from different
   scanners comparable;
3. **tissue detection and tiling** — most of a slide is empty glass; models look at small tiles of tissue.

You will use real slides: a public Aperio H&E sample (CMU-1), a TCGA frozen section and a fluorescence scan.
"""),
("params", SETUP + '''
SLIDE = DATA / "slides" / "CMU-1-Small-Region.svs"
'''),
("md", """
## 1. Opening a slide

`pk.read_slide` opens the file lazily: nothing but the metadata is read until you ask for pixels.
"""),
("code", '''
slide = pk.read_slide(SLIDE)
print("size at level 0 (w, h):", slide.dimensions)
print("levels:", slide.level_count, slide.level_dimensions)
print("downsamples:", slide.level_downsamples)
print("mpp:", slide.mpp, "from", slide.mpp_source, "| vendor:", slide.vendor)
'''),
("md", """
The **mpp** (micrometres per pixel) says how much tissue one pixel covers. 0.25 mpp is a "40x" scan,
0.5 mpp a "20x" scan. A cell nucleus is about 5-10 µm across, so at 0.5 mpp it spans 10-20 pixels.
Foundation models for pathology are trained on tiles at a fixed mpp (usually 0.5): feeding them tiles at
another scale changes what they see, so pathkit always tiles at a *physical* resolution, not a level number.

**Exercise 1.** How wide is this slide in millimetres?
"""),
("md", solution('''
width_mm = slide.dimensions[0] * slide.mpp / 1000
print(f"{width_mm:.2f} mm")
''')),
("md", """
## 2. Thumbnails and pyramids

A thumbnail is read from the coarsest level that is big enough, so it is cheap even for a huge slide.
"""),
("code", '''
slide.thumbnail(512)
'''),
("md", """
Not every file has the metadata we need. This TCGA frozen section (JPEG 2000 tiles) has **no mpp** in its
header. pathkit refuses to guess — a wrong mpp silently changes every tile — and tells you what to do:
"""),
("code", '''
tcga = DATA / "slides" / "TCGA-CR-7395-01A-01-TS1.svs"
try:
    pk.read_slide(tcga)
except pk.errors.MppError as e:
    print("MppError:", e)
frozen = pk.read_slide(tcga, mpp=0.25)  # from the scan's known 40x objective
print(frozen.mpp, frozen.mpp_source)
frozen.thumbnail(400)
'''),
("md", """
Fluorescence scans (here DAPI, a nuclear stain, on a black background) are not H&E. A tissue detector and an
H&E foundation model would both give nonsense, so pathkit stops unless you say you know what you are doing:
"""),
("code", '''
ndpi = DATA / "slides" / "Stritt_test3-DAPI.ndpi"
try:
    pk.read_slide(ndpi)
except pk.errors.NotBrightfieldError as e:
    print("NotBrightfieldError:", e)
'''),
("md", """
## 3. Finding tissue

pathkit follows the Prov-GigaPath preprocessing: an **Otsu threshold** on a low-resolution image.
Otsu picks the grey level that best separates two populations of pixels — bright glass and darker
stained tissue — by maximising the variance between them.
"""),
("code", '''
tissue = pk.pp.find_tissue(slide)
print(f"tissue covers {tissue.fraction:.1%} of the slide; Otsu threshold {tissue.threshold:.3f}")
print("mask shape", tissue.mask.shape, "- one mask pixel =", tissue.downsample, "level-0 pixels")
'''),
("code", '''
import matplotlib.pyplot as plt
fig, ax = plt.subplots(1, 2, figsize=(10, 4))
ax[0].imshow(slide.thumbnail(512)); ax[0].set_title("thumbnail")
ax[1].imshow(tissue.mask, cmap="gray"); ax[1].set_title("tissue mask")
for a in ax: a.axis("off")
'''),
("md", """
## 4. Tiles

Models see **tiles**: 256 x 256 pixels at 0.5 mpp (128 µm on a side) by default. A tile is kept when at
least `min_tissue` of its area is tissue. Coordinates are always level-0 pixels of the tile's top-left
corner, whatever level the pixels are read from.
"""),
("code", '''
tiles = pk.pp.tile(slide, tile_px=256, mpp=0.5, min_tissue=0.1)
print(len(tiles), "tiles"); print(tiles.attrs["tile_spec"])
tiles.head()
'''),
("code", '''
import numpy as np
best = tiles.sort_values("tissue", ascending=False).iloc[0]
plt.imshow(slide.read_tile(int(best.x), int(best.y), tile_px=256, mpp=0.5)); plt.axis("off");
'''),
("md", """
**Exercise 2.** How many tiles do you get with `min_tissue=0.5`? Why does the count drop, and which tiles
are lost (look at where they are)?
"""),
("md", solution('''
strict = pk.pp.tile(slide, min_tissue=0.5)
print(len(strict), "tiles instead of", len(tiles))
# the lost tiles are on the tissue border: they are partly glass
''')),
("md", """
**Exercise 3.** The NDPI above is a 0.228-mpp scan. Open it with `allow_non_brightfield=True` and tile it at
0.5 mpp: how many level-0 pixels does one 256-px tile span?
"""),
("md", solution('''
fl = pk.read_slide(ndpi, allow_non_brightfield=True)
t = pk.pp.tile(fl, tissue=None, min_tissue=0.0)
print(t.attrs["tile_spec"]["size_level0"])   # 256 * 0.5 / 0.228 ≈ 561 px, resampled to 256
''')),
("md", """
## Summary
- A WSI is a pyramid; always think in **mpp**, not levels.
- Missing or implausible mpp and non-H&E images are errors on purpose.
- Tissue detection (Otsu) and tiling at a physical resolution give the table every later step uses.

Next: *Tutorial 2 — from tiles to foundation-model embeddings*.
"""),
])
print("ok")

build(R + "02_tiles_to_embeddings.ipynb", [
("md", """
# Tutorial 2 — From tiles to foundation-model embeddings

A 256-px tile holds a few hundred cells. A **foundation model** — a vision transformer trained by
self-supervision on hundreds of thousands of slides (Prov-GigaPath, UNI, Virchow2, ...) — turns each tile
into a vector of numbers (an *embedding*) in which similar-looking tissue lies close together. Downstream
questions (is this tumour MSI-high? how long will the patient live?) are answered by small models trained on
those vectors, instead of on raw pixels.

This tutorial shows: what the model expects as input, how a slide becomes a tiles x features **AnnData**, and
how to look at real embeddings.
"""),
("params", SETUP + '''
SLIDE = DATA / "slides" / "CMU-1-Small-Region.svs"
TILE_MODEL = "vit_tiny_test"   # with real weights: "gigapath_tile", "uni", "virchow2", ...
WEIGHTS = None                 # e.g. "hf_hub:prov-gigapath/prov-gigapath" or a local file
'''),
("md", """
## 1. The model zoo

Each model is a registry entry: its exact architecture, the preprocessing its authors used (resize, crop,
mean/std), which token is the embedding, and where its weights live. Most are gated on the Hugging Face hub:
you accept the licence there, log in, and pathkit downloads them once.
"""),
("code", '''
pk.list_models()[["architecture", "embed_dim", "input", "pool", "license"]]
'''),
("md", """
> **Random weights in this notebook.** CI has no internet, so `vit_tiny_test` is a 2-block ViT with
> random weights: every number below is *structurally* right (shapes, keys, coordinates) but carries no
> biology. With real weights (set `TILE_MODEL`/`WEIGHTS` above), tiles of the same tissue type cluster
> together in the UMAP and slide-level predictions become meaningful.

## 2. Preprocessing
The model's own normalisation matters: a model trained with ImageNet mean/std sees shifted colours if fed
tiles normalised with 0.5/0.5. pathkit reads it from the registry:
"""),
("code", '''
spec = pk.models.get_spec(TILE_MODEL)
print("input", spec.input_size, "| resize", spec.resize, "| mean", spec.mean, "| std", spec.std, "| pool", spec.pool)
'''),
("md", """
## 3. Embedding a slide
Tiles are read and decoded in background workers while the model runs; the result is an AnnData with one
row per tile.
"""),
("code", '''
slide = pk.read_slide(SLIDE)
tiles = pk.pp.tile(slide)
adata = pk.tl.embed_tiles(slide, TILE_MODEL, tiles=tiles, weights=WEIGHTS, num_workers=0)
adata
'''),
("code", '''
print(adata.obs.head())
print("spatial (level-0 px):", adata.obsm["spatial"][:3])
print("model provenance:", {k: adata.uns["model"][k] for k in ("name", "arch")})
'''),
("md", """
**Exercise 1.** Which tile has the largest embedding norm, and where is it on the slide?
"""),
("md", solution('''
import numpy as np
i = int(np.linalg.norm(adata.X, axis=1).argmax())
adata.obs.iloc[i][["x", "y"]]
''')),
("md", """
## 4. Real embeddings
The shared data hold real 512-d tile embeddings of a whole TCGA colon cancer slide (patient TCGA-AD-6964,
MSI-high). Note its coordinates are stored as (y, x) on disk.
"""),
("code", '''
bag = pk.io.read_h5_bag(DATA / "embeddings" / "TCGA-AD-6964-01Z-00-DX1.features.h5", coords_order="yx")
pk.tl.umap(bag, leiden=True)
pk.pl.umap(bag, color="leiden", thumbnails=False)
'''),
("md", """
Leiden clusters of real embeddings usually correspond to tissue compartments (tumour epithelium, stroma,
lymphocytes, mucin, necrosis). Their spatial layout is visible by plotting the tile coordinates:
"""),
("code", '''
import plotly.express as px
px.scatter(bag.obs, x="x", y="y", color="leiden").update_yaxes(autorange="reversed")
'''),
("md", """
**Exercise 2.** A slide embedding can be as simple as the mean of its tiles. Compute it, then compare with
`pk.tl.embed_slide(bag, model="mean")`.
"""),
("md", solution('''
import numpy as np
v = pk.tl.embed_slide(bag, model="mean")
np.allclose(v, bag.X.mean(0))
''')),
("md", """
## Summary
Foundation models turn tiles into vectors; the registry keeps each model's exact preprocessing; an AnnData
keeps features, coordinates and provenance together. Next: *Tutorial 3 — survival analysis with histology*.
"""),
])

build(R + "03_survival_with_histology.ipynb", [
("md", """
# Tutorial 3 — Survival analysis with histology

Clinical outcomes such as death or recurrence are **time-to-event** data: for each patient we know a time
and whether the event was observed (`event = 1`) or the patient was **censored** (`event = 0`: alive at last
follow-up, so we only know they survived *at least* that long). Dropping censored patients, or treating them
as deaths, biases everything. Survival methods use them correctly.

We use the real TCGA colorectal cohort (COADREAD) from the SurvPath study: survival per diagnostic slide,
stage per patient, and RNA-seq.
"""),
("params", SETUP + '''
TCGA = DATA / "tcga" / "coadread"
'''),
("code", '''
import pandas as pd
slides = pd.read_csv(TCGA / "slides_survival.csv")
clinical = pd.read_csv(TCGA / "clinical.csv", index_col=0)
slides[["case_id", "slide_id", "survival_months", "censorship"]].head()
'''),
("md", """
`censorship = 1` means censored, the opposite of pathkit's `event`. Linking normalises that on the way in and
reports what matched:
"""),
("code", '''
cohort = pk.link(pk.io.cohort_from_table(slides), clinical=clinical)
report = cohort.uns["link_report"]
# counts per side: rows, ids, ids that are not TCGA barcodes, duplicates, matches
{side: {k: v for k, v in part.items() if k.startswith("n_")} for side, part in report.items() if isinstance(part, dict)}
'''),
("md", """
Half of the clinical table's ids are not TCGA patients (`P-...` ids from another cohort) and some ids are
duplicated with conflicting values: the report counts them instead of silently dropping rows. The slide table
is now in pathkit's conventions: `event` (1 = death observed) and `time_months`.
"""),
("code", '''
cohort.obs[["patient_id", "time_months", "event", "stage"]].head()
'''),
("md", """
## 1. Kaplan–Meier curves
The Kaplan–Meier estimator multiplies, at each event time, the share of patients at risk who survive it.
Censored patients leave the risk set without counting as events.
"""),
("code", '''
# one row per patient for patient-level survival; drop patients without a stage
df = cohort.obs.drop_duplicates("patient_id")
df = df[df["stage"].notna() & (df["stage"].astype(str) != "N/A")]
df["stage"].value_counts()
#
km = pk.tl.kaplan_meier(df, time="time_months", event="event", groupby="stage")
km.median
'''),
("code", '''
pk.pl.kaplan_meier(df, time="time_months", event="event", groupby="stage")
'''),
("md", """
## 2. The log-rank test
Are the curves different? The log-rank test compares, at each event time, observed and expected deaths per
group under the null hypothesis of equal hazards.
"""),
("code", '''
lr = pk.tl.logrank(df, time="time_months", event="event", groupby="stage")
print(f"chi2 = {lr.statistic:.2f}, p = {lr.p_value:.2g}")
'''),
("md", """
## 3. Cox proportional hazards
The Cox model estimates a **hazard ratio** per covariate: HR = 2 means twice the instantaneous risk of the
event at any time. The **concordance index** (c-index) asks: for two comparable patients, does the one with
the higher predicted risk die first? 0.5 is chance, 1 is perfect.
"""),
("code", '''
cox = pk.tl.cox(df, time="time_months", event="event", covariates=["age", "is_female"])
cox.summary
'''),
("md", """
## 4. Histology as a covariate
With real slide embeddings (e.g. Prov-GigaPath's slide encoder), their first principal components go into a
penalised Cox model, or an ABMIL survival head is trained end to end on tiles. Its out-of-fold risk splits
patients into groups — see notebooks 04 and 05. Here, as a stand-in, a molecular score from the RNA-seq plays
that role.

**Exercise.** Split patients at the median `age` with `pk.tl.risk_groups` and test the two groups with the
log-rank test. Is age prognostic here?
"""),
("md", solution('''
pk.tl.risk_groups(df, score="age", method="median")
pk.tl.logrank(df, time="time_months", event="event", groupby="risk_group").p_value
''')),
("md", """
## Summary
Always keep censored patients; KM describes, log-rank tests, Cox quantifies. Out-of-fold predictions (never
predictions on the training patients) are the only honest way to turn a histology model into risk groups.
"""),
])
print("ok2")
