"""Backends of the image-text models: how each family (CONCH's own code, transformers' CLIP, open_clip) is built
from a config, loads a state dict and encodes images and text. A registry entry names its backend."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ._conch import ConchNet, ConchVisual


class _Tower(nn.Module):
    """An image tower used as a tile encoder. Its parameter names are those of the full image-text model,
    so `load_state_dict` takes a whole published checkpoint and keeps the image-tower part.
    `project=False` (CONCH only) returns the pooled embedding before the contrastive projection."""

    backend: _Backend = None
    project: bool = True

    def forward(self, x):
        return self.backend.tower_forward(self, x)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        sd = self.backend.clean_state_dict(dict(state_dict))
        sd = {k: v for k, v in sd.items() if k.startswith(self.backend.tower_prefixes)}
        return super().load_state_dict(sd, strict=strict, assign=assign)

# ------------------------------------------------------------------------------------------- backends
def _merge(base: dict, override: dict | None) -> dict:
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class _Backend:
    """How one family of models is built, run and loaded. Subclasses are data + a few lines each."""

    ignored_prefixes: tuple = ()
    ignored_suffixes: tuple = ()

    def clean_state_dict(self, sd: dict) -> dict:
        """Published checkpoint -> the keys pathkit's module has (drop `module.` and unused parts)."""
        if sd and all(k.startswith("module.") for k in sd):
            sd = {k[len("module."):]: v for k, v in sd.items()}
        return {k: v for k, v in sd.items()
                if not k.startswith(self.ignored_prefixes) and not k.endswith(self.ignored_suffixes)}


class _ConchBackend(_Backend):
    ignored_prefixes = ConchNet.IGNORED_PREFIXES
    tower_prefixes = ("visual.",)

    def build(self, cfg):
        return ConchNet(cfg)

    def image(self, net, x):
        return net.visual(x)

    def text(self, net, tokens):
        return net.text(tokens)

    def logit_scale(self, net):
        return float(net.logit_scale.detach().exp())

    def build_tower(self, cfg):
        tower = _Tower()
        tower.visual = ConchVisual(cfg)
        return tower

    def tower_forward(self, tower, x):
        return tower.visual(x, project=tower.project)


def _trim_after_eot(tokens: torch.Tensor) -> torch.Tensor:
    """CLIP BPE ids: drop the columns after the last <end_of_text> of the batch. The text towers are causal
    and read the <end_of_text> position, so those padding columns cannot change the output."""
    return tokens[:, : int(tokens.argmax(dim=-1).max()) + 1]


class _HFClipBackend(_Backend):
    ignored_suffixes = ("position_ids",)  # older transformers saved these buffers
    tower_prefixes = ("vision_model.", "visual_projection.")

    @staticmethod
    def _config(cfg):
        from transformers import CLIPConfig

        return CLIPConfig(text_config=cfg["text"], vision_config=cfg["vision"], projection_dim=cfg["projection_dim"])

    def build(self, cfg):
        from transformers import CLIPModel

        return CLIPModel(self._config(cfg)).eval()

    def image(self, net, x):
        return net.visual_projection(net.vision_model(pixel_values=x).pooler_output)

    def text(self, net, tokens):
        tokens = _trim_after_eot(tokens)
        eot = tokens.argmax(dim=-1)  # CLIP BPE: <end_of_text> has the highest id
        mask = (torch.arange(tokens.shape[1], device=tokens.device)[None] <= eot[:, None]).long()
        out = net.text_model(input_ids=tokens, attention_mask=mask).last_hidden_state
        return net.text_projection(out[torch.arange(tokens.shape[0], device=tokens.device), eot])

    def logit_scale(self, net):
        return float(net.logit_scale.detach().exp())

    def build_tower(self, cfg):
        from transformers import CLIPVisionModelWithProjection

        vcfg = self._config(cfg).vision_config
        vcfg.projection_dim = cfg["projection_dim"]
        inner = CLIPVisionModelWithProjection(vcfg)
        tower = _Tower()
        tower.vision_model, tower.visual_projection = inner.vision_model, inner.visual_projection
        return tower

    def tower_forward(self, tower, x):
        return tower.visual_projection(tower.vision_model(pixel_values=x).pooler_output)


class _OpenClipBackend(_Backend):
    ignored_suffixes = ("attn_mask",)
    tower_prefixes = ("visual.",)

    @staticmethod
    def _cfgs(cfg):
        from open_clip.model import CLIPTextCfg, CLIPVisionCfg

        return CLIPVisionCfg(**cfg["vision_cfg"]), CLIPTextCfg(**cfg["text_cfg"])

    def build(self, cfg):
        from open_clip.model import CLIP

        vcfg, tcfg = self._cfgs(cfg)
        return CLIP(embed_dim=cfg["embed_dim"], vision_cfg=vcfg, text_cfg=tcfg, quick_gelu=cfg.get("quick_gelu", False))

    def image(self, net, x):
        return net.encode_image(x, normalize=False)

    def text(self, net, tokens):
        return net.encode_text(tokens, normalize=False)  # open_clip needs the full context length

    def logit_scale(self, net):
        return float(net.logit_scale.detach().exp())

    def build_tower(self, cfg):
        from open_clip.model import _build_vision_tower

        vcfg, _ = self._cfgs(cfg)
        tower = _Tower()
        tower.visual = _build_vision_tower(cfg["embed_dim"], vcfg, quick_gelu=cfg.get("quick_gelu", False))
        return tower

    def tower_forward(self, tower, x):
        return tower.visual(x)


BACKENDS = {"conch": _ConchBackend(), "hf_clip": _HFClipBackend(), "open_clip": _OpenClipBackend()}
