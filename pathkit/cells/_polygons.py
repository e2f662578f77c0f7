"""Reading cell outlines back, wherever :func:`pathkit.tl.segment_cells` put them."""
from __future__ import annotations

import numpy as np


def cell_polygons(cells, index=None) -> np.ndarray:
    """The outlines of the cells as shapely Polygons (level-0 px).

    Parameters
    ----------
    cells
        The cells AnnData of :func:`pathkit.tl.segment_cells` (outlines in ``obs["polygon_wkb"]`` or in the
        parquet file named by ``uns["cells"]["polygons"]``).
    index
        Optional integer positions of the cells wanted (default all).

    Returns
    -------
    numpy.ndarray
        Object array of ``shapely.Polygon``, one per cell requested.
    """
    import shapely

    from ..errors import TableError

    pos = np.arange(cells.n_obs) if index is None else np.asarray(index, dtype=np.int64)
    if "polygon_wkb" in cells.obs:
        return shapely.from_wkb(cells.obs["polygon_wkb"].to_numpy()[pos])
    where = (cells.uns.get("cells") or {}).get("polygons")
    if not where or where == "obs":
        raise TableError("the cells have no obs['polygon_wkb'] and uns['cells']['polygons'] names no file: "
                         "segment again with pk.tl.segment_cells")
    import pyarrow.parquet as pq

    table = pq.read_table(where, columns=["cell", "wkb"])
    ids = table.column("cell").to_numpy()
    wkb = np.asarray(table.column("wkb").to_pylist(), dtype=object)
    order = np.empty(ids.max() + 1 if len(ids) else 0, np.int64)
    order[ids] = np.arange(len(ids))
    return shapely.from_wkb(wkb[order[pos]])
