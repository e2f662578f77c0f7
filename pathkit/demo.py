"""`pathkit demo`: sample slide -> tissue -> tiles -> embeddings, offline on a fresh machine.

Uses the public CMU-1-Small-Region H&E slide shipped inside pathkit (or $PATHKIT_SAMPLE_SLIDE); only an
install without its package data falls back to a download, then to a generated synthetic slide; and the 2-block test ViT `vit_tiny_test` with RANDOM weights, so
the run needs no network and no gated model. It says plainly which data and weights it used.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

from ._io import atomic_write

DEMO_MODEL = "vit_tiny_test"


def _sample():
    """(path, source) with source "env" | "cache" | "package" | "download" | "synthetic"."""
    from . import datasets

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*SYNTHETIC.*")  # said plainly in the summary
        path, info = datasets.sample_slide(return_info=True)
    return Path(path), info


def _describe_source(path: Path, info: dict) -> str:
    if info.get("source") == "synthetic":
        why = info.get("error") or "no network"
        return (f"a SYNTHETIC generated slide at {path} - the real sample could not be downloaded "
                f"({why.splitlines()[0][:120]})")
    how = {"env": "local copy from $PATHKIT_SAMPLE_SLIDE", "cache": "cached download",
           "package": "shipped with pathkit, sha256 checked",
           "download": "downloaded now, sha256 checked"}.get(info.get("source"), info.get("source"))
    return f"the real public OpenSlide sample CMU-1-Small-Region (Aperio SVS, CC0; {how}) at {path}"


def draw_tile_grid(slide, tiles, path, size: int = 1024, color=(0, 90, 255)):
    """Save the slide's thumbnail with each tile's outline drawn on it (PNG, written atomically)."""
    from PIL import ImageDraw

    thumb = slide.thumbnail(size=size).convert("RGB")
    w0, _ = slide.dimensions
    scale = thumb.width / float(w0)
    side = float(tiles.uns["tile_spec"]["size_level0"]) * scale
    draw = ImageDraw.Draw(thumb)
    for x, y in zip(tiles.obs["x"].to_numpy(), tiles.obs["y"].to_numpy()):
        x0, y0 = x * scale, y * scale
        draw.rectangle([x0, y0, x0 + side, y0 + side], outline=color, width=1)
    path = Path(path)
    with atomic_write(path) as tmp:
        thumb.save(tmp, format="PNG")
    return path


def run_demo(out="pathkit_demo_out", device="auto", verbose: bool = True) -> dict:
    """Run the demo; returns the output paths and figures. Writes `<out>/<slide_id>.h5ad` and
    `<out>/<slide_id>_tiles.png`."""
    from . import pp
    from ._io import write_h5ad_atomic
    from .slide import read_slide
    from .tl.embed import embed_tiles

    t0 = time.perf_counter()
    say = print if verbose else (lambda *a, **k: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path, info = _sample()
    say(f"data:    {_describe_source(path, info)}")
    slide = read_slide(path)
    tissue = pp.find_tissue(slide)
    tiles = pp.tile(slide, tissue=tissue)
    say(f"tiles:   {tiles.n_obs} tissue tiles of 256 px at 0.5 um/px "
        f"(slide {slide.dimensions[0]} x {slide.dimensions[1]} px, {slide.mpp:.3f} um/px)")
    with warnings.catch_warnings():
        # the random-weights warning is stated plainly below instead
        warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
        embed_tiles(tiles, slide, DEMO_MODEL, device=device, progress=verbose)
    adata = tiles
    key = next(iter(adata.uns["models"]))
    h5ad = write_h5ad_atomic(adata, out / f"{slide.slide_id}.h5ad")
    png = draw_tile_grid(slide, tiles, out / f"{slide.slide_id}_tiles.png")
    secs = time.perf_counter() - t0
    say(f"weights: {DEMO_MODEL} (2-block ViT-Ti/16) with RANDOM weights - the features show the pipeline "
        "works but carry no biological meaning; use e.g. --model gigapath_tile with real weights.")
    say(f"wrote:   {h5ad}  ({adata.n_obs} tiles x {adata.obsm[key].shape[1]} features in obsm[{key!r}])")
    say(f"         {png}  (thumbnail with the tile grid)")
    say(f"done in {secs:.1f} s")
    return {"slide": path, "source": info.get("source"), "h5ad": h5ad, "png": png,
            "n_tiles": int(adata.n_obs), "dim": int(adata.obsm[key].shape[1]), "key": key, "seconds": secs}
