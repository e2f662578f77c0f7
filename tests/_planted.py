"""Planted cohorts for the association / probe / expression tests, built from real data.

Every slide is a bag of real tiles drawn from the one real TCGA tile bag (TCGA-AD-6964, 777 x 512): the
tiles fall into two k-means "tissue" clusters, and the fraction of cluster-A tiles on a patient's slides is
planted as ``p = clip(0.5 + 0.2 * z, 0.05, 0.95)`` where ``z`` is a standardised signal (a real gene's
expression, a pathway score, or a label). Patients and their RNA are the real COADREAD rows.
"""
from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pandas as pd

import pathkit as pk


def real_bag(shared_data):
    with h5py.File(shared_data / "embeddings" / "TCGA-AD-6964-01Z-00-DX1.features.h5") as f:
        feats = f["feats"][:].astype(np.float64)
    from sklearn.cluster import KMeans

    lab = KMeans(2, n_init=10, random_state=0).fit_predict(feats)
    return feats, lab


def real_rna(shared_data) -> pd.DataFrame:
    r = pd.read_csv(shared_data / "tcga" / "coadread" / "rna_xena_log2.csv", index_col=0)
    return r[~r.index.duplicated()]


def planted_cohort(shared_data, signal: pd.Series, *, tiles_per_slide: int = 150, n_two_slides: int = 20,
                   seed: int = 0, bag=None):
    """(MuData slides + real RNA, list of per-slide tile AnnData, p per slide). ``signal`` is indexed by
    patient; its standardised values set each slide's share of cluster-A tiles. The first ``n_two_slides``
    patients get a second slide (DX2) drawn with the same share."""
    feats, lab = bag if bag is not None else real_bag(shared_data)
    rng = np.random.default_rng(seed)
    z = (signal - signal.mean()) / signal.std()
    a_idx, b_idx = np.flatnonzero(lab == 0), np.flatnonzero(lab == 1)
    rows, tiles, share = [], [], []
    for k, (pat, zi) in enumerate(z.items()):
        p = float(np.clip(0.5 + 0.2 * zi, 0.05, 0.95))
        for dx in (1, 2) if k < n_two_slides else (1,):
            sid = f"{pat}-01Z-00-DX{dx}"
            n_a = rng.binomial(tiles_per_slide, p)
            idx = np.concatenate([rng.choice(a_idx, n_a), rng.choice(b_idx, tiles_per_slide - n_a)])
            t = ad.AnnData(obs=pd.DataFrame({"slide_id": sid, "leiden": np.where(lab[idx] == 0, "A", "B")},
                                            index=[str(i) for i in range(len(idx))]))
            t.obsm["X_real"] = feats[idx]
            tiles.append(t)
            rows.append({"slide_id": sid, "n_tiles": tiles_per_slide, "mean": feats[idx].mean(0)})
            share.append(n_a / tiles_per_slide)
    obs = pd.DataFrame([{k: v for k, v in r.items() if k != "mean"} for r in rows])
    obs.index = obs["slide_id"].to_numpy()
    cohort = ad.AnnData(obs=obs)
    cohort.obsm["X_mean"] = np.stack([r["mean"] for r in rows])
    rna = real_rna(shared_data).loc[z.index]
    mdata = pk.io.link(cohort, rna=rna, warn=False)
    return mdata, tiles, np.array(share)
