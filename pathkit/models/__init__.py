"""Models: the registry (data) and the code that builds and loads them."""
from . import (  # noqa: F401  (slide encoders, image-text models, builders)
                            clip,
                            conch15,
                            feather,
                            hf_vision,
                            longnet,
                            mil,
                            segmenters,
                            zoo,
)
from .clip import ClipModel, load_clip, register_clip_variant

from . import segmenters  # noqa: F401  (tissue and artefact segmenters)
from .registry import ModelSpec, get_spec, list_models, register, registered
from .tile_encoders import (
                            BUILDERS,
                            TileEncoder,
                            build_tile_encoder,
                            identify_checkpoint,
                            load_tile_encoder,
                            n_params,
                            register_builder,
)

__all__ = [
                            "BUILDERS",
                            "ClipModel",
                            "ModelSpec",
                            "TileEncoder",
                            "build_tile_encoder",
                            "get_spec",
                            "identify_checkpoint",
                            "list_models",
                            "load_clip",
                            "load_tile_encoder",
                            "n_params",
                            "register",
                            "register_builder",
                            "register_clip_variant",
                            "registered",
]
