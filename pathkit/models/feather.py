"""FEATHER slide encoders (Mahmood Lab, github.com/mahmoodlab/MIL-Lab): a gated-attention ABMIL pretrained
on a 108-way pan-cancer classification (PC-108, 24K slides); the slide embedding is the attention-pooled
bag feature before the classifier (`ABMIL.forward_features`).

Architecture, from MIL-Lab `src/models/abmil.py`, `src/models/layers.py`, `src/model_configs/abmil/base.yaml`:
- `patch_embed`: Linear(in_dim, 512) + ReLU (create_mlp with num_fc_layers 1, end_with_fc False);
- `global_attn` (GlobalGatedAttention, D = 384): a = tanh(Linear), b = sigmoid(Linear), A = Linear(a * b) -> 1;
- softmax of A over the tiles; embedding = sum_i softmax(A)_i * patch_embed(h_i), 512-d;
- `classifier`: Linear(512, num_classes) (loaded, not used for the embedding). Dropout is inactive at eval.
No coordinates: the tile order does not matter. The HF repositories ship remote code
(`trust_remote_code`), which pathkit does not run: the weights are read as a state dict and loaded strictly
into this module (a `model.` wrapper prefix is removed); `config.json` beside the weights, when present,
sets in_dim / num_classes.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError
from ._slide_loading import companion_config, start
from .registry import ModelSpec, register


class FeatherABMIL(nn.Module):
    def __init__(self, in_dim: int = 768, embed_dim: int = 512, attn_dim: int = 384, num_classes: int = 108):
        super().__init__()
        self.in_chans, self.embed_dim = in_dim, embed_dim
        self.patch_embed = nn.Sequential(nn.Linear(in_dim, embed_dim), nn.ReLU())
        self.global_attn = nn.Module()
        self.global_attn.attention_a = nn.Sequential(nn.Linear(embed_dim, attn_dim), nn.Tanh())
        self.global_attn.attention_b = nn.Sequential(nn.Linear(embed_dim, attn_dim), nn.Sigmoid())
        self.global_attn.attention_c = nn.Linear(attn_dim, 1)
        self.classifier = nn.Linear(embed_dim, num_classes) if num_classes > 0 else None

    def attention(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, N, in_dim] -> (embedded tiles [B, N, E], attention logits [B, N])."""
        h = self.patch_embed(h)
        g = self.global_attn
        a = g.attention_c(g.attention_a(h) * g.attention_b(h))
        return h, a[..., 0]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Tile features [N, in_dim] or [B, N, in_dim] -> slide embedding [E] or [B, E]."""
        single = h.dim() == 2
        h = h[None] if single else h
        emb, a = self.attention(h)
        out = (a.softmax(dim=-1)[:, None] @ emb)[:, 0]
        return out[0] if single else out


def _build(spec: ModelSpec, config: dict | None = None) -> FeatherABMIL:
    return FeatherABMIL(**{**spec.kwargs, **(config or {})}).eval()


def _companion(path) -> dict:
    raw, _ = companion_config(path)
    return {k: raw[k] for k in ("in_dim", "embed_dim", "attn_dim", "num_classes") if k in raw}


def load_slide_abmil(model="feather_conch_v15", weights=None, device="cpu") -> tuple[FeatherABMIL, dict]:
    """Build a FEATHER entry and load its weights strictly -> (module in eval mode, info).

    weights: None (the entry's hub source), a local file / ``"hf_hub:<repo>/<file>"``, or "random" (loud
    warning). embed_slide's contract: ``net(torch.as_tensor(tiles.obsm[use_rep]))`` -> the slide vector;
    ``spec.extra["tile_model"]`` names the tile encoder whose features it expects.
    """
    from .weights import read_state_dict, resolve, sha256_file

    spec, info, is_random = start(model, weights)
    if is_random:
        return _build(spec).to(device), info
    source = weights if weights is not None else spec.weights[0]
    path = resolve(source)
    extra = _companion(path)
    net = _build(spec, extra)
    sd = read_state_dict(path)
    if sd and all(k.startswith("model.") for k in sd):
        sd = {k[len("model."):]: v for k, v in sd.items()}
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"weights {source} do not fit {spec.name} (FEATHER ABMIL): {e}") from e
    info.update(weights=str(source), weights_sha256=sha256_file(path),
                config=str(Path(path).parent / "config.json") if extra else "registry")
    return net.to(device).eval(), info


_MILLAB = ("https://github.com/mahmoodlab/MIL-Lab (src/models/abmil.py, src/models/layers.py, "
           "src/model_configs/abmil/base.yaml); TRIDENT FeatherSlideEncoder: forward_features")
for _name, _tile, _dim, _repo in [("feather_conch_v15", "conch_v15", 768, "abmil.base.conch_v15.pc108-24k"),
                                   ("feather_uni2_h", "uni2_h", 1536, "abmil.base.uni_v2.pc108-24k"),
                                   ("feather_uni", "uni", 1024, "abmil.base.uni.pc108-24k")]:
    register(ModelSpec(
        name=_name, kind="slide", arch="pathkit:feather_abmil",
        kwargs={"in_dim": _dim, "embed_dim": 512, "attn_dim": 384, "num_classes": 108},
        embed_dim=512, input_size=0, resize=None, pool="attention",
        weights=(f"hf_hub:MahmoodLab/{_repo}/model.safetensors",),
        license="CC BY-NC-ND 4.0 (MahmoodLab HF repositories); gated on the HF hub", gated=True,
        source=_MILLAB,
        description=f"FEATHER-24K slide encoder: gated ABMIL over {_tile} tile features, 512-d",
        extra={"tile_model": _tile, "coords": False, "in_chans": _dim,
               "call": "pathkit.models.feather.load_slide_abmil(name) -> net; net(features [N, D]) -> [512]"},
    ), overwrite=True)
