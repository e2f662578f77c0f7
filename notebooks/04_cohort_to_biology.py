# %% [markdown]
# # 04 · From cohort to outcome to biology: encoder probes, MIL, and histology x RNA associations
#
# One cohort carries slides, clinical data and RNA-seq together (notebook 03). This notebook walks the whole
# analysis on it:
#
# 1. **cohort**: the TCGA colorectal (COADREAD) tables, linked: slides + clinical + RNA (a MuData);
# 2. **RNA → pathways**: MSigDB Hallmark scores per patient (`pk.tl.pathway_scores`);
# 3. **probes**: which representation predicts the label best? (`pk.tl.compare_encoders`, eva-style linear probes);
# 4. **MIL**: cross-validate a model with patient-level folds, fit it, save / load it and predict a held-out set;
#    late fusion with clinical covariates; attention heatmaps (`pk.tl.cross_validate_mil`, `pk.tl.MIL`);
# 5. **associations**: histology features (tile-class proportions, the MIL score) against every pathway, with
#    Benjamini-Hochberg q-values, and a volcano plot (`pk.tl.tile_composition`, `pk.tl.associate`, `pk.pl.volcano`).

# %%
import pathkit as pk

# %% tags=["parameters"]
N_PATIENTS = 0              # 0: every COADREAD patient with RNA-seq (about 300); fewer for a quick run
TILES_PER_SLIDE = 200       # simulated tiles per slide
TILE_MODEL = "kaiko_vits16" # the tile model whose embeddings of a public slide the simulated bags reuse
PATHWAY = "HALLMARK_EPITHELIAL_MESENCHYMAL_TRANSITION"   # the pathway whose level the simulated slides carry
MIL_MODEL = "abmil"         # any of pk.models.mil.MIL_MODELS: abmil, clam_sb, transmil, dsmil, mean, max
EPOCHS = 20                 # the estimator's defaults: 20 epochs (early stopping), learning rate 2e-4
LR = 2e-4
FOLDS = 5
HIDDEN = 256
HELD_OUT = 0.2              # share of patients kept out of everything until the final prediction
N_BOOTSTRAP = 1000
OUT = "pathkit_out"

# %% [markdown]
# ## 1 · The cohort (real)
#
# SurvPath's TCGA COADREAD tables (one row per diagnostic slide, a clinical table, log2 RNA-seq of 1,577 genes
# from UCSC Xena), linked at the patient level. We keep the patients with RNA-seq.

# %%
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px

out = Path(OUT)
out.mkdir(parents=True, exist_ok=True)
tables = pk.datasets.tcga_tables("coadread")
slides = pk.io.cohort_from_table(tables["slides"])
rna_ids = set(pd.read_csv(tables["rna"], usecols=[0]).iloc[:, 0])
patients = sorted(set(slides.obs["case_id"]) & rna_ids)
if N_PATIENTS:
    patients = list(np.random.default_rng(0).choice(patients, N_PATIENTS, replace=False))
slides = slides[slides.obs["case_id"].isin(patients)].copy()
with warnings.catch_warnings():
    warnings.simplefilter("ignore", pk.io.LinkWarning)   # the link report is discussed in notebook 03
    mdata = pk.link(slides, clinical=tables["clinical"], rna=tables["rna"])
cohort = mdata["slides"]
print(f"{cohort.n_obs} slides of {cohort.obs.patient_id.nunique()} patients; RNA: {mdata['rna'].shape}")
mdata

# %% [markdown]
# ## 2 · Pathway scores from the RNA (real)
#
# `pk.tl.pathway_scores` scores the 50 Hallmark gene sets on each patient's RNA with scanpy's `score_genes`
# (mean of the set minus expression-matched controls) and stores them in `mdata["rna"].obsm["pathways_score_genes"]`.
# A set with fewer than 5 of its genes in this 1,577-gene panel is dropped, with a warning that counts them:
# the scores table has one column per set kept.
# The label of this notebook is real too: **whether the patient's EMT score is above the cohort median**.

# %%
pk.tl.pathway_scores(mdata, pk.datasets.hallmarks())
scores = mdata["rna"].obsm["pathways_score_genes"]
level = scores[PATHWAY]
emt = level.reindex(cohort.obs["patient_id"]).to_numpy()
cohort.obs["pathway_high"] = np.where(emt > level.median(), "high", "low")
dropped = mdata["rna"].uns["pathways_score_genes"]["dropped"]
print(f"{scores.shape[1]} pathway scores ({len(dropped)} of 50 sets dropped: too few genes measured);",
      cohort.obs["pathway_high"].value_counts().to_dict())
px.histogram(level, nbins=30, title=f"{PATHWAY} score per patient (real RNA-seq)", height=300)

# %% [markdown]
# ## 3 · Tile bags (SIMULATED from real tiles)
#
# > **Simulated.** The slide images of this cohort are not in `pk.datasets` (they are at the GDC, about 1 GB
# > each). The tiles are made here from a public slide instead: `pk.datasets.tile_bag(TILE_MODEL)` finds the
# > tissue of the OpenSlide sample CMU-1, cuts 256-px tiles at 0.5 µm/px and embeds them. Each slide of the
# > cohort is **simulated**: `TILES_PER_SLIDE` of those tiles drawn (with their real positions and a little
# > noise), where the share of tiles from one of their two k-means clusters ("A") follows the patient's real EMT
# > score: share = clip(0.5 + 0.2 z, 0.05, 0.95), z the standardised score. So the histology carries the
# > pathway by construction, through a tile-class proportion, as stroma-rich tumours carry EMT in real slides.
# > Everything downstream (probes, MIL, associations) sees only the tiles, never the score.
# >
# > With your own data: `tiles` = the per-slide files of `pk.tl.embed_cohort` (a folder works), clusters from
# > one joint `pk.tl.umap(..., leiden=True)` over the pooled tiles.

# %%
import anndata as ad
from sklearn.cluster import KMeans

real = pk.datasets.tile_bag(TILE_MODEL, progress=False)   # X: tile features, obsm["spatial"]: positions
feats = np.asarray(real.X, dtype=np.float32)
cluster = np.where(KMeans(2, n_init=10, random_state=0).fit_predict(feats) == 0, "A", "B")
a_idx, b_idx = np.flatnonzero(cluster == "A"), np.flatnonzero(cluster == "B")
z = ((level - level.mean()) / level.std()).reindex(cohort.obs["patient_id"]).to_numpy()
rng = np.random.default_rng(0)
sd = feats.std(0)
proj = rng.normal(size=(feats.shape[1], 32)) / np.sqrt(feats.shape[1])   # a "weaker encoder" (also simulated)
tiles, real_mean, weak_mean = {}, [], []
for sid, zi in zip(cohort.obs["slide_id"], z):
    p = float(np.clip(0.5 + 0.2 * zi, 0.05, 0.95))
    n_a = rng.binomial(TILES_PER_SLIDE, p)
    idx = np.concatenate([rng.choice(a_idx, n_a, replace=n_a > len(a_idx)),
                          rng.choice(b_idx, TILES_PER_SLIDE - n_a, replace=TILES_PER_SLIDE - n_a > len(b_idx))])
    X = feats[idx] + rng.normal(size=(len(idx), feats.shape[1])).astype(np.float32) * 0.1 * sd
    t = ad.AnnData(obs=pd.DataFrame({"slide_id": sid, "cluster": cluster[idx]},
                                    index=[str(i) for i in range(len(idx))]))
    t.obsm["X_real"] = X.astype(np.float32)
    t.obsm["spatial"] = real.obsm["spatial"][idx]
    tiles[sid] = t
    real_mean.append(X.mean(0))
    weak = np.tanh(X @ proj) + rng.normal(size=(len(idx), 32)) * 0.5
    weak_mean.append(weak.mean(0))
cohort.obsm["X_real_mean"] = np.stack(real_mean)    # slide embeddings: the mean of the tiles
cohort.obsm["X_weak_mean"] = np.stack(weak_mean)
print(len(tiles), "simulated slides of", TILES_PER_SLIDE, "tiles")

# %% [markdown]
# ## 4 · Probing the encoders
#
# Before training anything, a **linear probe** on frozen slide embeddings says how much of the label each
# representation holds (the eva protocol of the kaiko paper): patient-level folds, out-of-fold AUROC with a
# patient-level bootstrap CI. Here the two "encoders" are the real features and a simulated weaker one (a
# random 32-d projection with noise); in practice they are `X_uni`, `X_conch`, `X_gigapath`, ... of
# `pk.tl.embed_cohort`.

# %%
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)   # scikit-learn's notices about its coming defaults
    table, fig = pk.tl.compare_encoders(mdata, "pathway_high", ["X_real_mean", "X_weak_mean"], folds=FOLDS,
                                        n_boot=N_BOOTSTRAP)
fig

# %%
table[table["metric"].isin(["auroc", "balanced_accuracy"])]

# %% [markdown]
# ## 5 · MIL: cross-validation on the development patients, prediction on held-out ones
#
# `HELD_OUT` of the patients are set aside. On the others, `pk.tl.cross_validate_mil` trains one model per
# patient-level fold and scores each slide with the model that never saw its patient (out-of-fold), with
# bootstrap 95% CIs. The features are the bags' single `obsm` key `X_<model>` (here `X_real`), found without
# `use_rep=`. `fold_mean` / `fold_sd` summarise the folds' own scores: after a short training the fold models'
# probabilities are not on one scale, and the pooled value can sit below every fold's.

# %%
pats = np.array(sorted(cohort.obs["patient_id"].unique()))
held_pats = set(np.random.default_rng(1).choice(pats, max(2, int(HELD_OUT * len(pats))), replace=False))
is_held = cohort.obs["patient_id"].isin(held_pats).to_numpy()
dev, held = cohort[~is_held].copy(), cohort[is_held].copy()
dev_tiles = {s: tiles[s] for s in dev.obs["slide_id"]}
held_tiles = {s: tiles[s] for s in held.obs["slide_id"]}
print(f"development: {dev.n_obs} slides; held out: {held.n_obs} slides")

settings = dict(epochs=EPOCHS, lr=LR, progress=False, random_state=0)
size = {"abmil": {"hidden": HIDDEN}, "clam_sb": {"hidden": HIDDEN}, "transmil": {"dim": HIDDEN},
        "dsmil": {}, "mean": {"hidden": HIDDEN}, "max": {"hidden": HIDDEN}}[MIL_MODEL]
res = pk.tl.cross_validate_mil(dev_tiles, dev, MIL_MODEL, label="pathway_high", folds=FOLDS,
                               n_bootstrap=N_BOOTSTRAP, **settings, **size)
res.summary

# %%
res.metrics

# %% [markdown]
# Then one model on all development patients, saved (safetensors + a JSON config), loaded back, and used on the
# held-out patients: the external-validation pattern (`predict` writes `<model>_prob_<class>` and `_pred` to the
# cohort, and each tile's importance to the tiles).

# %%
from sklearn.metrics import roc_auc_score

est = pk.tl.MIL(MIL_MODEL, "binary", **settings, **size).fit(dev_tiles, dev, label="pathway_high")
path = est.save(out / f"pathway_{MIL_MODEL}")
loaded = pk.tl.MIL.load(path)
pred = loaded.predict(held_tiles, held)
auc_held = roc_auc_score(held.obs["pathway_high"] == "high", held.obs[f"{MIL_MODEL}_prob_high"])
print(f"held-out AUROC: {auc_held:.3f} ({held.n_obs} slides); files: {sorted(p.name for p in path.iterdir())}")
pred.head()

# %% [markdown]
# ### Late fusion with clinical covariates
#
# `covariates=` adds bag-level variables to the pooled tile representation before the head: clinical columns
# of the slides (here age and stage; stage is one-hot encoded), or RNA features of the MuData (a gene, or
# `"pathways_score_genes"`). They are standardised with the training bags' mean and sd, saved with the model,
# and read again by `predict`; a missing value is imputed with the training mean here (`covariate_nan="mean"`;
# the default `"raise"` names the columns). The fusion is fit after the tile network (stacking): a regression of
# the labels on the network's output and the covariates, so the covariates explain what the tiles do not. Age
# and stage say nothing about this simulated label: they get small weights and the held-out AUROC stays where
# the tiles put it. Fusion pays with covariates that carry signal the tiles do not
# (`tests/test_mil_covariates.py`: a label driven by a real gene and the tiles, AUROC 0.87 from either alone,
# 0.97 fused).

# %%
fused = pk.tl.MIL(MIL_MODEL, "binary", **settings, **size)
fused.fit(dev_tiles, dev, label="pathway_high", covariates=["age", "stage"], covariate_nan="mean")
fused.predict(held_tiles, held, key_added="fused")
auc_fused = roc_auc_score(held.obs["pathway_high"] == "high", held.obs["fused_prob_high"])
print(f"held-out AUROC: tiles only {auc_held:.3f}, tiles + age + stage {auc_fused:.3f}")
pd.Series(fused.module_.covariates.weight.detach().numpy()[1], index=fused.covariates_.columns,
          name="weight for 'low' (standardised covariates)").round(3)

# %% [markdown]
# ## 6 · Where does the model look? Attention on a held-out slide
#
# Every MIL model writes one importance value per tile (attention for ABMIL, CLAM, DSMIL and TransMIL's class
# token; the tile's own score for mean and max pooling). The simulated slides differ only in their share of
# cluster-A tiles, so the attention should separate the clusters: its AUROC for "cluster A vs B" per slide
# (0.5 = blind; far from 0.5 either way = the model tells the clusters apart).

# %%
key = f"{MIL_MODEL}_importance"
sep = pd.Series({s: roc_auc_score(t.obs["cluster"] == "A", t.obs[key]) for s, t in held_tiles.items()
                 if t.obs["cluster"].nunique() == 2})
print(f"attention AUROC for cluster A, held-out slides: median {sep.median():.2f} "
      f"(IQR {sep.quantile(0.25):.2f}-{sep.quantile(0.75):.2f})")
# the example: among held-out slides with both clusters well represented (25-75 % cluster A), the one whose
# attention separates them best (a slide of nearly all A, as the most "high" slide is, shows no contrast)
share_a = pd.Series({s: float((t.obs["cluster"] == "A").mean()) for s, t in held_tiles.items()})
mixed = sep[sep.index.isin(share_a[(share_a >= 0.25) & (share_a <= 0.75)].index)]
sid = (mixed if len(mixed) else sep).sub(0.5).abs().idxmax()
t = tiles[sid]
df = t.obs.assign(x=t.obsm["spatial"][:, 0], y=t.obsm["spatial"][:, 1])
fig = px.scatter(df, x="x", y="y", color=key, symbol="cluster", color_continuous_scale="Inferno", height=500,
                 title=f"{sid[:23]}: {MIL_MODEL} importance at the tile positions (symbol: tile cluster; "
                       f"{share_a[sid]:.0%} A, attention AUROC {sep[sid]:.2f})")
fig.update_traces(marker_size=9).update_yaxes(autorange="reversed", scaleanchor="x")
fig.update_layout(legend=dict(orientation="h", y=-0.15))

# %% [markdown]
# With the slide file, draw it over the thumbnail: `pk.pl.slide(tiles[sid], color=key)`.
#
# ## 7 · Histology x RNA: which pathways go with which tile classes?
#
# Per-slide **tile-class proportions** (`pk.tl.tile_composition`) and the **MIL score** (out-of-fold on the
# development patients, `predict` on the held-out ones) are tested against every pathway score of the RNA
# modality: Spearman correlations, one row per patient (a patient's slides averaged), Benjamini-Hochberg
# q-values over the whole table (`pk.tl.associate`).

# %%
pk.tl.tile_composition(tiles, key="cluster", cohort=mdata)       # slides obsm["composition_cluster"]
mil = pd.concat([dev.obs[f"{MIL_MODEL}_prob_high"], held.obs[f"{MIL_MODEL}_prob_high"]]).astype(float)
cohort.obs["mil_score"] = mil.reindex(cohort.obs_names).to_numpy()
assoc = pk.tl.associate(mdata, ["composition_cluster", "mil_score"], targets="pathways_score_genes")
assoc.head(10)

# %%
pk.pl.volcano(assoc, title="tile-class shares and MIL score vs Hallmark pathways")

# %% [markdown]
# The planted pathway comes first, as it should. It does not come alone: in real tumours the Hallmark
# scores co-vary (EMT with angiogenesis, hypoxia, TGF-β signalling, ...), so every pathway correlated with EMT
# in this cohort's real RNA is associated with the simulated tile classes too. An association table says what
# goes together, not which pathway the tissue "is about": confirm with covariates (`covariates=["stage"]`),
# with a held-out cohort, or with a pathway-specific readout.

# %%
ranked = assoc[assoc["feature"] == "A"].reset_index(drop=True)
print(f"{PATHWAY}: rank {int(ranked.index[ranked['target'] == PATHWAY][0]) + 1} of {len(ranked)}; "
      f"{int((assoc['qvalue'] < 0.05).sum())} of {len(assoc)} tests at q < 0.05")
