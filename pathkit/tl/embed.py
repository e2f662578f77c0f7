"""Tile embedding: the tiles AnnData of `pk.pp.tile` gains ``obsm["X_<model>"]``, streamed.

Tiles are read and decoded in DataLoader worker processes (each opens the slide once) and arrive as uint8
batches; resizing, cropping and normalisation happen on the compute device, then the model runs under
`torch.inference_mode` with the autocast dtype of :func:`pathkit._device.resolve_dtype`. Only one batch of
pixels is in flight per worker, and the output array is allocated once.
"""
from __future__ import annotations

import contextlib
import os
import re
import warnings

import numpy as np
import torch

from .._device import autocast, dtype_name, resolve_device, resolve_dtype
from .._io import h5ad_safe, malloc_trim
from .._version import __version__
from ..slide import slide_of_tiles
from ._preprocess import TilePreprocess
from ._tile_loader import resolve_num_workers, tile_loader
from ._tiles_check import check_tiles

__all__ = ["check_tiles", "clear_model_cache", "embed_tiles", "feature_key"]

_ENCODER_CACHE: dict = {}


def feature_key(model: str) -> str:
    """The default ``obsm`` key of a model's features: ``"X_<name>"`` with characters h5ad keys dislike
    (``timm:vit_small`` -> ``X_timm_vit_small``) replaced."""
    return "X_" + re.sub(r"[^0-9A-Za-z_]+", "_", str(model)).strip("_")


def _embed_dim(spec) -> int:
    """Output width without loading weights (meta-device forward when the registry does not say)."""
    if spec.embed_dim:
        return int(spec.embed_dim)
    from ..models import build_tile_encoder

    enc = build_tile_encoder(spec, device="meta")
    with torch.no_grad():
        out = enc(torch.empty(1, 3, spec.input_size, spec.input_size, device="meta"))
    return int(out.shape[-1])


def _model_info(spec, weights_info, dtype, device, dim, read_path=None):
    return h5ad_safe({
        "read_path": read_path,
        "name": spec.name, "arch": spec.arch, "kwargs": dict(spec.kwargs),
        "weights": weights_info.get("source"), "weights_sha256": weights_info.get("sha256"),
        "weights_verified": bool(weights_info.get("verified", False)),
        "embed_dim": dim, "input_size": spec.input_size, "resize": spec.resize,
        "interpolation": spec.interpolation, "mean": list(spec.mean), "std": list(spec.std),
        "pool": spec.pool, "dtype": dtype_name(dtype), "device": str(device),
        "pathkit_version": __version__,
    })


def _weights_key(weights):
    """Identity of a weights source: a local file counts as changed when its size or mtime changes."""
    if weights is None or str(weights) == "random" or str(weights).startswith(("hf_hub:", "http")):
        return str(weights)
    try:
        st = os.stat(weights)
        return (os.fspath(weights), st.st_size, st.st_mtime_ns)
    except OSError:
        return os.fspath(weights)


def _cached_encoder(spec, weights, dev, load):
    """The last encoder used stays loaded, so a cohort (or a Dask worker) loads its model once, not once per
    slide. One entry only: a second model replaces the first rather than doubling memory. The entry may hold
    an encoder whose weights an inference engine released (its compiled model then stays in the engine's
    cache); :func:`pathkit.engines.prepare_encoder` reloads it through :func:`_reload_encoder` when torch is
    needed."""
    key = (repr(spec), _weights_key(weights), str(dev))
    hit = _ENCODER_CACHE.get(key)
    if hit is None:
        _ENCODER_CACHE.clear()
        with torch.random.fork_rng(devices=[]):
            # random-init models (test models, timm:<arch> without weights) come out the same every call,
            # so outputs are reproducible; the caller's RNG state is left untouched
            torch.manual_seed(0)
            hit = load(spec, weights=weights, device=dev)
        _ENCODER_CACHE[key] = hit
    elif str(hit[1].get("source")) == "random":
        warnings.warn(f"model {spec.name!r} has RANDOM weights: its embeddings carry no biological meaning.",
                      UserWarning, stacklevel=_user_stacklevel())
    return hit


def _reload_encoder(spec, weights, dev, load):
    """The encoder loaded again after an inference engine released its weights (pathkit.engines)."""
    _ENCODER_CACHE.clear()
    return _cached_encoder(spec, weights, dev, load)[0]


def clear_model_cache() -> None:
    """Free the tile encoder (and its compiled engine model) that embed_tiles keeps loaded between calls."""
    from ..engines import clear_runner_cache

    _ENCODER_CACHE.clear()
    clear_runner_cache()


@contextlib.contextmanager
def _torch_threads(num_threads):
    """torch's intra-op threads set to an explicit `num_threads` for one call, then restored."""
    before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(max(1, int(num_threads)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _unwrapped(loader):
    """Iterate `loader`; a pathkit error raised in a DataLoader worker comes back as itself, in one line, not
    as torch's "Caught ... in DataLoader worker process" message with the worker's traceback."""
    from ..errors import PathkitError

    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except PathkitError as exc:
            text = str(exc)
            if not text.startswith("Caught ") or "Traceback" not in text:
                raise
            last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
            name = f"{type(exc).__module__}.{type(exc).__name__}: "
            raise type(exc)(last.removeprefix(name)) from None
        yield batch


def _run_encoder(encoder, spec, slide, xs, ys, tile_spec, dev, amp_dtype, batch_size, num_workers, progress,
                 stain=None):
    from .._progress import progress_bar

    n = len(xs)
    pre = TilePreprocess(spec).to(dev)
    loader = tile_loader(slide, xs, ys, tile_spec["tile_px"], tile_spec["mpp"], batch_size=batch_size,
                         num_workers=resolve_num_workers(num_workers, n, batch_size),
                         pin_memory=dev.type == "cuda", device=dev)
    feats = None
    start = n_batches = 0
    with progress_bar(total=n, unit="tile", desc=f"embed {slide.slide_id}", disable=not progress) as bar, \
            torch.inference_mode():
        for batch in _unwrapped(loader):
            batch = batch.to(dev, non_blocking=True)
            if stain is not None:  # on the uint8 tiles, before the model's own resize and normalisation
                batch = stain.transform_batch(batch)
            x = pre(batch, channels_last_input=True)
            with autocast(dev, amp_dtype):
                out = encoder(x)
            out = out.float().cpu().numpy()
            if feats is None:  # width known from the first batch (timm:<arch> entries leave it 0)
                feats = np.empty((n, out.shape[1]), dtype=np.float32)
            feats[start:start + len(out)] = out
            start += len(out)
            bar.update(len(out))
            n_batches += 1
            if n_batches % 20 == 0:
                malloc_trim()
    why = getattr(loader, "raw_reason", "") or ""
    read_path = "raw_jpeg" if getattr(loader, "raw_tiles", False) else ("read_tile" + (f" ({why})" if why else ""))
    return feats, read_path


def _stain_for(stain, tiles, slide):
    """The stain normaliser of embed_tiles(stain=...): a fitted one, its plain data, or a method name fitted on
    this slide's own tiles."""
    from ..pp._stain import as_normalizer, fit_stain

    if isinstance(stain, str):
        return fit_stain(tiles, stain, slide=slide)
    norm = as_normalizer(stain)
    if norm is not None:
        norm.n_unchanged = 0
    return norm


def embed_tiles(tiles, slide=None, model=None, *, key_added: str | None = None, weights=None, device="auto",
                dtype="auto", batch_size: int = 64, num_workers: int | None = None, progress: bool = True,
                copy: bool = False, stain=None, engine: str = "auto", num_threads: int | None = None):
    """Embed every tile with a tile encoder; the features go into ``tiles.obsm``.

    Parameters
    ----------
    tiles
        The tiles AnnData of :func:`pathkit.pp.tile` (obs ``x``, ``y``; ``uns["tile_spec"]``).
    slide
        The :class:`~pathkit.Slide` (or path) the tiles were cut from. None: the file recorded in
        ``tiles.uns["slide"]["path"]``.
    model
        A registry name (see ``pk.list_models()``) or ``"timm:<architecture>"`` for any timm model (random
        weights unless `weights` is given, with a loud warning).
    key_added
        The ``obsm`` key of the features; default ``"X_<model>"`` (e.g. ``"X_uni"``).
    weights
        None: the registry entry's published weights; a local path or ``"hf_hub:<repo>"``; ``"random"``.
    device
        ``"auto"`` (cuda, then mps, then cpu), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
    dtype
        Autocast dtype. ``"auto"``: bfloat16 on CUDA and on CPUs with native bf16 (about 2x faster, cosine
        >= 0.999 to float32), float32 elsewhere; ``"float32"``: exact, bit-for-bit reproducible features.
    batch_size
        Tiles per forward pass.
    num_workers
        Reader processes; None: min(4, CPU count), or 0 inside a daemonic process (Dask worker). 0 reads in
        the calling process.
    progress
        Show a progress bar counting tiles.
    copy
        Return a new AnnData instead of writing into `tiles`.
    stain
        A stain normaliser of :func:`pathkit.pp.fit_stain` (or its ``to_dict()``), applied to each uint8 tile
        batch before the model's own normalisation; ``"macenko"`` / ``"reinhard"`` / ``"vahadane"``: fitted on
        this slide's own tiles (each slide its own target). Recorded in ``uns["models"][key_added]["stain"]``.
    engine
        ``"auto"``: on CPU the inference engine measured fastest for the model's family (OpenVINO, else ONNX
        Runtime, when ``pathkit[engines]`` is installed; see :mod:`pathkit.engines`), torch on GPUs and when
        no engine is installed or the export / parity check fails (with a one-line warning);
        ``"torch"``, ``"openvino"`` or ``"onnxruntime"``: that one (an engine that fails raises
        :class:`~pathkit.errors.EngineError`). An engine runs a one-off ONNX export cached beside the weights,
        checked against torch float32 on the first tiles (max abs error <= 1e-4, cosine >= 0.99999).
    num_threads
        CPU threads of the engine (and of torch during this call); None: ``torch.get_num_threads()``.

    Returns
    -------
    None, or the new AnnData when ``copy=True``. Sets the following fields:

    ``obsm[key_added]`` : float32 array (n_tiles x dim)
        The features, in the order of ``tiles.obs``.
    ``uns["models"][key_added]`` : dict
        Provenance: name, arch, weights source + sha256, mean, std, input_size, resize, interpolation,
        pool, dtype, device, pathkit_version, ``engine`` / ``engine_version`` / ``engine_reason`` (which runtime
        computed the features and why), ``num_threads``, ``stain`` (the normaliser's plain data, or None), and ``read_path``: ``"raw_jpeg"`` when the stored JPEG tiles were
        decoded in batches (the fast path, pixel-identical on CPU; ``PATHKIT_RAW_TILES=0`` turns it off), else
        ``"read_tile"`` with the reason.
    """
    from ..engines import prepare_encoder
    from ..models import get_spec, load_tile_encoder

    if model is None:
        raise TypeError("embed_tiles needs a model: pk.tl.embed_tiles(tiles, slide, 'uni'); see pk.list_models()")
    from ..errors import ParameterError

    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ParameterError(f"batch_size={batch_size!r}: it is the number of tiles per forward pass, an integer "
                             ">= 1 (e.g. 64; lower it if the GPU runs out of memory)")
    if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(num_workers, (int, np.integer))
                                    or num_workers < 0):
        raise ParameterError(f"num_workers={num_workers!r}: the number of tile reader processes, an integer >= 0 "
                             "(0 reads in this process), or None for the default")
    check_tiles(tiles)  # before the slide is looked up in tiles.uns
    slide = slide_of_tiles(tiles, slide)
    tile_spec = check_tiles(tiles, slide)
    spec = get_spec(model, kind="tile")
    key = key_added or feature_key(spec.name)
    dev = resolve_device(device)
    amp_dtype = resolve_dtype(dtype, dev)
    adata = tiles.copy() if copy else tiles
    n = adata.n_obs
    xs = adata.obs["x"].to_numpy(dtype=np.int64)
    ys = adata.obs["y"].to_numpy(dtype=np.int64)

    if n == 0:
        warnings.warn(f"{slide.path}: there are no tiles (no tissue); writing an empty obsm[{key!r}]",
                      UserWarning, stacklevel=2)
        feats = np.zeros((0, _embed_dim(spec)), dtype=np.float32)
        read_path = None
        winfo = {"source": str(weights) if weights is not None else
                 (spec.weights[0] if spec.weights else "random"), "sha256": None}
    else:
        norm = _stain_for(stain, adata, slide)
        encoder, winfo = _cached_encoder(spec, weights, dev, load_tile_encoder)
        # an engine frees the torch weights once it has taken over; torch comes back through reload when needed
        encoder, engine_info = prepare_encoder(
            encoder, spec, winfo, engine, dev, amp_dtype, num_threads,
            reload=lambda: _reload_encoder(spec, weights, dev, load_tile_encoder))
        with _torch_threads(num_threads):
            feats, read_path = _run_encoder(encoder, spec, slide, xs, ys, tile_spec, dev, amp_dtype, batch_size,
                                            num_workers, progress, norm)
        del encoder
        from ._cohort_record import check_finite

        check_finite(feats, f"{slide.path}: tile model {spec.name!r}", f"weights={winfo.get('source')}")
    adata.obsm[key] = feats
    models = dict(adata.uns.get("models") or {})
    models[key] = _model_info(spec, winfo, amp_dtype, dev, int(feats.shape[1]), read_path)
    if stain is not None:
        models[key]["stain"] = h5ad_safe(dict(norm.to_dict(), n_unchanged=norm.n_unchanged) if n else
                                         {"method": str(getattr(stain, "method", stain))})
    if n:
        models[key].update(h5ad_safe({k: v for k, v in engine_info.items() if k != "model"}))
    adata.uns["models"] = models
    return adata if copy else None


from .._warn import user_stacklevel as _user_stacklevel  # last: touches no import order (issue 29)
