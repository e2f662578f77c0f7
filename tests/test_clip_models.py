"""Image-text models (CONCH, PLIP, QuiltNet): architecture parity with the reference code, the real
tokenizers shipped in installed packages, and strict loading of checkpoints in the published key naming.
Nothing is downloaded: weights are random and saved locally."""
from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from _small_models import CONCH_SMALL, PLIP_SMALL, QUILT_SMALL

import pathkit as pk
from pathkit.errors import WeightsError
from pathkit.models import get_spec
from pathkit.models.clip import BUILDERS, build_clip, get_tokenizer, load_clip
from pathkit.models.tile_encoders import BUILDERS as TILE_BUILDERS

SENTENCES = ["a photo of a cat", "an H&E image of lung adenocarcinoma.", "CLASSNAME, H&E stain."]


def _quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **k)


# ------------------------------------------------------------------------------------------ tokenizers
def test_clip_bpe_tokenizer_known_ids():
    pytest.importorskip("open_clip")
    tok = get_tokenizer("clip_bpe", None, 77)
    ids = tok(["a photo of a cat"])
    assert ids.shape == (1, 77)
    # OpenAI CLIP vocabulary: <start_of_text>=49406, a=320, photo=1125, of=539, cat=2368, <end_of_text>=49407
    assert ids[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 0]
    assert int(ids[0, 8:].abs().sum()) == 0


def test_conch_tokenizer_known_ids():
    pytest.importorskip("transformers")
    pytest.importorskip("conch", reason="CONCH's tokenizer ships in the conch package (pip install conch-fork)")
    tok = get_tokenizer("conch", None, 128)
    ids = tok(SENTENCES[:2])
    assert ids.shape == (2, 128)
    # <start_of_text>=1, <end_of_text>=2, <pad>=0 (CONCH's byte-level BPE, uncased)
    assert ids[0, :8].tolist() == [1, 264, 13726, 290, 264, 2602, 2, 0]
    assert ids[:, -1].tolist() == [0, 0]  # the slot CONCH keeps for its CLS embedding
    assert tok.tok.decode(ids[1].tolist(), skip_special_tokens=True).strip() == SENTENCES[1].lower()
    long = tok(["word " * 300])
    assert long[0, 126].item() == 2 and long[0, 127].item() == 0  # truncated to 127 keeping <end_of_text>


# ------------------------------------------------------------------------------------------- CONCH
def _conch_reference(small: bool):
    ref = pytest.importorskip("conch.open_clip_custom.coca_model")
    if small:
        vision = {"image_size": 64, "patch_size": 16, "layers": 2, "width": 48, "num_heads": 2, "attentional_pool_caption": True,
                      "attentional_pool_contrast": True, "attn_pooler_heads": 8, "n_queries_contrast": 1,
                      "n_queries_caption": 4, "output_tokens": True}
        text = {"context_length": 128, "vocab_size": 32007, "width": 48, "heads": 2, "layers": 2, "embed_cls": True,
                    "output_tokens": True}
        mm = {"context_length": 128, "vocab_size": 32007, "width": 48, "heads": 2, "layers": 1}
        return ref.CoCa(embed_dim=32, embed_dim_caption=48, multimodal_cfg=mm, text_cfg=text, vision_cfg=vision)
    import json
    from pathlib import Path

    import conch.open_clip_custom as occ

    cfg = json.loads((Path(occ.__file__).parent / "model_configs" / "conch_ViT-B-16.json").read_text())
    cfg.pop("custom_text")
    return ref.CoCa(**cfg)


def test_conch_full_size_matches_reference_shapes():
    with torch.device("meta"):
        ref = _quiet(_conch_reference, small=False)
        net, _ = build_clip("conch")
    skipped = ("text_decoder.", "visual.attn_pool_caption.", "visual.ln_caption.")
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items() if not k.startswith(skipped)}
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert ours == ref_shapes
    assert ours["visual.trunk.pos_embed"] == (1, 785, 768)  # 448 px / 16 + class token
    assert ours["visual.proj_contrast"] == (512, 512) and ours["text.text_projection"] == (768, 512)
    assert ours["text.token_embedding.weight"] == (32007, 768)
    # the tile-encoder entry "conch_vision" (its key map + this module's builder) takes the same checkpoint
    from pathkit.models.tile_encoders import build_tile_encoder
    from pathkit.models.weights import apply_key_map

    tower = build_tile_encoder("conch_vision", device="meta").net
    mapped = apply_key_map(dict(ref.state_dict()), get_spec("conch_vision").key_map)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in tower.state_dict().items()}


@pytest.fixture(scope="module")
def conch_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    ref = _quiet(_conch_reference, small=True).eval()
    with torch.no_grad():  # the reference leaves some tensors uninitialised (torch.empty)
        for p in ref.parameters():
            if not torch.isfinite(p).all():
                p.normal_(0, 0.02)
        ref.logit_scale.fill_(3.2)
    path = tmp_path_factory.mktemp("conch") / "pytorch_model.bin"
    torch.save(ref.state_dict(), path)  # the published key naming, decoder included
    return ref, path


def test_conch_loads_published_naming_and_matches_reference(conch_checkpoint):
    ref, path = conch_checkpoint
    model = load_clip("conch", weights=path, config=CONCH_SMALL)
    assert model.info["sha256"] and model.info["source"] == str(path)
    torch.manual_seed(1)
    x = torch.randn(3, 3, 64, 64)
    texts = SENTENCES + ["lung " * 200]  # the last one fills all 127 slots: no padding at all
    with torch.no_grad():
        img, txt = model.encode_image(x), model.encode_text(texts)
        ref_img = ref.encode_image(x)
        ref_txt = ref.encode_text(model.tokenize(texts))
    torch.testing.assert_close(img, ref_img, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(txt, ref_txt, atol=1e-5, rtol=1e-4)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3)) and torch.allclose(txt.norm(dim=-1), torch.ones(4))
    assert model.logit_scale == pytest.approx(float(torch.tensor(3.2).exp()), rel=1e-6)
    # short prompts only: pathkit cuts the padding columns that cannot reach the output; same result
    with torch.no_grad():
        short = model.encode_text(SENTENCES)
        single = model.encode_text(SENTENCES[1])
        ref_short = ref.encode_text(model.tokenize(SENTENCES))
    torch.testing.assert_close(short, ref_short, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(single[0], txt[1], atol=1e-5, rtol=1e-4)


def test_conch_vision_tile_features_are_pre_projection_as_conch_extracts_them(conch_checkpoint):
    """`conch_vision` = CONCH's encode_image(proj_contrast=False, normalize=False) (README, CLAM, TRIDENT);
    `conch_vision_proj` = the projected embedding zero-shot compares with text."""
    ref, path = conch_checkpoint
    assert TILE_BUILDERS["conch_vision"] is BUILDERS["conch_vision"]
    spec = get_spec("conch_vision")
    assert spec.kind == "tile" and spec.arch == "pathkit:conch_vision" and spec.embed_dim == 512
    assert get_spec("conch").extra["image_tower"] == "conch_vision_proj"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    out = {}
    for name in ("conch_vision", "conch_vision_proj"):
        s = get_spec(name)
        small = dataclasses.replace(s, extra={**s.extra, "config": CONCH_SMALL})
        enc, _ = pk.models.load_tile_encoder(small, weights=path)  # the full checkpoint, strictly
        with torch.no_grad():
            out[name] = enc(x)
    with torch.no_grad():
        ref_feat = ref.encode_image(x, proj_contrast=False, normalize=False)
        ref_proj = ref.encode_image(x, proj_contrast=True, normalize=False)
    err = (out["conch_vision"] - ref_feat).abs().max().item()
    print(f"PARITY conch_vision {err:.2e}")
    print(f"PARITY conch_vision_proj {(out['conch_vision_proj'] - ref_proj).abs().max().item():.2e}")
    assert out["conch_vision"].shape == (2, 32) and err < 1e-5  # the pooler width (512 at full size)
    torch.testing.assert_close(out["conch_vision_proj"], ref_proj, atol=1e-5, rtol=1e-4)
    # zero-shot can still use conch_vision features: ClipModel.project_image applies proj_contrast
    model = load_clip("conch", weights=path, config=CONCH_SMALL)
    with torch.no_grad():
        torch.testing.assert_close(model.project_image(out["conch_vision"]), model.encode_image(x),
                                   atol=1e-5, rtol=1e-4)
    assert (out["conch_vision"] - out["conch_vision_proj"]).abs().max() > 1e-2  # the two really differ


def test_wrong_checkpoint_is_refused(tmp_path):
    pytest.importorskip("open_clip")
    net, _ = build_clip("quiltnet", QUILT_SMALL)
    path = tmp_path / "quilt.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(WeightsError, match="do not fit conch"):
        load_clip("conch", weights=path, config=CONCH_SMALL)


# ----------------------------------------------------------------------------------------- QuiltNet
def test_quiltnet_round_trip(tmp_path):
    """open_clip naming is QuiltNet's published naming; an open_clip_config.json next to the checkpoint
    (as in the hub repo) sets the architecture, e.g. QuickGELU."""
    import json

    open_clip = pytest.importorskip("open_clip")
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    base = get_spec("quiltnet").extra["config"]
    cfg = {"embed_dim": 32, "quick_gelu": True, "vision_cfg": QUILT_SMALL["vision_cfg"],
           "text_cfg": {**base["text_cfg"], **QUILT_SMALL["text_cfg"]}}
    torch.manual_seed(0)
    ref = CLIP(32, CLIPVisionCfg(**cfg["vision_cfg"]), CLIPTextCfg(**cfg["text_cfg"]), quick_gelu=True).eval()
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(ref.state_dict(), path)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    model = load_clip("quiltnet", weights=path)
    assert model.info["config"] == str(tmp_path / "open_clip_config.json")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        img, txt = model.encode_image(x), model.encode_text(SENTENCES)
        ref_img = ref.encode_image(x, normalize=True)
        ref_txt = ref.encode_text(open_clip.get_tokenizer("ViT-B-32")(SENTENCES), normalize=True)
        gelu = load_clip("quiltnet", weights=path, config={**QUILT_SMALL, "quick_gelu": False})
        assert not torch.allclose(gelu.encode_image(x), ref_img, atol=1e-4)  # the activation matters
    torch.testing.assert_close(img, ref_img)
    torch.testing.assert_close(txt, ref_txt)
    assert model.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    # the tile tower reads the same companion config (one code path, `clip_config`), so it is open_clip's
    # image encoder exactly, QuickGELU included
    tower, info = pk.models.load_tile_encoder("quiltnet_vision", weights=path)
    assert info["config"] == str(tmp_path / "open_clip_config.json")
    with torch.no_grad():
        feats = tower(x)
        ref_feats = ref.encode_image(x, normalize=False)
    print(f"PARITY quiltnet_vision {(feats - ref_feats).abs().max().item():.2e}")
    assert (feats - ref_feats).abs().max().item() < 1e-5
    torch.testing.assert_close(torch.nn.functional.normalize(feats, dim=-1), img)
    (tmp_path / "open_clip_config.json").unlink()  # without it: the registry's full-size config, which this
    with pytest.raises(WeightsError, match="quiltnet_vision"):  # small checkpoint does not fit
        pk.models.load_tile_encoder("quiltnet_vision", weights=path)


def test_quiltnet_and_plip_full_size_parameter_count():
    pytest.importorskip("open_clip")
    pytest.importorskip("transformers")
    # OpenAI CLIP ViT-B/32 has 151,277,313 parameters; PLIP and QuiltNet-B-32 keep that architecture
    with torch.device("meta"):
        quilt, _ = build_clip("quiltnet")
        plip, _ = build_clip("plip")
    assert sum(p.numel() for p in quilt.parameters()) == 151_277_313 == get_spec("quiltnet").n_params
    assert sum(p.numel() for p in plip.parameters()) == 151_277_313 == get_spec("plip").n_params


# --------------------------------------------------------------------------------------------- PLIP
def test_plip_round_trip_with_legacy_keys(tmp_path):
    pytest.importorskip("open_clip")
    pytest.importorskip("transformers")
    from transformers import CLIPModel

    torch.manual_seed(0)
    ref, _ = build_clip("plip", PLIP_SMALL)
    sd = dict(ref.state_dict())
    sd["text_model.embeddings.position_ids"] = torch.arange(77)[None]  # what older transformers saved
    path = tmp_path / "pytorch_model.bin"
    torch.save(sd, path)
    ref.config.to_json_file(tmp_path / "config.json")  # as in the hub repo: read instead of the registry's
    model = load_clip("plip", weights=path)
    assert isinstance(model.net, CLIPModel) and model.info["config"] == str(tmp_path / "config.json")
    assert model.embed_dim == 32
    x = torch.randn(2, 3, 64, 64)
    tokens = model.tokenize(SENTENCES)
    with torch.no_grad():
        img, txt = model.encode_image(x), model.encode_text(SENTENCES)
        out = ref(input_ids=tokens, pixel_values=x, attention_mask=(tokens > 0).long())
    torch.testing.assert_close(img, out.image_embeds)
    torch.testing.assert_close(txt, out.text_embeds)
    torch.testing.assert_close(img @ txt.T * model.logit_scale, out.logits_per_image)


def test_random_weights_warn_loudly():
    pytest.importorskip("open_clip")
    with pytest.warns(UserWarning, match="RANDOM weights"):
        model = load_clip("quiltnet", weights="random", config=QUILT_SMALL)
    assert model.embed_dim == 32 and model.spec.embed_dim == 512 and model.spec.input_size == 224
    assert model.spec.mean == (0.48145466, 0.4578275, 0.40821073)
    assert get_spec("conch").input_size == 448 and get_spec("conch").resize == 448
