"""Tile geometry, tile/slide thumbnails as PNG data URIs, and HTML export with hover thumbnails.

Plotly cannot draw images inside a hover label. pathkit therefore stores each point's thumbnail as a PNG
data URI in the trace's ``customdata[:, 1]`` and shows it:
- in exported HTML: :func:`write_html` adds a small script that shows the image next to the cursor on
  ``plotly_hover`` (works offline, any browser);
- in JupyterLab: ``pk.widgets.SlideExplorer`` (FigureWidget ``on_hover`` -> an ipywidgets Image);
- statically anywhere: ``pk.pl.umap(..., thumbnails="map")`` places thumbnails as layout images on the plot.
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class TileGeometry:
    xy: np.ndarray          # (n, 2) float level-0 px of each tile's top-left
    size: float             # tile side in level-0 px
    stride: float           # grid step in level-0 px
    tile_px: int | None
    mpp: float | None


def tile_geometry(tiles, slide=None, tile_size: float | None = None) -> TileGeometry:
    """Tile positions and size from an AnnData (obs x/y or obsm["spatial"], uns["tile_spec"]) or a
    DataFrame from ``pk.pp.tile`` (columns x/y, attrs["tile_spec"])."""
    if hasattr(tiles, "obs"):
        obs, spec = tiles.obs, dict(tiles.uns.get("tile_spec", {}))
        if "x" in obs and "y" in obs:
            xy = obs[["x", "y"]].to_numpy(dtype=float)
        elif "spatial" in tiles.obsm:
            xy = np.asarray(tiles.obsm["spatial"], dtype=float)[:, :2]
        else:
            raise KeyError("tiles AnnData has neither obs['x'], obs['y'] nor obsm['spatial']; it must come "
                           "from pk.tl.embed_tiles (tile-level), not a cohort")
    else:
        if not {"x", "y"} <= set(tiles.columns):
            raise KeyError(f"tiles table needs columns 'x' and 'y' (has {list(tiles.columns)})")
        xy, spec = tiles[["x", "y"]].to_numpy(dtype=float), dict(tiles.attrs.get("tile_spec", {}))
    tile_px, mpp = spec.get("tile_px"), spec.get("mpp")
    if tile_size is not None:
        size = float(tile_size)
    elif spec.get("size_level0"):
        size = float(spec["size_level0"])
    elif tile_px and mpp:
        slide_mpp = spec.get("slide_mpp") or getattr(slide, "mpp", None)
        if not slide_mpp:
            raise KeyError("tile_spec lacks size_level0 and slide_mpp; pass tile_size= (level-0 px)")
        size = float(tile_px) * float(mpp) / float(slide_mpp)
    else:
        raise KeyError("tiles carry no tile_spec (uns['tile_spec'] / attrs['tile_spec']); pass tile_size= "
                       "(tile side in level-0 px)")
    stride = float(spec.get("stride_level0") or size)
    return TileGeometry(xy, size, stride, int(tile_px) if tile_px else None, float(mpp) if mpp else None)


def png_bytes(img) -> bytes:
    from PIL import Image

    if not isinstance(img, Image.Image):
        img = Image.fromarray(np.asarray(img, dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def data_uri(img) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode("ascii")


def decode_data_uri(uri: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def read_tile_thumb(slide, x: float, y: float, size_level0: float, thumb_px: int) -> np.ndarray:
    """The tile at (x, y) of side ``size_level0`` level-0 px, as a ``thumb_px`` square, read from the
    pyramid level that fits (Slide.read_tile at the matching coarser mpp)."""
    mpp = float(size_level0) * float(slide.mpp) / float(thumb_px)
    return slide.read_tile(int(np.rint(x)), int(np.rint(y)), tile_px=int(thumb_px), mpp=mpp)


def _open(path, mpp=None):
    from ..slide import read_slide

    return read_slide(path, mpp=mpp) if mpp else read_slide(path)


def slides_for(adata, slide, required: bool):
    """Map slide_id -> Slide for the rows of a tile AnnData. ``slide``: a Slide, dict slide_id -> Slide, or
    None (open ``uns["slide"]["path"]`` when it exists). Returns None when nothing is available and
    ``required`` is False."""
    ids = adata.obs["slide_id"].astype(str) if "slide_id" in adata.obs else None
    if isinstance(slide, dict):
        if ids is None:
            raise KeyError("slide= is a dict slide_id -> Slide but the tiles have no obs['slide_id']")
        missing = sorted(set(ids) - set(map(str, slide)))
        if missing:
            raise KeyError(f"slide= dict has no Slide for slide_id(s) {missing[:5]}")
        return {str(k): v for k, v in slide.items()}
    if slide is not None:
        if ids is not None and ids.nunique() > 1:
            raise ValueError(f"tiles come from {ids.nunique()} slides; pass slide= a dict slide_id -> Slide")
        return {"__one__": slide}
    info = adata.uns.get("slide", {}) if hasattr(adata, "uns") else {}
    path = info.get("path")
    if path and Path(path).exists() and (ids is None or ids.nunique() == 1):
        mpp = info.get("mpp") if info.get("mpp_source") == "user" else None
        return {"__one__": _open(path, mpp)}
    if required:
        raise FileNotFoundError("thumbnails need the slide: pass slide= (a Slide, or a dict slide_id -> "
                                "Slide)"
                                f"; uns['slide']['path'] = {path!r} is not readable here")
    return None


def tile_thumbnails(adata, slides: dict, rows: np.ndarray, thumb_px: int) -> dict[int, str]:
    """Data URIs for the tile rows ``rows`` (positions in adata)."""
    from tqdm.auto import tqdm

    geom = tile_geometry(adata, slide=next(iter(slides.values())))
    ids = adata.obs["slide_id"].astype(str).to_numpy() if "slide_id" in adata.obs else None
    out = {}
    for r in tqdm(rows, desc="thumbnails", disable=len(rows) < 200, leave=False):
        s = slides["__one__"] if "__one__" in slides else slides[ids[r]]
        x, y = geom.xy[r]
        out[int(r)] = data_uri(read_tile_thumb(s, x, y, geom.size, thumb_px))
    return out


def slide_thumbnails(adata, rows: np.ndarray, thumb_px: int, slide=None) -> dict[int, str]:
    """Data URIs of whole-slide thumbnails for cohort rows (obs['path'], or slide= dict slide_id -> Slide)."""
    from tqdm.auto import tqdm

    out = {}
    for r in tqdm(rows, desc="slide thumbnails", disable=len(rows) < 20, leave=False):
        row = adata.obs.iloc[r]
        if isinstance(slide, dict):
            s = slide[str(row["slide_id"])]
            out[int(r)] = data_uri(s.thumbnail(thumb_px))
        else:
            with _open(row["path"]) as s:
                out[int(r)] = data_uri(s.thumbnail(thumb_px))
    return out


_HOVER_JS = """
(function() {
  var gd = document.getElementById('{plot_id}');
  if (!gd || !gd.on) { return; }
  var img = document.createElement('img');
  img.className = 'pathkit-hover-thumb';
  img.style.cssText = 'position:fixed;display:none;pointer-events:none;z-index:1000;' +
                      'border:1px solid #333;background:#fff;max-width:256px;';
  document.body.appendChild(img);
  gd.on('plotly_hover', function(ev) {
    var p = ev.points && ev.points[0];
    var src = p && p.customdata && p.customdata[1];
    if (!src) { img.style.display = 'none'; return; }
    img.src = src;
    var e = ev.event || {};
    img.style.left = ((e.clientX || 0) + 14) + 'px';
    img.style.top = ((e.clientY || 0) + 14) + 'px';
    img.style.display = 'block';
  });
  gd.on('plotly_unhover', function() { img.style.display = 'none'; });
})();
"""


def write_html(fig, path, include_plotlyjs=True, post_script=None, **kwargs):
    """Write ``fig`` as a standalone HTML file (plotly.js inlined: works offline) where hovering a point
    shows its thumbnail (``customdata[:, 1]`` data URIs, as ``pk.pl.umap`` writes them). Atomic write."""
    import os

    path = Path(path)
    scripts = [_HOVER_JS] + ([post_script] if isinstance(post_script, str) else list(post_script or []))
    tmp = path.with_name(path.name + ".tmp")
    fig.write_html(str(tmp), include_plotlyjs=include_plotlyjs, post_script=scripts, **kwargs)
    os.replace(tmp, path)
    return path


def hover_widget(fig, thumb_px: int = 96):
    """An ipywidgets box with ``fig`` as a FigureWidget and an Image that shows the hovered point's
    thumbnail (``customdata[:, 1]``): how thumbnails show on hover inside JupyterLab. Attributes
    ``.figure`` (FigureWidget) and ``.image`` (ipywidgets.Image)."""
    import ipywidgets as W
    import plotly.graph_objects as go

    fw = go.FigureWidget(fig)
    image = W.Image(format="png", width=max(thumb_px, 96), height=max(thumb_px, 96))
    caption = W.HTML()

    def on_hover(trace, points, state):
        if not points.point_inds:
            return
        row, uri = trace.customdata[points.point_inds[0]][:2]
        if uri:
            image.value = png_bytes(decode_data_uri(uri))
            caption.value = f"row {int(row)}"

    for tr in fw.data:
        if tr.customdata is not None:
            tr.on_hover(on_hover)
    box = W.HBox([fw, W.VBox([image, caption])])
    box.figure, box.image, box.caption = fw, image, caption
    return box
