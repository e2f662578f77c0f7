"""Readers of spatial transcriptomics into the spots AnnData: Visium (Space Ranger ``outs/``, through
spatialdata-io), the legacy Spatial Transcriptomics layout (counts TSV + spot file), Xenium cell tables and
h5ad files that already hold ``obsm["spatial"]`` in image pixels (HEST, DeepSpot)."""
from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .._files import read_h5ad
from ..errors import TableError
from ._spots import SpotWarning, _need_spatial, _open_slide, _report, spots_anndata  # noqa: F401 (_xenium)

__all__ = ["read_spots", "read_st", "read_visium"]

VISIUM_SPOT_UM = 55.0   # Visium spot diameter (10x Genomics)
ST_SPOT_UM = 100.0      # legacy Spatial Transcriptomics arrays (Stahl et al. 2016): 100 um spots, 200 um apart


def read_st(counts, spots, image=None, mpp: float | None = None, *, library_id: str | None = None,
            spot_diameter_um: float = ST_SPOT_UM):
    """Read a legacy Spatial Transcriptomics section (e.g. her2st, Andersson et al. 2021).

    Parameters
    ----------
    counts
        TSV (optionally gzipped): one row per spot indexed ``<x>x<y>`` (array coordinates), one column per
        gene, raw UMI counts.
    spots
        Spot file (TSV) with columns ``x``, ``y`` (array coordinates) and ``pixel_x``, ``pixel_y`` (the spot
        centre in the H&E image's pixels); a ``selected`` column, when present, is kept in ``obs``.
    image
        The H&E (path or :class:`~pathkit.slide.Slide`); the pixel positions are checked against it and a
        copy is kept for ``sc.pl.spatial``.
    mpp
        Microns per pixel of the image (plain JPEGs carry none); required when ``image`` has none.
    library_id
        Key of ``uns["spatial"]``; default: the counts file's name without suffixes.
    spot_diameter_um
        Spot diameter (100 um for the ST arrays).

    Returns
    -------
    anndata.AnnData
        The spots AnnData (see :mod:`pathkit.spatial`); ``obs["array_x"]``, ``obs["array_y"]``. Spots of the
        spot file without a counts row and counts rows without a spot are left out with a
        :class:`~pathkit.spatial.SpotWarning` and listed in ``uns["spot_spec"]["report"]``.
    """
    counts, spots = Path(counts), Path(spots)
    library_id = library_id or counts.name.split(".")[0]
    slide = _open_slide(image, mpp)  # first: a missing mpp is said before the counts are read
    df = pd.read_csv(counts, sep="\t", index_col=0)
    # pandas renames repeated column names ("A", "A.1"): take the genes from the header as written
    opener = gzip.open if counts.suffix == ".gz" else open
    with opener(counts, "rt") as fh:
        header = fh.readline().rstrip("\r\n").split("\t")
    df.columns = header[len(header) - df.shape[1]:]
    df.index = df.index.astype(str)
    pos = pd.read_csv(spots, sep="\t")
    missing = [c for c in ("x", "y", "pixel_x", "pixel_y") if c not in pos.columns]
    if missing:
        raise TableError(f"{spots}: column(s) {missing} missing; the spot file needs x, y (array) and "
                         f"pixel_x, pixel_y (image px); it has {list(pos.columns)[:10]}")
    pos.index = pos["x"].astype(int).astype(str) + "x" + pos["y"].astype(int).astype(str)
    if pos.index.duplicated().any():
        raise TableError(f"{spots}: array position(s) {list(pos.index[pos.index.duplicated()][:5])} occur twice")
    common = df.index[df.index.isin(pos.index)]
    if len(common) == 0:
        raise TableError(f"the counts rows of {counts.name} (e.g. {list(df.index[:3])}) and the spots of "
                         f"{spots.name} (e.g. {list(pos.index[:3])}) share no '<x>x<y>' id: are they of the "
                         "same section?")
    report = _report(f"{counts.name} / {spots.name}", list(pos.index[~pos.index.isin(df.index)]),
                     list(df.index[~df.index.isin(pos.index)]))
    p = pos.loc[common]
    obs = pd.DataFrame({"array_x": p["x"].to_numpy(int), "array_y": p["y"].to_numpy(int)})
    if "selected" in p.columns:
        obs["selected"] = p["selected"].to_numpy().astype(bool)
    return spots_anndata(df.loc[common].to_numpy(), df.columns, common, p[["pixel_x", "pixel_y"]].to_numpy(),
                         library_id=library_id, spot_diameter_um=spot_diameter_um, mpp=mpp, slide=slide,
                         source=counts.name, obs=obs, report=report)


def _visium_positions(outs: Path) -> pd.DataFrame:
    """tissue_positions(_list).csv of Space Ranger 1 (no header) or 2 (header) as one table by barcode."""
    cols = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
    for name, header in (("tissue_positions.csv", 0), ("tissue_positions_list.csv", None)):
        f = outs / "spatial" / name
        if f.exists():
            df = pd.read_csv(f, header=header)
            df.columns = cols
            return df.set_index("barcode")
    raise TableError(f"{outs / 'spatial'}: no tissue_positions.csv or tissue_positions_list.csv; pass the "
                     "Space Ranger outs/ folder")


def read_visium(path, *, library_id: str | None = None, counts_file: str = "filtered_feature_bc_matrix.h5",
                image=None, mpp: float | None = None, bin_size: int | None = None):
    """Read a 10x Visium or Visium HD Space Ranger ``outs/`` folder with spatialdata-io.

    Parameters
    ----------
    path
        The ``outs/`` folder: Visium (``filtered_feature_bc_matrix.h5``, ``spatial/``) or Visium HD
        (``feature_slice.h5``, ``binned_outputs/square_002um|008um|016um/``, Space Ranger 3.x).
    library_id
        Key of ``uns["spatial"]``; default: the folder's name.
    counts_file
        The counts file inside ``path`` (Visium HD: inside the bin folder; ``"raw_feature_bc_matrix.h5"``
        for every bin, on tissue or not).
    image
        The full-resolution H&E given to Space Ranger (path or Slide; Visium HD: the microscope image, e.g.
        a tiled BigTIFF ``.btf``, opened lazily), optional: the positions are in its pixels and are checked
        against it.
    mpp
        Microns per full-resolution pixel; default: Visium HD's ``microns_per_pixel``, Visium's 55 um (the
        spot) / ``spot_diameter_fullres``.
    bin_size
        Visium HD only: the square bins to read, in um (2, 8 or 16; default 8, 10x Genomics' recommendation).
        Each bin is one row (a square "spot" of ``bin_size`` um).

    Returns
    -------
    anndata.AnnData
        The spots AnnData with ``obs["in_tissue"]``, ``array_row``, ``array_col``; ``uns["spatial"]`` holds
        Space Ranger's hires / lowres images and scale factors as ``sc.read_visium`` writes them (a Visium HD
        hires image reduced to 2000 px, its scale factor with it). On-tissue barcodes without counts and
        counts without a position are reported (``uns["spot_spec"]["report"]``). Visium HD:
        ``uns["spot_spec"]`` has ``assay="visium_hd"``, ``spot_shape="square"``, ``bin_size_um`` and
        ``spot_diameter_um`` equal to the bin size; ``obsm["spatial"]`` is each bin's centre
        (``pxl_col_in_fullres``, ``pxl_row_in_fullres`` of ``tissue_positions.parquet``).
    """
    from ._visium_hd import HD_BIN_UM, is_visium_hd, read_visium_hd

    outs = Path(path)
    library_id = library_id or outs.name
    if is_visium_hd(outs):
        return read_visium_hd(outs, bin_size=HD_BIN_UM if bin_size is None else bin_size, library_id=library_id,
                              counts_file=counts_file, image=image, mpp=mpp)
    if bin_size is not None:
        raise TableError(f"bin_size={bin_size!r} is for Visium HD, but {outs} has no binned_outputs/ folder "
                         "(a Visium outs/ has one spot size, 55 um)")
    sdio = _need_spatial("read_visium")
    sf = json.loads((outs / "spatial" / "scalefactors_json.json").read_text())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*region_key.*")
        # var names are checked (duplicates refused) by pathkit, not silently renamed
        sdata = sdio.visium(outs, dataset_id=library_id, counts_file=counts_file, var_names_make_unique=False)
    table = sdata.tables["table"]
    circles = sdata.shapes[library_id]
    key = table.uns["spatialdata_attrs"]["instance_key"]
    xy = np.stack([circles.geometry.x, circles.geometry.y], 1)
    xy = pd.DataFrame(xy, index=circles.index).loc[table.obs[key].to_numpy()].to_numpy(np.float64)
    positions = _visium_positions(outs)
    on = positions.index[positions["in_tissue"] == 1]
    report = _report(outs.name, list(on[~on.isin(table.obs_names)]),
                     list(table.obs_names[~table.obs_names.isin(positions.index)]))
    images = {}
    for res in ("hires", "lowres"):
        name = f"{library_id}_{res}_image"
        if name in sdata.images:
            img = np.asarray(sdata.images[name].values)[:3].transpose(1, 2, 0)
            images[res] = img.astype(np.float32) / 255.0
    mpp = VISIUM_SPOT_UM / float(sf["spot_diameter_fullres"]) if mpp is None else float(mpp)
    obs = table.obs[["in_tissue", "array_row", "array_col"]].copy()
    X = table.X
    return spots_anndata(X, table.var_names, table.obs_names, xy, library_id=library_id,
                         spot_diameter_um=VISIUM_SPOT_UM, mpp=mpp, slide=_open_slide(image, mpp),
                         source=f"{outs.name}/{counts_file}", images=images or None, scalefactors=sf, obs=obs,
                         report=report, var=table.var.copy())


def read_spots(path_or_adata, *, x: str | None = None, y: str | None = None, image=None,
               mpp: float | None = None, spot_diameter_um: float | None = None, library_id: str | None = None,
               layer: str | None = None):
    """Spots (or cells) from an AnnData whose positions are already in the image's pixels (HEST, DeepSpot).

    Parameters
    ----------
    path_or_adata
        An ``.h5ad`` path or an AnnData.
    x, y
        ``obs`` columns of the pixel position; default ``obsm["spatial"]``, else ``x_pixel`` / ``y_pixel``,
        ``pxl_col_in_fullres`` / ``pxl_row_in_fullres``.
    image, mpp
        The H&E (path or Slide) and its um/px when the file has none.
    spot_diameter_um
        Spot or cell diameter; default ``uns["spatial"]``'s ``spot_diameter_fullres`` times mpp, else 55.
    library_id
        Key of ``uns["spatial"]``; default the file name.
    layer
        Where the raw counts are (default ``layers["counts"]`` when present, else ``X``).

    Returns
    -------
    anndata.AnnData
        The spots AnnData, ``obs`` and ``var`` columns kept.
    """
    import anndata as ad

    src = path_or_adata if isinstance(path_or_adata, ad.AnnData) else read_h5ad(path_or_adata, "spots h5ad")
    name = "adata" if isinstance(path_or_adata, ad.AnnData) else Path(path_or_adata).name
    library_id = library_id or name.split(".")[0]
    if x is not None or y is not None:
        cols = [x, y]
    elif "spatial" in src.obsm:
        cols = None
    else:
        pairs = [("x_pixel", "y_pixel"), ("pxl_col_in_fullres", "pxl_row_in_fullres"), ("pixel_x", "pixel_y")]
        cols = next((list(p) for p in pairs if set(p) <= set(src.obs.columns)), None)
        if cols is None:
            raise TableError(f"{name}: no obsm['spatial'] nor obs columns {pairs}; say which columns hold the "
                             "pixel position with x=..., y=...")
    if cols is not None:
        bad = [c for c in cols if c not in src.obs.columns]
        if bad:
            raise TableError(f"{name}: obs has no column(s) {bad}")
        xy = src.obs[cols].to_numpy(np.float64)
    else:
        xy = np.asarray(src.obsm["spatial"], dtype=np.float64)[:, :2]
    old = (src.uns.get("spatial") or {})
    old_sf = next(iter(old.values()), {}).get("scalefactors", {}) if old else {}
    slide = _open_slide(image, mpp)
    mpp = float(slide.mpp) if slide is not None and mpp is None else mpp
    if spot_diameter_um is None:
        d = old_sf.get("spot_diameter_fullres")
        spot_diameter_um = float(d) * mpp if d is not None and mpp is not None else VISIUM_SPOT_UM
    layer = layer if layer is not None else ("counts" if "counts" in src.layers else None)
    X = src.layers[layer] if layer else src.X
    obs = src.obs.drop(columns=[c for c in (cols or []) if c in src.obs.columns]).copy()
    return spots_anndata(X, src.var_names, src.obs_names, xy, library_id=library_id,
                         spot_diameter_um=spot_diameter_um, mpp=mpp, slide=slide, source=name, obs=obs,
                         var=src.var.copy())
