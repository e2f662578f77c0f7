# %% [markdown]
# # 10 · Stain and site: normalisation, the site effect and site-preserved validation
#
# Slides from one tissue source site (TSS, the second field of a TCGA barcode: `TCGA-AD-6964` -> `AD`) share
# a stain protocol and a scanner; foundation-model embeddings encode the site strongly enough to predict it
# (Howard et al., Nat Commun 2021). This notebook shows
#
# 1. stain normalisation of real tiles (Macenko, Reinhard, Vahadane) and HED augmentation,
# 2. how to measure the site effect of a representation, correct it with Harmony, and validate with
#    site-preserved folds, and how an association moves when site is accounted for.
#
# **What is simulated.** Part 1 uses real H&E tiles. In part 2 the patients, their barcodes and so their
# tissue source sites are the real TCGA COADREAD cohort, but the **embeddings and both labels are simulated**:
# each site adds its own offset to the features (a planted site effect), one label has a real signal in the
# features, the other depends on the site only. That way we know the truth the tools should find.

# %% tags=["parameters"]
N_SITES = 10           # the largest tissue source sites of the cohort kept
DIM = 64               # simulated embedding width
SITE_SHIFT = 3.0       # size of the planted site offset (noise has unit variance per dimension)
LABEL_SHIFT = 2.0      # size of the real label's offset
SEED = 0

# %%
import warnings

import numpy as np
import pandas as pd
import plotly.express as px
from PIL import Image

import pathkit as pk

warnings.filterwarnings("ignore", category=UserWarning)

# %% [markdown]
# ## 1 · Stain normalisation on real tiles
#
# `pk.pp.fit_stain` fits a normaliser to a reference (an RGB tile, a tiles AnnData + slide, or a slide);
# background (optical density below 0.15 in any channel) never enters the fit. The fitted normaliser is plain
# data (`to_dict()`) that goes into `uns`; `pk.tl.embed_tiles(tiles, slide, model, stain=norm)` applies it to
# every tile batch before the model's own normalisation. Vahadane (sparse non-negative stain separation) learns
# each tile's own stain matrix, so it costs more per tile than Macenko (docs/benchmarks_stain.md).

# %%
reference = np.array(Image.open(pk.datasets.fetch("patches/tissue-level0-7352-11762-7864-12274.png")).convert("RGB"))
source = np.array(Image.open(pk.datasets.fetch("patches/CRC-VAL-HE-7K-NORM-TCGA-YLVCMEHK.tif")).convert("RGB"))
panels = {"reference": reference[:224, :224], "source": source[:224, :224]}
for method in ("macenko", "reinhard", "vahadane"):
    norm = pk.pp.fit_stain(reference, method)
    panels[method] = norm.transform(source)[:224, :224]
panels["HED jitter (strong)"] = pk.pp.HEDJitter(sigma=0.2, bias=0.05, random_state=SEED).transform(source)[:224, :224]
print(norm, norm.to_dict()["method"])
px.imshow(np.stack(list(panels.values())), facet_col=0, facet_col_wrap=6,
          title="source tile normalised to the reference").for_each_annotation(
    lambda a: a.update(text=list(panels)[int(a.text.split("=")[1])])).update_layout(height=300)

# %% [markdown]
# ## 2 · The site effect (simulated embeddings on the real cohort's sites)

# %%
slides = pd.read_csv(pk.datasets.tcga_tables("coadread")["slides"])
slides = slides.drop_duplicates("case_id")
slides["tss"] = slides["case_id"].str.split("-").str[1]
keep = slides["tss"].value_counts().index[:N_SITES]
slides = slides[slides["tss"].isin(keep)].reset_index(drop=True)
print(len(slides), "patients from", slides["tss"].nunique(), "sites:", slides["tss"].value_counts().to_dict())

rng = np.random.default_rng(SEED)
sites = sorted(keep)
offset = rng.normal(size=(len(sites), DIM))
offset *= SITE_SHIFT / np.linalg.norm(offset, axis=1, keepdims=True)
direction = rng.normal(size=DIM)
direction *= LABEL_SHIFT / np.linalg.norm(direction)
label = rng.integers(0, 2, len(slides))                                  # simulated, independent of site
site_idx = slides["tss"].map({s: i for i, s in enumerate(sites)}).to_numpy()
X = rng.normal(size=(len(slides), DIM)) + offset[site_idx] + label[:, None] * direction

import anndata as ad

cohort = ad.AnnData(obs=pd.DataFrame({"patient_id": slides["case_id"].to_numpy(),
                                      "label": np.where(label == 1, "high", "low"),
                                      # a "label" that is the site only: half the sites are "A"
                                      "site_label": np.where(site_idx < len(sites) // 2, "A", "B")},
                                     index=slides["slide_id"].to_numpy()))
cohort.obsm["X_sim"] = X.astype(np.float32)

# %% [markdown]
# `pk.tl.site_effect` predicts the site from the representation with kNN and a linear probe (patient-level
# folds) against chance, and measures the silhouette by site and the share of the top PCs' variance that the
# site explains. `key="tss"` reads the site from the barcodes.

# %%
before = pk.tl.site_effect(cohort, use_rep="X_sim", key="tss")
pk.tl.harmonize(cohort, use_rep="X_sim", key="tss")                      # -> obsm["X_sim_harmony"]
after = pk.tl.site_effect(cohort, use_rep="X_sim_harmony", key="tss")
pd.concat([before, after]).pivot(index="measure", columns="use_rep", values="value").round(3)

# %%
pk.pl.site_effect(cohort, ["X_sim", "X_sim_harmony"])

# %% [markdown]
# ## 3 · Validation that respects sites
#
# With patient-level folds, a label that is only the site is "predicted" well, because every test site was
# also in training. Site-preserved folds (`splits="site"`: no site in both train and test, class mix balanced
# across folds) drop it to chance; the real label survives.

# %%
rows = []
for lab in ("label", "site_label"):
    for splits in ("patient", "site"):
        t = pk.tl.probe(cohort, lab, use_rep="X_sim", folds=3, splits=splits, n_boot=50)
        rows.append({"label": lab, "splits": splits, "auroc": t.set_index("metric").loc["auroc", "value"]})
pd.DataFrame(rows).pivot(index="label", columns="splits", values="auroc").round(3)

# %% [markdown]
# ## 4 · How an association moves when site is accounted for
#
# A simulated "gene" driven by the site only correlates with a slide feature that also carries the site.
# `pk.tl.associate` warns when a tested column is confounded with site (Cramér's V > 0.5), and
# `adjust_site=True` adds the site as a covariate: the association disappears.

# %%
gene = (site_idx < len(sites) // 2).astype(float) + 0.5 * rng.normal(size=len(slides))
rna = ad.AnnData(gene[:, None].astype(np.float32), obs=pd.DataFrame(index=slides["case_id"].to_numpy()))
rna.var_names = ["SIM_SITE_GENE"]
cohort.obs["site_feature"] = cohort.obs["site_label"].eq("A").astype(float) + 0.3 * rng.normal(size=len(slides))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    raw = pk.tl.associate(cohort, "site_feature", rna=rna, key_added=None)
print([str(w.message)[:120] for w in caught if "confounded" in str(w.message)])
adjusted = pk.tl.associate(cohort, "site_feature", rna=rna, key_added=None, adjust_site=True)
pd.DataFrame({"raw": raw.iloc[0][["statistic", "pvalue"]], "adjusted for site": adjusted.iloc[0][["statistic", "pvalue"]]})
