"""The check every consumer of a tiles AnnData makes first (embedding, stain fitting): the tiling spec, and
that the slide given is the file the tiles were cut from."""
from __future__ import annotations

from ..errors import TableError


def check_tiles(tiles, slide=None) -> dict:
    """Check that `tiles` is the tiles AnnData of `pk.pp.tile` (for `slide`, when given); return its
    ``uns["tile_spec"]``."""
    import anndata as ad

    if not isinstance(tiles, ad.AnnData):
        hint = (" embed_tiles now takes the tiles first: tiles = pk.pp.tile(slide); "
                "pk.tl.embed_tiles(tiles, slide, model)") if hasattr(tiles, "read_tile") else ""
        raise TypeError(f"tiles must be the AnnData of pk.pp.tile(slide), got {type(tiles).__name__}.{hint}")
    missing = [c for c in ("x", "y") if c not in tiles.obs.columns]
    if missing:
        raise TableError(f"tiles.obs lacks column(s) {missing}; make the tiles with pk.pp.tile(slide)")
    spec = tiles.uns.get("tile_spec")
    if not spec or "tile_px" not in spec or "mpp" not in spec:
        raise TableError("tiles.uns['tile_spec'] (tile_px, mpp, ...) is missing; make the tiles with "
                         "pk.pp.tile(slide), or set tiles.uns['tile_spec'] = dict(tile_px=..., mpp=...)")
    if slide is not None:
        slide_mpp = spec.get("slide_mpp")
        if slide_mpp is not None and abs(float(slide_mpp) - float(slide.mpp)) > 1e-6 * float(slide.mpp):
            raise TableError(f"the tiles were made for a slide with mpp {slide_mpp}, but {slide.path} has mpp "
                             f"{slide.mpp}: tile it again with pk.pp.tile(slide)")
        info = tiles.uns.get("slide") or {}
        dims = info.get("dimensions")
        if dims is not None and tuple(int(v) for v in dims) != tuple(int(v) for v in slide.dimensions):
            raise TableError(f"the tiles were made for {info.get('path', 'another slide')} "
                             f"({tuple(dims)}), not {slide.path} {tuple(slide.dimensions)}: pass the slide "
                             "the tiles came from, or tile this one with pk.pp.tile(slide)")
        want = info.get("sha256")
        if want and hasattr(slide, "sha256") and slide.sha256() != want:
            raise TableError(f"the tiles were cut from {info.get('path', 'another file')} (sha256 {want[:12]}…), "
                             f"but {slide.path} has sha256 {slide.sha256()[:12]}… (same size, other content): pass "
                             "the slide the tiles came from, or tile this one with pk.pp.tile(slide)")
    return dict(spec)
