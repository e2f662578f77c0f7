"""Parity of the tile encoders added for issue 14 with their authors' recipes, on random weights, fp32 CPU.

- Hibou-B: HistAI's own code (github:HistAI/hibou, DINOv2 `DinoVisionTransformer` with registers and fused
  SwiGLU), reduced, saved as tests/fixtures/parity/hibou.pt by tests/fixtures/parity/make_hibou.py.
- Entries whose reference is timm or transformers itself (H-optimus-1, H0-mini, Virchow, Lunit, GPFM; Phikon,
  Phikon-v2, Midnight-12k): the library model is built exactly as the card / the authors' code / TRIDENT
  does (same class, same kwargs, same read-out), reduced in width and depth, and compared with pathkit's
  entry loading that model's own checkpoint. These check pathkit's recipe (kwargs, pooling, key handling,
  config reading), not the library.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
import torch

import pathkit as pk
from pathkit.models import get_spec

FIXTURES = Path(__file__).parent / "fixtures" / "parity"
TOL = 1e-5


def _randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def _load(spec, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pk.models.load_tile_encoder(spec, weights=path)


def _reduced(name, **kw):
    spec = get_spec(name)
    return dataclasses.replace(spec, name=f"small_{name}", kwargs={**spec.kwargs, **kw}, n_params=None,
                               input_size=kw.get("img_size", spec.input_size))


def _max_err(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# ----------------------------------------------------------------------------------- authors' own code
def test_hibou_b_matches_histai_reference_code(tmp_path):
    ref = torch.load(FIXTURES / "hibou.pt", weights_only=True)
    path = tmp_path / "hibou-b.pth"
    torch.save(ref["state_dict"], path)  # the DINOv2-format file of the Google Drive link
    # width 32: DINOv2's fused SwiGLU hidden = (int(4 * 32 * 2 / 3) + 7) // 8 * 8 = 88 -> timm mlp_ratio 176 / 32
    spec = _reduced("hibou_b", img_size=56, embed_dim=32, depth=2, num_heads=2, mlp_ratio=5.5)
    enc, info = _load(spec, path)
    with torch.no_grad():
        err = _max_err(enc(ref["x"]), ref["out"])
    print(f"PARITY hibou_b {err:.2e}")
    assert err < TOL, err
    assert info["key_map"] == "dinov2_original"
    # full size: 768 -> (int(3072 * 2 / 3) + 7) // 8 * 8 = 2048 per half, i.e. timm SwiGLUPacked hidden 4096
    assert int(768 * get_spec("hibou_b").kwargs["mlp_ratio"]) == 4096


# ------------------------------------------------------------------------------------- timm per the card
def _timm_case(name, arch, kwargs, readout, small, seed):
    import timm

    ref = _randomize(timm.create_model(arch, pretrained=False, num_classes=0, **{**kwargs, **small}), seed)
    return ref, readout


def _cls_mean(ref, x):  # Virchow card: torch.cat([output[:, 0], output[:, 1:].mean(1)], dim=-1)
    out = ref(x)
    return torch.cat([out[:, 0], out[:, 1:].mean(1)], dim=-1)


def _cls_mean_patch(ref, x):  # H0-mini card / Bioptimus SDK: CLS || mean of output[:, num_prefix_tokens:]
    out = ref.forward_features(x)
    return torch.cat([out[:, 0], out[:, ref.num_prefix_tokens:].mean(1)], dim=-1)


def _first(ref, x):  # H0-mini card: output[:, 0] of forward (global_pool "") / forward_features
    return ref.forward_features(x)[:, 0]


def _head(ref, x):  # timm forward with num_classes=0: the pooled class token
    return ref(x)


_SWIGLU = {"mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU"}
TIMM_CASES = {
    # name: (the authors' timm arch, the authors' kwargs, their read-out, reduction)
    "h_optimus_1": ("vit_giant_patch14_reg4_dinov2", {"img_size": 224, "init_values": 1e-5,
                                                      "dynamic_img_size": False}, _head,
                    {"img_size": 56, "embed_dim": 32, "depth": 2, "num_heads": 2}),
    "h0_mini": ("vit_base_patch14_reg4_dinov2", {**_SWIGLU, "img_size": 224, "dynamic_img_size": True},
                _cls_mean_patch, {"img_size": 56, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 5.33334}),
    "h0_mini_cls": ("vit_base_patch14_reg4_dinov2", {**_SWIGLU, "img_size": 224, "dynamic_img_size": True}, _first,
                    {"img_size": 56, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 5.33334}),
    "virchow": ("vit_huge_patch14_224", {"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375,
                                         "global_pool": "", "dynamic_img_size": True, **_SWIGLU}, _cls_mean,
                {"img_size": 56, "embed_dim": 32, "depth": 2, "num_heads": 2}),
    "lunit_vits8": ("vit_small_patch8_224", {"img_size": 224, "patch_size": 8, "embed_dim": 384, "num_heads": 6},
                    _head, {"img_size": 32, "embed_dim": 32, "depth": 2, "num_heads": 2}),
    "lunit_vits16": ("vit_small_patch16_224", {"img_size": 224, "patch_size": 16, "embed_dim": 384,
                                               "num_heads": 6}, _head,
                     {"img_size": 64, "embed_dim": 32, "depth": 2, "num_heads": 2}),
    "gpfm": ("vit_large_patch14_dinov2", {"img_size": 224, "init_values": 1e-5, "dynamic_img_size": True}, _head,
             {"img_size": 56, "embed_dim": 32, "depth": 2, "num_heads": 2}),
}


@pytest.mark.parametrize("name", sorted(TIMM_CASES))
def test_timm_entries_match_the_authors_recipe(name, tmp_path):
    from pathkit.models.tile_encoders import resolve_kwargs

    arch, kwargs, readout, small = TIMM_CASES[name]
    spec = get_spec(name)
    assert spec.arch == arch
    ref, _ = _timm_case(name, arch, resolve_kwargs(kwargs), readout, small, seed=len(name))
    path = tmp_path / f"{name}.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    enc, _ = _load(_reduced(name, **small), path)
    x = torch.randn(2, 3, small["img_size"], small["img_size"], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        err = _max_err(enc(x), readout(ref, x))
    print(f"PARITY {name} {err:.2e}")
    assert err < TOL, (name, err)


# ------------------------------------------------------------------------------ transformers per the card
HF_CASES = {
    # name: (transformers class, reduced config, read-out of the card)
    "phikon": ("ViTModel", {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                            "num_attention_heads": 2, "image_size": 32, "patch_size": 16, "layer_norm_eps": 1e-12},
               lambda out: out.last_hidden_state[:, 0]),
    "phikon_v2": ("Dinov2Model", {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                  "image_size": 32, "patch_size": 16, "layerscale_value": 1e-5},
                  lambda out: out.last_hidden_state[:, 0]),
    "midnight12k": ("Dinov2Model", {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                    "image_size": 28, "patch_size": 14, "use_swiglu_ffn": True},
                    lambda out: torch.cat([out.last_hidden_state[:, 0], out.last_hidden_state[:, 1:].mean(1)], -1)),
}


@pytest.mark.parametrize("name", sorted(HF_CASES))
def test_transformers_entries_match_the_card(name, tmp_path):
    transformers = pytest.importorskip("transformers")
    cls_name, cfg, readout = HF_CASES[name]
    spec = get_spec(name)
    assert spec.kwargs["model_class"] == cls_name
    config = getattr(transformers, cls_name.replace("Model", "Config"))(**cfg)
    torch.manual_seed(0)
    ref = getattr(transformers, cls_name)(config)  # as from_pretrained builds it (ViTModel: with its pooler)
    _randomize(ref, seed=len(name))
    ref.save_pretrained(tmp_path)  # model.safetensors + config.json, as in the hub repository
    enc, info = _load(spec, tmp_path / "model.safetensors")
    assert info["config"] == str(tmp_path / "config.json")  # the checkpoint's config, not the registry's
    x = torch.randn(2, 3, cfg["image_size"], cfg["image_size"], generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        err = _max_err(enc(x), readout(ref(pixel_values=x)))
    print(f"PARITY {name} {err:.2e}")
    assert err < TOL, (name, err)


def test_conch_v15_matches_trident_reference_code(tmp_path):
    """TRIDENT's CONCH v1.5 module (reduced: width 64, pooler 48) with a checkpoint whose position table is for
    twice the model's grid (as the published one, trained at 448 px, is for the 224-px model): resized at
    load, interpolated back at forward time (tests/fixtures/parity/make_conch15.py)."""
    ref = torch.load(FIXTURES / "conch15.pt", weights_only=True)
    path = tmp_path / "pytorch_model_vision.bin"
    torch.save(ref["state_dict"], path)
    small = {"img_size": 32, "patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 2, "pool_dim": 48,
             "pool_heads": 8}
    spec = dataclasses.replace(get_spec("conch_v15"), name="small_conch_v15", kwargs=small, n_params=None,
                               input_size=64)
    enc, _ = _load(spec, path)
    with torch.no_grad():
        err = _max_err(enc(ref["x"]), ref["out"])
    print(f"PARITY conch_v15 {err:.2e}")
    assert err < TOL, err
    assert tuple(ref["state_dict"]["trunk.pos_embed"].shape) == (1, 17, 64)  # the file's 4 x 4 grid ...
    assert tuple(enc.net.trunk.pos_embed.shape) == (1, 5, 64)  # ... resized to the model's 2 x 2 grid


def test_transformers_entry_refuses_an_incomplete_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    from pathkit.errors import WeightsError

    cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                                    patch_size=14)
    ref = transformers.Dinov2Model(cfg)
    ref.save_pretrained(tmp_path)
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tmp_path / "model.safetensors"))
    sd.pop("layernorm.weight")
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightsError, match="layernorm.weight"):
        _load(get_spec("phikon_v2"), tmp_path / "model.safetensors")


def test_h0_mini_reads_the_timm_hub_config_like_timm(tmp_path):
    """timm.create_model('hf-hub:bioptimus/H0-mini', mlp_layer=..., act_layer=...) takes the architecture and
    model_args of the repo's config.json, the card's explicit kwargs winning: pathkit does the same."""
    import json

    import timm
    from safetensors.torch import save_file

    from pathkit.models.tile_encoders import resolve_kwargs

    model_args = {"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 4.0, "img_size": 224,
                  "num_classes": 0}  # a ratio unlike the registry's default: the file decides
    card = resolve_kwargs({**_SWIGLU, "img_size": 56, "dynamic_img_size": True})
    ref = _randomize(timm.create_model("vit_base_patch14_reg4_dinov2", pretrained=False,
                                       **{**model_args, **card}), seed=9)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "vit_base_patch14_reg4_dinov2",
                                                      "model_args": model_args}))
    spec = dataclasses.replace(get_spec("h0_mini_cls"), kwargs={**get_spec("h0_mini_cls").kwargs, "img_size": 56},
                               n_params=None, input_size=56)
    enc, info = _load(spec, tmp_path / "model.safetensors")
    assert info["config"] == str(tmp_path / "config.json")
    assert enc.net.blocks[0].mlp.fc1.out_features == 128  # int(32 * 4.0): from the file, not 5.33334
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        err = _max_err(enc(x), _first(ref, x))
    print(f"PARITY h0_mini(hub config) {err:.2e}")
    assert err < TOL, err
