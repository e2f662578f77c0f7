# %% [markdown]
# # 05 · Survival: Kaplan–Meier by stage, log-rank, Cox, risk groups from out-of-fold ABMIL risk
#
# Real TCGA colorectal cancer (COADREAD) survival from the SurvPath tables, linked as in notebook 03, one
# diagnostic slide per patient. Conventions: `event = 1` means death observed, `0` censored (alive at last
# follow-up); times in months (`time_months`); **higher risk = shorter survival** for every score and c-index.

# %%
import pathkit as pk

# %% tags=["parameters"]
N_PCS = 10                  # principal components of the embedding (here: of the RNA) in the penalised Cox
N_ABMIL_PATIENTS = 60       # patients in the simulated ABMIL survival run
EPOCHS = 6
TILE_MODEL = "kaiko_vits16" # the tile model whose embeddings of a public slide the simulated bags reuse

# %%
import warnings
import numpy as np
import pandas as pd
import plotly.express as px

with warnings.catch_warnings():
    warnings.simplefilter("ignore", pk.io.LinkWarning)   # the report is discussed in notebook 03
    mdata = pk.datasets.tcga_coadread(slides_per_patient="first_dx")   # pk.link of SurvPath's tables
cohort = mdata["slides"]
obs = cohort.obs
print(f"{cohort.n_obs} patients, {int(obs.event.sum())} deaths, median follow-up {obs.time_months.median():.1f} months")
obs.stage.value_counts(dropna=False)

# %% [markdown]
# ## Kaplan–Meier by stage
#
# Stage 0 (one patient) and missing stage are left out. The shaded bands are 95% confidence intervals; the
# numbers at risk under the axis show how few patients remain late in follow-up, where the curves become
# unreliable. The log-rank p-value is in the title.

# %%
staged = cohort[obs.stage.isin(["I", "II", "III", "IV"]).values].copy()
fig = pk.pl.kaplan_meier(staged, time="time_months", event="event", groupby="stage", title="TCGA COADREAD by stage")
fig

# %%
km = pk.tl.kaplan_meier(staged, time="time_months", event="event", groupby="stage")
lr = pk.tl.logrank(staged, time="time_months", event="event", groupby="stage")
print(f"log-rank: chi2 = {lr.statistic:.1f} on {lr.dof} df, p = {lr.p_value:.2g}")
pd.concat([km.counts, km.median.rename("median months"), lr.table[["observed", "expected"]]], axis=1)

# %% [markdown]
# Stage IV patients die more than three times as often as expected under equal hazards; only stage IV reaches a
# median survival within follow-up (the others show `inf`: their curve never drops below 0.5).
#
# ## Cox proportional hazards: age, sex, stage
#
# Stage I has only 7 patients and 1 death — too few to estimate a hazard ratio of its own (its estimate would be
# huge and meaningless) — so stages I and II are pooled as the reference.

# %%
staged.obs["stage_group"] = staged.obs.stage.replace({"I": "I-II", "II": "I-II"}).astype(str)
cox = pk.tl.cox(staged, time="time_months", event="event", covariates=["age", "is_female", "stage_group"],
                reference={"stage_group": "I-II"})
print(f"n = {cox.n}, events = {cox.n_events}, c-index (in sample) = {cox.concordance:.3f}")
cox.summary[["exp(coef)", "hr_lower", "hr_upper", "p"]].round(3)

# %%
hr = cox.summary.reset_index()
fig = px.scatter(hr, x="exp(coef)", y="covariate", error_x=hr["hr_upper"] - hr["exp(coef)"],
                 error_x_minus=hr["exp(coef)"] - hr["hr_lower"], log_x=True, title="hazard ratios (95% CI)",
                 height=300)
fig.update_xaxes(tickvals=[0.25, 0.5, 1, 2, 4, 8, 16], title="hazard ratio (log scale)")
fig.add_vline(x=1, line_dash="dot")

# %% [markdown]
# ## Penalised Cox on embedding principal components
#
# With slide embeddings (e.g. `obsm["X_gigapath_slide"]` from `pk.tl.embed_cohort`), their first principal
# components enter a penalised Cox model: `covariates=["age", "X_gigapath_slide"], n_components=10`.
#
# > **Stand-in used here.** `pk.datasets` has no slide embeddings for this cohort, so the **RNA-seq profile
# > (`mdata["rna"]`, 1,577 genes) plays the role of the embedding**: the call and the output are the same. With
# > real slide embeddings, only the obsm key changes.
#
# The penalty (`penalizer`, ridge by default) keeps ten correlated components from over-fitting 300 patients
# with ~60 deaths. The concordance printed is in-sample, so optimistic; the honest version is out of fold, as
# for ABMIL below.

# %%
has_rna = cohort.obs["patient_id"].isin(mdata["rna"].obs_names).to_numpy()
rna_cohort = cohort[has_rna].copy()
rna_cohort.obsm["rna"] = pk.io.rna_by_slide(mdata).loc[rna_cohort.obs_names].to_numpy()   # one slide per patient
pcox = pk.tl.cox(rna_cohort, time="time_months", event="event", covariates=["age", "rna"], n_components=N_PCS,
                 penalizer=0.1)
print(f"n = {pcox.n}, events = {pcox.n_events}, in-sample c-index = {pcox.concordance:.3f}")
pcox.summary[["coef", "exp(coef)", "p"]].round(4)

# %% [markdown]
# ## Risk groups from out-of-fold ABMIL risk
#
# An ABMIL survival model (`task="cox"`: attention pooling + a Cox partial-likelihood head; `task="survival"`:
# discrete-time hazards as in PORPOISE) predicts a risk per slide. Splitting patients at the median of
# **out-of-fold** risk — each patient scored by the model that never saw them — and comparing the two groups
# with Kaplan–Meier and log-rank is the standard way to show a histology model is prognostic. Risk groups
# made from in-sample predictions would look far better than they are.
#
# > **Simulated bags tied to real outcomes.** There are no tile embeddings for these patients in
# > `pk.datasets`. So each of `N_ABMIL_PATIENTS` real patients (half with an observed death) gets a bag resampled from
# > the tiles of a public slide (`pk.datasets.tile_bag(TILE_MODEL)`: CMU-1, embedded here), in which a pattern is planted with a strength that grows as the patient's **real**
# > survival time shrinks (plus noise). The survival times, events and the split into risk groups are real; the
# > histology signal is planted, so a good c-index here shows the pipeline works, not biology.

# %%
import anndata as ad
rng = np.random.default_rng(0)
o = cohort.obs.dropna(subset=["time_months", "event"])
dead, alive = o[o.event == 1], o[o.event == 0]
n_dead = min(len(dead), N_ABMIL_PATIENTS // 2)
chosen = pd.concat([dead.sample(n_dead, random_state=0), alive.sample(N_ABMIL_PATIENTS - n_dead, random_state=0)])
planted_risk = 1 - chosen.time_months.rank(pct=True).to_numpy() + rng.normal(0, 0.15, len(chosen))

real = pk.datasets.tile_bag(TILE_MODEL, progress=False)
direction = rng.normal(size=real.n_vars).astype(np.float32)
direction /= np.linalg.norm(direction)
tiles = {}
for (sid, row), r in zip(chosen.iterrows(), planted_risk):
    a = real[np.sort(rng.choice(real.n_obs, min(40, real.n_obs), replace=False))].copy()
    hit = rng.choice(a.n_obs, 8, replace=False)
    a.X[hit] += 3.0 * max(r, 0) * direction
    a.obs["slide_id"] = sid
    tiles[sid] = a
sim = cohort[chosen.index].copy()
print(len(tiles), "bags;", int(sim.obs.event.sum()), "deaths; c-index of the planted risk itself:",
      round(pk.tl.cindex(sim.obs.time_months, planted_risk, sim.obs.event), 3))

# %%
res = pk.tl.cross_validate_mil(tiles, sim, "abmil", task="cox", time="time_months", event="event", folds=3,
                               split_by="patient_id", use_rep="X", epochs=EPOCHS, patience=3, hidden=64,
                               attn_hidden=32, lr=2e-3, batch_size=8, n_bootstrap=300, progress=False,
                               random_state=0)
res.summary

# %%
pk.tl.risk_groups(sim, "abmil_risk", method="median")
c = pk.tl.cindex("time_months", "abmil_risk", "event", data=sim)
fig = pk.pl.kaplan_meier(sim, time="time_months", event="event", groupby="risk_group",
                         title=f"out-of-fold ABMIL risk groups (c-index {c:.2f})")
fig

# %% [markdown]
# ## With real data
#
# ```python
# cohort = pk.tl.embed_cohort(slides, "embeddings/", tile_model="gigapath_tile", slide_model="gigapath_slide")
# cohort = pk.link(cohort, clinical="clinical.csv")
# pk.tl.cox(cohort, "time_months", "event", ["age", "stage_group", "X_gigapath_slide"], n_components=10, penalizer=0.1)
# res = pk.tl.cross_validate_mil("embeddings/", cohort, "abmil", task="survival", time="time_months",
#                                event="event", use_rep="X_gigapath_tile",
#                                splits=pk.datasets.tcga_tables("coadread")["splits"])
# pk.tl.risk_groups(cohort, "abmil_risk"); pk.pl.kaplan_meier(cohort, "time_months", "event", groupby="risk_group")
# ```
# ## Interactive: pick the score and the cut-off
#
# `pk.widgets.SurvivalExplorer` redraws the Kaplan–Meier curves and the log-rank p-value as you move the
# cut-off (it needs a running kernel; the documentation shows its first state).

# %%
pk.widgets.SurvivalExplorer(sim, time="time_months", event="event", covariate="abmil_risk")
