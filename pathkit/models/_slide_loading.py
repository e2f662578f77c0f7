"""What every slide encoder's loader does the same way: the entry, the info it returns, the loud warning
for random weights, and the HF ``config.json`` that may sit beside the weights file."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from .registry import get_spec


def start(model, weights):
    """(spec, info, is_random) for a slide encoder loader; ``weights="random"`` is warned about here."""
    spec = get_spec(model, kind="slide")
    info = {"name": spec.name, "weights": None, "weights_sha256": None, "config": "registry"}
    is_random = isinstance(weights, str) and weights == "random"
    if is_random:
        warnings.warn(f"{spec.name}: using RANDOM weights: slide embeddings are meaningless except for testing",
                      UserWarning, stacklevel=_user_stacklevel())
        info["weights"] = "random"
    return spec, info, is_random


def companion_config(path) -> tuple[dict, Path | None]:
    """(the parsed ``config.json`` beside a weights file, its path), or ({}, None) when there is none."""
    cfg = Path(path).parent / "config.json"
    if not cfg.is_file():
        return {}, None
    return json.loads(cfg.read_text()), cfg


from .._warn import user_stacklevel as _user_stacklevel  # last: touches no import order (issue 29)
