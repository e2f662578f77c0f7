# %% [markdown]
# # 04 · ABMIL: attention-based multiple-instance learning with patient-level cross-validation
#
# A slide is a *bag* of tile embeddings with one label. Gated-attention MIL (Ilse et al. 2018, as in CLAM) learns
# a weight per tile (attention) and a slide-level prediction from the attention-weighted mean of its tiles.
# `pk.tl.cross_validate_mil` splits folds **by patient** — a patient's slides are never in both training and test
# folds — and reports out-of-fold metrics with bootstrap 95% confidence intervals.

# %%
import pathkit as pk

# %% tags=["parameters"]
N_PATIENTS = 12            # half of them "positive"
SLIDES_PER_PATIENT = 2
TILES_PER_SLIDE = 80
EPOCHS = 5                 # real cohorts: 20+ epochs with early stopping (the default)
FOLDS = 3
SIGNAL = 3.0               # length of the planted shift (tile features have norm ~13, sd ~0.05 per dimension)

# %% [markdown]
# > **Data used here.** No public cohort of tile embeddings with labels fits in CI, so the bags are **simulated
# > from real embeddings with a planted signal**: every slide is a random subset of the 777 real tiles of
# > TCGA-AD-6964 (with their real positions, plus a little noise); in the slides of "positive" patients a
# > small patch of neighbouring tiles is shifted along one direction of feature space. The model must find the
# > label (AUROC) *and* its attention must point at the planted tiles — a test with a known answer.
# > With your own data: `tiles` = the per-slide AnnData (or the folder) written by `pk.tl.embed_cohort`, and
# > `cohort` = a linked cohort (notebook 03) with a label column such as MSI status.

# %%
import numpy as np
import pandas as pd
import plotly.express as px

real = pk.datasets.tcga_coad_bag()   # 777 real tiles of TCGA-AD-6964
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

# %%
res = pk.tl.cross_validate_mil(tiles, cohort, "abmil", label="label", task="binary", folds=FOLDS,
                               split_by="patient_id", use_rep="X", epochs=EPOCHS, patience=3, hidden=64,
                               attn_hidden=32, lr=2e-3, batch_size=2, n_bootstrap=300, progress=False,
                               random_state=0)
res.summary

# %% [markdown]
# `res.summary`: pooled out-of-fold metrics (every slide scored by the model that never saw its patient) with
# bootstrap 95% CIs over slides. Per fold, with training length and time:

# %%
res.metrics

# %%
per_patient = cohort.obs.groupby("patient_id")["abmil_fold"].nunique()
print("patients whose slides landed in more than one fold:", int((per_patient > 1).sum()))
px.line(res.history, x="epoch", y=["train_loss", "val_loss"], facet_col="fold", height=300,
        title="training curves per fold (early stopping on the inner validation patients)")

# %% [markdown]
# ## Out-of-fold predictions
#
# Written to `cohort.obs` (`abmil_fold`, `abmil_prob_<class>`, `abmil_pred`) so they can be used downstream
# (e.g. risk groups in notebook 05) without any leakage.

# %%
px.strip(cohort.obs, x="label", y="abmil_prob_positive", color="abmil_fold", hover_name="slide_id",
         title="out-of-fold probability of 'positive' per slide", height=350)


# %% [markdown]
# ## Does attention point at the planted tiles?
#
# Each tile AnnData now has `obs["abmil_importance"]` (weights of the fold model that held the slide out;
# they sum to 1 per slide). For positive slides, compare with the planted mask: the share of the 8 planted tiles
# among the 8 tiles with the highest attention, and the AUROC of attention for "planted vs not".

# %%
from sklearn.metrics import roc_auc_score

stats = []
for sid, a in tiles.items():
    m = planted[sid]
    if m.any():
        att = a.obs["abmil_importance"].to_numpy()
        top = np.argsort(-att)[: m.sum()]
        stats.append({"slide": sid, "top8_recall": m[top].mean(), "attention_auroc": roc_auc_score(m, att),
                      "attention_on_planted": att[m].sum()})
stats = pd.DataFrame(stats).set_index("slide")
print(stats.mean().round(3).to_dict())
stats.head()

# %% [markdown]
# ## Attention heatmap at the tile positions
#
# The image of TCGA-AD-6964 is not in `pk.datasets` (only its tile embeddings), so the heatmap is drawn at the
# tiles' level-0 coordinates. With the slide file at hand, draw it over the thumbnail:
# `pk.pl.slide(pk.read_slide(path), tiles[sid], color="abmil_importance")`.

# %%
sid = stats["top8_recall"].idxmax()
a = tiles[sid]
df = a.obs.assign(x=a.obsm["spatial"][:, 0], y=a.obsm["spatial"][:, 1])
fig = px.scatter(df, x="x", y="y", color="abmil_importance", symbol="planted", color_continuous_scale="Inferno",
                 symbol_map={True: "star", False: "square"}, title=f"{sid}: attention (stars = planted tiles)",
                 height=500)
fig.update_traces(marker_size=11).update_yaxes(autorange="reversed", scaleanchor="x")
fig.update_layout(legend=dict(orientation="h", y=-0.15))

# %% [markdown]
# ## With real data
#
# ```python
# cohort = pk.link(pk.io.cohort_from_table("slides.csv"), clinical="clinical.csv")      # notebook 03
# res = pk.tl.cross_validate_mil("embeddings/", cohort, "abmil", label="msi_status", use_rep="X_uni",
#                                splits=pk.datasets.tcga_tables("coadread")["splits"])   # or folds=5
# est = pk.tl.MIL("abmil", "binary").fit("embeddings/", cohort, label="msi_status", use_rep="X_uni")
# est.save("msi_abmil")                                                  # safetensors + JSON config
# pk.tl.MIL.load("msi_abmil").predict("other/embeddings/", other_cohort) # external validation
# ```
# The other models take the same calls: `"clam_sb"`, `"transmil"`, `"dsmil"`, `"mean"`, `"max"`; tasks
# `"multiclass"`, `"multilabel"`, `"regression"`, `"survival"` (discrete-time NLL, PORPOISE) and `"cox"`;
# `bag_by="patient"` pools a patient's slides into one bag. Survival is in notebook 05.
