"""The HoVer-Net runner of ``pk.tl.segment_cells(..., model="hovernet")``: weights, network, tiling,
post-processing, type votes."""
from __future__ import annotations

import warnings
from pathlib import Path

from .._warn import user_stacklevel
from ..errors import WeightsError
from ._hovernet_post import hovernet_maps, np_hv_instances, type_votes
from ._watershed import haematoxylin


def read_hovernet_weights(path) -> dict:
    """The tensors of a HoVer-Net checkpoint: safetensors, or the authors' PyTorch ``.tar`` (a torch pickle of
    ``{"desc": {name: tensor}}``, read with ``torch.load(weights_only=True)``: no code runs)."""
    import torch

    from ..models.weights import read_state_dict, unwrap

    path = Path(path).expanduser()
    if path.is_file() and path.suffix != ".safetensors":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001  (read_state_dict below says what is wrong with the file)
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("desc"), dict):
            return unwrap(obj["desc"], path)
    return read_state_dict(path)


def load_hovernet(spec, weights, device="auto"):
    """(model on `device`, a description of the weights) for a ``hovernet_*`` cell segmenter entry."""
    import torch

    from .._device import resolve_device
    from ..models.weights import resolve, strip_prefixes
    from ._hovernet_net import HoVerNet

    mode = spec.arch.split("_", 1)[1] if "_" in spec.arch else "fast"
    nr_types = len(spec.classes) + 1 if spec.classes else None
    if weights is None:
        raise WeightsError(f"cell segmenter {spec.name!r} needs weights=: {spec.weights_help} "
                           f"Licence: {spec.license}.")
    if isinstance(weights, str) and weights == "random":
        warnings.warn(f"cell segmenter {spec.name!r} runs with RANDOM weights (weights='random'): its nuclei and "
                      f"cell types are meaningless (tests only). Real weights: {spec.weights_help}", UserWarning,
                      stacklevel=user_stacklevel())
        with torch.random.fork_rng(devices=[]):  # reproducible, and the caller's random state untouched
            torch.manual_seed(0)
            model = HoVerNet(nr_types, mode)
        return model.to(resolve_device(device)).eval(), "random"
    model = HoVerNet(nr_types, mode)
    if isinstance(weights, dict):
        sd, info = dict(weights), "state dict"
    else:
        path = resolve(weights)
        sd, info = read_hovernet_weights(path), str(path)
    expected = set(model.state_dict())
    sd, _ = strip_prefixes(sd, expected)
    # the authors' checkpoints converted from TensorFlow carry no BatchNorm step counters
    missing = sorted(k for k in expected - set(sd) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        raise WeightsError(f"weights {info} do not fit {spec.name!r} ({spec.arch}, {nr_types} type outputs): "
                           f"missing {missing[:4]} ({len(missing)}), unexpected {unexpected[:4]} "
                           f"({len(unexpected)}). {spec.weights_help}")
    try:
        model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shapes: e.g. a checkpoint with another number of types
        raise WeightsError(f"weights {info} for {spec.name!r}: {str(e).splitlines()[-1].strip()}") from e
    return model.to(resolve_device(device)).eval(), info


class HoVerNetRunner:
    """RGB at the entry's mpp -> (labels, per-type vote maps, haematoxylin)."""

    def __init__(self, spec, weights=None, device="auto", batch_size: int = 8):
        self.spec = spec
        self.name = spec.name
        self.mpp = float(spec.mpp)
        self.classes = tuple(spec.classes)
        self.model, self.weights_info = load_hovernet(spec, weights, device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device = next(self.model.parameters()).device
        self.batch_size = int(batch_size)
        self.params = {"mode": self.model.mode, "np_threshold": 0.5, "sobel_ksize": 21, "min_size_px": 10,
                       "marker_threshold": 0.4, "type_rule": "majority vote of the nucleus's pixels"}

    def __call__(self, rgb):
        prob, hv, types = hovernet_maps(self.model, rgb, device=self.device, batch_size=self.batch_size)
        labels = np_hv_instances(prob, hv)
        votes = type_votes(types, len(self.classes)) if self.classes and types is not None else None
        return labels, votes, haematoxylin(rgb)
