"""Saving and loading a fitted MIL estimator: ``model.safetensors`` (weights) + ``config.json`` (everything
needed to rebuild it: network name and hyper-parameters, task, classes, survival bins, regression scaling,
the feature key and width, the covariates' sources, encoding and training mean / sd)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..._io import write_text_atomic
from ...errors import WeightsError

_FORMAT = 1


def _plain(values):
    """numpy scalars -> python (JSON), None stays None."""
    return None if values is None else [v.item() if hasattr(v, "item") else v for v in values]


def save_estimator(est, path) -> Path:
    """Write ``path/model.safetensors`` and ``path/config.json``; returns the folder."""
    from safetensors.torch import save_file

    from ..._version import __version__

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in est.module_.state_dict().items()}
    save_file(state, str(path / "model.safetensors"))
    cfg = {"format": _FORMAT, "pathkit": __version__, "model": est.model, "task": est.task,
           "params": est.params, "in_dim": est.in_dim_, "n_out": est.n_out_, "classes": _plain(est.classes_),
           "label": est.label_, "time": est.time_, "event": est.event_, "use_rep": est.use_rep_,
           "split_by": est.split_by_, "bag_by": est.bag_by,
           "bins": None if est.bins_ is None else [float(b) for b in est.bins_[1:-1]],
           "y_mean": None if est.y_mean_ is None else np.asarray(est.y_mean_).tolist(),
           "y_sd": None if est.y_sd_ is None else np.asarray(est.y_sd_).tolist(),
           "covariates": None if est.covariates_ is None else est.covariates_.to_json(),
           "training": {k: getattr(est, k) for k in ("epochs", "lr", "weight_decay", "patience",
                                                      "batch_size", "val_fraction", "n_bins", "alpha_surv",
                                                      "random_state")}}
    write_text_atomic(path / "config.json", json.dumps(cfg, indent=1, default=str))
    return path


def load_estimator(cls, path, *, device: str = "auto"):
    """Rebuild the estimator saved by :func:`save_estimator` in ``path``."""
    from safetensors.torch import load_file

    from ...models.mil import CovariateFusion, build_mil
    from .covariates import CovariateSpec

    path = Path(path)
    cfg_file, w_file = path / "config.json", path / "model.safetensors"
    for f in (cfg_file, w_file):
        if not f.exists():
            raise FileNotFoundError(f"{f} does not exist: MIL.load needs the folder written by MIL.save")
    try:
        cfg = json.loads(cfg_file.read_text())
    except ValueError as exc:  # a save cut short (full disk) or a file edited by hand
        raise WeightsError(f"{cfg_file}: not valid JSON ({exc}); the model folder is damaged: save the model "
                           "again with MIL.save (or copy the folder again)") from None
    if cfg.get("format") != _FORMAT:
        raise WeightsError(f"{cfg_file}: format {cfg.get('format')!r} is not {_FORMAT}")
    tr = cfg["training"]
    est = cls(cfg["model"], cfg["task"], bag_by=cfg["bag_by"], device=device, progress=False,
              **tr, **cfg["params"])
    module = build_mil(cfg["model"], cfg["in_dim"], cfg["n_out"], **cfg["params"])
    cov = CovariateSpec.from_json(cfg["covariates"]) if cfg.get("covariates") else None
    if cov is not None:
        module = CovariateFusion(module, len(cov.columns), cfg["n_out"])
    try:
        module.load_state_dict(load_file(str(w_file)))
    except RuntimeError as err:
        raise WeightsError(f"{w_file} does not fit {cfg['model']!r} with {cfg['params']}: {err}") from None
    est.module_ = module.eval()
    est.in_dim_, est.n_out_, est.classes_ = cfg["in_dim"], cfg["n_out"], cfg["classes"]
    est.label_, est.time_, est.event_ = cfg["label"], cfg["time"], cfg["event"]
    est.use_rep_, est.split_by_ = cfg["use_rep"], cfg["split_by"]
    est.bins_ = None if cfg["bins"] is None else np.r_[-np.inf, cfg["bins"], np.inf]
    est.y_mean_ = None if cfg["y_mean"] is None else np.asarray(cfg["y_mean"])
    est.y_sd_ = None if cfg["y_sd"] is None else np.asarray(cfg["y_sd"])
    est.covariates_ = cov
    est.history_ = None
    est._sizes = {}
    return est
