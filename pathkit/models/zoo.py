"""Tile-encoder registry entries. Each fact is checked against the model's own card or code (`source`)."""
from __future__ import annotations

from .registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, register

# A small random-init ViT for tests, demos and CI (no weights exist for it on purpose).
register(ModelSpec(
    name="vit_tiny_test", arch="vit_tiny_patch16_224", kwargs={"depth": 2}, embed_dim=192,
    input_size=224, resize=None, mean=IMAGENET_MEAN, std=IMAGENET_STD, pool="cls",
    description="2-block ViT-Ti/16 with random weights: for tests and offline demos only",
    license="n/a", source="pathkit",
))

register(ModelSpec(
    name="gigapath_tile", arch="vit_giant_patch14_dinov2",
    kwargs={"img_size": 224, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24,
            "init_values": 1e-5, "mlp_ratio": 5.33334},
    embed_dim=1536, input_size=224, resize=256, interpolation="bicubic",
    mean=IMAGENET_MEAN, std=IMAGENET_STD, pool="cls",
    weights=("hf_hub:prov-gigapath/prov-gigapath",), n_params=1_134_953_984,
    license="Prov-GigaPath licence (non-commercial research); gated on the HF hub", gated=True,
    source="https://huggingface.co/prov-gigapath/prov-gigapath",
    description="Prov-GigaPath tile encoder (ViT-g/14 DINOv2, patch 16, 1536-d CLS)",
))
