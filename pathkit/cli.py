"""The `pathkit` command line: info, tile, embed, cohort, demo, fetch, list-models.

A user's mistake (a bad value, a file that cannot be read or written, missing mpp, unknown model...) prints
one line and exits with code 2, argparse's convention; anything else is a bug: one line, exit 1. ``--debug``
shows the traceback of either.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from .errors import PathkitError


def _number(kind, ok, must):
    """An argparse type: `kind` (int or float) of `text`, refused with `must` unless ok(value)."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") \
                from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"{text} must be {must}")
        return v
    return parse


_positive_int = _number(int, lambda v: v >= 1, ">= 1")
_count = _number(int, lambda v: v >= 0, ">= 0")
_positive_float = _number(float, lambda v: math.isfinite(v) and v > 0, "a number > 0 (microns per pixel, e.g. 0.5)")
_share = _number(float, lambda v: math.isfinite(v) and 0 <= v <= 1, "a share between 0 and 1 (e.g. 0.1)")


def _add_slide_mpp(p):
    p.add_argument("--mpp", type=_positive_float, default=None,
                   help="the slide's microns per pixel, when its metadata lacks it or is wrong")
    p.add_argument("--allow-implausible-mpp", action="store_true",
                   help="use an mpp outside 0.05..5 um/px (e.g. from a 96-dpi resolution tag) anyway")
    p.add_argument("--allow-non-brightfield", action="store_true",
                   help="read a fluorescence / multiplex image anyway (H&E models give meaningless features)")


def _add_tiling(p):
    p.add_argument("--tile-px", type=_positive_int, default=256, help="tile side in pixels at the target mpp (256)")
    p.add_argument("--target-mpp", type=_positive_float, default=0.5, help="tile resolution in um/px (0.5)")
    p.add_argument("--min-tissue", type=_share, default=0.1, help="keep tiles with at least this tissue share")


def _add_embedding(p):
    p.add_argument("--weights", default=None, help="weights file or hf_hub:<repo> (default: the model's own)")
    _add_slide_mpp(p)
    _add_tiling(p)
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="auto",
                   help="auto (bfloat16 on CUDA and on CPUs with native bf16, else float32) or float32 (exact)")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--num-workers", type=_count, default=None, help="tile reader processes (default min(4, CPUs))")
    p.add_argument("--engine", default="auto", choices=("auto", "torch", "openvino", "onnxruntime"),
                   help="tile-encoder runtime on CPU: auto (the fastest installed engine, torch on GPUs), torch, "
                        "openvino, onnxruntime (pip install 'pathkit[engines]')")
    p.add_argument("--num-threads", type=_positive_int, default=None, help="CPU threads of the encoder (default: torch's)")
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = argparse.ArgumentParser(prog="pathkit", description="Computational pathology toolkit.")
    parser.add_argument("--version", action="version", version=f"pathkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("info", help="dimensions, levels, mpp and vendor of a slide")
    p.add_argument("slide")
    _add_slide_mpp(p)

    p = sub.add_parser("tile", help="find tissue and list the tiles of a slide")
    p.add_argument("slide")
    _add_slide_mpp(p)
    _add_tiling(p)
    p.add_argument("--out", default=None,
                   help="write the tiles AnnData to this .h5ad file (pk.pp.tile's output, read by anndata)")

    p = sub.add_parser("embed", help="embed the tissue tiles of slides into DIR/<slide_id>.h5ad")
    p.add_argument("slides", nargs="+", metavar="SLIDE")
    p.add_argument("--model", required=True, help="registry name (pathkit list-models) or timm:<arch>")
    p.add_argument("--out", required=True, help="output folder")
    _add_embedding(p)
    p.add_argument("--skip-existing", action="store_true",
                   help="reuse a slide's h5ad when it was made from the same file (sha256) with the same "
                        "model, weights and tiling; recompute it otherwise")

    p = sub.add_parser("cohort", help="embed a cohort (folder, slide table or manifest) into one cohort.h5ad, "
                                      "resuming where a run stopped")
    p.add_argument("slides", help="a folder of slides, a slide table CSV (path column) or a manifest CSV")
    p.add_argument("--out", required=True, help="output folder (per-slide h5ad, cohort_state.json, cohort.h5ad)")
    p.add_argument("--tile-model", required=True, help="tile encoder (pathkit list-models)")
    p.add_argument("--slide-model", default=None, help="slide encoder, e.g. gigapath_slide or mean")
    p.add_argument("--slide-dir", default=None, help="folder holding a manifest's files")
    p.add_argument("--dask-workers", type=int, default=0,
                   help="run slides on a local Dask cluster with this many worker processes (0: in-process)")
    p.add_argument("--dashboard", default="127.0.0.1:8787", metavar="HOST:PORT",
                   help="where the local Dask cluster serves its dashboard (127.0.0.1:8787, this machine only; "
                        "0.0.0.0:8787 to open it to the network; 'none' for no dashboard)")
    _add_embedding(p)

    p = sub.add_parser("demo", help="offline end-to-end demo: sample slide -> tiles -> embeddings")
    p.add_argument("--out", default="pathkit_demo_out", help="output folder (pathkit_demo_out)")

    p = sub.add_parser("fetch", help="download the files of a manifest, checking their checksums")
    p.add_argument("manifest")
    p.add_argument("--dest", required=True, help="folder to download into")

    sub.add_parser("list-models", help="the models pathkit knows")
    return parser


def _cmd_info(args) -> int:
    from .slide import read_slide

    _stat_inputs(args.slide)
    with read_slide(args.slide, mpp=args.mpp, **_read_args(args)) as s:
        w, h = s.dimensions
        print(f"file         {s.path}")
        print(f"slide_id     {s.slide_id}")
        print(f"vendor       {s.vendor or 'unknown'}")
        print(f"dimensions   {w} x {h} px (level 0)")
        print(f"mpp          {s.mpp:.4f} um/px ({s.mpp_source})")
        if s.magnification:
            print(f"magnification {s.magnification:g}x")
        print(f"levels       {s.level_count}")
        for i, ((lw, lh), ds) in enumerate(zip(s.level_dimensions, s.level_downsamples)):
            print(f"  level {i}: {lw} x {lh} px, downsample {ds:.3f}, {s.level_mpp(i):.4f} um/px")
    return 0


def _tiles(slide, args):
    from . import pp

    return pp.tile(slide, tile_px=args.tile_px, mpp=args.target_mpp, min_tissue=args.min_tissue)


def _cmd_tile(args) -> int:
    from ._io import write_h5ad_atomic
    from .slide import read_slide

    if args.out and not str(args.out).endswith(".h5ad"):
        raise PathkitError(f"--out {args.out}: the tiles are an AnnData; name an .h5ad file")
    if args.out and Path(args.out).is_dir():
        raise PathkitError(f"--out {args.out} is a folder; name an .h5ad file")
    _stat_inputs(args.slide)
    with read_slide(args.slide, mpp=args.mpp, **_read_args(args)) as s:
        tiles = _tiles(s, args)
    spec = tiles.uns["tile_spec"]
    print(f"{s.slide_id}: {tiles.n_obs} tiles of {args.tile_px} px at {args.target_mpp} um/px "
          f"(level {spec.get('level', '?')}, min tissue {args.min_tissue})")
    if args.out:
        write_h5ad_atomic(tiles, args.out)
        print(f"wrote {args.out}")
    else:
        print(tiles.obs.head(10).to_string())
    return 0


def _stat_inputs(*paths) -> None:
    """A missing file, a symlink loop or an unreadable folder as an OSError naming the path (exit 2)."""
    import os

    for p in paths:
        os.stat(p)


def _read_args(args) -> dict:
    return {k: True for k in ("allow_non_brightfield", "allow_implausible_mpp") if getattr(args, k, False)}


def _cohort_args(args) -> dict:
    return {"weights": args.weights, "read_kwargs": _read_args(args),
            "tile_kwargs": {"tile_px": args.tile_px, "mpp": args.target_mpp, "min_tissue": args.min_tissue},
            "embed_kwargs": {"device": args.device, "dtype": args.dtype, "batch_size": args.batch_size,
                             "num_workers": args.num_workers, "engine": args.engine,
                             "num_threads": args.num_threads},
            "progress": not args.no_progress}


def _report(cohort) -> int:
    for sid, row in cohort.obs.iterrows():
        if row["status"] == "failed":
            print(f"pathkit: error: {sid}: {row['error']}", file=sys.stderr)
        else:
            print(f"{sid}: {row['status']}, {int(row['n_tiles'])} tiles -> {row['tile_file']}")
    n_failed = int((cohort.obs["status"] == "failed").sum())
    if n_failed:
        print(f"pathkit: {n_failed} of {cohort.n_obs} slides failed", file=sys.stderr)
        return 2
    return 0


def _cmd_embed(args) -> int:
    import pandas as pd

    from .tl.cohort import embed_cohort

    _stat_inputs(*args.slides)
    table = pd.DataFrame({"path": [str(p) for p in args.slides]})
    if args.mpp is not None:
        table["mpp"] = args.mpp
    cohort = embed_cohort(table, args.out, tile_model=args.model, write=False, resume=args.skip_existing,
                          **_cohort_args(args))
    return _report(cohort)


def _cmd_cohort(args) -> int:
    from .tl.cohort import embed_cohort

    if args.mpp is not None:
        raise PathkitError("pathkit cohort: give each slide's mpp in an 'mpp' column of the slide table "
                           "instead of --mpp")
    client = cluster = None
    if args.dask_workers > 0:
        from dask.distributed import Client, LocalCluster

        dash = None if str(args.dashboard).lower() in ("none", "off", "") else args.dashboard
        # the scheduler and the dashboard listen on this machine only unless asked (--dashboard 0.0.0.0:8787)
        cluster = LocalCluster(n_workers=args.dask_workers, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=dash)
        client = Client(cluster)
    try:
        cohort = embed_cohort(args.slides, args.out, tile_model=args.tile_model, slide_model=args.slide_model, slide_dir=args.slide_dir,
                              client=client, **_cohort_args(args))
    finally:
        if client is not None:
            client.close()
            cluster.close()
    print(f"wrote {Path(args.out) / 'cohort.h5ad'} ({cohort.n_obs} slides)")
    return _report(cohort)


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(out=args.out)
    return 0


def _cmd_fetch(args) -> int:
    from .io.manifest import fetch_manifest  # lazy: optional machinery

    table = fetch_manifest(args.manifest, args.dest)
    try:
        n = len(table)
    except TypeError:
        n = None
    print(f"fetched {n if n is not None else 'the'} files of {args.manifest} into {args.dest}")
    return 0


def _cmd_list_models(args) -> int:
    from .models import list_models

    df = list_models()
    if df.empty:
        print("no models registered")
        return 0
    cols = [c for c in ("kind", "architecture", "embed_dim", "input", "pool", "gated", "weights") if c in df]
    import pandas as pd

    with pd.option_context("display.max_colwidth", 50, "display.width", 200):
        print(df[cols].to_string())
    return 0


_COMMANDS = {"info": _cmd_info, "tile": _cmd_tile, "embed": _cmd_embed, "cohort": _cmd_cohort, "demo": _cmd_demo,
             "fetch": _cmd_fetch, "list-models": _cmd_list_models}


_CLI_FLAGS = {"allow_non_brightfield=True": "--allow-non-brightfield",
              "allow_implausible_mpp=True": "--allow-implausible-mpp", "mpp=": "--mpp"}


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())  # one line, whatever the message's layout
    for api, flag in _CLI_FLAGS.items():
        if api in msg and flag not in msg:
            msg += f" (command line: {flag})"
            break
    return msg


def main(argv=None) -> int:
    """Entry point of the `pathkit` console script; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help / usage errors: hand back argparse's code instead of exiting
        return int(e.code or 0)
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("pathkit: interrupted", file=sys.stderr)
        return 130
    except (PathkitError, OSError) as e:  # the user's input or the file system: say what, no traceback
        if args.debug:
            raise
        what = "" if isinstance(e, PathkitError) else f"{type(e).__name__}: "
        print(f"pathkit: error: {what}{_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: one line unless --debug
        if args.debug:
            raise
        print(f"pathkit: internal error: {type(e).__name__}: {_one_line(e)} (a bug; run again with --debug for "
              "the traceback and report it)", file=sys.stderr)
        return 1
