"""Key maps: checkpoints written in another project's naming (mmcls BEiT, original DINOv2, a full ResNet-50,
CONCH's CoCa) -> the names of pathkit's networks. A registry entry names its map in ``key_map``."""
from __future__ import annotations

import re
import warnings

from ..errors import WeightsError


def _beph_mmcls(sd: dict) -> dict:
    """mmcls/mmpretrain/mmselfsup BEiT (BEPH's `backbone.*` checkpoint) -> timm `beit_base_patch16_224`.

    mmcls names (mmcls/models/backbones/beit.py, mmcv FFN): patch_embed.projection, layers.N.ln1/ln2,
    layers.N.attn.{qkv,q_bias,v_bias,proj,relative_position_bias_table}, layers.N.gamma_1/gamma_2,
    layers.N.ffn.layers.0.0 (fc1) / ffn.layers.1 (fc2), ln2 after the patch-token mean (`avg_token`).
    A shared `rel_pos_bias` table (BEiT pre-training) is copied into every block, as mmcls does when loading.
    """
    import torch

    sd = dict(sd)  # never mutate the caller's dict (it is reused to identify a wrong file)
    if any(k.startswith("backbone.") for k in sd):
        # a whole mmselfsup/mmcls model: keep the backbone (neck/head/target_generator are training-only)
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    out: dict = {}
    n_layers = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"layers\.(\d+)\.", k))), default=-1)
    shared = sd.pop("rel_pos_bias.relative_position_bias_table", None)
    sd.pop("rel_pos_bias.relative_position_index", None)
    rules = [
        (r"^patch_embed\.projection\.", "patch_embed.proj."),
        (r"^layers\.(\d+)\.ln1\.", r"blocks.\1.norm1."),
        (r"^layers\.(\d+)\.ln2\.", r"blocks.\1.norm2."),
        (r"^layers\.(\d+)\.ffn\.layers\.0\.0\.", r"blocks.\1.mlp.fc1."),
        (r"^layers\.(\d+)\.ffn\.layers\.1\.", r"blocks.\1.mlp.fc2."),
        (r"^layers\.(\d+)\.gamma_([12])$", r"blocks.\1.gamma_\2"),
        (r"^layers\.(\d+)\.attn\.", r"blocks.\1.attn."),
        (r"^ln2\.", "fc_norm."),
    ]
    for k, v in sd.items():
        if k.endswith("relative_position_index") or k == "mask_token":
            continue  # buffers rebuilt by the model / pre-training only
        if k.startswith("ln1."):
            continue  # final norm of pre-training; BEPH extracts with final_norm=False (ln2 on the mean instead)
        new = k
        for pat, rep in rules:
            if re.match(pat, k):
                new = re.sub(pat, rep, k)
                break
        out[new] = v
    if shared is not None:
        for i in range(n_layers):
            out.setdefault(f"blocks.{i}.attn.relative_position_bias_table", shared.clone())
    if "fc_norm.weight" not in out and n_layers > 0:
        dim = out["cls_token"].shape[-1]
        warnings.warn(
            "BEPH checkpoint has no `ln2` (the LayerNorm applied to the patch-token mean): using an identity "
            "LayerNorm (weight 1, bias 0), which is what BEPH's own mmcls extraction gets when it loads this "
            "checkpoint non-strictly.", UserWarning, stacklevel=3)
        out["fc_norm.weight"] = torch.ones(dim, dtype=out["cls_token"].dtype)
        out["fc_norm.bias"] = torch.zeros(dim, dtype=out["cls_token"].dtype)
    return out


def _beph_clam(sd: dict) -> dict:
    """BEPH as its own WSI feature script loads it (`CLAM_Feature/extract_features_fp_BEPH.py`: mmselfsup
    `init_model` on `beitv2_base.py`, then `extract_feat`): the mmcls names of `_beph_mmcls`, but the
    per-block relative-position tables stay at their initial zeros. mmcls copies the shared pre-training
    table into the blocks in a load hook that looks for the key without the `backbone.` prefix, so for
    BEPH's checkpoints it never fires and reports the shared table as unexpected. Per-block tables present
    in the file are loaded as they are."""
    import torch

    sd = dict(sd)
    if any(k.startswith("backbone.") for k in sd):
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    shared = sd.pop("rel_pos_bias.relative_position_bias_table", None)
    out = _beph_mmcls(sd)
    if shared is not None:
        n_layers = 1 + max((int(m.group(1)) for k in out if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
        for i in range(n_layers):
            out.setdefault(f"blocks.{i}.attn.relative_position_bias_table", torch.zeros_like(shared))
    return out


def _dinov2_original(sd: dict) -> dict:
    """Original DINOv2 naming (facebookresearch/dinov2, kaiko's ViT-L/14 hub `.pth`) -> timm `*_reg4_dinov2`.

    DINOv2 keeps the class token's position in `pos_embed` and calls registers `register_tokens`; timm's
    register models have no position for prefix tokens, so the class position is folded into `cls_token`.
    SwiGLU `w12`/`w3` become `fc1`/`fc2`; `mask_token` (pre-training only) is dropped.
    """
    sd = dict(sd)
    sd.pop("mask_token", None)
    out: dict = {}
    if "register_tokens" in sd:
        out["reg_token"] = sd.pop("register_tokens")
        pos = sd.pop("pos_embed")
        out["cls_token"] = sd.pop("cls_token") + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
    for k, v in sd.items():
        k = re.sub(r"^(blocks\.\d+\.mlp)\.w12\.", r"\1.fc1.", k)
        k = re.sub(r"^(blocks\.\d+\.mlp)\.w3\.", r"\1.fc2.", k)
        out[k] = v
    return out


def _dinov2_hf(sd: dict) -> dict:
    """Hugging Face transformers 4.x DINOv2 naming (`Dinov2Model`, with `embeddings.register_tokens`: Hibou-L's
    hub repository, read there by remote code) -> timm `*_reg4_dinov2`, through the original DINOv2 names:
    query/key/value are concatenated into `qkv`, `weights_in`/`weights_out` are SwiGLU's `w12`/`w3`,
    `layer_scaleN.lambda1` the layer scales. A file already in DINOv2 naming is passed on as it is."""
    import torch

    cls = next((k for k in sd if k.endswith("embeddings.cls_token")), None)
    if cls is None:
        return _dinov2_original(sd)
    pre = cls[: -len("embeddings.cls_token")]  # a wrapper's prefix ("model.", "dinov2."), if any
    if pre:
        sd = {k.removeprefix(pre): v for k, v in sd.items()}
    out: dict = {}
    head = {"embeddings.cls_token": "cls_token", "embeddings.mask_token": "mask_token",
            "embeddings.register_tokens": "register_tokens", "embeddings.position_embeddings": "pos_embed",
            "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
            "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
            "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
    qkv: dict = {}
    for k, v in sd.items():
        if k in head:
            out[head[k]] = v
            continue
        m = re.match(r"^encoder\.layer\.(\d+)\.(.+)$", k)
        if not m:
            out[k] = v  # unknown: left for the strict load to report
            continue
        i, rest = m.groups()
        a = re.match(r"^attention\.attention\.(query|key|value)\.(weight|bias)$", rest)
        if a:
            qkv.setdefault((i, a.group(2)), {})[a.group(1)] = v
            continue
        for old, new in (("attention.output.dense.", "attn.proj."), ("layer_scale1.lambda1", "ls1.gamma"),
                         ("layer_scale2.lambda1", "ls2.gamma"), ("mlp.weights_in.", "mlp.w12."),
                         ("mlp.weights_out.", "mlp.w3.")):
            rest = rest.replace(old, new)
        out[f"blocks.{i}.{rest}"] = v
    for (i, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise WeightsError(f"layer {i}: attention {kind} has only {sorted(parts)} of query/key/value")
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return _dinov2_original(out)


def _resnet50_trunc(sd: dict) -> dict:
    """A full ImageNet ResNet-50 (torchvision or timm naming: identical) -> the CLAM trunk (layer4, fc dropped)."""
    return {k: v for k, v in sd.items() if not k.startswith(("layer4.", "fc."))}


def _conch_visual(sd: dict) -> dict:
    """CONCH's full CoCa checkpoint -> its image tower (`visual.*` names kept, as pathkit's tower has them):
    the text tower, the caption decoder and the caption pooler (`attn_pool_caption`, `ln_caption`) are not
    part of the image embedding and are dropped."""
    if any(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if k.startswith("visual.")
            and not k.startswith(("visual.attn_pool_caption.", "visual.ln_caption."))}


KEY_MAPS = {
    "beph_clam": _beph_clam,
    "beph_mmcls": _beph_mmcls,
    "conch_visual": _conch_visual,
    "dinov2_hf": _dinov2_hf,
    "dinov2_original": _dinov2_original,
    "resnet50_trunc": _resnet50_trunc,
}


def apply_key_map(sd: dict, name: str | None) -> dict:
    if not name:
        return sd
    try:
        fn = KEY_MAPS[name]
    except KeyError:
        raise WeightsError(f"unknown key map {name!r}; known: {sorted(KEY_MAPS)}") from None
    return fn(sd)


