"""Tile-encoder entries added for issue 14: the encoders people use today, each an exact recipe from the
authors' code or model card (`source`). Data only: the architectures are timm's or
`pathkit.models.hf_vision` / `pathkit.models.conch15`; parity tests in tests/test_parity_*.py.
"""
from __future__ import annotations

from .registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, register

HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
HIBOU_MEAN = (0.7068, 0.5755, 0.722)
HIBOU_STD = (0.195, 0.2316, 0.1816)
LUNIT_MEAN = (0.70322989, 0.53606487, 0.66096631)
LUNIT_STD = (0.21716536, 0.26081574, 0.20723464)
HALF = (0.5, 0.5, 0.5)
SWIGLU = "timm.layers.SwiGLUPacked"
SILU = "torch.nn.SiLU"
_TRIDENT = "https://github.com/mahmoodlab/TRIDENT (trident/patch_encoder_models/load.py)"

# ------------------------------------------------------------------------------------------ timm recipes
register(ModelSpec(
    name="h_optimus_1", arch="vit_giant_patch14_reg4_dinov2",
    kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False},
    embed_dim=1536, input_size=224, resize=224, interpolation="bicubic",
    mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD, pool="cls",
    weights=("hf_hub:bioptimus/H-optimus-1/pytorch_model.bin",), n_params=1_134_774_272,
    license="CC BY-NC-ND 4.0 (HF card, cross-checked with LazySlide 0.13's registry); gated on the HF hub", gated=True,
    source="https://huggingface.co/bioptimus/H-optimus-1 (card: timm kwargs, mean/std); " + _TRIDENT,
    description="H-optimus-1 (Bioptimus): ViT-g/14 with 4 registers, 1536-d CLS; 224 px tiles at 0.5 mpp",
    extra={"published_params": "1.1B", "mpp": 0.5, "parity": "timm per the card"},
))

# H0-mini: one network, two read-outs. The authors' (Bioptimus's SDK example, lazyslide-models) joins the CLS
# token with the mean of the patch tokens (registers excluded: output[:, num_prefix_tokens:]), 1536-d: the
# default. TRIDENT reads the CLS token alone (768-d): h0_mini_cls.
_H0_MINI = dict(
    arch="vit_base_patch14_reg4_dinov2",
    kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": True, "mlp_layer": SWIGLU,
            "act_layer": SILU, "mlp_ratio": 5.33334},
    input_size=224, resize=224, interpolation="bicubic",
    mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD,
    weights=("hf_hub:bioptimus/H0-mini/pytorch_model.bin",), n_params=85_739_520,  # 86M: the card's count
    license="CC BY-NC-ND 4.0; gated on the HF hub", gated=True,
    source="https://huggingface.co/bioptimus/H0-mini (card: SwiGLUPacked + SiLU, CLS or CLS||mean); " + _TRIDENT,
)
_H0_EXTRA = {"mpp": 0.5, "published_params": "86M", "timm_hub_config": True,
             "card_kwargs": ["mlp_layer", "act_layer", "img_size", "dynamic_img_size"]}
register(ModelSpec(
    name="h0_mini", embed_dim=1536, pool="cls+mean_patch", **_H0_MINI,
    description=("H0-mini (Bioptimus, distilled from H-optimus-1): ViT-B/14 with 4 registers, SwiGLU; CLS joined "
                 "with the mean patch token, 1536-d (the authors' read-out)"),
    extra={**_H0_EXTRA, "alternatives": "h0_mini_cls: the CLS token alone (768-d), as TRIDENT reads it"},
))
register(ModelSpec(
    name="h0_mini_cls", embed_dim=768, pool="cls", **_H0_MINI,
    description="H0-mini with TRIDENT's read-out: the CLS token alone, 768-d",
    extra={**_H0_EXTRA, "alternatives": "h0_mini: CLS joined with the mean patch token (1536-d), the authors'"},
))

register(ModelSpec(
    name="virchow", arch="vit_huge_patch14_224",
    kwargs={"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375, "global_pool": "",
            "dynamic_img_size": True, "mlp_layer": SWIGLU, "act_layer": SILU},
    embed_dim=2560, input_size=224, resize=224, interpolation="bicubic",
    mean=IMAGENET_MEAN, std=IMAGENET_STD, pool="cls+mean_patch",
    weights=("hf_hub:paige-ai/Virchow/pytorch_model.bin",), n_params=631_229_184,
    license="Apache-2.0; gated on the HF hub (institutional e-mail)", gated=True,
    source="https://huggingface.co/paige-ai/Virchow (card: CLS + mean of tokens[1:] -> 2560-d); " + _TRIDENT,
    description="Virchow (Paige, v1): ViT-H/14, SwiGLU, no registers; CLS concatenated with mean patch token",
    extra={"published_params": "632M", "mpp": 0.5},
))

_LUNIT = "https://github.com/lunit-io/benchmark-ssl-pathology/releases/download/pretrained-weights/{}"
for _name, _arch, _p, _file, _n in [
    ("lunit_vits8", "vit_small_patch8_224", 8, "dino_vit_small_patch8_ep200.torch", 21_670_272),
    ("lunit_vits16", "vit_small_patch16_224", 16, "dino_vit_small_patch16_ep200.torch", 21_665_664),
]:
    register(ModelSpec(
        name=_name, arch=_arch, kwargs={"img_size": 224, "dynamic_img_size": True},
        embed_dim=384, input_size=224, resize=224, interpolation="bicubic",
        mean=LUNIT_MEAN, std=LUNIT_STD, pool="cls",
        weights=(_LUNIT.format(_file),), n_params=_n,
        license="Lunit 'Public License': non-commercial research only; GitHub release, not gated", gated=False,
        source=("https://github.com/lunit-io/benchmark-ssl-pathology (README: timm VisionTransformer(img_size=224, "
                f"patch_size={_p}, embed_dim=384, num_heads=6, num_classes=0), strict load); " + _TRIDENT),
        description=f"Lunit DINO ViT-S/{_p} (TCGA, 200 epochs), 384-d CLS",
        extra={"mpp": "0.5 / 0.25 (paper: 20x and 40x)", "normalisation": (
            "Lunit's TCGA training statistics, as kaiko-ai/eva documents them for these weights; the README shows "
            "none. TRIDENT and LazySlide normalise with the hub config's stock ImageNet values (and a 0.9 crop), "
            "so their Lunit features differ from pathkit's")},
    ))

register(ModelSpec(
    name="gpfm", arch="vit_large_patch14_dinov2",
    kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": True},
    embed_dim=1024, input_size=224, resize=224, interpolation="bicubic",
    mean=IMAGENET_MEAN, std=IMAGENET_STD, pool="cls",
    weights=("hf_hub:majiabo/GPFM/GPFM.pth",), n_params=303_227_904,
    license="CC BY-NC-ND 4.0 (cross-checked with LazySlide 0.13's registry); weights on the HF hub (majiabo/GPFM), not gated", gated=False,
    source=_TRIDENT + " (GPFMInferenceEncoder: vit_large_patch14_dinov2, img_size 224, strict load of GPFM.pth)",
    description="GPFM: DINOv2 ViT-L/14 (expert-distilled), 1024-d CLS",
    extra={"mpp": 0.5},
))

# --------------------------------------------------------------------------------- transformers recipes
_PHIKON_CFG = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
               "image_size": 224, "patch_size": 16, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "qkv_bias": True}
register(ModelSpec(
    name="phikon", arch="pathkit:hf_vision", kwargs={"model_class": "ViTModel", "config": _PHIKON_CFG},
    embed_dim=768, input_size=224, resize=224, interpolation="bilinear",
    mean=IMAGENET_MEAN, std=IMAGENET_STD, pool="cls",
    weights=("hf_hub:owkin/phikon",), n_params=85_798_656,
    license="Owkin non-commercial licence (see the HF card); not gated", gated=False,
    source="https://huggingface.co/owkin/phikon (config.json: ViTModel; card: last_hidden_state[:, 0]); " + _TRIDENT,
    description="Phikon (Owkin): iBOT ViT-B/16 as transformers ViTModel, 768-d CLS",
    extra={"mpp": 0.5, "parity": "transformers ViTModel built per the card"},
))

_PHIKON2_CFG = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 224,
                "patch_size": 16, "mlp_ratio": 4, "layer_norm_eps": 1e-6, "layerscale_value": 1e-5,
                "use_swiglu_ffn": False, "qkv_bias": True}
register(ModelSpec(
    name="phikon_v2", arch="pathkit:hf_vision", kwargs={"model_class": "Dinov2Model", "config": _PHIKON2_CFG},
    embed_dim=1024, input_size=224, resize=224, interpolation="bilinear",
    mean=IMAGENET_MEAN, std=IMAGENET_STD, pool="cls",
    weights=("hf_hub:owkin/phikon-v2",), n_params=303_351_808,
    license="Owkin non-commercial licence (see the HF card); not gated", gated=False,
    source="https://huggingface.co/owkin/phikon-v2 (card: AutoModel -> Dinov2Model, last_hidden_state[:, 0]); "
           + _TRIDENT,
    description="Phikon-v2 (Owkin): DINOv2 ViT-L/16 as transformers Dinov2Model, 1024-d CLS",
    extra={"mpp": 0.5, "parity": "transformers Dinov2Model built per the card",
           "unverified": "registry config defaults; the hub config.json replaces them when it is available"},
))

_MIDNIGHT_CFG = {"hidden_size": 1536, "num_hidden_layers": 40, "num_attention_heads": 24, "image_size": 224,
                 "patch_size": 14, "mlp_ratio": 4, "layer_norm_eps": 1e-6, "layerscale_value": 1e-5,
                 "use_swiglu_ffn": True, "qkv_bias": True}
register(ModelSpec(
    name="midnight12k", arch="pathkit:hf_vision", kwargs={"model_class": "Dinov2Model", "config": _MIDNIGHT_CFG},
    embed_dim=3072, input_size=224, resize=224, interpolation="bilinear",
    mean=HALF, std=HALF, pool="cls+mean_patch",
    weights=("hf_hub:kaiko-ai/midnight",), n_params=1_134_771_200,
    license="MIT (HF card, cross-checked with LazySlide 0.13's registry); accept the terms on the HF hub (gated)", gated=True,
    source="https://huggingface.co/kaiko-ai/midnight (card: Dinov2Model, CLS || mean of patch tokens, mean=std=0.5); "
           + _TRIDENT,
    description="kaiko.ai Midnight-12k: DINOv2 ViT-g/14 as transformers Dinov2Model; CLS || mean patch, 3072-d",
    extra={"mpp": "0.25-2 (multi-resolution)", "alternatives": "CLS only (1536-d), TRIDENT's default",
           "parity": "transformers Dinov2Model built per the card",
           "unverified": "registry config defaults; the hub config.json replaces them when it is available"},
))

# ----------------------------------------------------------------------------- DINOv2-code checkpoints
register(ModelSpec(
    name="hibou_b", arch="vit_base_patch14_reg4_dinov2",
    kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": True, "mlp_layer": SWIGLU,
            "act_layer": SILU, "mlp_ratio": 5.33334},
    embed_dim=768, input_size=224, resize=224, interpolation="bicubic",
    mean=HIBOU_MEAN, std=HIBOU_STD, pool="cls",
    weights=(), key_map="dinov2_original", n_params=85_739_520,
    license="Apache-2.0 (the repository's LICENSE; its README: Hibou-B and Hibou-L under Apache 2.0)", gated=False,
    source=("https://github.com/HistAI/hibou (hibou/models/__init__.py build_model: DINOv2 vit_base, patch 14, "
            "4 registers, SwiGLU fused, layer scale 1e-5; forward = normed CLS)"),
    description="Hibou-B (HistAI): DINOv2 ViT-B/14 with 4 registers and SwiGLU, 768-d CLS",
    extra={"mpp": 0.5, "manual_weights": (
        "Hibou-B's DINOv2-format weights are on Google Drive (file 12ICd_-yJWMYYo5OskMmc9SHJAQivAtS7, linked from "
        "https://github.com/HistAI/hibou): download them and pass weights=PATH. The HF hub copy (histai/hibou-b) "
        "needs trust_remote_code and is not read by pathkit")},
))

register(ModelSpec(
    name="hibou_l", arch="vit_large_patch14_reg4_dinov2",
    kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": True, "mlp_layer": SWIGLU,
            "act_layer": SILU, "mlp_ratio": 5.34375},  # DINOv2 fused SwiGLU: 2 x 2736 = 5472 = 1024 x 5.34375
    embed_dim=1024, input_size=224, resize=224, interpolation="bicubic",
    mean=HIBOU_MEAN, std=HIBOU_STD, pool="cls",
    weights=("hf_hub:histai/hibou-L",), key_map="dinov2_hf", n_params=303_657_216,
    license="Apache-2.0 (github.com/HistAI/hibou README: 'Hibou-L under the Apache 2.0 license')", gated=False,
    source=("https://github.com/HistAI/hibou (hibou/models: build_model(arch='vit_large'): DINOv2 ViT-L/14, "
            "4 registers, SwiGLU fused, layer scale 1e-5; forward = normed CLS = the hub model's pooler_output; "
            "example.ipynb: Resize 224 bicubic, CenterCrop 224, Hibou mean/std)"),
    description="Hibou-L (HistAI): DINOv2 ViT-L/14 with 4 registers and SwiGLU, 1024-d CLS",
    extra={"mpp": 0.5, "weights_format": (
        "histai/hibou-L ships transformers-format safetensors read there by remote code (trust_remote_code), "
        "which pathkit never runs: the tensors are read and renamed by the key map 'dinov2_hf'; a DINOv2-format "
        "file (as Hibou-B's) also loads with weights=PATH"),
        "unverified": ("the hub repository's tensor names (transformers 4.x DINOv2 naming with "
                       "embeddings.register_tokens is assumed, as HistAI's README describes its customised "
                       "transformers DINOv2), whether it asks users to accept conditions, and the mean/std "
                       "(HistAI's example.ipynb shows them for Hibou-B)")},
))

# ------------------------------------------------------------------------------------------ pathkit modules
register(ModelSpec(
    name="conch_v15", arch="pathkit:conch_v15", kwargs={},
    embed_dim=768, input_size=448, resize=448, interpolation="bilinear",
    mean=IMAGENET_MEAN, std=IMAGENET_STD, pool="head",
    weights=("hf_hub:MahmoodLab/conchv1_5/pytorch_model_vision.bin",), n_params=306_109_184,
    license="CC BY-NC-ND 4.0; gated on the HF hub", gated=True,
    source=("https://github.com/mahmoodlab/TRIDENT (model_zoo/conchv1_5/conchv1_5.py: ViT-L/16 trunk at 224 with "
            "DINO-style position interpolation, attentional pooler 768-d, ln_contrast; Resize 448 bilinear, "
            "CenterCrop 448, ImageNet mean/std) / https://huggingface.co/MahmoodLab/conchv1_5"),
    description="CONCH v1.5 (TITAN's tile encoder): ViT-L/16 at 448 px, attentional pooler, 768-d",
    extra={"mpp": 0.5, "tile": "512 px at 20x resized to 448 (TITAN)"},
))
