# %% [markdown]
# # Tutorial 3 — Survival analysis with histology
#
# Clinical outcomes such as death or recurrence are **time-to-event** data: for each patient we know a time
# and whether the event was observed (`event = 1`) or the patient was **censored** (`event = 0`: alive at last
# follow-up, so we only know they survived *at least* that long). Dropping censored patients, or treating them
# as deaths, biases everything. Survival methods use them correctly.
#
# We use the real TCGA colorectal cohort (COADREAD) from the SurvPath study: survival per diagnostic slide,
# the pathologist's reading of the histology (stage, mucinous subtype) and RNA-seq. At the end we build a
# **histology + molecular risk score** and measure, out of fold, how much of the survival ordering it explains.

# %%
import warnings

import numpy as np
import pandas as pd
import plotly.express as px

import pathkit as pk

# %% tags=["parameters"]
CANCER = "coadread"   # the SurvPath TCGA tables of pk.datasets ("coadread" or "blca")
N_PCS = 10            # principal components of the RNA profile in the molecular score
PENALIZER = 0.1       # ridge penalty of the Cox models

# %% [markdown]
# ## 0. The data
#
# `pk.datasets.tcga_tables` downloads SurvPath's tables once (checked against their sha256) and returns
# their paths. The slide table has one row per diagnostic slide; `censorship = 1` means censored, the opposite
# of pathkit's `event`.

# %%
tables = pk.datasets.tcga_tables(CANCER)
slides = pd.read_csv(tables["slides"], index_col=0)
slides[["case_id", "slide_id", "survival_months", "censorship"]].head()

# %% [markdown]
# `pk.link` joins the slide table with the clinical table and the RNA-seq at the patient level, converts the
# survival columns to `event` (1 = death observed) and `time_months`, and reports what did not line up.
# Survival is a property of the **patient**, so we keep one slide per patient: `slides_per_patient="first_dx"`
# keeps the first diagnostic slide (DX1).

# %%
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", pk.io.LinkWarning)
    mdata = pk.link(pk.io.cohort_from_table(tables["slides"]), clinical=tables["clinical"], rna=tables["rna"],
                    slides_per_patient="first_dx")
cohort = mdata["slides"]
print(caught[0].message if caught else "no linking problems")
obs = cohort.obs
print(f"{cohort.n_obs} patients, {int(obs.event.sum())} deaths")
obs[["patient_id", "time_months", "event", "stage", "subtype"]].head()

# %% [markdown]
# Half of the clinical table's ids are not TCGA patients (`P-...` ids from another cohort) and some ids are
# duplicated: the report counts them instead of silently dropping rows.
#
# ## 1. Kaplan–Meier curves by stage
#
# The Kaplan–Meier estimator multiplies, at each event time, the share of patients at risk who survive it.
# Censored patients leave the risk set without counting as events. **Stage 0** has a single patient (and one
# patient has no stage): a curve of one patient says nothing, so they are left out, as in notebook 05.

# %%
print(obs.stage.value_counts(dropna=False).to_dict())
staged = cohort[obs.stage.isin(["I", "II", "III", "IV"]).to_numpy()].copy()
km = pk.tl.kaplan_meier(staged, time="time_months", event="event", groupby="stage")
pd.concat([km.counts, km.median.rename("median months")], axis=1)

# %%
fig = pk.pl.kaplan_meier(staged, time="time_months", event="event", groupby="stage",
                         title=f"TCGA {CANCER.upper()}: overall survival by stage")
fig

# %% [markdown]
# ## 2. The log-rank test
# Are the curves different? The log-rank test compares, at each event time, observed and expected deaths per
# group under the null hypothesis of equal hazards.

# %%
lr = pk.tl.logrank(staged, time="time_months", event="event", groupby="stage")
print(f"chi2 = {lr.statistic:.1f} on {lr.dof} df, p = {lr.p_value:.2g}")
lr.table[["observed", "expected"]]

# %% [markdown]
# ## 3. Cox proportional hazards
# The Cox model estimates a **hazard ratio** per covariate: HR = 2 means twice the instantaneous risk of the
# event at any time. Stage I has only 7 patients: it is pooled with stage II as the reference. The
# histology covariate is the pathologist's subtype: **mucinous adenocarcinoma** (`MACR`) against the others.
#
# The **concordance index** (c-index) asks: of two comparable patients, does the one with the higher predicted
# risk die first? 0.5 is chance, 1 is perfect.

# %%
staged.obs["stage_group"] = staged.obs.stage.replace({"I": "I-II", "II": "I-II"}).astype(str)
staged.obs["mucinous"] = (staged.obs.subtype == "MACR").astype(float)
cox = pk.tl.cox(staged, time="time_months", event="event",
                covariates=["age", "is_female", "stage_group", "mucinous"], reference={"stage_group": "I-II"})
print(f"n = {cox.n}, events = {cox.n_events}, c-index (in sample) = {cox.concordance:.3f}")
cox.summary[["exp(coef)", "hr_lower", "hr_upper", "p"]].round(3)

# %% [markdown]
# The in-sample c-index is optimistic: the model is scored on the patients it was fitted to.
#
# ## 4. A histology + molecular risk score, out of fold
#
# The score combines the histology (stage group, mucinous subtype) with the RNA profile (its first `N_PCS`
# principal components) in a ridge-penalised Cox model. To measure it honestly, every patient is scored by a
# model that never saw them: SurvPath's published 5-fold patient splits; in each fold the PCA and the Cox
# model are fitted on the training patients only. The c-index of the pooled out-of-fold risks is the part of
# the survival ordering the score explains.
#
# With foundation-model slide embeddings (`obsm["X_<model>"]` from `pk.tl.embed_cohort`), replace `rna` below
# by that key: the procedure is the same.

# %%
from sklearn.decomposition import PCA

data = staged[staged.obs.patient_id.isin(mdata["rna"].obs_names).to_numpy()].copy()
rna = pk.io.rna_by_slide(mdata).loc[data.obs_names].to_numpy(float)
histology = pd.get_dummies(data.obs.stage_group, prefix="stage", dtype=float).drop(columns="stage_I-II")
histology["mucinous"] = data.obs.mucinous.to_numpy()
ids = data.obs.patient_id.to_numpy()
folds = [pd.read_csv(f, index_col=0) for f in sorted(tables["splits"].glob("splits_*.csv"))]


def design(rows, pca, parts):
    cols = []
    if "histology" in parts:
        cols.append(histology.iloc[rows].reset_index(drop=True))
    if "rna" in parts:
        z = pca.transform(rna[rows])
        cols.append(pd.DataFrame(z, columns=[f"rna_pc{i + 1}" for i in range(z.shape[1])]))
    return pd.concat(cols, axis=1)


def out_of_fold(parts):
    risk = pd.Series(np.nan, index=data.obs_names)
    for split in folds:
        train = np.flatnonzero(np.isin(ids, split["train"].dropna()))
        val = np.flatnonzero(np.isin(ids, split["val"].dropna()))
        pca = PCA(n_components=N_PCS, random_state=0).fit(rna[train])
        X = design(train, pca, parts).assign(time=data.obs.time_months.to_numpy()[train],
                                             event=data.obs.event.to_numpy()[train])
        fit = pk.tl.cox(X, time="time", event="event", covariates=[c for c in X if c not in ("time", "event")],
                        penalizer=PENALIZER)
        risk.iloc[val] = fit.predict_risk(design(val, pca, parts)).to_numpy()
    return risk


scores = {"histology": out_of_fold(["histology"]), "molecular (RNA)": out_of_fold(["rna"]),
          "histology + molecular": out_of_fold(["histology", "rna"])}
scored = scores["histology"].notna().to_numpy()
cidx = {name: pk.tl.cindex(data.obs.time_months[scored], r[scored], data.obs.event[scored])
        for name, r in scores.items()}
print(f"{scored.sum()} patients scored out of fold, {int(data.obs.event[scored].sum())} deaths")
pd.Series(cidx, name="out-of-fold c-index").round(3).to_frame()

# %% [markdown]
# Each layer alone orders patients better than chance (0.5), and together they do better than either: on this
# cohort about 0.60 for the histology, 0.56 for the RNA profile and 0.65 combined. The numbers are modest and
# honest; the in-sample c-index of section 3 (0.73) shows how much scoring the training patients flatters.
#
# ## 5. Risk groups
# Splitting patients at the median of the **out-of-fold** score gives two groups whose survival differs —
# the standard way to show a score is prognostic.

# %%
data.obs["score"] = scores["histology + molecular"]
sub = data[scored].copy()
pk.tl.risk_groups(sub, "score", method="median")
# kaplan_meier runs the log-rank test itself and puts its p under the title
fig = pk.pl.kaplan_meier(sub, time="time_months", event="event", groupby="risk_group",
                         title=f"out-of-fold histology + molecular score: c-index {cidx['histology + molecular']:.2f}")
fig

# %% [markdown]
# **Exercise.** Split patients at the median `age` with `pk.tl.risk_groups` and test the two groups with the
# log-rank test. Is age prognostic here?

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# pk.tl.risk_groups(staged, score="age", method="median")
# pk.tl.logrank(staged, time="time_months", event="event", groupby="risk_group").p_value
# ```
# </details>

# %% [markdown]
# ## Summary
# Always keep censored patients; KM describes, log-rank tests, Cox quantifies. Out-of-fold predictions (never
# predictions on the training patients) are the only honest way to turn a histology model into a c-index or
# risk groups.
