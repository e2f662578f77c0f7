"""InstanSeg brightfield nuclei in pathkit: weights (converted once from the authors' TorchScript release to
safetensors), the input convention of the authors' inference, the UNet and the post-processing.

The authors ship a TorchScript file (``instanseg.pt`` in ``brightfield_nuclei.zip``): the traced UNet
(``fcn.*``), the pixel classifier (``pixel_classifier.*``) and the post-processing defaults as attributes.
:func:`convert_instanseg` reads the tensors and those defaults once and writes a safetensors file; pathkit then
builds its own UNet and MLP from it and never runs TorchScript code.
"""
from __future__ import annotations

import json
import math
import warnings
import zipfile
from pathlib import Path

import numpy as np

from ..errors import WeightsError
from ._instanseg_post import InstanSegParams, PixelClassifier, instanseg_labels

FORMAT = "pathkit-instanseg-1"
# attributes of the authors' InstanSeg_Torchscript module copied into the safetensors metadata
_LAYOUT = ("pixel_size", "n_sigma", "dim_coords", "dim_seeds", "cells_and_nuclei")
_DEFAULTS = {f"default_{k}": k for k in InstanSegParams.__dataclass_fields__}


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith(("constants.pkl", "/code/__torch__.py", ".pt")) for n in names)


def _torchscript_in(src: Path, tmp: Path) -> Path:
    """The TorchScript file itself, or the ``.pt`` inside the authors' release zip (extracted into `tmp`)."""
    with zipfile.ZipFile(src) as z:
        names = z.namelist()
        if any(n.endswith("constants.pkl") for n in names):
            return src
        pts = [n for n in names if n.endswith(".pt")]
        if len(pts) != 1:
            raise WeightsError(f"{src}: expected one TorchScript .pt file in the zip, found {pts}")
        return Path(z.extract(pts[0], tmp))


def convert_instanseg(src, dst) -> Path:
    """Convert InstanSeg's released TorchScript model to a safetensors file pathkit loads.

    Run once, on a file you trust (``torch.jit.load`` compiles the TorchScript code of the archive; nothing of
    it is run here beyond reading attributes). The result holds the UNet (``fcn.*``) and pixel classifier
    (``pixel_classifier.*``) tensors, and in its metadata the model's pixel size, output layout and
    post-processing defaults.

    Parameters
    ----------
    src
        The authors' ``brightfield_nuclei.zip`` or the ``instanseg.pt`` inside it.
    dst
        The ``.safetensors`` file to write (atomically).

    Returns
    -------
    pathlib.Path
        `dst`; pass it as ``pk.tl.segment_cells(..., model="instanseg", weights=dst)``.
    """
    import tempfile

    import torch
    from safetensors.torch import save_file

    from .._io import atomic_write

    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.is_file():
        raise WeightsError(f"{src} does not exist (download brightfield_nuclei.zip from the InstanSeg release)")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        m = torch.jit.load(str(_torchscript_in(src, Path(tmp))), map_location="cpu")
    # the traced UNet carries the classifier too (fcn.pixel_classifier.*, the same tensors): kept once
    sd = {k: v.detach().clone().contiguous() for k, v in m.state_dict().items()
          if k.startswith(("fcn.", "pixel_classifier.")) and not k.startswith("fcn.pixel_classifier.")}
    if not any(k.startswith("fcn.") for k in sd) or not any(k.startswith("pixel_classifier.") for k in sd):
        raise WeightsError(f"{src}: not an InstanSeg TorchScript model (no fcn.* / pixel_classifier.* tensors)")
    meta = {k: getattr(m, k) for k in _LAYOUT if hasattr(m, k)}
    params = {v: getattr(m, k) for k, v in _DEFAULTS.items() if hasattr(m, k)}
    with atomic_write(dst) as tmp_path:
        save_file(sd, str(tmp_path), metadata={"format": FORMAT, "layout": json.dumps(meta),
                                                 "params": json.dumps(params), "source": src.name})
    return dst


def load_instanseg(weights):
    """(state dict, layout, params) of a converted InstanSeg file (:func:`convert_instanseg`), or of a
    tensor-only state dict with the same keys (then the layout is read from the tensor shapes)."""
    from ..models.weights import _looks_like_safetensors, read_state_dict

    path = Path(weights).expanduser()
    if path.is_file() and _is_torchscript(path):
        raise WeightsError(
            f"{path} is a TorchScript archive, which pathkit does not run. Convert it once: "
            f"`pathkit.cells.convert_instanseg({str(path)!r}, 'instanseg_brightfield_nuclei.safetensors')`, "
            "then pass weights='instanseg_brightfield_nuclei.safetensors'.")
    sd = read_state_dict(path)
    meta = {}
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    layout = json.loads(meta.get("layout", "{}"))
    params = json.loads(meta.get("params", "{}"))
    return sd, layout, params


def _architecture(sd: dict, mlp: dict, where) -> dict:
    enc = sorted({int(k.split(".")[1]) for k in sd if k.startswith("encoder.")})
    heads = sorted({int(k.split(".")[1]) for k in sd if k.startswith("decoders.")})
    if not enc or not heads or "fc1.weight" not in mlp:
        raise WeightsError(f"{where}: not InstanSeg weights (need fcn.encoder.*, fcn.decoders.*, "
                           f"pixel_classifier.*; got {sorted({k.split('.')[0] for k in sd})[:8]})")
    shallow = [int(sd[f"encoder.{i}.conv1.0.weight"].shape[0]) for i in enc]
    outs = []
    for g in heads:
        ks = sorted({int(k.split(".")[3]) for k in sd if k.startswith(f"decoders.{g}.final_block.")})
        outs.append([int(sd[f"decoders.{g}.final_block.{k}.0.weight"].shape[0]) for k in ks])
    norm = ("BATCH" if "encoder.0.conv0.1.running_mean" in sd else
            "INSTANCE" if "encoder.0.conv0.1.weight" in sd else None)
    fc1 = mlp["fc1.weight"]
    return {"in_channels": int(sd["encoder.0.conv1.0.weight"].shape[1]), "layers": shallow[::-1],
            "out_channels": outs, "norm": norm, "mlp_in": int(fc1.shape[1]), "mlp_width": int(fc1.shape[0])}


def normalise(rgb: np.ndarray):
    """The authors' input: float32 channels first, each channel scaled so that its 0.1 and 99.9 percentiles
    (over the image read) become 0 and 1, then clipped to [-2, 3]."""
    import torch

    img = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1).contiguous()
    for c in range(img.shape[0]):
        lo, hi = np.percentile(img[c].numpy(), [0.1, 99.9])
        img[c] = (img[c] - lo) / max(1e-3, hi - lo)
    return img.clamp_(-2, 3)


class InstanSegModel:
    """InstanSeg's UNet and pixel classifier from converted weights; ``model(rgb)`` -> labels (int32, h x w,
    1..n consecutive)."""

    def __init__(self, weights, params=None, device="auto"):
        import torch

        from .._device import resolve_device
        from ._instanseg_net import InstanSegUNet

        sd, layout, defaults = load_instanseg(weights)
        mlp = {k[len("pixel_classifier."):]: v for k, v in sd.items() if k.startswith("pixel_classifier.")}
        fcn = {k[len("fcn."):]: v for k, v in sd.items() if k.startswith("fcn.")} or sd
        fcn = {k: v for k, v in fcn.items() if not k.startswith("pixel_classifier.")}
        arch = _architecture(fcn, mlp, weights)
        self.device = resolve_device(device)
        self.net = InstanSegUNet(arch["in_channels"], arch["out_channels"], arch["layers"], arch["norm"])
        self.mlp = PixelClassifier(arch["mlp_in"], arch["mlp_width"])
        try:
            self.net.load_state_dict(fcn, strict=True)
            self.mlp.load_state_dict(mlp, strict=True)
        except RuntimeError as e:
            raise WeightsError(f"{weights}: tensors do not fit InstanSeg's UNet {arch}: {e}") from e
        self.net.eval().to(self.device)
        self.mlp.eval().to(self.device)
        head = arch["out_channels"][0]
        self.dim_coords = int(layout.get("dim_coords", 2))
        self.n_sigma = int(layout.get("n_sigma", arch["mlp_in"] - self.dim_coords))
        self.dim_seeds = int(layout.get("dim_seeds", sum(head) - self.dim_coords - self.n_sigma))
        self.dim_out = self.dim_coords + self.n_sigma + self.dim_seeds
        ps = float(layout.get("pixel_size") or "nan")
        self.pixel_size = ps if math.isfinite(ps) and ps > 0 else None  # None: the registry entry's mpp
        self.defaults = InstanSegParams.from_dict({k: v for k, v in defaults.items()
                                                   if k in InstanSegParams.__dataclass_fields__})
        merged = {**self.defaults.as_dict(), **(params.as_dict() if isinstance(params, InstanSegParams)
                                                 else dict(params or {}))}
        self.params = InstanSegParams.from_dict(merged)
        self._torch = torch

    def output(self, rgb: np.ndarray):
        """The network's output (channels, h, w) for an RGB read, as the authors' inference makes it: inputs
        normalised, reflect-padded at the bottom and right to a multiple of 16, output cropped back."""
        torch = self._torch
        x = normalise(rgb)[None]
        h, w = x.shape[-2:]
        ph, pw = 16 * math.ceil(h / 16) - h, 16 * math.ceil(w / 16) - w
        if ph or pw:
            x = torch.nn.functional.pad(x, [0, pw, 0, ph], mode="reflect")
        with torch.no_grad():
            out = self.net(x.to(self.device))
        return out[0, :, :h, :w]

    def labels_of_output(self, out) -> np.ndarray:
        lab = instanseg_labels(out[:self.dim_out], self.mlp, self.params, dim_coords=self.dim_coords,
                               n_sigma=self.n_sigma, dim_seeds=self.dim_seeds).cpu().numpy()
        from ._watershed import _relabel

        return _relabel(lab.astype(np.int64)).astype(np.int32)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return self.labels_of_output(self.output(rgb))
