"""Models: the registry (data) and the code that builds and loads them."""
from .registry import ModelSpec, get_spec, list_models, register, registered
from . import zoo  # noqa: F401  (registers the tile encoders)
from .tile_encoders import TileEncoder, build_tile_encoder, load_tile_encoder
from . import longnet, clip  # noqa: F401  (register the slide encoder and image-text models)

__all__ = ["ModelSpec", "get_spec", "list_models", "register", "registered", "TileEncoder",
           "build_tile_encoder", "load_tile_encoder"]
