"""Xenium cells as spots: the cell-feature matrix and the cell centroids (um), placed on the H&E with the
image alignment 10x Xenium Explorer writes (a 3 x 3 matrix from H&E pixels to Xenium pixels)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import TableError
from ._spots import spots_anndata

__all__ = ["XENIUM_PX_UM", "read_xenium"]

XENIUM_PX_UM = 0.2125  # um per pixel of the Xenium morphology image (10x Genomics)


def _cells_table(outs: Path) -> pd.DataFrame:
    for name in ("cells.parquet", "cells.csv.gz", "cells.csv"):
        f = outs / name
        if f.exists():
            df = pd.read_parquet(f) if name.endswith("parquet") else pd.read_csv(f)
            missing = [c for c in ("cell_id", "x_centroid", "y_centroid") if c not in df.columns]
            if missing:
                raise TableError(f"{f}: column(s) {missing} missing (expected cell_id, x_centroid, y_centroid)")
            df["cell_id"] = df["cell_id"].astype(str)
            return df.set_index("cell_id")
    raise TableError(f"{outs}: no cells.parquet / cells.csv.gz; pass the Xenium output folder")


def read_xenium(path, *, image=None, alignment=None, mpp: float | None = None, library_id: str | None = None,
                cell_diameter_um: float = 10.0):
    """Read Xenium cells (``cell_feature_matrix.h5`` + ``cells.parquet`` / ``cells.csv.gz``) as spots.

    Parameters
    ----------
    path
        The Xenium output folder.
    image
        The registered H&E (path or Slide). With it, ``alignment`` is required.
    alignment
        The H&E-to-Xenium alignment: a CSV of a 3 x 3 matrix (Xenium Explorer's
        ``*_imagealignment.csv``, H&E px -> Xenium px) or the array. Cell centroids (um) are divided by
        0.2125 um/px and mapped back through its inverse.
    mpp
        um/px of the H&E when its file has none.
    library_id
        Key of ``uns["spatial"]``; default the folder's name.
    cell_diameter_um
        Diameter drawn for each cell (``spot_diameter_fullres``).

    Returns
    -------
    anndata.AnnData
        Cells as spots; ``obsm["spatial"]`` in H&E px (or Xenium morphology px, 0.2125 um/px, without an
        image); ``obs`` keeps the cells table's columns. Gene-expression features only (control probes and
        codewords are dropped). Cells without counts and counts without a centroid are reported.
    """
    import scanpy as sc

    from ._readers import _open_slide, _report

    outs = Path(path)
    library_id = library_id or outs.name
    h5 = outs / "cell_feature_matrix.h5"
    if not h5.exists():
        raise TableError(f"{outs}: no cell_feature_matrix.h5; pass the Xenium output folder")
    m = sc.read_10x_h5(h5, gex_only=True)
    cells = _cells_table(outs)
    report = _report(outs.name, list(cells.index[~cells.index.isin(m.obs_names)]),
                     list(m.obs_names[~m.obs_names.isin(cells.index)]))
    common = m.obs_names[m.obs_names.isin(cells.index)]
    xy = cells.loc[common, ["x_centroid", "y_centroid"]].to_numpy(np.float64) / XENIUM_PX_UM
    slide = _open_slide(image, mpp)
    if slide is not None:
        if alignment is None:
            raise TableError("read_xenium: an H&E image needs its alignment to the Xenium frame (alignment= "
                             "the 3 x 3 *_imagealignment.csv of Xenium Explorer)")
        A = np.loadtxt(alignment, delimiter=",") if isinstance(alignment, (str, Path)) else np.asarray(alignment)
        if A.shape != (3, 3):
            raise TableError(f"alignment must be a 3 x 3 matrix, got shape {A.shape}")
        h = np.linalg.solve(A, np.c_[xy, np.ones(len(xy))].T).T
        xy = h[:, :2] / h[:, 2:3]
    else:
        mpp = XENIUM_PX_UM
    obs = cells.loc[common].drop(columns=["x_centroid", "y_centroid"]).reset_index(drop=True)
    return spots_anndata(m[common].X, m.var_names, common, xy, library_id=library_id,
                         spot_diameter_um=cell_diameter_um, mpp=mpp, slide=slide, source=f"{outs.name}/xenium",
                         obs=obs, report=report, var=m.var.copy())
