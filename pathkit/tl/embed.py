"""Tile embedding: slide -> AnnData (tiles x features), streamed.

Tiles are read and decoded in DataLoader worker processes (each opens the slide once) and arrive as uint8
batches; resizing, cropping and normalisation happen on the compute device in float, then the model runs
under `torch.inference_mode` (bf16 autocast on CUDA by default). Only one batch of pixels is in flight per
worker, and the output array is allocated once.
"""
from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .._version import __version__
from ..errors import TableError

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}
# spec.interpolation names -> resampling filter (PIL / torchvision spelling)
_INTERP = {"bicubic": "bicubic", "cubic": "bicubic", "bilinear": "bilinear", "linear": "bilinear",
           "lanczos": "lanczos", "box": "box", "nearest": "nearest"}


def _bicubic(x: np.ndarray) -> np.ndarray:  # Keys' cubic with a = -0.5, as PIL uses
    a = -0.5
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 3, np.sinc(x) * np.sinc(x / 3), 0.0)


_FILTERS = {  # name -> (function, support)
    "bilinear": (lambda x: np.clip(1 - np.abs(x), 0, None), 1.0),
    "bicubic": (_bicubic, 2.0),
    "lanczos": (_lanczos, 3.0),
    "box": (lambda x: ((x >= -0.5) & (x < 0.5)).astype(np.float64), 0.5),
}


def resample_matrix(in_size: int, out_size: int, mode: str) -> np.ndarray:
    """[out_size, in_size] weights of PIL's separable resampling (antialiased when shrinking): row i holds
    the filter, stretched by the scale factor, centred on output pixel i and normalised to sum 1."""
    fn, support = _FILTERS[mode]
    scale = in_size / out_size
    fscale = max(scale, 1.0)
    support = support * fscale
    w = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        k = fn((np.arange(lo, hi) - center + 0.5) / fscale)
        w[i, lo:hi] = k / k.sum()
    return w


def resolve_device(device="auto") -> torch.device:
    """"auto" -> cuda when available, else cpu."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    """None -> bfloat16 on CUDA, float32 elsewhere (deterministic CPU results)."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(_DTYPES)} (or a torch.dtype)") from None


class TilePreprocess(torch.nn.Module):
    """uint8 tiles -> the model's normalised float input [B, 3, S, S], on whatever device it is given.

    Input: uint8 [B, 3, H, W] (any memory layout), or [B, H, W, 3] with `channels_last_input=True`.
    Resize the shorter side to `spec.resize` (or `input_size` when None) with `spec.interpolation` exactly
    as PIL does (antialiased when shrinking, Keys cubic a=-0.5, each pass rounded to whole grey levels) -
    the resize the models were trained with - then centre-crop `input_size`, scale to [0, 1] and normalise
    with the spec's mean/std.

    On CPU bilinear/bicubic use torch's vectorised uint8 kernel (PIL's algorithm); elsewhere two float
    matmuls with PIL's weight matrices. Both agree with PIL within one grey level. (torch's float
    `interpolate` uses a=-0.75 and differs from PIL by up to ~7 grey levels on edges; not used.)
    """

    def __init__(self, spec):
        super().__init__()
        self.resize = int(spec.resize or spec.input_size)
        self.crop = int(spec.input_size)
        mode = _INTERP.get(str(spec.interpolation).lower())
        if mode is None:
            raise ValueError(f"model {spec.name!r}: interpolation {spec.interpolation!r} is not one of "
                             f"{sorted(_INTERP)}")
        self.mode = mode
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
        # (x/255 - mean)/std folded into one multiply-add
        self.register_buffer("scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("shift", -mean / std, persistent=False)
        self._mats: dict = {}

    def _size(self, h, w):
        if h <= w:
            return self.resize, max(1, int(self.resize * w / h))
        return max(1, int(self.resize * h / w)), self.resize

    def _matrix(self, n_in, n_out, device):
        key = (n_in, n_out, str(device))
        if key not in self._mats:
            m = resample_matrix(n_in, n_out, self.mode)
            self._mats[key] = torch.as_tensor(m, dtype=torch.float32, device=device)
        return self._mats[key]

    def _resize(self, x: torch.Tensor, size) -> torch.Tensor:
        (h, w), (oh, ow) = x.shape[-2:], size
        if x.dtype == torch.uint8 and x.device.type == "cpu" and self.mode in ("bilinear", "bicubic"):
            return F.interpolate(x.contiguous(memory_format=torch.channels_last), size=size, mode=self.mode,
                                 align_corners=False, antialias=True)
        if self.mode == "nearest":
            return F.interpolate(x, size=size, mode="nearest-exact")
        x = x.float()
        # horizontal pass first, each pass rounded half up and clipped to uint8, as PIL
        if ow != w:
            x = torch.matmul(x, self._matrix(w, ow, x.device).T).add_(0.5).floor_().clamp_(0, 255)
        if oh != h:
            x = torch.matmul(self._matrix(h, oh, x.device), x).add_(0.5).floor_().clamp_(0, 255)
        return x

    def forward(self, x: torch.Tensor, channels_last_input: bool = False) -> torch.Tensor:
        if channels_last_input:
            x = x.permute(0, 3, 1, 2)  # a view: NCHW with channels-last strides
        h, w = x.shape[-2:]
        if min(h, w) != self.resize:
            x = self._resize(x, self._size(h, w))
            h, w = x.shape[-2:]
        if (h, w) != (self.crop, self.crop):
            if h < self.crop or w < self.crop:
                raise ValueError(f"tiles of {h}x{w} px after resizing are smaller than the crop {self.crop}")
            top = round((h - self.crop) / 2.0)
            left = round((w - self.crop) / 2.0)
            x = x[..., top:top + self.crop, left:left + self.crop]
        # NCHW-contiguous while still uint8 (4x less to move), then one fused multiply-add into a new tensor
        return torch.addcmul(self.shift, x.contiguous().float(), self.scale)


class TileDataset(torch.utils.data.Dataset):
    """Tile i of a tile table -> uint8 tensor [tile_px, tile_px, 3] (HWC) read with `Slide.read_tile`.

    Batches stay HWC; the consumer permutes them to CHW as a free view with channels-last strides, the
    layout torch's fast uint8 resize wants."""

    def __init__(self, slide, xs, ys, tile_px: int, mpp: float):
        self.slide = slide
        self.xs = np.asarray(xs, dtype=np.int64)
        self.ys = np.asarray(ys, dtype=np.int64)
        self.tile_px = int(tile_px)
        self.mpp = float(mpp)

    def __len__(self):
        return len(self.xs)

    def __getitem__(self, i):
        tile = self.slide.read_tile(int(self.xs[i]), int(self.ys[i]), tile_px=self.tile_px, mpp=self.mpp)
        if not (tile.flags.writeable and tile.flags.c_contiguous):  # torch wants its own writable memory
            tile = np.array(tile, order="C", copy=True)
        return torch.from_numpy(tile)


def _worker_init(_):
    # A forked worker inherits the parent's open file (and its shared seek offset); give each worker its
    # own handle by a pickle round trip, which reopens the slide lazily.
    info = torch.utils.data.get_worker_info()
    info.dataset.slide = pickle.loads(pickle.dumps(info.dataset.slide))


def tile_loader(slide, xs, ys, tile_px, mpp, batch_size=64, num_workers=0, pin_memory=False):
    """A DataLoader of uint8 tile batches [B, tile_px, tile_px, 3] (HWC) in table order."""
    ds = TileDataset(slide, xs, ys, tile_px, mpp)
    kw = {}
    if num_workers > 0:
        kw = {"worker_init_fn": _worker_init, "prefetch_factor": 2, "persistent_workers": False}
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                       pin_memory=pin_memory, **kw)


def default_num_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return min(4, n)


def _h5ad_safe(obj):
    """uns values h5ad can store: tuples -> lists, numpy scalars -> python, paths -> str."""
    if isinstance(obj, dict):
        return {str(k): _h5ad_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_h5ad_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.dtype):
        return str(obj).replace("torch.", "")
    return obj


def _embed_dim(spec) -> int:
    """Output width without loading weights (meta-device forward when the registry does not say)."""
    if spec.embed_dim:
        return int(spec.embed_dim)
    from ..models import build_tile_encoder

    enc = build_tile_encoder(spec, device="meta")
    with torch.no_grad():
        out = enc(torch.empty(1, 3, spec.input_size, spec.input_size, device="meta"))
    return int(out.shape[-1])


def _model_info(spec, weights_info, dtype, device, dim):
    return _h5ad_safe({
        "name": spec.name, "arch": spec.arch, "kwargs": dict(spec.kwargs),
        "weights": weights_info.get("source"), "weights_sha256": weights_info.get("sha256"),
        "weights_verified": bool(weights_info.get("verified", False)),
        "embed_dim": dim, "input_size": spec.input_size, "resize": spec.resize,
        "interpolation": spec.interpolation, "mean": list(spec.mean), "std": list(spec.std),
        "pool": spec.pool, "dtype": str(dtype).replace("torch.", ""), "device": str(device),
        "pathkit_version": __version__,
    })


def _check_tiles(tiles, slide):
    missing = [c for c in ("x", "y") if c not in tiles.columns]
    if missing:
        raise TableError(f"tile table lacks column(s) {missing}; make it with pk.pp.tile(slide)")
    spec = tiles.attrs.get("tile_spec")
    if not spec or "tile_px" not in spec or "mpp" not in spec:
        raise TableError(
            "tile table has no attrs['tile_spec'] (tile_px, mpp, ...); pandas drops attrs in some operations "
            "and CSV files do not keep them. Make the table with pk.pp.tile(slide), or set "
            "tiles.attrs['tile_spec'] = dict(tile_px=..., mpp=...) by hand.")
    slide_mpp = spec.get("slide_mpp")
    if slide_mpp is not None and abs(float(slide_mpp) - float(slide.mpp)) > 1e-6 * float(slide.mpp):
        raise TableError(
            f"tile table was made for a slide with mpp {slide_mpp}, but {slide.path} has mpp {slide.mpp}: "
            "tile it again with pk.pp.tile(slide)")
    return spec


_ENCODER_CACHE: dict = {}
_LIBC = []


def _malloc_trim() -> None:
    """Hand freed heap pages back to the OS (glibc). Without it the main process's memory creeps up by
    ~100 MB per 1,000 tiles from fragmentation of per-batch buffers (docs/benchmarks_memory.md)."""
    try:
        if not _LIBC:
            import ctypes

            _LIBC.append(ctypes.CDLL("libc.so.6"))
        _LIBC[0].malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


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
    slide. One entry only: a second model replaces the first rather than doubling memory."""
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
                      UserWarning, stacklevel=3)
    return hit


def clear_model_cache() -> None:
    """Free the tile encoder that embed_tiles keeps loaded between calls."""
    _ENCODER_CACHE.clear()


def embed_tiles(slide, model, tiles=None, weights=None, device="auto", batch_size=64, num_workers=None,
                dtype=None, progress=True):
    """Embed every tile of a slide with a tile encoder.

    Parameters
    ----------
    slide
        A `pk.Slide` or a path to a slide file.
    model
        A registry name (see `pk.list_models()`) or ``"timm:<architecture>"`` for any timm model (random
        weights unless `weights` is given, with a loud warning).
    tiles
        The tile table of `pk.pp.tile` (columns x, y, tissue; ``attrs["tile_spec"]``). None: `pk.pp.tile(slide)`
        with its defaults.
    weights
        None: the registry entry's published weights; a local path or ``"hf_hub:<repo>"``; ``"random"``.
    device
        ``"auto"`` (cuda when available, else cpu), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
    batch_size
        Tiles per forward pass.
    num_workers
        Reader processes; None: min(4, CPU count). 0 reads in the calling process.
    dtype
        Autocast dtype; None: bfloat16 on CUDA, float32 on CPU (bit-for-bit reproducible).
    progress
        Show a progress bar counting tiles.

    Returns
    -------
    AnnData with `X` float32 (n_tiles x dim), `var_names` "0".."dim-1", `obs` slide_id / x / y / tissue
    (obs_names "0".."n-1" in tile order), `obsm["spatial"]` (x, y) float64, `uns["tile_spec"]`,
    `uns["slide"]` (`Slide.info()`, with the file's sha256) and `uns["model"]` (name, arch, weights source +
    sha256, mean, std, input_size, resize, interpolation, pool, dtype, device, pathkit_version).
    """
    import anndata as ad
    import pandas as pd
    from tqdm.auto import tqdm

    from .. import pp
    from ..models import get_spec, load_tile_encoder
    from ..slide import read_slide

    if isinstance(slide, (str, os.PathLike)):
        slide = read_slide(slide)
    spec = get_spec(model, kind="tile")
    if tiles is None:
        tiles = pp.tile(slide)
    tile_spec = _check_tiles(tiles, slide)
    dev = resolve_device(device)
    amp_dtype = resolve_dtype(dtype, dev)
    n = len(tiles)

    xs = tiles["x"].to_numpy(dtype=np.int64)
    ys = tiles["y"].to_numpy(dtype=np.int64)
    tissue = (tiles["tissue"].to_numpy(dtype=np.float64) if "tissue" in tiles.columns
              else np.full(n, np.nan))

    if n == 0:
        warnings.warn(f"{slide.path}: the tile table is empty (no tissue tiles); returning an empty AnnData",
                      UserWarning, stacklevel=2)
        dim = _embed_dim(spec)
        feats = np.zeros((0, dim), dtype=np.float32)
        winfo = {"source": str(weights) if weights is not None else
                 (spec.weights[0] if spec.weights else "random"), "sha256": None}
    else:
        encoder, winfo = _cached_encoder(spec, weights, dev, load_tile_encoder)
        pre = TilePreprocess(spec).to(dev)
        if num_workers is None:
            num_workers = default_num_workers()
        # a worker per batch at most: starting readers that would get nothing costs time on small tables
        num_workers = min(int(num_workers), -(-n // int(batch_size)))
        loader = tile_loader(slide, xs, ys, tile_spec["tile_px"], tile_spec["mpp"], batch_size=batch_size,
                             num_workers=num_workers, pin_memory=dev.type == "cuda")
        feats = None
        autocast = torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32)
        start = n_batches = 0
        with tqdm(total=n, unit="tile", desc=f"embed {slide.slide_id}", disable=not progress) as bar, \
                torch.inference_mode():
            for batch in loader:
                x = pre(batch.to(dev, non_blocking=True), channels_last_input=True)
                with autocast:
                    out = encoder(x)
                out = out.float().cpu().numpy()
                if feats is None:  # width known from the first batch (timm:<arch> entries leave it 0)
                    feats = np.empty((n, out.shape[1]), dtype=np.float32)
                feats[start:start + len(out)] = out
                start += len(out)
                bar.update(len(out))
                n_batches += 1
                if n_batches % 20 == 0:
                    _malloc_trim()
        dim = feats.shape[1]
        del encoder

    obs = pd.DataFrame({
        "slide_id": pd.Categorical([slide.slide_id] * n),
        "x": xs, "y": ys, "tissue": tissue,
    }, index=pd.Index([str(i) for i in range(n)]))
    adata = ad.AnnData(X=feats, obs=obs, var=pd.DataFrame(index=[str(i) for i in range(dim)]))
    adata.obsm["spatial"] = np.stack([xs, ys], axis=1).astype(np.float64).reshape(n, 2)
    adata.uns["tile_spec"] = _h5ad_safe(dict(tile_spec))
    adata.uns["slide"] = _h5ad_safe(slide.info())
    adata.uns["model"] = _model_info(spec, winfo, amp_dtype, dev, dim)
    return adata


def write_h5ad_atomic(adata, path) -> Path:
    """Write `adata` to `path` via a temporary file in the same folder and `os.replace`, so a reader never
    sees a half-written file and an interrupted run leaves no file at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
