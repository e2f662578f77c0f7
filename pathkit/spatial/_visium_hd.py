"""Visium HD (Space Ranger 3.x ``outs/``): the square bins of one size as spots, read with spatialdata-io.

Space Ranger bins the 2 um barcoded squares into 8 um and 16 um squares (``binned_outputs/square_<NNN>um/``:
``filtered_feature_bc_matrix.h5``, ``spatial/tissue_positions.parquet`` with each bin's centre in
full-resolution microscope pixels, ``spatial/scalefactors_json.json`` with ``bin_size_um`` and
``microns_per_pixel``). Each bin becomes one row of the spots AnnData; the bin is a square of ``bin_size_um``
(``uns["spot_spec"]["spot_shape"] = "square"``).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import TableError

__all__ = ["HD_BIN_UM", "is_visium_hd", "read_visium_hd"]

HD_BIN_UM = 8  # the bin size 10x Genomics recommends for most analyses (Space Ranger's default binned output)
COUNT_FILES = ("filtered_feature_bc_matrix.h5", "raw_feature_bc_matrix.h5")
POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


def is_visium_hd(outs: Path) -> bool:
    return (Path(outs) / "binned_outputs").is_dir()


def _bin_folder(outs: Path, bin_size) -> Path:
    root = outs / "binned_outputs"
    have = sorted(int(p.name[7:10]) for p in root.glob("square_???um") if p.is_dir() and p.name[7:10].isdigit())
    try:
        size = int(bin_size)
    except (TypeError, ValueError):
        size = -1
    if size != bin_size or size not in have:
        raise TableError(f"{root}: no bins of {bin_size!r} um; this output has square bins of {have} um "
                         f"(pass bin_size= one of them; {HD_BIN_UM} um is the usual choice)")
    return root / f"square_{size:03d}um"


def _dataset_id(outs: Path, library_id: str) -> str:
    """The name spatialdata-io gives the elements: any for ``outs/feature_slice.h5`` as Space Ranger writes it,
    else the prefix of ``<prefix>_feature_slice.h5``; it reads the layout version from that file."""
    if (outs / "feature_slice.h5").exists():
        return library_id
    found = sorted(outs.glob("*_feature_slice.h5"))
    if len(found) != 1:
        raise TableError(f"{outs}: no feature_slice.h5 (found {[f.name for f in found]}); spatialdata-io reads "
                         "the Visium HD layout from it. Pass the Space Ranger outs/ folder as written "
                         "(outs/feature_slice.h5, outs/binned_outputs/...)")
    return found[0].name.removesuffix("_feature_slice.h5")


def _check_positions(folder: Path, counts_file: str) -> pd.DataFrame:
    """The positions table (barcode index) and the count barcodes, checked before spatialdata-io reads them
    (it fails with a bare KeyError when a count barcode has no position)."""
    import h5py

    pos_file = folder / "spatial" / "tissue_positions.parquet"
    counts = folder / counts_file
    for f in (pos_file, counts, folder / "spatial" / "scalefactors_json.json"):
        if not f.exists():
            raise TableError(f"{f} is missing; a Space Ranger 3.x Visium HD bin folder holds "
                             f"{counts_file}, spatial/tissue_positions.parquet and spatial/scalefactors_json.json")
    pos = pd.read_parquet(pos_file)
    if list(pos.columns) != POSITION_COLUMNS:
        raise TableError(f"{pos_file}: columns {list(pos.columns)}, expected {POSITION_COLUMNS} (Space Ranger 3.x)")
    pos = pos.set_index("barcode")
    with h5py.File(counts, "r") as f:
        barcodes = [b.decode() for b in f["matrix/barcodes"][:]]
    unplaced = pd.Index(barcodes)[~pd.Index(barcodes).isin(pos.index)]
    if len(unplaced):
        raise TableError(f"{counts}: {len(unplaced)} of {len(barcodes)} bin(s) (e.g. {list(unplaced[:3])}) have no "
                         f"row in {pos_file.name}: are both of the same bin size and run?")
    return pos


def _images(sdata, dataset: str, sf: dict) -> tuple[dict, dict]:
    """Space Ranger's hires / lowres images as scanpy keeps them (float RGB in [0, 1]); the HD hires image
    (6000 px) is reduced to pathkit's 2000 px with its scale factor, so the spots AnnData stays small."""
    from PIL import Image

    from ._spots import HIRES_PX

    images, scale = {}, {}
    for res in ("hires", "lowres"):
        name = f"{dataset}_{res}_image"
        if name not in sdata.images:
            continue
        img = np.asarray(sdata.images[name].values)[:3].transpose(1, 2, 0)
        f = float(sf[f"tissue_{res}_scalef"])
        if res == "hires" and max(img.shape[:2]) > HIRES_PX:
            k = HIRES_PX / max(img.shape[:2])
            size = (max(1, round(img.shape[1] * k)), max(1, round(img.shape[0] * k)))
            k = size[0] / img.shape[1]
            img = np.asarray(Image.fromarray(np.ascontiguousarray(img).astype(np.uint8)).resize(size, Image.BOX))
            f *= k
        images[res] = img.astype(np.float32) / 255.0
        scale[f"tissue_{res}_scalef"] = f
    return images, scale


def read_visium_hd(outs: Path, *, bin_size, library_id: str, counts_file: str, image, mpp: float | None):
    """See :func:`pathkit.io.read_visium` (a Visium HD ``outs/``)."""
    from ._spots import _need_spatial, _open_slide, _report, spots_anndata

    sdio = _need_spatial("read_visium (Visium HD)")
    if counts_file not in COUNT_FILES:
        raise TableError(f"counts_file={counts_file!r}: a Visium HD bin folder holds {list(COUNT_FILES)}")
    folder = _bin_folder(outs, bin_size)
    size = int(bin_size)
    pos = _check_positions(folder, counts_file)
    sf = json.loads((folder / "spatial" / "scalefactors_json.json").read_text())
    for k in ("bin_size_um", "microns_per_pixel", "spot_diameter_fullres"):
        if k not in sf:
            raise TableError(f"{folder / 'spatial' / 'scalefactors_json.json'}: no {k!r} (Space Ranger 3.x writes it)")
    if float(sf["bin_size_um"]) != size:
        raise TableError(f"{folder}: scalefactors_json.json says bin_size_um={sf['bin_size_um']}, the folder "
                         f"{folder.name}")
    dataset = _dataset_id(outs, library_id)
    with warnings.catch_warnings():
        for msg in (".*region_key.*", ".*load_segmentations_only.*", ".*does not exist, skipping it.*",
                    ".*No full resolution image.*", ".*[Vv]ariable names are not unique.*"):
            warnings.filterwarnings("ignore", message=msg)
        # the full-resolution microscope image is opened as a pathkit Slide (lazily, image=): a path that is
        # not there keeps spatialdata-io from loading it (a .btf would be decoded whole into memory)
        sdata = sdio.visium_hd(outs, dataset_id=dataset, filtered_counts_file=counts_file == COUNT_FILES[0],
                               load_segmentations_only=False, bin_size=size, bins_as_squares=True,
                               fullres_image_file=outs / "<the slide is opened by pathkit>",
                               var_names_make_unique=False)
    table = sdata.tables[folder.name]
    # spatialdata-io keeps scanpy's obsm["spatial"]: (pxl_col_in_fullres, pxl_row_in_fullres) = (x, y)
    xy = np.asarray(table.obsm["spatial"], dtype=np.float64)
    on = pos.index[pos["in_tissue"].to_numpy() == 1]
    report = _report(f"{outs.name}/{folder.name}", list(on[~on.isin(table.obs_names)]), [])
    images, scalefs = _images(sdata, dataset, sf)
    sf.update(scalefs)
    mpp = float(sf["microns_per_pixel"]) if mpp is None else float(mpp)
    obs = table.obs[["in_tissue", "array_row", "array_col"]].copy()
    adata = spots_anndata(table.X, table.var_names, table.obs_names, xy, library_id=library_id,
                          spot_diameter_um=float(size), mpp=mpp, slide=_open_slide(image, mpp),
                          source=f"{outs.name}/binned_outputs/{folder.name}/{counts_file}", images=images or None,
                          scalefactors=sf, obs=obs, report=report, var=table.var.copy())
    spec = dict(adata.uns["spot_spec"])
    spec.update(assay="visium_hd", spot_shape="square", bin_size_um=float(size),
                bin_sizes_available=sorted(int(p.name[7:10]) for p in (outs / "binned_outputs").glob("square_???um")))
    adata.uns["spot_spec"] = spec
    return adata
