"""Tile-encoder registry entries. Each fact is checked against the model's own card or code (`source`).

`n_params` is the exact parameter count of the architecture as published (a meta-device build of these
kwargs, asserted in tests); `extra["published_params"]` is what the authors state, often rounded.
Layer classes in kwargs are dotted names (resolved by `tile_encoders.resolve_kwargs`) so entries stay data.
"""
from __future__ import annotations

from .registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, register

KAIKO_MEAN = KAIKO_STD = (0.5, 0.5, 0.5)
# H-optimus-0 card / config.json pretrained_cfg
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
# BEPH data_preprocessor (mmselfsup/configs/tsne/beitv2_base.py), 0-255 values / 255
BEPH_MEAN = (189.78929696867084 / 255, 128.24523960459152 / 255, 175.1775062798947 / 255)
BEPH_STD = (38.39398676131772 / 255, 45.25197621706431 / 255, 32.21307843285958 / 255)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

SWIGLU = "timm.layers.SwiGLUPacked"
SILU = "torch.nn.SiLU"

# A small random-init ViT for tests, demos and CI (no weights exist for it on purpose).
register(ModelSpec(
    name="vit_tiny_test", arch="vit_tiny_patch16_224", kwargs={"depth": 2}, embed_dim=192,
    input_size=224, resize=None, mean=IMAGENET_MEAN, std=IMAGENET_STD, pool="cls",
    description="2-block ViT-Ti/16 with random weights: for tests and offline demos only",
    license="n/a", source="pathkit", n_params=1_075_776,
))

register(ModelSpec(
    name="gigapath_tile", arch="vit_giant_patch14_dinov2",
    kwargs={"img_size": 224, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24,
            "init_values": 1e-5, "mlp_ratio": 5.33334},
    embed_dim=1536, input_size=224, resize=256, interpolation="bicubic",
    mean=IMAGENET_MEAN, std=IMAGENET_STD, pool="cls",
    weights=("hf_hub:prov-gigapath/prov-gigapath/pytorch_model.bin",), n_params=1_134_953_984,
    license="Apache-2.0 (the repository's LICENSE since 2025; its README limits use to research, no deployed "
            "use; earlier releases: non-commercial research); gated on the HF hub", gated=True,
    source="https://huggingface.co/prov-gigapath/prov-gigapath",
    description="Prov-GigaPath tile encoder (ViT-g/14 DINOv2 recipe, patch 16, 1536-d CLS)",
    extra={"published_params": "1,134,953,984", "tile": "256 px at 0.5 mpp"},
))

register(ModelSpec(
    name="uni", arch="vit_large_patch16_224",
    kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True},
    embed_dim=1024, input_size=224, resize=224, interpolation="bilinear",
    mean=IMAGENET_MEAN, std=IMAGENET_STD, pool="cls",
    weights=("hf_hub:MahmoodLab/UNI/pytorch_model.bin",), n_params=303_350_784,
    license="CC BY-NC-ND 4.0; gated on the HF hub (institutional e-mail)", gated=True,
    source="https://github.com/mahmoodlab/UNI (README: timm kwargs, Resize(224) + ImageNet normalisation)",
    description="UNI (Mahmood Lab): ViT-L/16 DINOv2, 1024-d CLS",
    extra={"published_params": "ViT-L/16 (~303M)"},
))

register(ModelSpec(
    name="uni2_h", arch="vit_giant_patch14_224",
    kwargs={"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
            "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "no_embed_class": True, "mlp_layer": SWIGLU,
            "act_layer": SILU, "reg_tokens": 8, "dynamic_img_size": True},
    embed_dim=1536, input_size=224, resize=224, interpolation="bilinear",
    mean=IMAGENET_MEAN, std=IMAGENET_STD, pool="cls",
    weights=("hf_hub:MahmoodLab/UNI2-h/pytorch_model.bin",), n_params=681_394_176,
    license="CC BY-NC-ND 4.0; gated on the HF hub", gated=True,
    source="https://github.com/mahmoodlab/UNI (README: UNI2-h timm_kwargs) / https://huggingface.co/MahmoodLab/UNI2-h",
    description="UNI2-h: ViT-H/14 with 8 registers, SwiGLU, 1536-d CLS",
    extra={"published_params": "681M"},
))

register(ModelSpec(
    name="virchow2", arch="vit_huge_patch14_224",
    kwargs={"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375, "reg_tokens": 4, "global_pool": "",
            "dynamic_img_size": True, "mlp_layer": SWIGLU, "act_layer": SILU},
    embed_dim=2560, input_size=224, resize=224, interpolation="bicubic",
    mean=IMAGENET_MEAN, std=IMAGENET_STD, pool="cls+mean_patch",
    weights=("hf_hub:paige-ai/Virchow2/pytorch_model.bin",), n_params=631_239_424,
    license="CC BY-NC-ND 4.0; gated on the HF hub (institutional e-mail)", gated=True,
    source="https://huggingface.co/paige-ai/Virchow2 (card: class token + mean of tokens[5:] -> 2560-d)",
    description="Virchow2 (Paige): ViT-H/14, 4 registers, SwiGLU; CLS concatenated with mean patch token",
    extra={"published_params": "632M (paper, rounded)"},
))

register(ModelSpec(
    name="h_optimus_0", arch="vit_giant_patch14_reg4_dinov2",
    kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False},
    embed_dim=1536, input_size=224, resize=224, interpolation="bicubic",
    mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD, pool="cls",
    weights=("hf_hub:bioptimus/H-optimus-0/pytorch_model.bin",), n_params=1_134_774_272,
    license="Apache-2.0; accept the terms on the HF hub", gated=True,
    source="https://huggingface.co/bioptimus/H-optimus-0 (card + config.json pretrained_cfg mean/std)",
    description="H-optimus-0 (Bioptimus): ViT-g/14 with 4 registers, 1536-d CLS; 224 px tiles at 0.5 mpp",
    extra={"published_params": "1.1B"},
))

_KAIKO_SRC = "https://github.com/kaiko-ai/towards_large_pathology_fms (hubconf.py, README preprocessing)"
_KAIKO_URL = "https://github.com/kaiko-ai/towards_large_pathology_fms/releases/download/0.0.1/{}.pth"
for _name, _arch, _dim, _n, _file, _kw, _km in [
    ("kaiko_vits16", "vit_small_patch16_224", 384, 21_665_664, "vits16", {"dynamic_img_size": True}, None),
    ("kaiko_vits8", "vit_small_patch8_224", 384, 21_670_272, "vits8", {"dynamic_img_size": True}, None),
    ("kaiko_vitb16", "vit_base_patch16_224", 768, 85_798_656, "vitb16", {"dynamic_img_size": True}, None),
    ("kaiko_vitb8", "vit_base_patch8_224", 768, 85_807_872, "vitb8", {"dynamic_img_size": True}, None),
    # hubconf builds the 518-px DINOv2 model (37x37 position grid, interpolated for 224 input)
    ("kaiko_vitl14", "vit_large_patch14_reg4_dinov2", 1024, 304_370_688, "vitl14", {"dynamic_img_size": True},
     "dinov2_original"),
]:
    register(ModelSpec(
        name=_name, arch=_arch, kwargs=_kw, embed_dim=_dim, input_size=224, resize=224,
        interpolation="bilinear", mean=KAIKO_MEAN, std=KAIKO_STD, pool="cls",
        weights=(_KAIKO_URL.format(_file),), key_map=_km, n_params=_n,
        license="Apache-2.0 (repository licence); weights on GitHub releases, not gated", gated=False,
        source=_KAIKO_SRC,
        description=(f"kaiko.ai {_file.upper()} "
                     f"({'DINOv2 with 4 registers' if _km else 'DINO'}), {_dim}-d CLS; mean = std = 0.5"),
        extra={"published_params": f"{_n:,} (timm {_arch})"},
    ))

_BEPH_SRC = "https://github.com/Zhcyoung/BEPH"
_BEPH_WEIGHTS = ("BEPH's weights are not on a hub: download them from the link in https://github.com/Zhcyoung/BEPH "
                 "(Google Drive file 19Fu3dw3G4i2gPXijzrxfaQ2D_xcqNdNz, or Baidu) and pass weights=PATH "
                 "(BEPH_backbone.pth, or the full mmengine training checkpoint BEPH_weight.pth: its state dict is "
                 "read without unpickling mmengine objects and its backbone.* part is used)")
register(ModelSpec(
    name="beph", arch="beit_base_patch16_224", kwargs={"img_size": 224},
    embed_dim=768, input_size=224, resize=None, interpolation="bilinear",
    mean=IMAGENET_MEAN, std=IMAGENET_STD, pool="head",
    weights=(), key_map="beph_clam", n_params=85_761_984,
    license="GPL-3.0 (the repository's LICENSE, which ships the weights' links); weights on Google Drive / Baidu, no hub mirror",
    gated=False,
    source=(f"{_BEPH_SRC} (CLAM_Feature/extract_features_fp_BEPH.py: CLAM Whole_Slide_Bag_FP(pretrained=True), "
            "model.extract_feat(batch, stage='backbone')[0]; mmselfsup/configs/tsne/beitv2_base.py)"),
    description=("BEPH as its authors extract WSI features: BEiT-B/16, ImageNet mean/std on native 224-px tiles "
                 "(no resize), per-block relative-position tables at zero (as their loading leaves them); "
                 "embedding = LayerNorm(mean of patch tokens), 768-d"),
    extra={"published_params": "ViT-B/16 (~86M)", "pool_detail": "mmcls avg_token: ln2(mean(patch tokens))",
           "tile": "224 px, native (CLAM patches read at 224 and not resized)",
           "why": ("reproduces the published WSI features: extract_feat bypasses the model's data_preprocessor "
                   "(so CLAM's ImageNet normalisation applies), and mmcls' hook that would copy the shared "
                   "pre-training table into the blocks looks for the key without its 'backbone.' prefix, so the "
                   "tables stay at their zero initialisation"),
           "alternatives": "beph_pretrain: the pre-training recipe (BEPH mean/std, 256 -> 224, shared table copied)",
           "manual_weights": _BEPH_WEIGHTS},
))

register(ModelSpec(
    name="beph_pretrain", arch="beit_base_patch16_224", kwargs={"img_size": 224},
    embed_dim=768, input_size=224, resize=256, interpolation="bilinear",
    mean=BEPH_MEAN, std=BEPH_STD, pool="head",
    weights=(), key_map="beph_mmcls", n_params=85_761_984,
    license="GPL-3.0 (the repository's LICENSE, which ships the weights' links); weights on Google Drive / Baidu, no hub mirror",
    gated=False,
    source=f"{_BEPH_SRC} (mmselfsup/configs/tsne/beitv2_base.py data_preprocessor + extract_pipeline; mmcls BEiT)",
    description=("BEPH, pre-training recipe: BEPH mean/std, ResizeEdge 256 -> CenterCrop 224, the shared "
                 "relative-position table copied into every block; LayerNorm(mean of patch tokens), 768-d"),
    extra={"published_params": "ViT-B/16 (~86M)", "pool_detail": "mmcls avg_token: ln2(mean(patch tokens))",
           "why": ("the t-SNE config's preprocessing and mmpretrain's table expansion; NOT what the authors' WSI "
                   "features used (see `beph`)"),
           "manual_weights": _BEPH_WEIGHTS},
))

register(ModelSpec(
    name="mstar", arch="vit_large_patch16_224",
    kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True},
    embed_dim=1024, input_size=224, resize=224, interpolation="bilinear",
    mean=IMAGENET_MEAN, std=IMAGENET_STD, pool="cls",
    weights=("hf_hub:Wangyh/mSTAR",), n_params=303_350_784,
    license="CC BY-NC-ND 4.0 (HF card Wangyh/mSTAR, cross-checked with LazySlide 0.13's registry); gated on the HF hub", gated=True,
    source="https://github.com/Innse/mSTAR (get_mSTAR_model: timm kwargs, strict load of mSTAR.pth; Resize(224))",
    description="mSTAR patch extractor: ViT-L/16, 1024-d CLS; mSTAR.pth loads into timm names as is",
    extra={"published_params": "ViT-L/16 (~303M)"},
))

register(ModelSpec(
    name="conch_vision", arch="pathkit:conch_vision", kwargs={},
    embed_dim=512, input_size=448, resize=448, interpolation="bicubic",
    mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, pool="head",
    weights=("hf_hub:MahmoodLab/CONCH/pytorch_model.bin",), key_map="conch_visual", n_params=87_829_248,
    license="CC BY-NC-ND 4.0; gated on the HF hub", gated=True,
    source=("https://github.com/mahmoodlab/CONCH (README feature extraction: encode_image(proj_contrast=False, "
            "normalize=False); conch_ViT-B-16 config: CoCa ViT-B/16, 448 px, embed 512); TRIDENT / CLAM / mSTAR"),
    description=("CONCH tile features (CoCa ViT-B/16 at 448 px): attentional pooler + ln_contrast, BEFORE the "
                 "contrastive projection, 512-d (zero-shot uses conch_vision_proj)"),
    extra={"builder": "pathkit.models.clip registers tile_encoders.BUILDERS['conch_vision']",
           "tower_output": "pre_projection", "mpp": 0.5,
           "alternatives": "conch_vision_proj: the projected embedding that zero-shot compares with text",
           "published_params": ("ViT-B/16 trunk (~86M) + contrastive attentional pooler; 87,829,248 in pathkit "
                                "(proj_contrast is loaded but not applied)")},
))

register(ModelSpec(
    name="resnet50_trunc", arch="pathkit:resnet50_trunc", kwargs={},
    embed_dim=1024, input_size=224, resize=224, interpolation="bilinear",
    mean=IMAGENET_MEAN, std=IMAGENET_STD, pool="head",
    weights=("hf_hub:timm/resnet50.tv_in1k/model.safetensors",), key_map="resnet50_trunc",
    n_params=8_543_296,
    license="BSD-3-Clause (torchvision ImageNet weights)", gated=False,
    source=("https://github.com/mahmoodlab/CLAM (resnet50_baseline / TimmCNNEncoder('resnet50.tv_in1k', "
            "out_indices=(3,)) + adaptive average pool)"),
    description="CLAM baseline: ImageNet ResNet-50 up to layer3, adaptive average pool -> 1024-d",
    extra={"published_params": "8,543,296 (conv1 ... layer3 of torchvision ResNet-50)"},
))

from . import _zoo_more  # noqa: F401  (the entries added for issue 14)
