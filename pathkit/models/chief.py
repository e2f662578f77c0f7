"""CHIEF slide encoder (Wang et al., Nature 2024; github.com/hms-dbmi/CHIEF): a gated-attention aggregator over
CHIEF_CTransPath tile features (768-d), pretrained weakly supervised on 60,530 slides of 19 anatomical sites.

What the authors take as the slide embedding (``Get_CHIEF_WSI_level_feature.py`` and ``_batch.py``:
``model(x, torch.tensor([site]))['WSI_feature']``, [1, 768]; TRIDENT's CHIEFSlideEncoder the same) is, in
``models/CHIEF.py`` (``CHIEF(size_arg="small", dropout=True, n_classes=2)``):

- ``attention_net``: Linear(768, 512) + ReLU (+ dropout), then gated attention (D = 256):
  a = tanh(Linear(h)), b = sigmoid(Linear(h)), A = Linear(a * b) -> one logit per tile;
- ``WSI_feature = softmax(A over the tiles) @ h_in``: the attention-weighted mean of the **input** tile
  features (768-d), not of the 512-d hidden ones.

The anatomical site (0-18, `ANATOMIC_SITES`) does not enter the embedding: its text embedding
(``organ_embedding[site]`` through ``text_to_vision``) is added only to the 512-d pooled feature that feeds
the pretraining classifier (``bag_logits``). So `CHIEF.forward` takes no site; `CHIEF.bag_logits` does, for
users of the pretraining head. No coordinates: the tile order does not matter. All checkpoint tensors
(classifier, instance classifiers, ``att_head``, the organ text embeddings) are loaded strictly, so a wrong file
is caught, though the embedding uses only ``attention_net``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import WeightsError
from ._slide_loading import start
from .registry import ModelSpec, register

# configs/anatomic_mapping.yaml of the CHIEF repository
ANATOMIC_SITES = ("brain", "breast", "bladder", "kidney", "prostate", "testis", "lung", "pancreas", "liver", "skin",
                  "ovary", "cervix", "uterus", "colon", "esophagus", "stomach", "thyroid", "adrenal gland",
                  "soft tissue")


class _GatedAttention(nn.Module):
    def __init__(self, dim: int, attn_dim: int):
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(dim, attn_dim), nn.Tanh(), nn.Dropout(0.25))
        self.attention_b = nn.Sequential(nn.Linear(dim, attn_dim), nn.Sigmoid(), nn.Dropout(0.25))
        self.attention_c = nn.Linear(attn_dim, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.attention_c(self.attention_a(h) * self.attention_b(h))[..., 0]


class _AttHead(nn.Module):  # in the checkpoint, unused by the forward pass
    def __init__(self, dim: int, attn_dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, attn_dim), nn.Linear(attn_dim, 1)


class CHIEF(nn.Module):
    """CHIEF's aggregator with the checkpoint's parameter names (``attention_net.0`` / ``.3``, ``classifiers``,
    ``instance_classifiers``, ``att_head``, ``text_to_vision``, buffer ``organ_embedding`` [19, 768])."""

    def __init__(self, in_dim: int = 768, hidden_dim: int = 512, attn_dim: int = 256, n_classes: int = 2,
                 n_sites: int = 19, text_dim: int = 768):
        super().__init__()
        self.in_chans, self.embed_dim = in_dim, in_dim
        self.attention_net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(0.25),
                                           _GatedAttention(hidden_dim, attn_dim))
        self.classifiers = nn.Linear(hidden_dim, n_classes)
        self.instance_classifiers = nn.ModuleList([nn.Linear(hidden_dim, 2) for _ in range(n_classes)])
        self.att_head = _AttHead(hidden_dim, attn_dim)
        self.text_to_vision = nn.Sequential(nn.Linear(text_dim, hidden_dim), nn.ReLU(), nn.Dropout(0.25))
        self.register_buffer("organ_embedding", torch.zeros(n_sites, text_dim))

    def attention(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tile features [N, in_dim] -> (hidden features [N, hidden], attention logits [N])."""
        hidden = self.attention_net[:3](h)
        return hidden, self.attention_net[3](hidden)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Tile features [N, in_dim] -> the slide embedding [in_dim] (the authors' ``WSI_feature``)."""
        _, a = self.attention(h)
        return a.softmax(dim=-1) @ h

    def bag_logits(self, h: torch.Tensor, site: int | str = 0) -> torch.Tensor:
        """The pretraining head's logits [n_classes] for one slide of anatomical `site` (index or name in
        `ANATOMIC_SITES`): softmax-pooled hidden features plus the site's text embedding, then the classifier."""
        idx = ANATOMIC_SITES.index(site) if isinstance(site, str) else int(site)
        hidden, a = self.attention(h)
        pooled = a.softmax(dim=-1) @ hidden
        return self.classifiers(pooled + self.text_to_vision(self.organ_embedding[idx]))


def load_chief(model="chief", weights=None, device="cpu") -> tuple[CHIEF, dict]:
    """Build the CHIEF entry and load its weights strictly -> (module in eval mode, info).

    weights: a local file (``CHIEF_pretraining.pth``, a plain state dict read with ``weights_only=True``) or
    ``"hf_hub:..."``; ``"random"`` gives an untrained network with a loud warning. There is no public URL:
    None raises WeightsError saying where the file is. ``net(features [N, 768])`` -> the slide vector [768].
    """
    from .weights import read_state_dict, resolve, sha256_file

    spec, info, is_random = start(model, weights)
    net = CHIEF(**spec.kwargs)
    if is_random:
        return net.to(device).eval(), info
    if weights is None:
        raise WeightsError(f"model {spec.name!r}: {spec.extra['manual_weights']}. "
                           "(weights='random' gives an untrained network, for testing only.)")
    path = resolve(weights)
    sd = read_state_dict(path)
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"weights {weights} do not fit {spec.name} (CHIEF aggregator, "
                           f"CHIEF(size_arg='small')): {e}") from e
    info.update(weights=str(weights), weights_sha256=sha256_file(path))
    return net.to(device).eval(), info


register(ModelSpec(
    name="chief", kind="slide", arch="pathkit:chief",
    kwargs={"in_dim": 768, "hidden_dim": 512, "attn_dim": 256, "n_classes": 2},
    embed_dim=768, input_size=0, resize=None, pool="attention", weights=(),
    license="AGPL-3.0 (github.com/hms-dbmi/CHIEF LICENSE); weights on request (Google Drive / Docker image)",
    gated=True,
    source=("https://github.com/hms-dbmi/CHIEF (models/CHIEF.py in Downstream/*/models, size 'small'; "
            "Get_CHIEF_WSI_level_feature.py: result['WSI_feature']); TRIDENT CHIEFSlideEncoder"),
    description="CHIEF slide encoder: gated-attention pooling of CHIEF_CTransPath tile features, 768-d",
    extra={"tile_model": "chief_ctranspath", "coords": False, "in_chans": 768, "mpp": 1.0, "geometry": "warn",
           "anatomic_site": "not part of the slide embedding (only of the pretraining logits: CHIEF.bag_logits)",
           "call": "pathkit.models.chief.load_chief(weights=PATH) -> net; net(features [N, 768]) -> [768]",
           "manual_weights": (
               "CHIEF_pretraining.pth is shared on request (Google Drive folder linked from "
               "https://github.com/hms-dbmi/CHIEF, or the chiefcontainer/chief Docker image): download it and "
               "pass weights=PATH")},
))
