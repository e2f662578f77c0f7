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


def jpeg_bytes(img, quality: int = 85) -> bytes:
    from PIL import Image

    if not isinstance(img, Image.Image):
        img = Image.fromarray(np.asarray(img, dtype=np.uint8))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def data_uri(img, image_format: str = "png") -> str:
    """A ``data:`` URI of ``img``: ``"png"`` (lossless) or ``"jpeg"`` (quality 85; slide thumbnails)."""
    if image_format == "png":
        return "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode("ascii")
    if image_format in ("jpeg", "jpg"):
        return "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(img)).decode("ascii")
    raise ValueError(f"image_format={image_format!r}; use 'png' or 'jpeg'")


def decode_data_uri(uri: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def read_tile_thumb(slide, x: float, y: float, size_level0: float, thumb_px: int) -> np.ndarray:
    """The tile at (x, y) of side ``size_level0`` level-0 px, as a ``thumb_px`` square, read from the
    pyramid level that fits (Slide.read_tile at the matching coarser mpp)."""
    mpp = float(size_level0) * float(slide.mpp) / float(thumb_px)
    return slide.read_tile(int(np.rint(x)), int(np.rint(y)), tile_px=int(thumb_px), mpp=mpp)


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
        from ..slide import slide_of_tiles

        return {"__one__": slide_of_tiles(adata)}
    if required:
        raise FileNotFoundError("thumbnails need the slide: pass slide= (a Slide, or a dict slide_id -> "
                                "Slide)"
                                f"; uns['slide']['path'] = {path!r} is not readable here")
    return None


def thumb_reader(adata, slide, thumb_px: int, required: bool):
    """A function row -> RGB array (``thumb_px`` square) that reads that point's thumbnail when asked: the
    tile of a tile AnnData, or the whole slide of a cohort row (``obs["path"]`` or ``slide=`` dict). None
    when no slide is available and ``required`` is False."""
    is_tiles = ("x" in adata.obs and "y" in adata.obs) or "spatial" in adata.obsm
    if is_tiles:
        slides = slides_for(adata, slide, required)
        if slides is None:
            return None
        geom = tile_geometry(adata, slide=next(iter(slides.values())))
        ids = adata.obs["slide_id"].astype(str).to_numpy() if "slide_id" in adata.obs else None

        def read(r: int):
            s = slides["__one__"] if "__one__" in slides else slides[ids[r]]
            x, y = geom.xy[r]
            return read_tile_thumb(s, x, y, geom.size, thumb_px)
        return read
    if isinstance(slide, dict) or "path" in adata.obs:
        ok = isinstance(slide, dict) or all(Path(str(p)).exists() for p in adata.obs["path"])
        if not ok:
            if required:
                raise FileNotFoundError("thumbnails need the slides: obs['path'] has files that are not "
                                        "readable here; pass slide= a dict slide_id -> Slide")
            return None

        def read_slide_thumb(r: int):
            row = adata.obs.iloc[r]
            if isinstance(slide, dict):
                return np.asarray(slide[str(row["slide_id"])].thumbnail(thumb_px).convert("RGB"))
            from ..slide import read_slide

            with read_slide(row["path"]) as s:
                return np.asarray(s.thumbnail(thumb_px).convert("RGB"))
        return read_slide_thumb
    if required:
        raise KeyError("thumbnails need tile coordinates (obs x/y) or slide paths (obs['path'])")
    return None


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
    from .._io import atomic_write

    path = Path(path)
    scripts = [_HOVER_JS] + ([post_script] if isinstance(post_script, str) else list(post_script or []))
    with atomic_write(path) as tmp:
        fig.write_html(str(tmp), include_plotlyjs=include_plotlyjs, post_script=scripts, **kwargs)
    return path


def hover_widget(fig, thumb_px: int = 96, reader=None):
    """An ipywidgets box with ``fig`` as a FigureWidget and an Image that shows the hovered point's
    thumbnail: read on hover by ``reader(row)`` (nothing embedded), else the data URI in
    ``customdata[:, 1]``. Attributes ``.figure`` (FigureWidget), ``.image`` (ipywidgets.Image, hidden until
    the first hover) and ``.caption``. Displayed, it also leaves a static copy of the figure for notebooks
    reopened without a kernel (:mod:`pathkit.widgets._static`)."""
    import ipywidgets as W
    import plotly.graph_objects as go

    from ..widgets._static import StaticFallbackBox

    fw = go.FigureWidget(fig)
    side = max(thumb_px, 96)
    image = W.Image(format="png", width=side, height=side, layout=W.Layout(display="none"))
    caption = W.HTML("<i>hover a point</i>")
    cache: dict[int, bytes] = {}

    def on_hover(trace, points, state):
        if not points.point_inds:
            return
        row, uri = trace.customdata[points.point_inds[0]][:2]
        row = int(row)
        if row not in cache:
            if reader is not None:
                cache[row] = png_bytes(reader(row))
            elif uri:
                cache[row] = png_bytes(decode_data_uri(uri))
            else:
                return
        image.value = cache[row]
        image.layout.display = None
        caption.value = f"row {row}"

    for tr in fw.data:
        if tr.customdata is not None:
            tr.on_hover(on_hover)
    panel = W.VBox([image, caption], layout=W.Layout(min_width=f"{side + 8}px"))
    box = StaticFallbackBox([fw, panel], layout=W.Layout(flex_flow="row wrap", align_items="flex-start"))
    box.static_figures = lambda: [go.Figure(fw)]
    panel.children = (*panel.children, box._marker())
    box.figure, box.image, box.caption = fw, image, caption
    return box
