"""Weight loading: every file format and container round-trips bit for bit; HF cache offline; key maps
(mmcls BEiT -> timm, original DINOv2 -> timm, full ResNet-50 -> CLAM trunk) give identical outputs;
wrong-architecture, corrupted and malicious files raise the right errors."""
from __future__ import annotations

import dataclasses
import os
import pickle
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from _hf import hf_cache

import pathkit as pk
from pathkit.errors import ChecksumError, UnsafePickleError, WeightsError
from pathkit.models import tile_encoders as te
from pathkit.models import weights as W
from pathkit.models.registry import get_spec


def tiny(name, **kw):
    spec = get_spec(name)
    return dataclasses.replace(spec, name=f"tiny_{name}", kwargs={**spec.kwargs, **kw}, n_params=None,
                               embed_dim=0, input_size=kw.get("img_size", spec.input_size), weights=(),
                               sha256=None)


def randomized(spec, seed=0):
    """A CPU build whose every parameter (incl. zero-initialised tables, layer scales) is random."""
    torch.manual_seed(seed)
    enc = te.build_tile_encoder(spec, device="cpu")
    with torch.no_grad():
        for p in enc.net.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return enc


def assert_same_tensors(a: dict, b: dict):
    assert set(a) == set(b)
    for k, v in a.items():
        assert v.dtype == b[k].dtype and torch.equal(v, b[k]), k


def load(spec, path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pk.models.load_tile_encoder(spec, weights=path, **kw)


SPEC = tiny("uni2_h", img_size=28, embed_dim=32, depth=2, num_heads=2)  # SwiGLU + 8 registers, 28 px
X = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def ref():
    enc = randomized(SPEC)
    with torch.no_grad():
        out = enc(X)
    return enc.net.state_dict(), out


def _write(path, sd, how):
    from safetensors.torch import save_file

    if how == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif how == "bin":
        torch.save(sd, path)
    elif how == "model":
        torch.save({"model": sd, "epoch": 7, "args": {"lr": 0.1}}, path)
    elif how == "state_dict+module":
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    elif how == "teacher+backbone":
        torch.save({"teacher": {f"backbone.{k}": v for k, v in sd.items()}, "student": {}}, path)


@pytest.mark.parametrize("how,suffix", [("safetensors", ".safetensors"), ("bin", ".bin"), ("model", ".pth"),
                                        ("state_dict+module", ".pt"), ("teacher+backbone", ".pth")])
def test_formats_and_containers_roundtrip_bit_for_bit(tmp_path, ref, how, suffix):
    sd, out = ref
    path = tmp_path / f"w{suffix}"
    _write(path, sd, how)
    enc, info = load(SPEC, path)
    assert_same_tensors(enc.net.state_dict(), sd)
    with torch.no_grad():
        assert torch.equal(enc(X), out)
    assert info["sha256"] == W.sha256_file(path) and len(info["sha256"]) == 64
    assert info["path"] == str(path) and info["source"] == str(path)


def test_safetensors_content_sniffed_whatever_the_suffix(tmp_path, ref):
    sd, _ = ref
    path = tmp_path / "weights.bin"
    _write(path, sd, "safetensors")
    assert_same_tensors(W.read_state_dict(path), sd)


def test_training_heads_are_dropped_with_a_warning(tmp_path, ref):
    sd, out = ref
    path = tmp_path / "mmselfsup.pth"
    full = {f"backbone.{k}": v for k, v in sd.items()}
    full.update({"head.fc.weight": torch.zeros(3, 3), "neck.proj.weight": torch.zeros(2)})
    torch.save({"state_dict": full, "meta": {"epoch": 3}}, path)
    with pytest.warns(UserWarning, match=r"\['head', 'neck'\]"):
        enc, info = pk.models.load_tile_encoder(SPEC, weights=path)
    assert info["dropped"] == ["head", "neck"]
    with torch.no_grad():
        assert torch.equal(enc(X), out)


def test_hf_cache_offline(tmp_path, ref, monkeypatch):
    sd, out = ref
    hub = tmp_path / "hub"
    snap = hf_cache(hub, "pathkit-test/tiny-uni2", {"model.safetensors": lambda p: _write(p, sd, "safetensors")})
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rev = snap.name
    for source in ("hf_hub:pathkit-test/tiny-uni2", "hf_hub:pathkit-test/tiny-uni2/model.safetensors",
                   f"hf_hub:pathkit-test/tiny-uni2@{rev}/model.safetensors", f"hf_hub:pathkit-test/tiny-uni2@{rev}"):
        enc, info = load(SPEC, source)
        assert info["path"] == str(snap / "model.safetensors") and info["revision"] == rev
        assert_same_tensors(enc.net.state_dict(), sd)
        with torch.no_grad():
            assert torch.equal(enc(X), out)
    # a spec whose published source is that repo loads with weights=None
    spec = dataclasses.replace(SPEC, weights=("hf_hub:pathkit-test/tiny-uni2",))
    _, info = load(spec, None)
    assert info["source"] == "hf_hub:pathkit-test/tiny-uni2"
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE is set"):
        pk.models.load_tile_encoder(SPEC, weights="hf_hub:pathkit-test/not-cached")
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE is set"):
        pk.models.load_tile_encoder(SPEC, weights="hf_hub:pathkit-test/tiny-uni2@" + "f" * 40)


def test_url_source_is_not_downloaded_offline(tmp_path, monkeypatch, ref):
    monkeypatch.setenv("PATHKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="not in the cache"):
        W.resolve("https://example.org/releases/vits16.pth")
    # once in the cache it is used without the network; the cache is keyed by the URL, never the bare name
    sd, _ = ref
    url = "https://example.org/x/tiny.pth"
    dest = W.url_cache_path(url)
    assert dest.name == "tiny.pth" and dest.parent.parent == tmp_path / "weights" / "url"
    dest.parent.mkdir(parents=True)
    _write(dest, sd, "bin")
    assert W.resolve(url) == dest
    with pytest.raises(WeightsError, match="not in the cache"):  # same file name, another site
        W.resolve("https://example.com/y/tiny.pth")


def test_url_weights_with_a_known_sha256_are_cached_by_digest(tmp_path, monkeypatch, ref):
    """A new release under the same URL/name has another sha256, so it is never served from an old cache."""
    monkeypatch.setenv("PATHKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sd, _ = ref
    url = "https://example.org/releases/tiny.pth"
    old = tmp_path / "old.pth"
    _write(old, sd, "bin")
    digest = W.sha256_file(old)
    dest = W.url_cache_path(url, digest)
    assert dest == tmp_path / "weights" / "sha256" / digest / "tiny.pth"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(old.read_bytes())
    assert W.resolve(url, sha256=digest) == dest
    with pytest.raises(WeightsError, match="not in the cache"):  # the entry now names a newer release
        W.resolve(url, sha256="0" * 64)
    spec = dataclasses.replace(SPEC, weights=(url,), sha256=digest)
    _, info = load(spec, None)  # an entry carrying the sha256 finds and verifies its cached file
    assert info["verified"] and info["sha256"] == digest and info["path"] == str(dest)


# --------------------------------------------------------------------------------------------- key maps
def _timm_beit_to_mmcls(sd: dict, shared_table: bool = False) -> dict:
    """Inverse of the BEPH key map, written from mmcls' BEiT names (mmcls/models/backbones/beit.py + mmcv FFN)."""
    out = {}
    for k, v in sd.items():
        n = k
        n = re.sub(r"^patch_embed\.proj\.", "patch_embed.projection.", n)
        n = re.sub(r"^blocks\.(\d+)\.norm1\.", r"layers.\1.ln1.", n)
        n = re.sub(r"^blocks\.(\d+)\.norm2\.", r"layers.\1.ln2.", n)
        n = re.sub(r"^blocks\.(\d+)\.mlp\.fc1\.", r"layers.\1.ffn.layers.0.0.", n)
        n = re.sub(r"^blocks\.(\d+)\.mlp\.fc2\.", r"layers.\1.ffn.layers.1.", n)
        n = re.sub(r"^blocks\.(\d+)\.", r"layers.\1.", n)  # attn.*, gamma_1, gamma_2
        n = re.sub(r"^fc_norm\.", "ln2.", n)
        if shared_table and n.endswith("attn.relative_position_bias_table"):
            out["rel_pos_bias.relative_position_bias_table"] = v
            continue
        out[n] = v
    # mmcls keeps relative_position_index as a persistent buffer
    n_tok = 1 + 4 * 4
    for i in range(2):
        if not shared_table:
            out[f"layers.{i}.attn.relative_position_index"] = torch.zeros(n_tok, n_tok, dtype=torch.long)
    if shared_table:
        out["rel_pos_bias.relative_position_index"] = torch.zeros(n_tok, n_tok, dtype=torch.long)
    return out


BEIT = tiny("beph", img_size=64, embed_dim=32, depth=2, num_heads=2)  # 16-px patches: 4 x 4 grid
BEIT_PRE = tiny("beph_pretrain", img_size=64, embed_dim=32, depth=2, num_heads=2)
XB = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))


def test_beph_mmcls_checkpoint_maps_into_timm_beit(tmp_path):
    enc = randomized(BEIT, seed=3)
    sd = enc.net.state_dict()
    with torch.no_grad():
        out = enc(XB)
        # BEPH's embedding by hand: ln2(mean of patch tokens) (mmcls BEiT avg_token, final_norm=False)
        tokens = enc.net.forward_features(XB)
        by_hand = F.layer_norm(tokens[:, 1:].mean(1), (32,), sd["fc_norm.weight"], sd["fc_norm.bias"], eps=1e-6)
    torch.testing.assert_close(out, by_hand, rtol=1e-5, atol=1e-6)
    mm = _timm_beit_to_mmcls(sd)
    assert "layers.0.ffn.layers.0.0.weight" in mm and "patch_embed.projection.weight" in mm and "ln2.weight" in mm
    ckpt = {f"backbone.{k}": v for k, v in mm.items()}
    ckpt["backbone.ln1.weight"] = torch.ones(32)  # pre-training final norm: unused by BEPH's extraction
    ckpt["backbone.ln1.bias"] = torch.zeros(32)
    ckpt["neck.decoder.weight"] = torch.zeros(4, 4)  # pre-training parts outside the backbone
    path = tmp_path / "BEPH_backbone.pth"
    torch.save({"state_dict": ckpt, "author": "test"}, path)
    loaded, info = load(BEIT, path)
    assert_same_tensors(loaded.net.state_dict(), sd)
    with torch.no_grad():
        assert torch.equal(loaded(XB), out)
    assert info["key_map"] == "beph_clam"  # per-block tables in the file load as they are


def test_beph_pretrain_shared_relative_position_table_is_copied_to_every_block(tmp_path):
    enc = randomized(BEIT_PRE, seed=4)
    with torch.no_grad():
        table = enc.net.blocks[0].attn.relative_position_bias_table
        enc.net.blocks[1].attn.relative_position_bias_table.copy_(table)
        out = enc(XB)
    mm = _timm_beit_to_mmcls(enc.net.state_dict(), shared_table=True)
    assert not any(k.endswith("attn.relative_position_bias_table") for k in mm)
    path = tmp_path / "shared.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in mm.items()}}, path)
    loaded, _ = load(BEIT_PRE, path)
    with torch.no_grad():
        assert torch.equal(loaded(XB), out)


def test_beph_without_ln2_gets_identity_norm_and_a_warning(tmp_path):
    enc = randomized(BEIT, seed=5)
    with torch.no_grad():
        enc.net.fc_norm.weight.fill_(1.0)
        enc.net.fc_norm.bias.zero_()
        out = enc(XB)
    mm = {k: v for k, v in _timm_beit_to_mmcls(enc.net.state_dict()).items() if not k.startswith("ln2.")}
    path = tmp_path / "noln2.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in mm.items()}}, path)
    with pytest.warns(UserWarning, match="no `ln2`"):
        loaded, _ = pk.models.load_tile_encoder(BEIT, weights=path)
    with torch.no_grad():
        assert torch.equal(loaded(XB), out)


def test_original_dinov2_names_map_into_timm_registers(tmp_path):
    spec = tiny("kaiko_vitl14", img_size=28, embed_dim=32, depth=2, num_heads=2)
    enc = randomized(spec, seed=6)
    sd = enc.net.state_dict()
    # values on a 2^-10 grid so that (cls - pos) + pos is exact in float32
    grid = lambda t: torch.randint(-256, 256, t.shape, generator=torch.Generator().manual_seed(7)).float() / 1024
    with torch.no_grad():
        enc.net.cls_token.copy_(grid(enc.net.cls_token))
        out = enc(torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(8)))
    sd = enc.net.state_dict()
    cls_pos = grid(sd["cls_token"]) / 2
    orig = {k: v for k, v in sd.items() if k not in ("cls_token", "pos_embed", "reg_token")}
    orig["cls_token"] = sd["cls_token"] - cls_pos
    orig["pos_embed"] = torch.cat([cls_pos, sd["pos_embed"]], dim=1)
    orig["register_tokens"] = sd["reg_token"]
    orig["mask_token"] = torch.zeros(1, 32)
    path = tmp_path / "vitl14.pth"
    torch.save(orig, path)
    loaded, _ = load(spec, path)
    assert_same_tensors(loaded.net.state_dict(), sd)
    with torch.no_grad():
        assert torch.equal(loaded(torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(8))), out)


def test_dinov2_swiglu_names():
    sd = {"blocks.0.mlp.w12.weight": torch.ones(1), "blocks.0.mlp.w3.bias": torch.zeros(1),
          "blocks.0.attn.qkv.weight": torch.ones(2)}
    assert set(W.KEY_MAPS["dinov2_original"](sd)) == {"blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.bias",
                                                      "blocks.0.attn.qkv.weight"}


def test_full_resnet50_checkpoint_loads_into_clam_trunk(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(9)
    full = timm.create_model("resnet50", pretrained=False, num_classes=1000).eval()
    path = tmp_path / "model.safetensors"
    save_file(full.state_dict(), str(path))
    enc, _ = load("resnet50_trunc", path)
    for k, v in enc.net.state_dict().items():
        assert torch.equal(v, full.state_dict()[k]), k
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        h = full.layer3(full.layer2(full.layer1(full.maxpool(full.act1(full.bn1(full.conv1(x)))))))
        torch.testing.assert_close(enc(x), h.mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------- errors
def test_wrong_architecture_names_the_entry_it_fits(tmp_path):
    sig = te.signature(get_spec("resnet50_trunc"))
    sd = {k: torch.zeros(s) for k, s in sig.items()}
    path = tmp_path / "clam.safetensors"
    from safetensors.torch import save_file

    save_file(sd, str(path))
    with pytest.raises(WeightsError) as e:
        pk.models.load_tile_encoder("vit_tiny_test", weights=path)
    msg = str(e.value)
    assert "vit_tiny_test" in msg and "missing keys" in msg and "unexpected keys" in msg
    assert "registry entry resnet50_trunc" in msg
    names = dict(te.identify_checkpoint(sd))
    assert names["resnet50_trunc"] == 1.0 and names["uni"] < 0.1


def test_same_keys_other_shapes_is_an_error(tmp_path, ref):
    sd, _ = ref
    bad = dict(sd)
    bad["blocks.0.attn.proj.weight"] = torch.zeros(32, 31)
    path = tmp_path / "bad.safetensors"
    _write(path, bad, "safetensors")
    with pytest.raises(WeightsError, match=r"wrong shapes.*blocks\.0\.attn\.proj\.weight"):
        pk.models.load_tile_encoder(SPEC, weights=path)


def test_missing_and_unexpected_keys_are_listed(tmp_path, ref):
    sd, _ = ref
    part = {k: v for k, v in sd.items() if not k.startswith("blocks.1.")}
    part["extra.thing"] = torch.zeros(1)
    path = tmp_path / "part.pth"
    torch.save(part, path)
    with pytest.raises(WeightsError) as e:
        pk.models.load_tile_encoder(SPEC, weights=path)
    msg = str(e.value)
    assert "blocks.1.attn.qkv.weight" in msg and "extra.thing" in msg and str(path) in msg


def test_corrupted_files(tmp_path, ref):
    sd, _ = ref
    good = tmp_path / "good.pth"
    torch.save(sd, good)
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError, match="corrupted or truncated"):
        W.read_state_dict(trunc)
    st = tmp_path / "bad.safetensors"
    st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(WeightsError, match="safetensors"):
        W.read_state_dict(st)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(1000))
    with pytest.raises(WeightsError):
        W.read_state_dict(junk)
    with pytest.raises(WeightsError, match="does not exist"):
        pk.models.load_tile_encoder(SPEC, weights=tmp_path / "nope.pth")
    torch.save({"epoch": 3, "note": "no tensors"}, tmp_path / "empty.pth")
    with pytest.raises(WeightsError, match="no tensors"):
        W.read_state_dict(tmp_path / "empty.pth")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create a file when unpickled


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    for i, obj in enumerate([_Payload(str(marker)), {"model": {"w": torch.zeros(1)}, "x": _Payload(str(marker))}]):
        plain = tmp_path / f"evil{i}.pth"
        with open(plain, "wb") as f:
            pickle.dump(obj, f)
        zipped = tmp_path / f"evil_zip{i}.pth"
        torch.save(obj, zipped)
        for p in (plain, zipped):
            with pytest.raises(UnsafePickleError, match="safetensors") as e:
                pk.models.load_tile_encoder(SPEC, weights=p)
            assert "weights_only=False" in str(e.value) and str(p) in str(e.value)
    assert not marker.exists()


def test_known_sha256_is_verified(tmp_path, ref):
    sd, _ = ref
    path = tmp_path / "w.safetensors"
    _write(path, sd, "safetensors")
    digest = W.sha256_file(path)
    ok = dataclasses.replace(SPEC, weights=(str(path),), sha256=digest)
    _, info = load(ok, None)
    assert info["verified"] and info["sha256"] == digest
    bad = dataclasses.replace(ok, sha256="0" * 64)
    with pytest.raises(ChecksumError, match="expected 0000"):
        pk.models.load_tile_encoder(bad)
    # a user's own file (not the published source) is not held to the published checksum
    copy = tmp_path / "finetuned.safetensors"
    copy.write_bytes(path.read_bytes())
    _, info = load(bad, copy)
    assert not info["verified"] and info["sha256"] == digest


def test_random_weights_warn_loudly():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        _, info = pk.models.load_tile_encoder("vit_tiny_test")
    assert info["source"] == "random" and info["sha256"] is None
    with pytest.warns(UserWarning, match="RANDOM weights"):
        pk.models.load_tile_encoder(SPEC, weights="random")


def test_unknown_key_map():
    with pytest.raises(WeightsError, match="unknown key map"):
        W.apply_key_map({}, "nope")


def test_half_precision_checkpoint_is_cast_to_the_model_dtype(tmp_path, ref):
    sd, _ = ref
    path = tmp_path / "half.safetensors"
    _write(path, {k: v.half() for k, v in sd.items()}, "safetensors")
    enc, _ = load(SPEC, path)
    got = enc.net.state_dict()
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in got.values())
    for k, v in sd.items():
        assert torch.equal(got[k], v.half().float()), k


def _mmcls_relative_position_index(wh, ww):
    """mmcls BEiTAttention's index (cls->token row, token->cls column, cls->cls at the table's end)."""
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel[:, :, 0] += wh - 1
    rel[:, :, 1] += ww - 1
    rel[:, :, 0] *= 2 * ww - 1
    n = (2 * wh - 1) * (2 * ww - 1) + 3
    idx = torch.zeros((wh * ww + 1,) * 2, dtype=torch.long)
    idx[1:, 1:] = rel.sum(-1)
    idx[0, 0:] = n - 3
    idx[0:, 0] = n - 2
    idx[0, 0] = n - 1
    return idx


def test_beit_relative_position_tables_have_the_same_layout_in_mmcls_and_timm():
    # the tables are copied as they are, so both libraries must index them identically
    enc = te.build_tile_encoder(BEIT, device="cpu")
    for blk in enc.net.blocks:
        assert torch.equal(blk.attn.relative_position_index.long(), _mmcls_relative_position_index(4, 4))
        assert blk.attn.relative_position_bias_table.shape == (7 * 7 + 3, 2)


def test_dinov2_key_map_matches_timms_own_converter():
    from timm.models import vision_transformer as tv

    if not hasattr(tv, "_convert_dinov2"):
        pytest.skip("this timm has no _convert_dinov2 to compare with")
    spec = tiny("kaiko_vitl14", img_size=28, embed_dim=32, depth=2, num_heads=2)
    enc = randomized(spec, seed=10)
    sd = enc.net.state_dict()
    orig = {k: v for k, v in sd.items() if k not in ("cls_token", "pos_embed", "reg_token")}
    orig.update(cls_token=torch.randn(1, 1, 32), pos_embed=torch.randn(1, 5, 32), register_tokens=sd["reg_token"],
                mask_token=torch.zeros(1, 32))
    ours = W.KEY_MAPS["dinov2_original"](dict(orig))
    theirs = tv._convert_dinov2(dict(orig), enc.net)
    assert_same_tensors(ours, theirs)


def test_beph_without_a_file_says_where_to_get_it():
    with pytest.raises(WeightsError, match="Google Drive"):
        pk.models.load_tile_encoder("beph")


def test_identification_sees_through_key_maps_at_full_size():
    # shapes only: meta tensors of the real ViT-L/14 and BEiT-B, written in their authors' own names
    meta = lambda shape: torch.empty(shape, device="meta")
    sig = te.signature(get_spec("kaiko_vitl14"))
    orig = {k: meta(s) for k, s in sig.items() if k not in ("cls_token", "pos_embed", "reg_token")}
    orig.update(cls_token=meta((1, 1, 1024)), pos_embed=meta((1, 1 + 37 * 37, 1024)),
                register_tokens=meta((1, 4, 1024)), mask_token=meta((1, 1024)))
    scores = dict(te.identify_checkpoint(orig))
    assert scores["kaiko_vitl14"] == 1.0 and scores["uni"] < 1.0
    beit = _timm_beit_to_mmcls({k: meta(s) for k, s in te.signature(get_spec("beph")).items()})
    beit = {f"backbone.{k}": v for k, v in beit.items() if "relative_position_index" not in k}
    before = dict(beit)
    assert dict(te.identify_checkpoint(beit))["beph"] == 1.0
    assert beit == before  # key maps leave the caller's dict alone


FAMILIES = {
    "gigapath_tile": {"img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2},
    "uni": {"img_size": 32, "embed_dim": 32, "depth": 2, "num_heads": 2},
    "virchow2": {"img_size": 28, "embed_dim": 32, "depth": 2, "num_heads": 2},
    "h_optimus_0": {"img_size": 28, "embed_dim": 32, "depth": 2, "num_heads": 2},
    "kaiko_vits8": {"img_size": 32, "embed_dim": 32, "depth": 2, "num_heads": 2},
    "mstar": {"img_size": 32, "embed_dim": 32, "depth": 2, "num_heads": 2},
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_small_variant_of_each_vit_family_roundtrips(tmp_path, name):
    from safetensors.torch import save_file

    spec = tiny(name, **FAMILIES[name])
    enc = randomized(spec, seed=11)
    size = spec.input_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        out = enc(x)
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in enc.net.state_dict().items()}, str(path))
    loaded, _ = load(spec, path)
    assert_same_tensors(loaded.net.state_dict(), enc.net.state_dict())
    with torch.no_grad():
        got = loaded(x)
    assert torch.equal(got, out)
    width = 64 if spec.pool == "cls+mean_patch" else 32
    assert got.shape == (2, width)


def test_conch_full_checkpoint_loads_into_the_image_tower(tmp_path):
    if "conch_vision" not in te.BUILDERS:
        pytest.skip("pathkit/models/clip.py has not registered the conch_vision builder")
    full = get_spec("conch_vision")
    # a small CoCa tower through the builder's config override (clip.py merges spec.extra["config"])
    spec = dataclasses.replace(full, name="tiny_conch", input_size=64, resize=64, n_params=None, extra={
        **full.extra, "config": {"embed_dim": 16, "vision": {"image_size": 64, "width": 32, "layers": 1,
                                                             "heads": 2, "attn_pooler_heads": 2}}})
    enc = randomized(spec, seed=13)
    if te.n_params(enc) > 2_000_000:
        pytest.skip("clip.py's builder ignores the config override; the full tower is too slow for CI here")
    tower = enc.net.state_dict()
    ckpt = {**tower, "text.token_embedding.weight": torch.zeros(4, 4), "logit_scale": torch.tensor(4.6),
            "visual.attn_pool_caption.query": torch.zeros(2, 8), "visual.ln_caption.weight": torch.ones(8),
            "text_decoder.ln.weight": torch.ones(3)}
    path = tmp_path / "conch.bin"
    torch.save({"module." + k: v for k, v in ckpt.items()}, path)
    loaded, info = load(spec, path)
    assert info["key_map"] == "conch_visual"
    assert_same_tensors(loaded.net.state_dict(), tower)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        out = loaded(x)
        assert torch.equal(out, enc(x))
    assert out.shape == (2, 16)
