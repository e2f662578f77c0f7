"""A small Visium HD Space Ranger 3.x ``outs/`` made at test time, laid out as Space Ranger writes it.

File names, columns and keys follow 10x Genomics' output documentation and spatialdata-io's reader
(``outs/feature_slice.h5`` with ``metadata_json``; ``binned_outputs/square_<NNN>um/`` with
``filtered_feature_bc_matrix.h5`` (10x HDF5 v3), ``raw_feature_bc_matrix.h5``,
``spatial/tissue_positions.parquet`` (barcode, in_tissue, array_row, array_col, pxl_row_in_fullres,
pxl_col_in_fullres), ``spatial/scalefactors_json.json`` (spot_diameter_fullres = bin_size_um /
microns_per_pixel), ``spatial/tissue_hires_image.png`` / ``tissue_lowres_image.png``; barcodes
``s_008um_00012_00020-1``). The full-resolution microscope image is a tiled pyramidal BigTIFF beside ``outs/``.

Geometry: 2 um squares on a grid turned by ``THETA`` against the image, the 8 / 16 um bins their 4 x 4 /
8 x 8 unions (centre = mean of the 2 um centres), counts of a bin the sum of its 2 um squares' counts; a bin
is on tissue when its centre is inside an ellipse. One 8 um bin (``MARK``) is painted pure red in the
microscope image, so the barcode -> pixel mapping can be checked on the image itself.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import tifffile
from PIL import Image

MPP = 0.5                      # um per full-resolution px (Space Ranger's microns_per_pixel)
W, H = 1000, 800               # microscope image, px
ROWS2, COLS2 = 176, 224        # 2 um squares (352 x 448 um): 44 x 56 bins of 8 um, 22 x 28 of 16 um
ORIGIN = np.array([40.0, 30.0])  # full-res px of the grid's corner (x, y)
THETA = 0.01                   # rad: the capture grid is turned slightly against the image, as in real runs
GENES = [f"GENE{i:02d}" for i in range(18)] + ["ERBB2", "MT-CO1"]
MARK = (12, 20)                # (array_row, array_col) of the 8 um bin painted red
HIRES_SCALEF, LOWRES_SCALEF = 0.4, 0.12
DROPPED = ["s_008um_00020_00030-1", "s_008um_00020_00031-1", "s_008um_00021_00030-1"]  # on tissue, no counts


def centres(rows, cols, bin_um):
    """Full-res (x, y) px of the centres of bins (row, col) of `bin_um`."""
    s = bin_um / MPP
    u = s * np.array([np.cos(THETA), np.sin(THETA)])
    v = s * np.array([-np.sin(THETA), np.cos(THETA)])
    return ORIGIN + np.outer(np.asarray(cols) + 0.5, u) + np.outer(np.asarray(rows) + 0.5, v)


def _on_tissue(xy):
    cx, cy, ax, ay = W * 0.5, H * 0.5, W * 0.36, H * 0.36
    return ((xy[:, 0] - cx) / ax) ** 2 + ((xy[:, 1] - cy) / ay) ** 2 <= 1.0


def _write_10x_h5(path: Path, counts, barcodes):
    """10x Genomics feature-barcode matrix HDF5 (v3): CSC by barcode."""
    from scipy import sparse

    M = sparse.csc_matrix(counts.T.astype(np.int32))  # genes x barcodes
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        g.create_dataset("data", data=M.data)
        g.create_dataset("indices", data=M.indices.astype(np.int64))
        g.create_dataset("indptr", data=M.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array(M.shape, dtype=np.int32))
        ft = g.create_group("features")
        ft.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
        ft.create_dataset("feature_type", data=np.array([b"Gene Expression"] * len(GENES)))
        ft.create_dataset("genome", data=np.array([b"GRCh38"] * len(GENES)))
        ft.create_dataset("id", data=np.array([f"ENSG{i:011d}".encode() for i in range(len(GENES))]))
        ft.create_dataset("name", data=np.array([g_.encode() for g_ in GENES]))


def _he_image(rng):
    img = np.full((H, W, 3), 240, np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    inside = _on_tissue(np.stack([xx.ravel(), yy.ravel()], 1)).reshape(H, W)
    img[inside] = (rng.integers(150, 200, (int(inside.sum()), 3)) * [1.0, 0.55, 0.95]).astype(np.uint8)
    # the MARK bin: its 8 um square, turned with the grid, painted red
    c = centres([MARK[0]], [MARK[1]], 8)[0]
    s = 8 / MPP
    d = np.stack([xx - c[0], yy - c[1]], -1)
    a = d @ np.array([np.cos(THETA), np.sin(THETA)])
    b = d @ np.array([-np.sin(THETA), np.cos(THETA)])
    img[(np.abs(a) < s / 2) & (np.abs(b) < s / 2)] = (255, 0, 0)
    return img


def make_visium_hd_outs(root: Path, seed: int = 0) -> dict:
    """Write ``root/outs`` and ``root/tissue_image.btf``; return the truths the tests check against."""
    rng = np.random.default_rng(seed)
    outs = root / "outs"
    (outs / "spatial").mkdir(parents=True)
    img = _he_image(rng)
    btf = root / "tissue_image.btf"
    with tifffile.TiffWriter(btf, bigtiff=True) as tw:
        opts = {"photometric": "rgb", "tile": (256, 256), "compression": "zlib", "resolutionunit": "CENTIMETER"}
        tw.write(img, subifds=1, resolution=(1e4 / MPP, 1e4 / MPP), **opts)
        tw.write(img[::2, ::2], subfiletype=1, resolution=(1e4 / MPP / 2, 1e4 / MPP / 2), **opts)
    pil = Image.fromarray(img)
    hires = pil.resize((round(W * HIRES_SCALEF), round(H * HIRES_SCALEF)), Image.BOX)
    lowres = pil.resize((round(W * LOWRES_SCALEF), round(H * LOWRES_SCALEF)), Image.BOX)
    # 2 um counts; a gene follows the image's x so that counts are not uniform noise
    cc = np.mgrid[0:ROWS2, 0:COLS2][1]
    lam = np.full((ROWS2, COLS2, len(GENES)), 0.05)
    lam[..., GENES.index("ERBB2")] = 0.02 + 0.1 * cc / COLS2
    c2 = rng.poisson(lam).astype(np.int64)
    meta = {"hd_layout_json": json.dumps({"file_format": "1.0", "transform": [1, 0, 0, 0, 1, 0, 0, 0, 1]}),
            "transform_matrices": {k: [1, 0, 0, 0, 1, 0, 0, 0, 1] for k in (
                "cytassist_colrow_to_spot_colrow", "spot_colrow_to_cytassist_colrow",
                "microscope_colrow_to_spot_colrow", "spot_colrow_to_microscope_colrow")}}
    with h5py.File(outs / "feature_slice.h5", "w") as f:
        f.attrs["metadata_json"] = json.dumps(meta)
    truths = {"btf": btf, "outs": outs, "image": img}
    for b in (2, 8, 16):
        k = b // 2
        nr, nc = ROWS2 // k, COLS2 // k
        counts = c2.reshape(nr, k, nc, k, len(GENES)).sum((1, 3)).reshape(nr * nc, len(GENES))
        r, c = np.divmod(np.arange(nr * nc), nc)
        xy = centres(r, c, b)
        on = _on_tissue(xy)
        bc = np.array([f"s_{b:03d}um_{i:05d}_{j:05d}-1" for i, j in zip(r, c)])
        folder = outs / "binned_outputs" / f"square_{b:03d}um"
        (folder / "spatial").mkdir(parents=True)
        pos = pd.DataFrame({"barcode": bc, "in_tissue": on.astype(np.int32), "array_row": r.astype(np.int32),
                            "array_col": c.astype(np.int32), "pxl_row_in_fullres": xy[:, 1],
                            "pxl_col_in_fullres": xy[:, 0]})
        pos.to_parquet(folder / "spatial" / "tissue_positions.parquet", index=False)
        keep = on & ~np.isin(bc, DROPPED)
        _write_10x_h5(folder / "filtered_feature_bc_matrix.h5", counts[keep], list(bc[keep]))
        _write_10x_h5(folder / "raw_feature_bc_matrix.h5", counts, list(bc))
        sf = {"spot_diameter_fullres": b / MPP, "bin_size_um": float(b), "microns_per_pixel": MPP,
              "regist_target_img_scalef": HIRES_SCALEF, "tissue_lowres_scalef": LOWRES_SCALEF,
              "fiducial_diameter_fullres": 300.0, "tissue_hires_scalef": HIRES_SCALEF}
        (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(sf))
        for d in (folder / "spatial", outs / "spatial"):
            hires.save(d / "tissue_hires_image.png")
            lowres.save(d / "tissue_lowres_image.png")
        truths[b] = {"n_bins": nr * nc, "n_on_tissue": int(on.sum()), "n_filtered": int(keep.sum())}
    return truths
