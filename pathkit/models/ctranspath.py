"""CTransPath (Wang et al., Medical Image Analysis 2022) and CHIEF's CTransPath (Wang et al., Nature 2024):
a Swin-T (patch 4, window 7, 224 px) whose patch embedding is a small convolutional stem.

The authors build it as ``timm.create_model("swin_tiny_patch4_window7_224", embed_layer=ConvStem)`` with a
patched timm 0.5.4 (github.com/Xiyue-Wang/TransPath ``ctran.py``, the same file in github.com/hms-dbmi/CHIEF
``models/ctran.py``; the patch only adds the ``embed_layer`` argument), replace the head by an identity and
take the 768-d output: final LayerNorm, then the mean over the 7 x 7 tokens. Here the current timm builds the
same network with pathkit's own `ConvStem` (`build_ctranspath`), and the key map ``swin_timm054`` renames the
0.5.4 checkpoints: timm >= 0.9 moved each stage's patch merging (``layers.N.downsample``) to the start of the
next stage, and the ``relative_position_index`` / ``attn_mask`` buffers are rebuilt, not loaded.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from ._key_maps import KEY_MAPS
from .registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, register
from .tile_encoders import register_builder


class ConvStem(nn.Module):
    """Patch embedding of CTransPath: two stride-2 3x3 conv + BatchNorm + ReLU blocks (widths embed_dim / 8,
    embed_dim / 4), a 1x1 conv to embed_dim, then the patch norm; tokens out as NHWC (timm >= 0.9 Swin).
    State-dict names (``proj.0`` ... ``proj.7``, ``norm``) are those of the authors' checkpoints."""

    def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=96, norm_layer=None, flatten=True,
                 strict_img_size=True, output_fmt="NHWC", device=None, dtype=None, **_):
        super().__init__()
        if patch_size not in (4, (4, 4)):
            raise ValueError(f"ConvStem downsamples by 4 (two stride-2 convs): patch_size={patch_size}")
        if embed_dim % 8:
            raise ValueError(f"ConvStem needs embed_dim divisible by 8, got {embed_dim}")
        dd = {"device": device, "dtype": dtype}
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.img_size, self.patch_size = size, (4, 4)
        self.grid_size = (size[0] // 4, size[1] // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.strict_img_size, self.output_fmt = strict_img_size, output_fmt
        layers: list[nn.Module] = []
        c_in, c_out = in_chans, embed_dim // 8
        for _ in range(2):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False, **dd),
                       nn.BatchNorm2d(c_out, **dd), nn.ReLU(inplace=True)]
            c_in, c_out = c_out, c_out * 2
        layers.append(nn.Conv2d(c_in, embed_dim, 1, **dd))
        self.proj = nn.Sequential(*layers)
        self.norm = norm_layer(embed_dim, **dd) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.strict_img_size and tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"CTransPath expects {self.img_size[0]} x {self.img_size[1]} px input, "
                             f"got {tuple(x.shape[-2:])}")
        x = self.proj(x)  # [B, C, H/4, W/4]
        x = x.permute(0, 2, 3, 1) if self.output_fmt == "NHWC" else x.flatten(2).transpose(1, 2)
        return self.norm(x)


def build_ctranspath(img_size: int = 224, **kwargs) -> nn.Module:
    """Swin-T with `ConvStem`, head removed (``num_classes=0``): forward -> [B, 768] (norm + average pool)."""
    import timm

    kwargs.setdefault("num_classes", 0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=img_size,
                             embed_layer=ConvStem, **kwargs)


register_builder("ctranspath", lambda spec: build_ctranspath(**spec.kwargs))


def _swin_timm054(sd: dict) -> dict:
    """Swin checkpoint written by timm <= 0.6 (CTransPath, CHIEF_CTransPath) -> timm >= 0.9 names.

    ``layers.N.downsample.*`` -> ``layers.{N+1}.downsample.*`` (patch merging now opens the next stage; the
    concatenation order of the 2 x 2 neighbours is the same); ``relative_position_index`` and ``attn_mask``
    buffers are dropped (rebuilt by the model); a classifier ``head.*`` (absent from the authors' files,
    whose head is an identity) is dropped too. Already-converted checkpoints pass through unchanged.
    """
    old = "layers.0.downsample.reduction.weight" in sd
    out = {}
    for k, v in sd.items():
        if k.endswith(("relative_position_index", "attn_mask")) or k.startswith("head."):
            continue
        if old:
            k = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", k)
        out[k] = v
    return out


KEY_MAPS["swin_timm054"] = _swin_timm054

_REF = ("https://github.com/Xiyue-Wang/TransPath (ctran.py: swin_tiny_patch4_window7_224 + ConvStem, head = "
        "Identity; get_features_CTransPath.py: Resize(224), ImageNet mean/std; README: 'first try to extract "
        "features at 1.0 mpp')")
_CHIEF = ("https://github.com/hms-dbmi/CHIEF (models/ctran.py as TransPath's; Get_CHIEF_patch_feature.py: "
          "Resize(224), ImageNet mean/std, td['model'] loaded strictly); TRIDENT CTransPathInferenceEncoder")
_COMMON = {"arch": "pathkit:ctranspath", "kwargs": {"img_size": 224}, "embed_dim": 768, "input_size": 224,
           "resize": 224, "interpolation": "bilinear", "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "pool": "head",
           "weights": (), "key_map": "swin_timm054", "n_params": 27_520_038}

register(ModelSpec(
    name="ctranspath", **_COMMON,
    license="GPL-3.0 (github.com/Xiyue-Wang/TransPath LICENSE.md); weights on Google Drive, not gated",
    gated=False, source=_REF,
    description="CTransPath: Swin-T/4 window 7 with a convolutional stem (SRCL on TCGA + PAIP), 768-d pooled",
    extra={"mpp": 1.0, "tile": "224 px at 1.0 mpp (TransPath README; other magnifications are also used)",
           "manual_weights": (
               "CTransPath's weights (ctranspath.pth) are on Google Drive, linked from "
               "https://github.com/Xiyue-Wang/TransPath: download the file and pass weights=PATH (read with "
               "weights_only=True: its 'model' dict)")},
))

register(ModelSpec(
    name="chief_ctranspath", **_COMMON,
    license="AGPL-3.0 (github.com/hms-dbmi/CHIEF LICENSE); weights on request (Google Drive / Docker image)",
    gated=True, source=_CHIEF,
    description="CHIEF's tile encoder: CTransPath architecture, CHIEF_CTransPath.pth weights, 768-d pooled",
    extra={"mpp": 1.0, "tile": "tiles resized to 224 px (Resize(224)); the tiling mpp is not in CHIEF's code: "
                               "1.0 mpp as TransPath recommends for CTransPath",
           "slide_model": "chief",
           "trident_name": "ctranspath (TRIDENT's 'ctranspath' loads this file, CHIEF_CTransPath.pth)",
           "manual_weights": (
               "CHIEF_CTransPath.pth is shared on request (Google Drive folder linked from "
               "https://github.com/hms-dbmi/CHIEF, or the chiefcontainer/chief Docker image); a copy is in the "
               "gated HF dataset MahmoodLab/hest-bench (fm_v1/ctranspath/CHIEF_CTransPath.pth: "
               "`huggingface-cli download MahmoodLab/hest-bench fm_v1/ctranspath/CHIEF_CTransPath.pth "
               "--repo-type dataset`). Pass weights=PATH"),
           "unverified": ("whether CHIEF_CTransPath.pth differs from TransPath's ctranspath.pth was not checked "
                          "(both need a manual download); CHIEF's tiling mpp")},
))
