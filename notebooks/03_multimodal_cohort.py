# %% [markdown]
# # 03 · A multimodal cohort: slides + TCGA clinical + RNA-seq
#
# A cohort in pathkit is one AnnData with **one row per slide**: clinical columns in `obs`, RNA-seq aligned to
# its own modality: `pk.link(..., rna=...)` returns a MuData with `"slides"` (one row per slide; slide embeddings
# in `obsm["X_<model>"]` once computed) and `"rna"` (one row per patient, genes as variables, never copied per slide).
# `pk.link` joins the tables at the level you name (patient by default) and writes `uns["link_report"]`:
# everything that did not line up — unmatched ids on both sides, duplicates, conflicting values, ids that are
# not TCGA barcodes. Nothing is dropped silently.
#
# Data: TCGA colorectal cancer (COADREAD) tables from the SurvPath study — one row per diagnostic slide with
# survival, a clinical table (stage, grade, subtype) and log2 RNA-seq (UCSC Xena, 1,577 genes) — plus the TCGA
# Pan-Cancer Clinical Data Resource (CDR).

# %%
import pathkit as pk

# %% tags=["parameters"]
CANCER = "coadread"         # the SurvPath TCGA tables of pk.datasets: "coadread" or "blca"
PATIENT = "TCGA-AD-6964"    # a patient to follow across every layer
OUT = "pathkit_out"         # folder for the results

# %%
from pathlib import Path

out = Path(OUT)
out.mkdir(parents=True, exist_ok=True)
tables = pk.datasets.tcga_tables(CANCER)   # paths: slides, clinical, rna, splits (downloaded once, checked)
SLIDES, CLINICAL, RNA = tables["slides"], tables["clinical"], tables["rna"]
{k: v.name for k, v in tables.items()}

# %%
import warnings
import numpy as np
import pandas as pd
import plotly.express as px

cohort = pk.io.cohort_from_table(SLIDES)
print(cohort.n_obs, "slides of", cohort.obs.case_id.nunique(), "patients")
cohort.obs[["case_id", "slide_id", "survival_months", "censorship"]].head()

# %% [markdown]
# ## TCGA barcodes
#
# A slide's file name carries its provenance: `TCGA-AD-6964-01Z-00-DX1.<uuid>.svs` is patient `TCGA-AD-6964`
# (project TCGA, tissue source site `AD`, participant `6964`), sample `01` (primary solid tumour; 10-19 would be
# normal tissue), vial `Z`, portion `00`, slide `DX1` (the first **diagnostic**, formalin-fixed slide; `TS`/`BS`
# are frozen top/bottom sections). RNA and clinical data are per patient or per sample, so linking cuts
# barcodes to that level.

# %%
b = pk.tcga.parse_barcode(cohort.obs.slide_id.iloc[0])
pd.Series(b.to_dict())

# %%
parts = pk.tcga.parse_barcodes(cohort.obs.slide_id)
parts[["patient", "sample", "sample_type_name", "slide_type", "slide_number"]].value_counts(
    ["sample_type_name", "slide_type", "slide_number"])

# %% [markdown]
# ## Linking
#
# `pk.link` keeps every slide row (`slides_per_patient="all"`; `"first_dx"`, `"largest"` or `"mean"` keep or
# merge one per patient), converts survival columns to one convention (`censorship` -> `event` = 1 when death
# was observed; `survival_months` -> `time_months`) and warns with a one-paragraph summary of every problem:

# %%
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", pk.io.LinkWarning)
    mdata = pk.link(cohort, clinical=CLINICAL, rna=RNA)
for w in caught:
    print(w.message)
cohort = mdata["slides"]   # one row per slide; mdata["rna"]: one row per patient
mdata

# %%
rep = cohort.uns["link_report"]
counts = pd.DataFrame({side: {k: v for k, v in rep[side].items() if isinstance(v, (int, np.integer))}
                       for side in ("cohort", "clinical", "rna")})
counts.astype("Int64")

# %% [markdown]
# ### What each count says (read the numbers in the table above)
#
# - **cohort `n_rows` / `n_ids`**: slides in the slide table and distinct patients among them; the difference
#   is patients with several diagnostic slides (`slides_per_id` lists them, e.g. DX1 and DX2 of one patient).
# - **clinical `n_rows` vs `n_ids`**: the clinical table has more rows than patients linked — about half its
#   rows are *not TCGA patients* (`n_not_tcga_ids`: ids like `P-0000674` from another cohort) and some
#   patients appear twice (`n_duplicate_ids`; `n_conflicting_duplicate_ids` of them with different values —
#   the first row is kept, `duplicates_policy`).
# - **`n_matched_ids`**: cohort patients found in that table; **`n_cohort_ids_unmatched`** /
#   **`n_cohort_rows_unmatched`**: patients (slides) with no row there — their columns are NaN, they are not
#   dropped.
# - **`n_table_ids_unmatched`**: ids of the table that have no slide (here the non-TCGA ids and TCGA patients
#   without a diagnostic slide in this table).
# - **rna `n_genes`**: genes of `mdata["rna"]` (one row per patient with slides and RNA); patients without RNA
#   have no row there (listed in `cohort_ids_unmatched`).
# - **`n_conflicting_columns`**: columns present on both sides whose values disagree (kept from the cohort; the
#   table's values go to `<col>_clinical`).

# %%
print("patients with several slides:", rep["cohort"]["slides_per_id"]["ids_with_several_slides"][:5])
print("clinical ids that are not TCGA barcodes (first 5):", rep["clinical"]["not_tcga_ids"][:5])
print("conflicting duplicates in clinical:", rep["clinical"]["conflicting_duplicate_ids"],
      "in columns", rep["clinical"]["conflicting_duplicate_columns"])
print("slides' patients without RNA:", rep["rna"]["cohort_ids_unmatched"])
print("survival columns:", {k: v["rule"] for k, v in cohort.uns["survival"].items()})

# %% [markdown]
# ## A second clinical source: the TCGA Pan-Cancer CDR
#
# The CDR (Liu et al., Cell 2018) is the curated survival resource for TCGA: overall survival `OS` (1 = death)
# and `OS.time` in days. Linking it under another name adds its columns and its own section of the report; its
# `OS` event is checked against the `event` already derived from SurvPath's `censorship` (a disagreement would
# show up under `conflicts`).

# %%
cdr = pk.datasets.tcga_cdr()   # the GDC xlsx, converted once to CSV
mdata = pk.link(mdata, clinical=cdr[["bcr_patient_barcode", "type", "gender", "ajcc_pathologic_tumor_stage",
                                     "OS", "OS.time"]], clinical_name="tcga_cdr")   # the RNA modality is kept
cohort = mdata["slides"]
r = cohort.uns["link_report"]["tcga_cdr"]
print(f"CDR: {r['n_rows']} patients (33 cancer types), {r['n_matched_ids']} matched, "
      f"{r['n_table_ids_unmatched']} without a slide here; conflicts with the cohort: {r['conflicts'] or 'none'}")

# %% [markdown]
# ## One patient across every layer
#
# TCGA-AD-6964 (colon adenocarcinoma, MSI-high) has a diagnostic slide in the survival table, RNA-seq, and a
# CDR record. Its slide image is at the GDC (open access, about 1 GB): `pk.tl.embed_cohort` turns it, with the
# others, into tile embeddings; notebook 02 makes them from a public sample slide with `pk.datasets.tile_bag`.

# %%
row = cohort.obs[cohort.obs.patient_id == PATIENT]
cols = ["slide_id", "sample_id", "slide_type", "age", "is_female", "stage", "subtype", "time_months", "event",
        "type", "gender", "OS", "OS.time", "time_days"]
print(f"SurvPath: {row.time_months.iloc[0]:.2f} months, event {row.event.iloc[0]:.0f};  "
      f"CDR: {row['OS.time'].iloc[0]:.0f} days = {row['OS.time'].iloc[0] / 30.44:.2f} months, OS {row['OS'].iloc[0]:.0f}")
row[cols].T

# %%
rna = pk.io.rna_by_slide(mdata)   # a slides x genes view (each slide shows its patient's row of mdata["rna"])
print("RNA for", PATIENT, ":", rna.loc[row.index].notna().all(axis=1).item(), "|", rna.shape[1], "genes")
rna.loc[row.index, ["IDO1", "CDK1", "CDH1", "VIM"]]

# %% [markdown]
# This RNA table is SurvPath's pathway panel (1,577 genes), so classic MSI markers such as *MLH1* are not in it.
# MSI-high colorectal tumours are rich in T cells whose interferon-γ induces **IDO1**; **CDK1** tracks
# proliferation, **CDH1** (E-cadherin) epithelium, **VIM** (vimentin) stroma. Where does this patient sit?

# %%
genes = ["IDO1", "CDK1", "CDH1", "VIM"]
long = rna[genes].dropna().melt(var_name="gene", value_name="log2 expression", ignore_index=False)
long["patient"] = np.where(cohort.obs.loc[long.index, "patient_id"] == PATIENT, PATIENT, "other")
fig = px.strip(long, x="gene", y="log2 expression", color="patient", stripmode="overlay",
               color_discrete_map={"other": "lightgrey", PATIENT: "crimson"}, height=400)
fig

# %% [markdown]
# ## A hallmark score from the RNA layer
#
# The 50 MSigDB Hallmark gene sets summarise pathways. A simple per-sample score: z-score each gene across
# patients, scanpy's `score_genes` (mean of the set's measured genes minus expression-matched control genes), through `pk.tl.pathway_scores`. (Only 1,577 genes are in this table,
# so each set is partly covered; the coverage is printed.)

# %%
hallmarks = pk.datasets.hallmarks()
SET = "HALLMARK_INTERFERON_GAMMA_RESPONSE"
pk.tl.pathway_scores(mdata, hallmarks, min_genes=5)   # scanpy's score_genes on mdata["rna"], all 50 sets
n = mdata["rna"].uns["pathways_score_genes"]["n_genes"][SET]
print(f"{SET}: {n} of {hallmarks[SET].notna().sum()} genes measured")
scores = mdata["rna"].obsm["pathways_score_genes"]          # patients x sets
cohort.obs["ifng_score"] = cohort.obs["patient_id"].map(scores[SET])
mine = float(cohort.obs.loc[row.index, "ifng_score"].iloc[0])
print(f"{PATIENT}: score {mine:.2f}, above {(cohort.obs.ifng_score < mine).mean():.0%} of the cohort's slides")
fig = px.box(cohort.obs.dropna(subset=["ifng_score"]), x="oncotree_code", y="ifng_score", points="all",
             hover_name="patient_id", title=f"{SET} score by tumour type", height=400)
fig.add_hline(y=mine, line_dash="dot",
              annotation_text=PATIENT)

# %% [markdown]
# ## Saving, and MuData
#
# The linked cohort is a MuData (`"slides"` + `"rna"`); it is saved as one `.h5mu` file and read back with
# `mudata.read_h5mu`. scanpy and decoupler work on `mdata["rna"]` directly.

# %%
warnings.filterwarnings("ignore", category=FutureWarning, module="mudata")   # mudata 0.3 -> 0.4 notice
mdata.write(out / "coadread_cohort.h5mu")
print(mdata)
