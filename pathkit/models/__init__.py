"""Models: the registry (data) and the code that builds and loads them."""
from .registry import ModelSpec, get_spec, list_models, register, registered
from . import zoo  # noqa: F401  (registers the tile encoders)
from .tile_encoders import (BUILDERS, TileEncoder, build_tile_encoder, identify_checkpoint, load_tile_encoder,
                            n_params, register_builder)
from . import longnet, clip, hf_vision, conch15, feather, titan  # noqa: F401  (slide encoders, image-text models, builders)
from . import prism  # noqa: F401  (PRISM slide encoder)
from . import mil  # noqa: F401  (MIL networks: pathkit.models.mil.MIL_MODELS)
from . import ctranspath, chief  # noqa: F401  (CTransPath / CHIEF entries, issue 14)
from .clip import ClipModel, load_clip, register_clip_variant
from . import segmenters  # noqa: F401  (tissue and artefact segmenters)
from . import slide_text, prism_text  # noqa: F401  (text halves of TITAN and PRISM: demo entries, loaders)

__all__ = ["ModelSpec", "get_spec", "list_models", "register", "registered", "TileEncoder", "BUILDERS",
           "build_tile_encoder", "load_tile_encoder", "identify_checkpoint", "n_params", "register_builder",
           "ClipModel", "load_clip", "register_clip_variant"]
from . import cell_segmenters  # noqa: F401  (nucleus segmenters, issue 23)
