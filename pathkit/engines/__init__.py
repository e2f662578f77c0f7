"""Inference engines for tile encoders on CPU: OpenVINO and ONNX Runtime run a one-off ONNX export of the
torch encoder (cached beside the weights), checked against torch on the first batch.

``pk.tl.embed_tiles(..., engine="auto")`` picks per model family the engine measured fastest on CPU
(:data:`AUTO_RULES`), torch on GPUs. Install with ``pip install "pathkit[engines]"``.
"""
from ._cache import cache_root
from ._runners import ENGINES, engine_version
from ._select import (
    AUTO_RULES,
    BF16_FLAGS,
    CHOICES,
    EngineEncoder,
    clear_runner_cache,
    engine_precision,
    family,
    prepare_encoder,
)

__all__ = ["AUTO_RULES", "BF16_FLAGS", "CHOICES", "ENGINES", "EngineEncoder", "cache_root", "clear_runner_cache",
           "engine_precision", "engine_version", "family", "prepare_encoder"]
