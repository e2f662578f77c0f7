"""``pk.tl.segment_cells``: nuclei of every tile, one row per cell, each cell once."""
from __future__ import annotations

import math
import tempfile
import uuid
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import NotBrightfieldError, TableError
from ._features import COLUMNS, measure_cells
from ._models import cell_segmenter


def _owners(centres: np.ndarray, size0: float):
    """A function mapping level-0 points to the index of the tile that owns them (-1: none).

    A point belongs to the tile whose centre is nearest in the max-norm among tiles containing it, so
    overlapping tiles split their shared band down the middle and each cell is kept by exactly one tile.
    """
    from scipy.spatial import cKDTree

    tree = cKDTree(centres) if len(centres) else None

    def owner(pts):
        if tree is None or not len(pts):
            return np.full(len(pts), -1, np.int64)
        d, i = tree.query(pts, k=1, p=np.inf)
        return np.where(d < size0 / 2, i, -1)

    return owner


class _PolygonSink:
    """Polygons (WKB) kept in memory until `limit` cells, then streamed to a parquet file."""

    def __init__(self, path, limit: int, slide_id: str):
        self.path = Path(path) if path is not None else None
        self.limit = int(limit)
        self.slide_id = slide_id
        self.memory: list = []
        self.writer = None
        self.n = 0

    def _open(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.path is None:
            d = Path(tempfile.gettempdir()) / "pathkit_cells"
            d.mkdir(parents=True, exist_ok=True)
            self.path = d / f"{self.slide_id}-{uuid.uuid4().hex[:8]}.polygons.parquet"
            warnings.warn(f"more than {self.limit} cells: their polygons stream to {self.path} instead of memory "
                          "(pass polygons_path= to choose the file; obs holds the measurements)", stacklevel=4)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:6]}.tmp")
        schema = pa.schema([("cell", pa.int64()), ("wkb", pa.binary())])
        self.writer = pq.ParquetWriter(self._tmp, schema, compression="zstd")
        self._pa = pa
        if self.memory:
            self._write(self.memory, 0)
            self.memory = []

    def _write(self, wkb, start):
        pa = self._pa
        table = pa.table({"cell": pa.array(np.arange(start, start + len(wkb)), pa.int64()),
                          "wkb": pa.array(wkb, pa.binary())})
        self.writer.write_table(table)

    def add(self, wkb: list):
        if self.writer is None and (self.path is not None or self.n + len(wkb) > self.limit):
            self._open()
        if self.writer is not None:
            if wkb:
                self._write(wkb, self.n)
        else:
            self.memory.extend(wkb)
        self.n += len(wkb)

    def close(self):
        import os

        if self.writer is not None:
            self.writer.close()
            os.replace(self._tmp, self.path)


def segment_cells(tiles, slide=None, model: str = "instanseg", *, weights=None, halo_um: float = 16.0,
                  params=None, device="auto", polygons_path=None, max_cells_in_memory: int = 500_000,
                  key_added: str = "cells", progress: bool = True):
    """Segment (and classify) the nuclei of every tile of a slide.

    Each tile is read at the model's resolution with a margin of `halo_um` on every side, so that a nucleus
    cut by the tile's edge is seen whole; a cell is kept by the one tile whose core owns its centroid (the
    nearest tile centre in the max-norm), so a nucleus on a border is one cell, never two or none.

    Parameters
    ----------
    tiles
        The tiles AnnData of :func:`pathkit.pp.tile` (any tile size; overlapping tiles are fine).
    slide
        The :class:`~pathkit.slide.Slide` (default: opened from ``tiles.uns["slide"]["path"]``).
    model
        A cell segmenter of the registry: ``"instanseg"`` (InstanSeg brightfield nuclei), ``"hovernet"``
        (HoVer-Net PanNuke, 6 cell types) or ``"watershed"`` (no weights: haematoxylin threshold and
        distance-transform watershed; no cell types). ``pathkit.models.list_models("cell_segmenter")``.
    weights
        A weights file (safetensors or a tensor-only state dict) for the deep models. For ``"instanseg"``: the
        safetensors file :func:`pathkit.cells.convert_instanseg` makes from the authors' release. Missing
        weights raise :class:`~pathkit.errors.WeightsError` saying how to get them.
    halo_um
        Margin read around each tile (um); larger than the largest nucleus.
    params
        For ``"watershed"``: a :class:`pathkit.cells.WatershedParams` (threshold, smoothing, sizes). For
        ``"instanseg"``: a :class:`pathkit.cells.InstanSegParams` or a dict of some of its fields, overriding
        the defaults stored with the weights (seed, mask and overlap thresholds, window size).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"`` for the deep models.
    polygons_path
        A ``.parquet`` file that receives the outlines (columns ``cell``, ``wkb``) as they are made. Without
        it outlines stay in ``obs["polygon_wkb"]`` until `max_cells_in_memory`, beyond which they stream
        to a file in the temporary folder (a warning names it).
    max_cells_in_memory
        See `polygons_path`.
    key_added
        Prefix of the per-tile columns written to ``tiles.obs``.
    progress
        Show a progress bar.

    Returns
    -------
    anndata.AnnData
        The cells (n_cells x 0), obs_names ``"0".."n-1"``:

        ``obs["x"]``, ``obs["y"]`` (float64)
            Centroid, level-0 px; also ``obsm["spatial"]``.
        ``obs["area_um2"]``, ``obs["perimeter_um"]``, ``obs["eccentricity"]``, ``obs["solidity"]``
            Shape of the nucleus mask at the model's resolution.
        ``obs["hematoxylin_od"]``
            Mean haematoxylin optical density of the nucleus (``skimage.color.rgb2hed`` channel 0).
        ``obs["cell_type"]`` (categorical), ``obs["cell_type_prob"]``
            With a classifying model: the class of highest mean probability over the nucleus and that mean.
            HoVer-Net's pixels each vote for their most probable type, so the mean is the share of the
            nucleus's pixels voting for the class; a nucleus with no type votes has no type (missing).
        ``obs["tile"]`` (categorical), ``obs["slide_id"]``
            The tile (``tiles.obs_names``) that owns the cell, and the slide.
        ``obs["polygon_wkb"]``
            The outline as hex WKB (level-0 px; ``shapely.from_wkb`` reads it) when kept in memory.
        ``uns["cells"]``
            model, mpp, halo_um, parameters, ``polygons`` ("obs" or the parquet path), n_tiles.
        ``uns["slide"]``
            The slide's provenance (from the tiles).

        The tiles gain ``obs["<key_added>_count"]`` (cells owned), ``obs["<key_added>_per_mm2"]`` (count per
        mm^2 of the tile's footprint) and, with cell types, ``obs["<key_added>_share_<type>"]``.

    Raises
    ------
    pathkit.errors.WeightsError
        The deep model's weights are not available here.
    pathkit.errors.TableError
        `tiles` is not the AnnData of ``pk.pp.tile``.
    pathkit.errors.NotBrightfieldError
        The slide is fluorescence or multiplex (opened with ``allow_non_brightfield=True``). IHC slides are
        brightfield: nuclei are segmented on the haematoxylin counterstain, and strongly DAB-stained nuclei
        may be missed.
    """
    import anndata as ad

    from .._io import h5ad_safe
    from ..slide import slide_of_tiles

    spec = tiles.uns.get("tile_spec") if hasattr(tiles, "uns") else None
    if not spec or "x" not in tiles.obs or "y" not in tiles.obs:
        raise TableError("segment_cells needs the tiles AnnData of pk.pp.tile(slide) (obs x, y and "
                         "uns['tile_spec'])")
    slide = slide_of_tiles(tiles, slide)
    if slide.properties.get("pathkit.modality") == "non-brightfield":
        # the haematoxylin channel of a fluorescence / multiplex image is meaningless: refuse, never guess
        raise NotBrightfieldError(
            f"{slide.path}: not a brightfield slide (read with allow_non_brightfield=True); the cell segmenters "
            "here read haematoxylin from RGB H&E. For a nuclear stain (DAPI), threshold that channel instead; "
            "IHC (DAB) slides are brightfield and segment on their haematoxylin counterstain.")
    seg = cell_segmenter(model, weights=weights, params=params, device=device)
    size0 = float(spec["size_level0"])
    f = seg.mpp / slide.mpp  # level-0 px per read px
    core = round(size0 / f)
    halo = math.ceil(halo_um / seg.mpp)
    x = tiles.obs["x"].to_numpy(np.float64)
    y = tiles.obs["y"].to_numpy(np.float64)
    owner = _owners(np.stack([x + size0 / 2, y + size0 / 2], 1), size0)
    sink = _PolygonSink(polygons_path, max_cells_in_memory, slide.slide_id)
    frames = []
    it = range(tiles.n_obs)
    if progress:
        from .._progress import progress_bar

        it = progress_bar(it, desc=f"cells ({seg.name})", unit="tile", leave=False)
    for i in it:
        ox, oy = x[i] - halo * f, y[i] - halo * f
        side = core + 2 * halo
        rgb = slide.read_level0_box((ox, oy, ox + side * f, oy + side * f), (side, side))
        labels, probs, h = seg(rgb)
        table, wkb = measure_cells(labels, h, seg.mpp, (ox, oy), f, probs, seg.classes,
                                   keep=lambda xy, i=i: owner(xy) == i)
        table["tile"] = i
        frames.append(table)
        sink.add(wkb)
    sink.close()
    cols = [*COLUMNS, *(["cell_type", "cell_type_prob"] if seg.classes else []), "tile"]
    obs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    obs = obs.reindex(columns=cols)
    for c in COLUMNS:
        obs[c] = obs[c].astype(np.float64)
    tile_idx = obs["tile"].to_numpy(np.int64)
    obs["tile"] = pd.Categorical.from_codes(tile_idx, categories=list(map(str, tiles.obs_names)))
    obs.insert(0, "slide_id", pd.Categorical([slide.slide_id] * len(obs), categories=[slide.slide_id]))
    if seg.classes:
        obs["cell_type"] = pd.Categorical(obs["cell_type"], categories=list(seg.classes))
        obs["cell_type_prob"] = obs["cell_type_prob"].astype(np.float64)
    if sink.writer is None:
        import shapely

        obs["polygon_wkb"] = [shapely.to_wkb(shapely.from_wkb(w), hex=True) for w in sink.memory] \
            if sink.memory else pd.Series([], dtype=object)
    obs.index = pd.Index([str(k) for k in range(len(obs))])
    cells = ad.AnnData(obs=obs)
    cells.obsm["spatial"] = obs[["x", "y"]].to_numpy(np.float64).reshape(len(obs), 2)
    cells.uns["cells"] = h5ad_safe({
        "model": seg.name, "mpp": seg.mpp, "halo_um": float(halo_um), "params": seg.params,
        "classes": list(seg.classes), "weights": seg.weights_info,
        "polygons": "obs" if sink.writer is None else str(sink.path), "n_tiles": int(tiles.n_obs),
        "tile_size_level0": size0,
    })
    cells.uns["slide"] = tiles.uns.get("slide", h5ad_safe(slide.info()))
    _tile_aggregates(tiles, tile_idx, obs.get("cell_type"), size0 * slide.mpp, seg.classes, key_added)
    return cells


def _tile_aggregates(tiles, tile_idx, cell_type, side_um: float, classes, key_added: str):
    n = np.bincount(tile_idx, minlength=tiles.n_obs)
    tiles.obs[f"{key_added}_count"] = n.astype(np.int64)
    tiles.obs[f"{key_added}_per_mm2"] = n / (side_um / 1000.0) ** 2
    for k, c in enumerate(classes or ()):
        m = np.bincount(tile_idx[(cell_type.cat.codes.to_numpy() == k)], minlength=tiles.n_obs)
        with np.errstate(invalid="ignore", divide="ignore"):
            tiles.obs[f"{key_added}_share_{c}"] = np.where(n > 0, m / np.maximum(n, 1), np.nan)
