import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parents[2]
from nbtools import SETUP, build

R = str(REPO / "notebooks") + "/"
RANDOM_NOTE = """
> **Weights used here.** This notebook runs in CI without internet, so the tile model is `vit_tiny_test`
> (random weights). Shapes, keys and coordinates are exactly what real weights give; the *values* carry no
> biology. Set `TILE_MODEL` and `WEIGHTS` in the parameter cell (e.g. `"gigapath_tile"`,
> `"hf_hub:prov-gigapath/prov-gigapath"`) to get real features: clusters then follow tissue types.
"""

build(R + "01_quickstart.ipynb", [
("md", "# 01 · Quickstart: slide → tissue → tiles → embeddings → UMAP\n" + RANDOM_NOTE),
("params", SETUP + '''
SLIDE = DATA / "slides" / "CMU-1-Small-Region.svs"   # your own .svs / .ndpi / .tif
TILE_MODEL = "vit_tiny_test"
WEIGHTS = None
'''),
("code", '''
slide = pk.read_slide(SLIDE)
print(slide.dimensions, slide.level_count, "levels,", slide.mpp, "mpp from", slide.mpp_source)
slide.thumbnail(400)
'''),
("code", '''
tissue = pk.pp.find_tissue(slide)
tiles = pk.pp.tile(slide, tile_px=256, mpp=0.5, min_tissue=0.1, tissue=tissue)
print(f"{tissue.fraction:.1%} tissue, {len(tiles)} tiles")
tiles.head()
'''),
("code", '''
adata = pk.tl.embed_tiles(slide, TILE_MODEL, tiles=tiles, weights=WEIGHTS, num_workers=0)
adata.write_h5ad(OUT / f"{slide.slide_id}.h5ad")
adata
'''),
("code", '''
pk.tl.umap(adata, leiden=True)
pk.pl.umap(adata, color="leiden", slide=slide)
'''),
("code", '''
pk.pl.slide(slide, adata, color="leiden")
'''),
])


build(R + "02_slide_embeddings_longnet.ipynb", [
("md", """
# 02 · Slide embeddings with the Prov-GigaPath LongNet encoder

The slide encoder reads all of a slide's tile embeddings *with their positions* and returns one vector per
slide. pathkit's reimplementation needs no flash-attn, runs on CPU and GPU, and matches the reference code
(parity-tested to 1e-4). Two details decide whether you get the right numbers:

1. **coordinates**: the model was trained on 256-px tiles at 0.5 mpp, each placed in a cell of a
   1000 x 1000 grid. pathkit converts level-0 pixels of any scan to that grid (`coords="grid"`). The
   reference code used raw level-0 pixels (`coords="level0"`), so on a 40x scan its tiles sit two cells apart.
2. **tile order**: dilated attention cuts the sequence into segments and keeps every r-th token, so the order
   of tiles changes the result. pathkit sorts tiles row-major before encoding.

Data: real 512-d tile embeddings of a whole TCGA colon adenocarcinoma slide (TCGA-AD-6964, MSI-high),
777 tiles, coordinates stored on disk as (y, x).
"""),
("params", SETUP + '''
BAG = DATA / "embeddings" / "TCGA-AD-6964-01Z-00-DX1.features.h5"   # an .h5 bag, or a pathkit tile .h5ad
SLIDE_MPP = 0.25          # level-0 µm/px of the scan the bag came from (TCGA diagnostic slides: 40x, 0.25)
SLIDE_MODEL = "longnet_small_512"   # with real weights: "gigapath_slide" (needs 1536-d gigapath_tile features)
WEIGHTS = "random"        # with real weights: None (the HF hub, gated) or a local slide_encoder.pth
'''),
("md", """
> **Weights used here.** The released `gigapath_slide` encoder takes 1,536-d `gigapath_tile` features; the
> bag in the shared data holds 512-d features from another tile model, and CI has no internet. So this
> notebook registers a **small LongNet with random weights** (2 layers, 64-d, same dilated attention, same
> grid, same position embeddings) whose input is 512-d. Every *mechanism* below — coordinates, ordering,
> pooling, grid errors — is exactly that of the real model; the embedding *values* carry no biology.
> With real weights, set in the parameter cell `SLIDE_MODEL = "gigapath_slide"`, `WEIGHTS = None`
> (accept the licence of `prov-gigapath/prov-gigapath` on the Hugging Face hub and `huggingface-cli login`
> first) and point `BAG` at a tile AnnData made with `pk.tl.embed_tiles(slide, "gigapath_tile", ...)`:
> the slide vectors then separate cancer types and mutation status in linear probes (Xu et al., Nature 2024).
"""),
("code", '''
import numpy as np
import plotly.express as px

if str(BAG).endswith(".h5ad"):
    import anndata as ad
    bag = ad.read_h5ad(BAG)
else:
    # an .h5 bag does not record the scan's mpp; the grid conversion needs it (tiles here are 512 level-0 px apart
    # = 256 px at 0.5 mpp on a 0.25-mpp scan)
    bag = pk.io.read_h5_bag(BAG, coords_order="yx", tile_px=256, mpp=0.5, slide_mpp=SLIDE_MPP)
print(bag.n_obs, "tiles x", bag.n_vars, "features; level-0 x from", bag.obs.x.min(), "to", bag.obs.x.max())
px.scatter(bag.obs, x="x", y="y", color=np.linalg.norm(bag.X, axis=1), title="tiles at their level-0 positions",
           labels={"color": "feature norm"}, height=450).update_yaxes(autorange="reversed", scaleanchor="x")
'''),
("md", """
## A small slide encoder as a registry entry

Models are data in pathkit: a `ModelSpec` names the architecture (`pathkit:longnet`) and its arguments. The
real entry is `gigapath_slide`; the small one below differs only in size and input width.
"""),
("code", '''
small = pk.models.ModelSpec(
    name="longnet_small_512", kind="slide", arch="pathkit:longnet", embed_dim=64,
    kwargs={"in_chans": 512, "embed_dim": 64, "depth": 2, "heads": 4, "mlp_ratio": 2,
            "slide_ngrids": 1000, "tile_size": 256, "max_wsi_size": 262144},
    description="2-layer LongNet for 512-d tile features (demonstration, random weights)")
pk.models.register(small, overwrite=True)
pk.list_models("slide")[["architecture", "embed_dim", "weights", "gated", "description"]]
'''),
("code", '''
import warnings
warnings.filterwarnings("ignore", message=".*RANDOM weights")   # said once, loudly, above

vec = pk.tl.embed_slide(bag, model=SLIDE_MODEL, weights=WEIGHTS)   # coords="grid", pool="mean" by default
info = bag.uns["slide_embeddings_info"][SLIDE_MODEL]
print("slide vector:", vec.shape, "| stored in uns['slide_embeddings'][%r]" % SLIDE_MODEL)
{k: v for k, v in info.items() if k != "tile_order"}
'''),
("md", """
## Coordinates: `"grid"` vs `"level0"`

`coords="grid"` maps each tile to the 256-px, 0.5-mpp cell that holds its centre: on this 0.25-mpp scan a
level-0 step of 512 px is one cell. `coords="level0"` is what the reference code does with raw level-0
pixels: cells are 256 level-0 px, so neighbouring tiles are two cells apart and the position embeddings the
model sees are not the ones it was trained with.
"""),
("code", '''
import pandas as pd
xy = bag.obs[["x", "y"]].to_numpy(float)
mpp0 = float(bag.uns["slide"].get("mpp", SLIDE_MPP))
def to_grid(xy, tile_px=256, mpp=0.5):
    """What coords="grid" does: the 0.5-mpp pixel position of the 256-px cell holding each tile's centre."""
    size0 = tile_px * mpp / mpp0                      # a tile's side in level-0 px (512 here)
    return np.floor((xy + size0 / 2) * mpp0 / 0.5 / 256) * 256
cells = pd.DataFrame({"x_level0": xy[:5, 0], "cell_grid": to_grid(xy)[:5, 0] / 256,
                      "cell_level0": np.floor(xy[:5, 0] / 256)})
v_level0 = pk.tl.embed_slide(bag, model=SLIDE_MODEL, weights=WEIGHTS, coords="level0", key="level0")
cos = float(vec @ v_level0 / np.linalg.norm(vec) / np.linalg.norm(v_level0))
print(f"cosine(grid, level0) = {cos:.4f}  -> different position embeddings, a different slide vector")
cells
'''),
("md", """
## Tile order

`embed_slide` sorts tiles row-major (grid y, then x) before encoding, so shuffling the rows of the AnnData
gives the *same* vector. The raw encoder (`pk.models.longnet.LongNetSlideEncoder`) encodes tokens in the
order given; its dilated branches keep every r-th token of a segment, so a different order gives a
different vector. Always go through `embed_slide`, or sort the way it does.
"""),
("code", '''
import torch
rng = np.random.default_rng(0)
perm = rng.permutation(bag.n_obs)
shuffled = bag[perm].copy()
v_shuffled = pk.tl.embed_slide(shuffled, model=SLIDE_MODEL, weights=WEIGHTS)
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
'''),
("md", """
## Off the grid

The grid has 1000 x 1000 cells of 256 px at 0.5 mpp: 128 mm on a side. The reference code silently wraps
coordinates beyond it into other rows; pathkit raises `GridError` and says what to do. Here the tiles are
spread ten times wider (as on a very large or mis-scaled slide) and encoded with raw level-0 coordinates:
"""),
("code", '''
wide = bag.copy()
wide.obs["x"] = wide.obs["x"] * 10
try:
    pk.tl.embed_slide(wide, model=SLIDE_MODEL, weights=WEIGHTS, coords="level0")
except pk.errors.GridError as e:
    print("GridError:", e)
v_wide = pk.tl.embed_slide(wide, model=SLIDE_MODEL, weights=WEIGHTS, coords="grid", key="wide")
print("coords='grid' fits it on the grid:", v_wide.shape)
'''),
("md", """
## Pooling: mean of LongNet tokens vs plain mean of tiles

Two different things are both called "mean":
- `pool="mean"` (default for LongNet) averages the encoder's *output* tokens (after attention mixed the tiles)
  and applies the final layer norm — what the Prov-GigaPath authors use; `pool="cls"` reads the CLS token,
  which the released model never trained.
- `model="mean"` is the plain mean of the *input* tile features, no network at all — a strong, cheap
  baseline for slide-level tasks.
"""),
("code", '''
v_cls = pk.tl.embed_slide(bag, model=SLIDE_MODEL, weights=WEIGHTS, pool="cls", key="cls")
v_mean = pk.tl.embed_slide(bag, model="mean")
print("plain mean == bag.X.mean(0):", np.allclose(v_mean, bag.X.mean(0), atol=1e-6), v_mean.shape)
layers = pk.tl.embed_slide(bag, model=SLIDE_MODEL, weights=WEIGHTS, layers="all", key="all_layers")
print("layers='all':", layers.shape, "(input tokens + each layer, pooled)")
vecs = {"grid, mean": vec, "grid, cls": v_cls, "level0, mean": v_level0, "raw encoder, shuffled": raw(perm)}
cos = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in vecs.values()] for a in vecs.values()])
px.imshow(cos, x=list(vecs), y=list(vecs), text_auto=".3f", zmin=0, zmax=1, color_continuous_scale="Blues",
          title="cosine similarity between LongNet slide vectors of the same slide", height=420)
'''),
("code", '''
sorted(bag.uns["slide_embeddings"])   # every embedding above is kept with its provenance; bag.write_h5ad() saves them
'''),
("md", """
## With the released weights

```python
tiles = pk.tl.embed_tiles(slide, "gigapath_tile", weights="hf_hub:prov-gigapath/prov-gigapath")  # 1536-d
vec = pk.tl.embed_slide(tiles, model="gigapath_slide")            # weights from the HF hub (gated), 768-d
vecs = pk.tl.embed_slide(tiles, model="gigapath_slide", layers="all")   # 13 x 768, for linear probes per layer
```
On a GPU it runs in bfloat16 by default (`dtype="float32"` for exact parity with the reference);
for a cohort, `pk.tl.embed_cohort(..., slide_model="gigapath_slide")` keeps one loaded encoder for all slides.
"""),
])

build(R + "03_multimodal_cohort.ipynb", [
("md", """
# 03 · A multimodal cohort: slides + TCGA clinical + RNA-seq

A cohort in pathkit is one AnnData with **one row per slide**: clinical columns in `obs`, RNA-seq aligned to
the same rows in `obsm["rna"]` (and slide embeddings in `obsm["X_<model>"]` once computed).
`pk.link` joins the tables at the level you name (patient by default) and writes `uns["link_report"]`:
everything that did not line up — unmatched ids on both sides, duplicates, conflicting values, ids that are
not TCGA barcodes. Nothing is dropped silently.

Data: TCGA colorectal cancer (COADREAD) tables from the SurvPath study — one row per diagnostic slide with
survival, a clinical table (stage, grade, subtype) and log2 RNA-seq (UCSC Xena, 1,577 genes) — plus the TCGA
Pan-Cancer Clinical Data Resource (CDR).
"""),
("params", SETUP + '''
TCGA = DATA / "tcga" / "coadread"
SLIDES = TCGA / "slides_survival.csv"      # one row per slide: slide_id (file name), case_id, survival
CLINICAL = TCGA / "clinical.csv"           # one row per patient
RNA = TCGA / "rna_xena_log2.csv"           # patients x genes
CDR = DATA / "tcga" / "TCGA-CDR.csv"       # pan-cancer clinical resource (OS in days)
HALLMARKS = DATA / "tcga" / "hallmarks_signatures.csv"
PATIENT = "TCGA-AD-6964"                   # a patient to follow across every layer
'''),
("code", '''
import warnings
import numpy as np
import pandas as pd
import plotly.express as px

cohort = pk.io.cohort_from_table(SLIDES)
print(cohort.n_obs, "slides of", cohort.obs.case_id.nunique(), "patients")
cohort.obs[["case_id", "slide_id", "survival_months", "censorship"]].head()
'''),
("md", """
## TCGA barcodes

A slide's file name carries its provenance: `TCGA-AD-6964-01Z-00-DX1.<uuid>.svs` is patient `TCGA-AD-6964`
(project TCGA, tissue source site `AD`, participant `6964`), sample `01` (primary solid tumour; 10-19 would be
normal tissue), vial `Z`, portion `00`, slide `DX1` (the first **diagnostic**, formalin-fixed slide; `TS`/`BS`
are frozen top/bottom sections). RNA and clinical data are per patient or per sample, so linking cuts
barcodes to that level.
"""),
("code", '''
b = pk.tcga.parse_barcode(cohort.obs.slide_id.iloc[0])
pd.Series(b.to_dict())
'''),
("code", '''
parts = pk.tcga.parse_barcodes(cohort.obs.slide_id)
parts[["patient", "sample", "sample_type_name", "slide_type", "slide_number"]].value_counts(
    ["sample_type_name", "slide_type", "slide_number"])
'''),
("md", """
## Linking

`pk.link` keeps every slide row (`slides_per_patient="all"`; `"first_dx"`, `"largest"` or `"mean"` keep or
merge one per patient), converts survival columns to one convention (`censorship` -> `event` = 1 when death
was observed; `survival_months` -> `time_months`) and warns with a one-paragraph summary of every problem:
"""),
("code", '''
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", pk.io.LinkWarning)
    cohort = pk.link(cohort, clinical=CLINICAL, rna=RNA)
for w in caught:
    print(w.message)
cohort
'''),
("code", '''
rep = cohort.uns["link_report"]
counts = pd.DataFrame({side: {k: v for k, v in rep[side].items() if isinstance(v, (int, np.integer))}
                       for side in ("cohort", "clinical", "rna")})
counts.astype("Int64")
'''),
("md", """
### What each count says (read the numbers in the table above)

- **cohort `n_rows` / `n_ids`**: slides in the slide table and distinct patients among them; the difference
  is patients with several diagnostic slides (`slides_per_id` lists them, e.g. DX1 and DX2 of one patient).
- **clinical `n_rows` vs `n_ids`**: the clinical table has more rows than patients linked — about half its
  rows are *not TCGA patients* (`n_not_tcga_ids`: ids like `P-0000674` from another cohort) and some
  patients appear twice (`n_duplicate_ids`; `n_conflicting_duplicate_ids` of them with different values —
  the first row is kept, `duplicates_policy`).
- **`n_matched_ids`**: cohort patients found in that table; **`n_cohort_ids_unmatched`** /
  **`n_cohort_rows_unmatched`**: patients (slides) with no row there — their columns are NaN, they are not
  dropped.
- **`n_table_ids_unmatched`**: ids of the table that have no slide (here the non-TCGA ids and TCGA patients
  without a diagnostic slide in this table).
- **rna `n_genes`**: genes aligned into `obsm["rna"]`; slides of patients without RNA get a row of NaN.
- **`n_conflicting_columns`**: columns present on both sides whose values disagree (kept from the cohort; the
  table's values go to `<col>_clinical`).
"""),
("code", '''
print("patients with several slides:", rep["cohort"]["slides_per_id"]["ids_with_several_slides"][:5])
print("clinical ids that are not TCGA barcodes (first 5):", rep["clinical"]["not_tcga_ids"][:5])
print("conflicting duplicates in clinical:", rep["clinical"]["conflicting_duplicate_ids"],
      "in columns", rep["clinical"]["conflicting_duplicate_columns"])
print("slides' patients without RNA:", rep["rna"]["cohort_ids_unmatched"])
print("survival columns:", {k: v["rule"] for k, v in cohort.uns["survival"].items()})
'''),
("md", """
## A second clinical source: the TCGA Pan-Cancer CDR

The CDR (Liu et al., Cell 2018) is the curated survival resource for TCGA: overall survival `OS` (1 = death)
and `OS.time` in days. Linking it under another name adds its columns and its own section of the report; its
`OS` event is checked against the `event` already derived from SurvPath's `censorship` (a disagreement would
show up under `conflicts`).
"""),
("code", '''
cdr = pd.read_csv(CDR, low_memory=False)
cohort = pk.link(cohort, clinical=cdr[["bcr_patient_barcode", "type", "gender", "ajcc_pathologic_tumor_stage",
                                       "OS", "OS.time"]], clinical_name="tcga_cdr")
r = cohort.uns["link_report"]["tcga_cdr"]
print(f"CDR: {r['n_rows']} patients (33 cancer types), {r['n_matched_ids']} matched, "
      f"{r['n_table_ids_unmatched']} without a slide here; conflicts with the cohort: {r['conflicts'] or 'none'}")
'''),
("md", """
## One patient across every layer

TCGA-AD-6964 (colon adenocarcinoma, MSI-high) has real tile embeddings in the shared data (notebooks 02 and
04), a diagnostic slide in the survival table, RNA-seq, and a CDR record:
"""),
("code", '''
row = cohort.obs[cohort.obs.patient_id == PATIENT]
cols = ["slide_id", "sample_id", "slide_type", "age", "is_female", "stage", "subtype", "time_months", "event",
        "type", "gender", "OS", "OS.time", "time_days"]
print(f"SurvPath: {row.time_months.iloc[0]:.2f} months, event {row.event.iloc[0]:.0f};  "
      f"CDR: {row['OS.time'].iloc[0]:.0f} days = {row['OS.time'].iloc[0] / 30.44:.2f} months, OS {row['OS'].iloc[0]:.0f}")
bag = DATA / "embeddings" / f"{row.slide_id.iloc[0][:23]}.features.h5"
print("tile embeddings on disk:", bag.exists(), bag.name)
row[cols].T
'''),
("code", '''
rna = cohort.obsm["rna"]
print("RNA for", PATIENT, ":", rna.loc[row.index].notna().all(axis=1).item(), "|", rna.shape[1], "genes")
rna.loc[row.index, ["IDO1", "CDK1", "CDH1", "VIM"]]
'''),
("md", """
This RNA table is SurvPath's pathway panel (1,577 genes), so classic MSI markers such as *MLH1* are not in it.
MSI-high colorectal tumours are rich in T cells whose interferon-γ induces **IDO1**; **CDK1** tracks
proliferation, **CDH1** (E-cadherin) epithelium, **VIM** (vimentin) stroma. Where does this patient sit?
"""),
("code", '''
genes = ["IDO1", "CDK1", "CDH1", "VIM"]
long = rna[genes].dropna().melt(var_name="gene", value_name="log2 expression", ignore_index=False)
long["patient"] = np.where(cohort.obs.loc[long.index, "patient_id"] == PATIENT, PATIENT, "other")
fig = px.strip(long, x="gene", y="log2 expression", color="patient", stripmode="overlay",
               color_discrete_map={"other": "lightgrey", PATIENT: "crimson"}, height=400)
fig
'''),
("md", """
## A hallmark score from the RNA layer

The 50 MSigDB Hallmark gene sets summarise pathways. A simple per-sample score: z-score each gene across
patients, average the z-scores of the set's genes that were measured. (Only 1,577 genes are in this table,
so each set is partly covered; the coverage is printed.)
"""),
("code", '''
hallmarks = pd.read_csv(HALLMARKS)
SET = "HALLMARK_INTERFERON_GAMMA_RESPONSE"
genes = [g for g in hallmarks[SET].dropna() if g in rna.columns]
print(f"{SET}: {len(genes)} of {hallmarks[SET].notna().sum()} genes measured")
z = (rna[genes] - rna[genes].mean()) / rna[genes].std()
cohort.obs["ifng_score"] = z.mean(axis=1)
mine = float(cohort.obs.loc[row.index, "ifng_score"].iloc[0])
print(f"{PATIENT}: score {mine:.2f}, above {(cohort.obs.ifng_score < mine).mean():.0%} of the cohort's slides")
fig = px.box(cohort.obs.dropna(subset=["ifng_score"]), x="oncotree_code", y="ifng_score", points="all",
             hover_name="patient_id", title=f"{SET} score by tumour type", height=400)
fig.add_hline(y=mine, line_dash="dot",
              annotation_text=PATIENT)
'''),
("md", """
## Saving, and MuData

The cohort is a plain AnnData (`obsm["rna"]` is a DataFrame aligned with obs). For tools that expect one
object per modality, `pk.io.to_mudata` makes a MuData with modalities `"slides"` and `"rna"` (needs the
optional package `mudata`).
"""),
("code", '''
cohort.write_h5ad(OUT / "coadread_cohort.h5ad")
warnings.filterwarnings("ignore", category=FutureWarning, module="mudata")   # mudata 0.3 -> 0.4 notice
try:
    mdata = pk.io.to_mudata(cohort)
    mdata.write(OUT / "coadread_cohort.h5mu")
    print(mdata)
except ImportError as e:
    print("MuData export skipped:", e)
'''),
])

build(R + "04_abmil.ipynb", [
("md", """
# 04 · ABMIL: attention-based multiple-instance learning with patient-level cross-validation

A slide is a *bag* of tile embeddings with one label. Gated-attention MIL (Ilse et al. 2018, as in CLAM) learns
a weight per tile (attention) and a slide-level prediction from the attention-weighted mean of its tiles.
`pk.tl.train_abmil` splits folds **by patient** — a patient's slides are never in both training and test
folds — and reports out-of-fold metrics with bootstrap 95% confidence intervals.
"""),
("params", SETUP + '''
BAG = DATA / "embeddings" / "TCGA-AD-6964-01Z-00-DX1.features.h5"
N_PATIENTS = 12            # half of them "positive"
SLIDES_PER_PATIENT = 2
TILES_PER_SLIDE = 80
EPOCHS = 5                 # real cohorts: 20+ epochs with early stopping (the default)
FOLDS = 3
SIGNAL = 3.0               # length of the planted shift (tile features have norm ~13, sd ~0.05 per dimension)
'''),
("md", """
> **Data used here.** No public cohort of tile embeddings with labels fits in CI, so the bags are **simulated
> from real embeddings with a planted signal**: every slide is a random subset of the 777 real tiles of
> TCGA-AD-6964 (with their real positions, plus a little noise); in the slides of "positive" patients a
> small patch of neighbouring tiles is shifted along one direction of feature space. The model must find the
> label (AUROC) *and* its attention must point at the planted tiles — a test with a known answer.
> With your own data: `tiles` = the per-slide AnnData (or the folder) written by `pk.tl.embed_cohort`, and
> `cohort` = a linked cohort (notebook 03) with a label column such as MSI status.
"""),
("code", '''
import numpy as np
import pandas as pd
import plotly.express as px

real = pk.io.read_h5_bag(BAG, coords_order="yx", tile_px=256, mpp=0.5)
rng = np.random.default_rng(0)
direction = rng.normal(size=real.n_vars)
direction /= np.linalg.norm(direction)
sd = real.X.std(0)

tiles, planted, rows = {}, {}, []
for p in range(N_PATIENTS):
    label = "positive" if p % 2 else "negative"
    for s in range(SLIDES_PER_PATIENT):
        sid = f"SIM-{p:03d}-DX{s + 1}"
        idx = np.sort(rng.choice(real.n_obs, TILES_PER_SLIDE, replace=False))
        a = real[idx].copy()
        X = a.X + rng.normal(size=a.X.shape).astype(np.float32) * 0.1 * sd
        mask = np.zeros(a.n_obs, bool)
        if label == "positive":   # a patch: the 8 tiles nearest a random tile
            xy = a.obsm["spatial"]
            centre = xy[rng.integers(a.n_obs)]
            mask[np.argsort(np.linalg.norm(xy - centre, axis=1))[:8]] = True
            X[mask] += SIGNAL * direction
        a.X = X.astype(np.float32)
        a.obs["slide_id"] = sid
        a.obs["planted"] = mask
        a.obs_names = [f"{sid}_{i}" for i in range(a.n_obs)]
        tiles[sid] = a
        planted[sid] = mask
        rows.append({"slide_id": sid, "patient_id": f"SIM-{p:03d}", "label": label})

import anndata as ad
cohort = ad.AnnData(obs=pd.DataFrame(rows).set_index("slide_id", drop=False).rename_axis(None))
print(len(tiles), "slides,", cohort.obs.patient_id.nunique(), "patients")
cohort.obs.label.value_counts()
'''),
("code", '''
res = pk.tl.train_abmil(tiles, cohort, label="label", task="binary", folds=FOLDS, split_by="patient_id",
                        epochs=EPOCHS, patience=3, hidden=64, attn_hidden=32, lr=2e-3, batch_size=2, n_bootstrap=300,
                        progress=False, seed=0)
res.summary
'''),
("md", """
`res.summary`: pooled out-of-fold metrics (every slide scored by the model that never saw its patient) with
bootstrap 95% CIs over slides. Per fold, with training length and time:
"""),
("code", '''
res.metrics
'''),
("code", '''
per_patient = cohort.obs.groupby("patient_id")["abmil_fold"].nunique()
print("patients whose slides landed in more than one fold:", int((per_patient > 1).sum()))
px.line(res.history, x="epoch", y=["train_loss", "val_loss"], facet_col="fold", height=300,
        title="training curves per fold (early stopping on the inner validation patients)")
'''),
("md", """
## Out-of-fold predictions

Written to `cohort.obs` (`abmil_fold`, `abmil_prob_<class>`, `abmil_pred`) so they can be used downstream
(e.g. risk groups in notebook 05) without any leakage.
"""),
("code", '''
px.strip(cohort.obs, x="label", y="abmil_prob_positive", color="abmil_fold", hover_name="slide_id",
         title="out-of-fold probability of 'positive' per slide", height=350)
'''),
("md", """
## Does attention point at the planted tiles?

Each tile AnnData now has `obs["abmil_attention"]` (weights of the fold model that held the slide out;
they sum to 1 per slide). For positive slides, compare with the planted mask: the share of the 8 planted tiles
among the 8 tiles with the highest attention, and the AUROC of attention for "planted vs not".
"""),
("code", '''
def auroc(y, s):
    r = pd.Series(s).rank().to_numpy()
    return (r[y].sum() - y.sum() * (y.sum() + 1) / 2) / (y.sum() * (~y).sum())

stats = []
for sid, a in tiles.items():
    m = planted[sid]
    if m.any():
        att = a.obs["abmil_attention"].to_numpy()
        top = np.argsort(-att)[: m.sum()]
        stats.append({"slide": sid, "top8_recall": m[top].mean(), "attention_auroc": auroc(m, att),
                      "attention_on_planted": att[m].sum()})
stats = pd.DataFrame(stats).set_index("slide")
print(stats.mean().round(3).to_dict())
stats.head()
'''),
("md", """
## Attention heatmap at the tile positions

The image of TCGA-AD-6964 is not in the shared data (only its tile embeddings), so the heatmap is drawn at the
tiles' level-0 coordinates. With the slide file at hand, draw it over the thumbnail:
`pk.pl.slide(pk.read_slide(path), tiles[sid], color="abmil_attention")`.
"""),
("code", '''
sid = stats["top8_recall"].idxmax()
a = tiles[sid]
df = a.obs.assign(x=a.obsm["spatial"][:, 0], y=a.obsm["spatial"][:, 1])
fig = px.scatter(df, x="x", y="y", color="abmil_attention", symbol="planted", color_continuous_scale="Inferno",
                 symbol_map={True: "star", False: "square"}, title=f"{sid}: attention (stars = planted tiles)",
                 height=500)
fig.update_traces(marker_size=11).update_yaxes(autorange="reversed", scaleanchor="x")
fig.update_layout(legend=dict(orientation="h", y=-0.15))
'''),
("md", """
## With real data

```python
cohort = pk.link(pk.io.cohort_from_table("slides.csv"), clinical="clinical.csv")      # notebook 03
res = pk.tl.train_abmil("embeddings/", cohort, label="msi_status", task="binary",      # embed_cohort's folder
                        splits=DATA / "tcga/coadread/splits_5fold")                      # or folds=5
```
`task="multiclass"`, `"multilabel"`, `"survival"` (discrete-time NLL, PORPOISE) and `"cox"` use the same call;
survival is in notebook 05.
"""),
])

build(R + "05_survival.ipynb", [
("md", """
# 05 · Survival: Kaplan–Meier by stage, log-rank, Cox, risk groups from out-of-fold ABMIL risk

Real TCGA colorectal cancer (COADREAD) survival from the SurvPath tables, linked as in notebook 03, one
diagnostic slide per patient. Conventions: `event = 1` means death observed, `0` censored (alive at last
follow-up); times in months (`time_months`); **higher risk = shorter survival** for every score and c-index.
"""),
("params", SETUP + '''
TCGA = DATA / "tcga" / "coadread"
BAG = DATA / "embeddings" / "TCGA-AD-6964-01Z-00-DX1.features.h5"
N_PCS = 10                  # principal components of the embedding (here: of the RNA) in the penalised Cox
N_ABMIL_PATIENTS = 60       # patients in the simulated ABMIL survival run
EPOCHS = 6
'''),
("code", '''
import warnings
import numpy as np
import pandas as pd
import plotly.express as px

with warnings.catch_warnings():
    warnings.simplefilter("ignore", pk.io.LinkWarning)   # the report is discussed in notebook 03
    cohort = pk.link(pk.io.cohort_from_table(TCGA / "slides_survival.csv"), clinical=TCGA / "clinical.csv",
                     rna=TCGA / "rna_xena_log2.csv", slides_per_patient="first_dx")
obs = cohort.obs
print(f"{cohort.n_obs} patients, {int(obs.event.sum())} deaths, median follow-up {obs.time_months.median():.1f} months")
obs.stage.value_counts(dropna=False)
'''),
("md", """
## Kaplan–Meier by stage

Stage 0 (one patient) and missing stage are left out. The shaded bands are 95% confidence intervals; the
numbers at risk under the axis show how few patients remain late in follow-up, where the curves become
unreliable. The log-rank p-value is in the title.
"""),
("code", '''
staged = cohort[obs.stage.isin(["I", "II", "III", "IV"]).values].copy()
pk.pl.kaplan_meier(staged, time="time_months", event="event", groupby="stage", title="TCGA COADREAD by stage")
'''),
("code", '''
km = pk.tl.kaplan_meier(staged, time="time_months", event="event", groupby="stage")
lr = pk.tl.logrank(staged, time="time_months", event="event", groupby="stage")
print(f"log-rank: chi2 = {lr.statistic:.1f} on {lr.dof} df, p = {lr.p_value:.2g}")
pd.concat([km.counts, km.median.rename("median months"), lr.table[["observed", "expected"]]], axis=1)
'''),
("md", """
Stage IV patients die more than three times as often as expected under equal hazards; only stage IV reaches a
median survival within follow-up (the others show `inf`: their curve never drops below 0.5).

## Cox proportional hazards: age, sex, stage

Stage I has only 7 patients and 1 death — too few to estimate a hazard ratio of its own (its estimate would be
huge and meaningless) — so stages I and II are pooled as the reference.
"""),
("code", '''
staged.obs["stage_group"] = staged.obs.stage.replace({"I": "I-II", "II": "I-II"}).astype(str)
cox = pk.tl.cox(staged, time="time_months", event="event", covariates=["age", "is_female", "stage_group"],
                reference={"stage_group": "I-II"})
print(f"n = {cox.n}, events = {cox.n_events}, c-index (in sample) = {cox.concordance:.3f}")
cox.summary[["exp(coef)", "hr_lower", "hr_upper", "p"]].round(3)
'''),
("code", '''
hr = cox.summary.reset_index()
fig = px.scatter(hr, x="exp(coef)", y="covariate", error_x=hr["hr_upper"] - hr["exp(coef)"],
                 error_x_minus=hr["exp(coef)"] - hr["hr_lower"], log_x=True, title="hazard ratios (95% CI)",
                 height=300)
fig.add_vline(x=1, line_dash="dot")
'''),
("md", """
## Penalised Cox on embedding principal components

With slide embeddings (e.g. `obsm["X_gigapath_slide"]` from `pk.tl.embed_cohort`), their first principal
components enter a penalised Cox model: `covariates=["age", "X_gigapath_slide"], n_components=10`.

> **Stand-in used here.** The shared data have no slide embeddings for this cohort, so the **RNA-seq profile
> (`obsm["rna"]`, 1,577 genes) plays the role of the embedding**: the call and the output are the same. With
> real slide embeddings, only the obsm key changes.

The penalty (`penalizer`, ridge by default) keeps ten correlated components from over-fitting 300 patients
with ~60 deaths. The concordance printed is in-sample, so optimistic; the honest version is out of fold, as
for ABMIL below.
"""),
("code", '''
has_rna = cohort.obsm["rna"].notna().all(axis=1).to_numpy()
rna_cohort = cohort[has_rna].copy()
pcox = pk.tl.cox(rna_cohort, time="time_months", event="event", covariates=["age", "rna"], n_components=N_PCS,
                 penalizer=0.1)
print(f"n = {pcox.n}, events = {pcox.n_events}, in-sample c-index = {pcox.concordance:.3f}")
pcox.summary[["coef", "exp(coef)", "p"]].round(4)
'''),
("md", """
## Risk groups from out-of-fold ABMIL risk

An ABMIL survival model (`task="cox"`: attention pooling + a Cox partial-likelihood head; `task="survival"`:
discrete-time hazards as in PORPOISE) predicts a risk per slide. Splitting patients at the median of
**out-of-fold** risk — each patient scored by the model that never saw them — and comparing the two groups
with Kaplan–Meier and log-rank is the standard way to show a histology model is prognostic. Risk groups
made from in-sample predictions would look far better than they are.

> **Simulated bags tied to real outcomes.** There are no tile embeddings for these patients in the shared
> data. So each of `N_ABMIL_PATIENTS` real patients (half with an observed death) gets a bag resampled from the
> real TCGA-AD-6964 tiles, in which a pattern is planted with a strength that grows as the patient's **real**
> survival time shrinks (plus noise). The survival times, events and the split into risk groups are real; the
> histology signal is planted, so a good c-index here shows the pipeline works, not biology.
"""),
("code", '''
import anndata as ad
rng = np.random.default_rng(0)
o = cohort.obs.dropna(subset=["time_months", "event"])
dead, alive = o[o.event == 1], o[o.event == 0]
n_dead = min(len(dead), N_ABMIL_PATIENTS // 2)
chosen = pd.concat([dead.sample(n_dead, random_state=0), alive.sample(N_ABMIL_PATIENTS - n_dead, random_state=0)])
planted_risk = 1 - chosen.time_months.rank(pct=True).to_numpy() + rng.normal(0, 0.15, len(chosen))

real = pk.io.read_h5_bag(BAG, coords_order="yx", tile_px=256, mpp=0.5)
direction = rng.normal(size=real.n_vars).astype(np.float32)
direction /= np.linalg.norm(direction)
tiles = {}
for (sid, row), r in zip(chosen.iterrows(), planted_risk):
    a = real[np.sort(rng.choice(real.n_obs, 40, replace=False))].copy()
    hit = rng.choice(a.n_obs, 8, replace=False)
    a.X[hit] += 3.0 * max(r, 0) * direction
    a.obs["slide_id"] = sid
    tiles[sid] = a
sim = cohort[chosen.index].copy()
print(len(tiles), "bags;", int(sim.obs.event.sum()), "deaths; c-index of the planted risk itself:",
      round(pk.tl.cindex(sim.obs.time_months, planted_risk, sim.obs.event), 3))
'''),
("code", '''
res = pk.tl.train_abmil(tiles, sim, task="cox", time="time_months", event="event", folds=3, split_by="patient_id",
                        epochs=EPOCHS, patience=3, hidden=64, attn_hidden=32, lr=2e-3, batch_size=8,
                        n_bootstrap=300, progress=False, seed=0)
res.summary
'''),
("code", '''
pk.tl.risk_groups(sim, "abmil_risk", method="median")
c = pk.tl.cindex("time_months", "abmil_risk", "event", data=sim)
pk.pl.kaplan_meier(sim, time="time_months", event="event", groupby="risk_group",
                   title=f"out-of-fold ABMIL risk groups (c-index {c:.2f})")
'''),
("md", """
## With real data

```python
cohort = pk.tl.embed_cohort(slides, "embeddings/", tile_model="gigapath_tile", slide_model="gigapath_slide")
cohort = pk.link(cohort, clinical="clinical.csv")
pk.tl.cox(cohort, "time_months", "event", ["age", "stage_group", "X_gigapath_slide"], n_components=10, penalizer=0.1)
res = pk.tl.train_abmil("embeddings/", cohort, task="survival", time="time_months", event="event",
                        splits=DATA / "tcga/coadread/splits_5fold")
pk.tl.risk_groups(cohort, "abmil_risk"); pk.pl.kaplan_meier(cohort, "time_months", "event", groupby="risk_group")
```
`pk.widgets.SurvivalExplorer(cohort)` lets you pick the grouping and cut-off interactively.
"""),
])

build(R + "06_zero_shot.ipynb", [
("md", """
# 06 · Zero-shot classification with image-text models (MI-Zero / CONCH protocol)

An image-text model (CONCH, PLIP, QuiltNet) embeds tiles and sentences in the same space. Zero-shot
classification needs no training labels:

1. each class has **names** ("lung adenocarcinoma", "LUAD", ...) and there are **templates**
   ("a histopathological photograph of CLASSNAME."); every name x template prompt is embedded by the text
   tower, L2-normalised, averaged per class and re-normalised;
2. each tile is scored by its cosine similarity to each class;
3. a slide's class score is the mean of its **top-K** tile scores (a tumour may fill only a few tiles);
   the predicted class is the highest score; probabilities are softmax(score x logit_scale).
"""),
("params", SETUP + '''
SLIDE = DATA / "slides" / "CMU-1-Small-Region.svs"
MODEL = "conch_small_demo"   # with real weights: "conch" (or "plip", "quiltnet")
WEIGHTS = None               # with real weights: None (the HF hub; CONCH is gated: accept its licence, log in)
TOPK = (1, 5, 10, 50)
'''),
("md", """
> **Weights used here.** CONCH's weights are gated and CI has no internet, so this notebook registers a
> **small CONCH variant with random weights** (same CoCa architecture, tokenizer, attentional pooler and
> preprocessing; 2 layers, 32-d, 64-px input) and saves one checkpoint so that its image and text towers
> belong together. Prompts, pooling, scores and evaluation are exactly the real pipeline; the *predictions*
> mean nothing. With real weights set `MODEL = "conch"`, `WEIGHTS = None` in the parameter cell: CONCH reaches
> ~0.9 balanced accuracy on TCGA NSCLC subtyping zero-shot (Lu et al., Nature Medicine 2024).
"""),
("code", '''
import warnings
import numpy as np
import pandas as pd
import plotly.express as px
import torch
from pathkit.tl.prompts import CLASSES, get_templates
from pathkit.tl.zeroshot import text_embeddings, topk_pool

if MODEL == "conch_small_demo":
    pk.models.clip.register_clip_variant(
        "conch_small_demo", "conch", {"embed_dim": 32, "vision": {"image_size": 64, "width": 48, "layers": 2, "heads": 2},
                                      "text": {"width": 48, "heads": 2, "layers": 2}},
        input_size=64, description="2-layer CONCH for demonstrations (random weights)")
    torch.manual_seed(0)
    net, _ = pk.models.clip.build_clip("conch_small_demo")
    WEIGHTS = OUT / "conch_small_demo.pt"
    torch.save(net.state_dict(), WEIGHTS)
clip = pk.models.clip.load_clip(MODEL, weights=WEIGHTS)
print(MODEL, "| embedding", clip.spec.embed_dim, "| logit_scale", round(float(clip.logit_scale), 2))
pk.list_models("clip")[["architecture", "embed_dim", "input", "gated", "license"]]
'''),
("md", """
## The prompt library

Templates and class names as published by the CONCH and MI-Zero authors (read from their repositories):
22 CONCH templates (the first 16 are MI-Zero's), and class names for NSCLC, RCC, BRCA and colorectal tissue
types (CRC100K).
"""),
("code", '''
templates = get_templates()          # CONCH's 22; get_templates("mizero") gives MI-Zero's 16
print(len(templates), "templates, e.g.:", templates[:3], "...", templates[-2:])
pd.DataFrame([(task, c, "; ".join(names)) for task, cl in CLASSES.items() for c, names in cl.items()],
             columns=["task", "class", "class names"]).set_index(["task", "class"])
'''),
("md", """
## Top-K pooling, by hand

Four tiles, two classes. Class A is strong in one tile only; class B is moderately high everywhere. K = 1
follows the single best tile, larger K the bulk of the slide — which is right depends on how much of the
slide shows the class.
"""),
("code", '''
sims = np.array([[0.90, 0.40],
                 [0.10, 0.50],
                 [0.20, 0.45],
                 [0.15, 0.55]])
pd.DataFrame({f"K={k}": topk_pool(sims, k) for k in (1, 2, 4)}, index=["A", "B"])
'''),
("md", """
## Zero-shot on a real slide

Tiles of the CMU-1 H&E sample are embedded by the model's **image tower** (`<model>_vision`, a tile encoder
like any other), then scored against the colorectal tissue classes. `pk.tl.zero_shot` writes tile scores and
the tile's best class into the tile AnnData, and returns one row per slide.
"""),
("code", '''
slide = pk.read_slide(SLIDE)
tiles = pk.pp.tile(slide, tile_px=256, mpp=0.5, min_tissue=0.1)
adata = pk.tl.embed_tiles(slide, f"{MODEL}_vision", tiles=tiles, weights=WEIGHTS, num_workers=0, progress=False)
res = pk.tl.zero_shot(adata, classes="crc100k", model=clip, topk=TOPK, n_prompt_sets=20, progress=False)
print(adata.n_obs, "tiles;", "prediction per K:", adata.uns["zeroshot"]["pred"])
res.filter(like="pred_")
'''),
("code", '''
pk.pl.slide(slide, adata, color="zeroshot_tile_pred")
'''),
("md", """
## Balanced accuracy per K on a labelled set

`pk.tl.zero_shot_eval` reports, per K, the balanced accuracy and AUROC of the full prompt ensemble, and the
median (and quartiles) over MI-Zero's randomly sampled **prompt sets** (one class name per class and a random
subset of templates each) — how much the result depends on the wording of the prompts.

> **Labelled set used here.** There is no labelled slide set with CONCH features in the shared data, so the
> 24 "slides" below have **planted image features**: 60 tiles of noise each, of which a few (3 to 12) point
> towards the text embedding of the slide's true class (LUAD or LUSC). Small K finds the few informative
> tiles (K = 1 is at the mercy of one noisy tile); averaging over all tiles (K = 50) dilutes them.
"""),
("code", '''
import anndata as ad
rng = np.random.default_rng(0)
text = text_embeddings(clip, "nsclc")                     # [2 classes, E], the ensemble over names x templates
print(f"cosine between the LUAD and LUSC text embeddings: {text[0] @ text[1]:.2f}")
slides, labels = {}, {}
for i in range(24):
    cls = i % 2
    feats = rng.normal(size=(60, text.shape[1])) * 0.3
    n_inf = rng.integers(3, 13)
    feats[:n_inf] += text[cls] * rng.uniform(0.6, 1.2)
    sid = f"NSCLC-{i:02d}"
    a = ad.AnnData(np.zeros((60, 1), np.float32), obs=pd.DataFrame({"slide_id": sid}, index=[str(j) for j in range(60)]))
    a.obsm[f"X_{MODEL}_vision"] = feats.astype(np.float32)
    slides[sid], labels[sid] = a, ["LUAD", "LUSC"][cls]
cohort = ad.AnnData(obs=pd.DataFrame({"slide_id": list(slides), "truth": [labels[s] for s in slides]},
                                     index=list(slides)))
pk.tl.zero_shot(slides, classes="nsclc", model=clip, topk=(1, 5, 10, 50), cohort=cohort, n_prompt_sets=20,
                progress=False)
ev = pk.tl.zero_shot_eval(cohort, "truth")
ev.round(3)
'''),
("code", '''
long = ev.reset_index(names="K")
fig = px.line(long, x="K", y=["balanced_accuracy", "bacc_median"], markers=True, log_x=True,
              title="balanced accuracy per K (ensemble, and median over prompt sets)", height=350)
fig.add_scatter(x=long.K, y=long.bacc_q75, mode="lines", line_dash="dot", name="prompt sets, 75th pct")
fig.add_scatter(x=long.K, y=long.bacc_q25, mode="lines", line_dash="dot", name="prompt sets, 25th pct")
'''),
("md", """
## With real CONCH weights

```python
clip = pk.models.clip.load_clip("conch")                              # hf_hub:MahmoodLab/CONCH (gated)
tiles = pk.tl.embed_tiles(slide, "conch_vision")                      # 512-d projected image embeddings
res = pk.tl.zero_shot(tiles, classes="nsclc", model=clip, cohort=cohort)
pk.tl.zero_shot_eval(cohort, "oncotree_code")                         # balanced accuracy per K
```
Your own classes: `classes={"tumour": ["adenocarcinoma", "tumor"], "normal": ["normal colonic mucosa"]}`;
your own templates: any list of strings containing `CLASSNAME`.
"""),
])

build(R + "07_cohorts_at_scale.ipynb", [
("md", """
# 07 · Cohorts at scale: resumable runs and Dask

`pk.tl.embed_cohort` turns a list of slides into one cohort AnnData (one row per slide):

- each slide is one task: read → tissue → tiles → tile embeddings (→ slide embedding), written atomically to
  `<out_dir>/<slide_id>.h5ad`;
- a slide that fails is **recorded** (`obs["status"] == "failed"`, `obs["error"]`) and the run goes on;
- a re-run **skips** slides already done with the same settings (their file is checked), so an interrupted
  run of 10,000 slides resumes where it stopped;
- with a `dask.distributed.Client`, the same call spreads slides over workers: a `LocalCluster` here, a
  `dask_jobqueue.SLURMCluster` (GPU jobs) on a cluster.
"""),
("params", SETUP + '''
SLIDES = None                 # None: a few small synthetic slides; or a list of paths / a folder / a slide table
TILE_MODEL = "vit_tiny_test"  # with real weights: "gigapath_tile", "uni", ...
WEIGHTS = "random"            # with real weights: None (the registry's source) or a local file
SLIDE_MODEL = "mean"          # or "gigapath_slide" with gigapath_tile features
N_WORKERS = 2
'''),
("md", """
> **Data and weights used here.** To keep CI fast, the cohort is three small **synthetic** H&E-like slides
> (`pk.datasets.synthetic_slide`: pyramidal Aperio-style TIFFs with known tissue geometry) plus one corrupt
> file, embedded by `vit_tiny_test`, a 2-block ViT with **random weights**. Set `SLIDES`, `TILE_MODEL` and
> `WEIGHTS` in the parameter cell for a real cohort; nothing else changes.
"""),
("code", '''
import time
import warnings
import pandas as pd
warnings.filterwarnings("ignore", message=".*[Rr]andom weights")   # this notebook uses them on purpose

demo = SLIDES is None
if demo:
    src = OUT / "slides"
    src.mkdir(exist_ok=True)
    SLIDES = [pk.datasets.synthetic_slide(src / f"synthetic-{i}.svs", width=1024, height=1024 + 512 * i, seed=i)
              for i in range(3)]
    bad = src / "corrupt-slide.svs"
    bad.write_bytes(b"this is not a TIFF file")   # e.g. a truncated download
    SLIDES = SLIDES + [bad]
[Path(p).name for p in SLIDES] if isinstance(SLIDES, list) else SLIDES
'''),
("code", '''
import shutil
run, drun = OUT / "cohort_run", OUT / "cohort_dask"
if demo:   # start the demo from scratch; with your own slides, earlier results are kept and reused
    for d in (run, drun):
        shutil.rmtree(d, ignore_errors=True)
t0 = time.perf_counter()
cohort = pk.tl.embed_cohort(SLIDES, run, tile_model=TILE_MODEL, weights=WEIGHTS, slide_model=SLIDE_MODEL,
                            embed_kwargs={"num_workers": 0}, progress=False)
print(f"first run: {time.perf_counter() - t0:.1f} s")
cohort.obs[["status", "error", "n_tiles", "seconds"]]
'''),
("md", """
The corrupt file is `failed`, with the reason; the others are `ok`. The cohort holds one slide embedding per
row in `obsm["X_mean"]` (NaN for the failed slide), and `uns["cohort"]` counts the outcomes. Each slide's tile
AnnData is on disk, next to `cohort_state.json` (what was done, with which settings) and `cohort.h5ad`:
"""),
("code", '''
print(cohort.uns["cohort"])
print("obsm:", {k: v.shape for k, v in cohort.obsm.items()})
sorted(p.name for p in run.iterdir())
'''),
("md", """
## Re-running: finished slides are skipped

Run the same call again (as after a crash or a time-out on a cluster): slides already done with the same
model and settings are `skipped` and read back; only the failed slide is tried again.
"""),
("code", '''
t0 = time.perf_counter()
again = pk.tl.embed_cohort(SLIDES, run, tile_model=TILE_MODEL, weights=WEIGHTS, slide_model=SLIDE_MODEL,
                           embed_kwargs={"num_workers": 0}, progress=False)
print(f"re-run: {time.perf_counter() - t0:.1f} s")
import numpy as np
ok = again.obs.status != "failed"
print("same slide embeddings:", np.allclose(again.obsm["X_mean"][ok.values], cohort.obsm["X_mean"][ok.values]))
again.obs[["status", "error", "n_tiles"]]
'''),
("md", """
## The same run on a Dask cluster

A `LocalCluster` with worker **processes** stands in for a cluster. Each slide is one task; workers write
their slide's file, the notebook process alone writes the state and the cohort. Results equal the in-process
run. (Each worker imports torch and loads the model once, so its first slide takes longer than in the
notebook process; on a real cohort that cost is paid once per worker.)
"""),
("code", '''
from dask.distributed import Client, LocalCluster

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    cluster = LocalCluster(n_workers=N_WORKERS, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
print(client)
t0 = time.perf_counter()
dcohort = pk.tl.embed_cohort(SLIDES, drun, tile_model=TILE_MODEL, weights=WEIGHTS,
                             slide_model=SLIDE_MODEL, embed_kwargs={"num_workers": 0}, client=client,
                             progress=False)
print(f"dask run: {time.perf_counter() - t0:.1f} s")
ok = dcohort.obs.status == "ok"
print("equal to the in-process run:",
      np.allclose(dcohort[ok.values].obsm["X_mean"], cohort[dcohort.obs_names[ok.values]].obsm["X_mean"], atol=1e-5))
client.close()
cluster.close()
dcohort.obs[["status", "error", "n_tiles", "seconds"]]
'''),
("md", """
## On an HPC cluster (SLURM)

With `pip install dask-jobqueue`, each SLURM job is a Dask worker with one GPU; tasks that ask for the
`GPU` resource only go to such workers. `out_dir` must be on a file system all nodes see. If the job is
killed, run the same cell again: finished slides are skipped.

```python
from dask_jobqueue import SLURMCluster
from dask.distributed import Client

cluster = SLURMCluster(
    queue="gpu", cores=8, processes=1, memory="64GB", walltime="04:00:00",
    job_extra_directives=["--gres=gpu:1"],
    worker_extra_args=["--resources", "GPU=1"],        # tasks asking for {"GPU": 1} land here
    job_script_prologue=["source ~/venvs/pathkit/bin/activate"],
)
cluster.scale(jobs=4)                                   # 4 GPU jobs
client = Client(cluster)
cohort = pk.tl.embed_cohort("data_manifests/tcga_coadread.csv", "/shared/out", slide_dir="/shared/slides",
                            tile_model="gigapath_tile", slide_model="gigapath_slide",
                            embed_kwargs={"device": "cuda"}, client=client, resources={"GPU": 1})
```
`print(cluster.job_script())` shows the batch script dask-jobqueue submits. The cohort then goes to
`pk.link` (notebook 03), ABMIL (04) and survival (05).
"""),
])

print("ok")
