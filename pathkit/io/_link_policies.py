"""Several slides of one patient: keep all, the first diagnostic slide, the largest, or their mean."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import TableError
from ..tcga import parse_barcodes
from ._link_tables import _listed

POLICIES = ("all", "first_dx", "largest", "mean")

def _apply_policy(adata, ids: pd.Series, policy: str, size_key):
    """Returns (adata, ids, report) after keeping / merging slides of the same id."""
    present = ids.notna()
    counts = ids[present].value_counts()
    several = counts[counts > 1]
    rep = {"policy": policy, "n_ids_with_several_slides": len(several),
           "max_slides_per_id": int(counts.max()) if len(counts) else 0,
           "ids_with_several_slides": _listed(several.index), "dropped_slides": [], "n_dropped_slides": 0}
    if policy == "all" or not len(several):
        return adata, ids, rep
    obs = adata.obs
    pos = pd.Series(np.arange(adata.n_obs), index=obs.index)
    groups = {i: pos[(ids == i).values].values for i in several.index}
    if policy in ("first_dx", "largest"):
        keep = np.ones(adata.n_obs, bool)
        if policy == "first_dx":
            sid = obs["slide_id"] if "slide_id" in obs.columns else pd.Series(obs.index, index=obs.index)
            parsed = parse_barcodes(sid.map(lambda v: v if isinstance(v, str) else None).reset_index(drop=True),
                                    errors="coerce")
            dx = (parsed["slide_type"] == "DX").values
            num = pd.to_numeric(parsed["slide_number"], errors="coerce").fillna(np.inf).values
            no_dx = []
            for i, idx in groups.items():
                cand = idx[dx[idx]]
                if not len(cand):
                    no_dx.append(i)
                    cand = idx
                best = cand[np.argmin(num[cand])] if np.isfinite(num[cand]).any() else cand[0]
                keep[idx] = False
                keep[best] = True
            rep["ids_without_dx_slide"] = _listed(no_dx)
        else:
            if size_key is None:
                size_key = next((c for c in ("n_tiles", "size", "file_size", "tissue_area") if c in obs.columns),
                                None)
            if size_key is None or size_key not in obs.columns:
                raise TableError("slides_per_patient='largest' needs a size column in obs (n_tiles, size, "
                                 "file_size or tissue_area); pass size_key=")
            size = pd.to_numeric(obs[size_key], errors="coerce").fillna(-np.inf).values
            for idx in groups.values():
                keep[idx] = False
                keep[idx[np.argmax(size[idx])]] = True
            rep["size_key"] = size_key
        dropped = obs.index[~keep]
        rep.update(dropped_slides=_listed(dropped), n_dropped_slides=len(dropped))
        return adata[keep].copy(), ids[keep].reset_index(drop=True).set_axis(obs.index[keep]), rep
    if policy == "mean":
        import anndata as ad

        order, seen = [], set()
        for k, i in enumerate(ids.tolist()):
            if i is None or i not in groups:
                order.append(np.array([k]))
            elif i not in seen:
                seen.add(i)
                order.append(groups[i])
        first = [g[0] for g in order]
        new_obs = obs.iloc[first].copy()
        names = obs.index.to_numpy()
        new_obs["n_slides"] = [len(g) for g in order]
        new_obs["slide_ids"] = [";".join(map(str, names[g])) for g in order]
        new_obs.index = [str(ids.iloc[g[0]]) if len(g) > 1 else names[g[0]] for g in order]

        def agg(a):
            a = a.toarray() if hasattr(a, "toarray") else np.asarray(a)
            return np.stack([np.nanmean(a[g], axis=0) if len(g) > 1 else a[g[0]] for g in order])

        X = None if adata.X is None or adata.n_vars == 0 else agg(adata.X)
        out = ad.AnnData(X=X, obs=new_obs, var=adata.var.copy() if X is not None else None,
                         uns=dict(adata.uns))
        for k, v in adata.obsm.items():
            if isinstance(v, pd.DataFrame):
                out.obsm[k] = pd.DataFrame(agg(v.to_numpy(dtype=float)), index=new_obs.index, columns=v.columns)
            else:
                out.obsm[k] = agg(v)
        merged = [names[g].tolist() for g in order if len(g) > 1]
        rep.update(n_merged_ids=len(merged), n_merged_slides=int(sum(len(m) for m in merged)))
        new_ids = pd.Series([ids.iloc[g[0]] for g in order], index=new_obs.index, dtype=object)
        return out, new_ids, rep
    raise ValueError(f"slides_per_patient must be one of {POLICIES}, got {policy!r}")
