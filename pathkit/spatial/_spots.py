"""The spots AnnData: spots x genes with raw counts, level-0 pixel positions and scanpy's ``uns["spatial"]``
layout, checked on the way in (duplicated genes, non-integer counts, spots off the image)."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import sparse

from ..errors import TableError

__all__ = ["SpotWarning", "check_inside", "library_id_of", "spots_anndata"]


# The longest side of the H&E copy kept in uns["spatial"][...]["images"]["hires"] when pathkit makes one.
HIRES_PX = 2000
LOWRES_PX = 600


class SpotWarning(UserWarning):
    """Spots without counts, counts without spots, or other spots that a reader set aside (and counted)."""


def _need_spatial(what: str):
    try:
        import spatialdata_io
    except ImportError as exc:
        raise ImportError(f"{what} needs spatialdata-io: pip install \"pathkit[spatial]\" ({exc})") from exc
    return spatialdata_io


def _open_slide(image, mpp):
    if image is None:
        return None
    from ..slide import Slide, read_slide

    return image if isinstance(image, Slide) else read_slide(image, mpp=mpp)


def _report(source: str, no_counts: list, no_spot: list) -> dict:
    """Warn about spots without counts and counts without a spot; return what goes in spot_spec['report']."""
    if no_counts or no_spot:
        warnings.warn(f"{source}: {len(no_counts)} spot(s) have no counts (e.g. {no_counts[:3]}) and "
                      f"{len(no_spot)} count row(s) have no spot position (e.g. {no_spot[:3]}); neither can "
                      "be placed on the image, so they are left out and listed in "
                      "uns['spot_spec']['report']", SpotWarning, stacklevel=3)
    return {"n_spots_without_counts": len(no_counts), "spots_without_counts": list(map(str, no_counts)),
            "n_counts_without_spots": len(no_spot), "counts_without_spots": list(map(str, no_spot))}


def _as_counts(X, what: str):
    """Counts as a float32 CSR matrix; refuses negative, NaN or non-integer values (naming how many)."""
    M = sparse.csr_matrix(X) if not sparse.issparse(X) else X.tocsr()
    data = np.asarray(M.data, dtype=np.float64)
    bad_nan = ~np.isfinite(data)
    if bad_nan.any():
        raise TableError(f"{what}: {int(bad_nan.sum())} count(s) are NaN or infinite; counts must be "
                         "non-negative integers (raw UMIs)")
    neg = data < 0
    if neg.any():
        raise TableError(f"{what}: {int(neg.sum())} count(s) are negative; pass raw UMI counts, not "
                         "normalised or scaled values")
    frac = np.abs(data - np.round(data)) > 1e-6
    if frac.any():
        raise TableError(f"{what}: {int(frac.sum())} value(s) are not integers (e.g. {data[frac][:3].tolist()}); "
                         "these look normalised (log1p / CPM), not raw counts. Pass the raw UMI counts "
                         "(layers['counts'] is what scanpy and the HEST protocol start from)")
    M = M.astype(np.float32)
    M.eliminate_zeros()
    return M


def check_inside(xy: np.ndarray, dimensions, what: str, scalefactors: dict | None = None) -> None:
    """Raise when spot centres fall outside the image, with how many and the scale factor that fits."""
    w, h = (float(v) for v in dimensions)
    out = (xy[:, 0] < 0) | (xy[:, 1] < 0) | (xy[:, 0] >= w) | (xy[:, 1] >= h)
    if not out.any():
        return
    hint = ""
    mx, my = np.nanmax(xy[:, 0]), np.nanmax(xy[:, 1])
    need = min(w / mx if mx > 0 else np.inf, h / my if my > 0 else np.inf)
    for name, f in (scalefactors or {}).items():
        if name.startswith("tissue_") and f and abs(f - need) / max(f, need) < 0.5:
            hint = (f" The pixels look like full-resolution ones against a smaller image: multiply them by "
                    f"{name}={f:g}, or pass the full-resolution image.")
            break
    if not hint:
        hint = (f" The largest coordinates ({mx:.0f}, {my:.0f}) fit the image after scaling by about {need:.3g}: "
                "are the pixels for another resolution of the image (hires / lowres scale factor) or "
                "swapped x / y?")
    raise TableError(f"{what}: {int(out.sum())} of {len(xy)} spot(s) lie outside the {int(w)} x {int(h)} px "
                     f"image.{hint}")


def library_id_of(spots) -> str:
    """The one library id of ``spots.uns["spatial"]``."""
    lib = list((spots.uns.get("spatial") or {}).keys())
    if len(lib) != 1:
        raise TableError(f"spots.uns['spatial'] should hold exactly one library, found {lib}; make the spots "
                         "with a pk.io.read_* reader")
    return lib[0]


def _image_copies(slide) -> tuple[dict, dict]:
    """scanpy's hires / lowres images (float RGB in [0, 1]) and their scale factors; the slide is read once."""
    from PIL import Image

    hires = slide.thumbnail(HIRES_PX).convert("RGB")
    w = float(slide.dimensions[0])
    f = LOWRES_PX / max(hires.size)
    lowres = hires.resize((max(1, round(hires.size[0] * f)), max(1, round(hires.size[1] * f))), Image.BOX)
    imgs = {k: np.asarray(v, dtype=np.float32) / 255.0 for k, v in (("hires", hires), ("lowres", lowres))}
    return imgs, {"tissue_hires_scalef": hires.size[0] / w, "tissue_lowres_scalef": lowres.size[0] / w}


def spots_anndata(X, genes, barcodes, xy, *, library_id: str, spot_diameter_um: float, mpp: float | None,
                  source: str, slide=None, images: dict | None = None, scalefactors: dict | None = None,
                  obs: pd.DataFrame | None = None, report: dict | None = None, var: pd.DataFrame | None = None):
    """Build the spots AnnData every reader returns.

    ``X`` are raw counts (spots x genes), ``xy`` the spot centres in level-0 px of the slide (x, y).
    With a ``slide`` the positions are checked against its dimensions and, when ``images`` is not given,
    pathkit keeps a 2000-px and a 600-px copy of the H&E as scanpy's ``hires`` / ``lowres`` images.
    """
    import anndata as ad

    from .._io import h5ad_safe

    genes = pd.Index(np.asarray(genes).astype(str))
    barcodes = pd.Index(np.asarray(barcodes).astype(str))
    dup = genes[genes.duplicated()].unique()
    if len(dup):
        raise TableError(f"{source}: {len(dup)} gene name(s) occur more than once (e.g. {list(dup[:5])}); make "
                         "them unique first (e.g. adata.var_names_make_unique(), or use gene ids)")
    dupb = barcodes[barcodes.duplicated()].unique()
    if len(dupb):
        raise TableError(f"{source}: {len(dupb)} spot id(s) occur more than once (e.g. {list(dupb[:5])})")
    counts = _as_counts(X, source)
    if counts.shape != (len(barcodes), len(genes)):
        raise TableError(f"{source}: counts are {counts.shape}, but there are {len(barcodes)} spots and "
                         f"{len(genes)} genes")
    xy = np.asarray(xy, dtype=np.float64).reshape(len(barcodes), 2)
    if not np.isfinite(xy).all():
        raise TableError(f"{source}: {int((~np.isfinite(xy)).any(1).sum())} spot(s) have no pixel position")
    sf = dict(scalefactors or {})
    if slide is not None:
        check_inside(xy, slide.dimensions, source, sf)
        mpp = float(slide.mpp) if mpp is None else float(mpp)
    if mpp is not None:
        sf.setdefault("spot_diameter_fullres", float(spot_diameter_um) / float(mpp))
    imgs = dict(images or {})
    if slide is not None and not imgs:
        imgs, scalefs = _image_copies(slide)
        sf.update(scalefs)
    obs = pd.DataFrame(index=barcodes) if obs is None else obs.set_axis(barcodes)
    obs["total_counts"] = np.asarray(counts.sum(1)).ravel().astype(np.float64)
    obs["n_genes_by_counts"] = np.diff(counts.indptr).astype(np.int64)
    adata = ad.AnnData(X=counts.copy(), obs=obs,
                       var=pd.DataFrame(index=genes) if var is None else var.set_axis(genes))
    adata.layers["counts"] = counts
    adata.obsm["spatial"] = xy
    meta = {"source": source}
    adata.uns["spatial"] = {library_id: {"images": imgs, "scalefactors": h5ad_safe(sf),
                                         "metadata": meta}}
    spec = {"library_id": library_id, "spot_diameter_um": float(spot_diameter_um),
            "mpp": None if mpp is None else float(mpp), "source": source,
            "report": h5ad_safe(report or {})}
    if slide is not None:
        info = slide.info()
        spec["slide"] = {k: info[k] for k in ("path", "slide_id", "sha256", "dimensions", "mpp")}
    adata.uns["spot_spec"] = h5ad_safe(spec)
    empty = obs["total_counts"].to_numpy() == 0
    if empty.any():
        warnings.warn(f"{source}: {int(empty.sum())} spot(s) have no counts at all (kept; "
                      "obs['total_counts'] == 0)", SpotWarning, stacklevel=3)
    return adata
