"""LongNet slide encoder: parity with the reference (fixture), exact dilated-attention semantics,
released configuration, weights loading, invariances."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pathkit.errors import GridError, WeightsError
from pathkit.models.longnet import (
    LongNetSlideEncoder,
    build_slide_encoder,
    dilated_attention,
    load_slide_encoder,
    segment_lengths,
    sincos_pos_embed,
)
from pathkit.models.registry import get_spec

FIXTURE = "gigapath_slide_encoder_small.pt"
PARITY_TOL = 1e-4


@pytest.fixture(scope="module")
def ref(shared_fixtures):
    path = shared_fixtures / FIXTURE
    if not path.is_file():
        pytest.skip(f"{path} not found")
    # our own fixture (made by running the reference code), not a download: a full unpickle is fine
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def small(ref):
    net = LongNetSlideEncoder.from_config(ref["config"]).eval()
    net.load_state_dict(ref["state_dict"], strict=True)
    return net


def _maxerr(a, b):
    return float((a.double() - b.double()).abs().max())


# ---------------------------------------------------------------------------------------------- parity

@pytest.mark.parametrize("case", ["case0", "case1"])
def test_parity_with_reference(ref, small, case, record_property):
    x, c = ref["inputs"][case]["tile_embeds"], ref["inputs"][case]["coords"]
    want = ref["outputs"][case]
    with torch.inference_mode():
        feats = small.forward_features(x, c, return_states=True)
        states = feats["encoder_states"]
        got = {
            "cls": small._pool(feats["encoder_out"], "cls"),
            "gap": small._pool(feats["encoder_out"], "mean"),
            "cls_all_layers": torch.stack([small._pool(h, "cls") for h in states]),
            "gap_all_layers": torch.stack([small._pool(h, "mean") for h in states]),
            "encoder_out": feats["encoder_out"],
            "tokens_in": feats["tokens_in"],
            "encoder_states": states,
        }
        if case == "case1":  # the public forward() paths give the same (case0 is the slow one)
            for name, pool, all_layers in [("cls", "cls", False), ("gap", "mean", False),
                                           ("cls_all_layers", "cls", True), ("gap_all_layers", "mean", True)]:
                assert _maxerr(small(x, c, pool=pool, all_layers=all_layers), got[name]) < 1e-6, name
    assert torch.equal(feats["pos_idx"], want["pos_idx"])
    errs = {}
    for k, v in got.items():
        assert v.shape == want[k].shape, k
        errs[k] = _maxerr(v, want[k])
    print(f"\n{case} max abs err vs reference:", {k: f"{v:.2e}" for k, v in errs.items()}, "pos_idx: exact")
    record_property(f"{case}_max_abs_err", errs)
    assert max(errs.values()) <= PARITY_TOL, errs
    # the CLS output and the last all-layer output are different things in the reference
    assert _maxerr(got["cls"], got["cls_all_layers"][-1]) > 1e-2


@pytest.mark.parametrize("backend", ["sdpa", "manual"])
def test_attention_backends_match_reference(ref, small, backend):
    x, c = ref["inputs"]["case1"]["tile_embeds"], ref["inputs"]["case1"]["coords"]
    small.attn_backend = backend
    try:
        with torch.inference_mode():
            gap = small(x, c, pool="mean", all_layers=True)
    finally:
        small.attn_backend = "auto"
    assert _maxerr(gap, ref["outputs"]["case1"]["gap_all_layers"]) <= PARITY_TOL


def test_layer_k_is_the_references_all_layer_embed_k(ref, small):
    """layer=k (what embed_slide's default layers=11 runs for gigapath_slide) stops after k blocks and equals
    row k of the reference's all_layer_embed output, for both poolings."""
    x, c = ref["inputs"]["case1"]["tile_embeds"], ref["inputs"]["case1"]["coords"]
    want = ref["outputs"]["case1"]
    depth = len(small.encoder.layers)
    with torch.inference_mode():
        for k in range(depth + 1):
            for pool, name in [("mean", "gap_all_layers"), ("cls", "cls_all_layers")]:
                assert _maxerr(small(x, c, pool=pool, layer=k), want[name][k]) <= PARITY_TOL, (k, pool)
    for bad in (-1, depth + 1, 1.0, True):
        with pytest.raises(ValueError, match="layer="):
            small(x, c, layer=bad)
    with pytest.raises(ValueError, match="not both"):
        small(x, c, layer=1, all_layers=True)


# ------------------------------------------------------------------- dilated attention, literal version

def _literal_dilated(q, k, v, segs, ratios, detach_weights=False):
    """The reference's algorithm step by step (pad, segment, dense_to_sparse via diagonal, attention with
    zero keys, sparse_to_dense via diag_embed, lse -1e8 off-diagonal, cut, softmax-merge), in float64."""
    B, L, H, d = q.shape
    outs, lses = [], []
    for sl, r in zip(segs, ratios):
        g = min(sl, L)
        n = math.ceil(L / g)

        def gathering(x, n=n, g=g, r=r):
            x = F.pad(x, (0, 0, 0, 0, 0, n * g - L)).reshape(B * n, g, H, d)
            x = F.pad(x, (0, 0, 0, (-H) % r, 0, (-g) % r))
            bn, gp, hp = x.shape[:3]
            x = x.reshape(bn, gp // r, r, r, hp // r, d).permute(0, 1, 4, 5, 2, 3)  # b l h d r1 r2
            x = torch.diagonal(x, dim1=4, dim2=5)  # b l h d r
            return x.permute(0, 1, 4, 2, 3).reshape(bn, gp // r, hp, d)[:, :, :H]

        qi, ki, vi = gathering(q), gathering(k), gathering(v)
        s = torch.einsum("blhd,bmhd->bhlm", qi, ki) / math.sqrt(d)
        lse = torch.logsumexp(s, -1)  # [bn, H, l]
        o = torch.einsum("bhlm,bmhd->blhd", torch.softmax(s, -1), vi)
        bn, ll = o.shape[:2]
        hpad = (-H) % r
        hp = H + hpad
        o = F.pad(o, (0, 0, 0, hpad))
        lse = F.pad(lse, (0, 0, 0, hpad), value=-1e8)
        o = torch.diag_embed(o.reshape(bn, ll, r, hp // r, d).permute(0, 1, 3, 4, 2), dim1=4, dim2=5)
        o = o.permute(0, 5, 2, 1, 4, 3).reshape(bn, hp, ll * r, d)[:, :H]
        lse = torch.diag_embed(lse.reshape(bn, r, hp // r, ll).permute(0, 3, 2, 1), dim1=3, dim2=4)
        lse = lse.masked_fill(lse == 0, -1e8).permute(0, 4, 2, 1, 3).reshape(bn, hp, ll * r)[:, :H]
        gp = ll * r
        o = o.reshape(B, n, H, gp, d).permute(0, 2, 1, 3, 4).reshape(B, H, n * gp, d)[:, :, :L]
        lse = lse.reshape(B, n, H, gp).permute(0, 2, 1, 3).reshape(B, H, n * gp)[:, :, :L]
        outs.append(o)
        lses.append(lse)
    lses = torch.stack(lses)
    w = torch.softmax(lses.detach() if detach_weights else lses, dim=0)  # the reference: under no_grad
    out = (torch.stack(outs) * w[..., None]).sum(0)
    return out.permute(0, 2, 1, 3)


# segment lengths / ratios chosen to hit every padding path: segments not a multiple of r (inside the
# sequence too: the reference's shifted layout), head counts not a multiple of r, a short last segment
QUIRKY = ([4, 6, 7, 16], [1, 4, 3, 2])


@pytest.mark.parametrize("L", [1, 2, 5, 6, 13, 23, 40])
def test_dilated_attention_equals_literal_reference(L):
    g = torch.Generator().manual_seed(L)
    q, k, v = (torch.randn(2, L, 6, 4, generator=g, dtype=torch.float64) for _ in range(3))
    want = _literal_dilated(q, k, v, *QUIRKY)
    got = dilated_attention(q, k, v, *QUIRKY, backend="manual")
    assert _maxerr(got, want) < 1e-12
    got32 = dilated_attention(q.float(), k.float(), v.float(), *QUIRKY, backend="auto")
    assert _maxerr(got32, want) < 1e-5


@pytest.mark.parametrize("backend", ["manual", "auto"])
def test_dilated_attention_gradients_equal_literal_reference(backend):
    """Gradients as the reference's: branch-merge weights computed without gradient."""
    g = torch.Generator().manual_seed(7)
    dt = torch.float64 if backend == "manual" else torch.float32
    q, k, v = (torch.randn(2, 23, 6, 4, generator=g, dtype=torch.float64) for _ in range(3))
    w = torch.randn(2, 23, 6, 4, generator=g, dtype=torch.float64)
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    want = torch.autograd.grad((_literal_dilated(*ins, *QUIRKY, detach_weights=True) * w).sum(), ins)
    ins = [t.to(dt).requires_grad_() for t in (q, k, v)]
    got = torch.autograd.grad((dilated_attention(*ins, *QUIRKY, backend=backend) * w.to(dt)).sum(), ins)
    for a, b in zip(got, want):
        assert _maxerr(a, b) < (1e-12 if dt == torch.float64 else 1e-5)


def test_dilated_attention_tiny_chunks_equal_one_chunk():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 50, 6, 4, generator=g) for _ in range(3))
    a = dilated_attention(q, k, v, *QUIRKY, token_budget=1)
    b = dilated_attention(q, k, v, *QUIRKY, token_budget=1 << 20)
    assert _maxerr(a, b) < 1e-6


# ------------------------------------------------------------------------------------- geometry

def test_segment_lengths_match_reference():
    assert segment_lengths(262144, 256) == [1024, 5792, 32768, 185363, 1048576]
    assert segment_lengths(250000, 256) == [1024, 4870, 23170, 110217, 524288]


def _mae_table(dim, n):
    """MAE's get_2d_sincos_pos_embed (numpy, float64), the reference's full table minus the CLS row."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.meshgrid(np.arange(n, dtype=np.float64), np.arange(n, dtype=np.float64))
    grid = np.stack(grid, axis=0).reshape(2, 1, n, n)
    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1).astype(np.float32)


def test_position_rows_equal_full_table():
    n, dim = 37, 64
    table = _mae_table(dim, n)
    gx, gy = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    rows = sincos_pos_embed(gx.reshape(-1), gy.reshape(-1), dim)
    idx = (gx * n + gy).reshape(-1).numpy()  # the reference's index (minus the CLS offset)
    np.testing.assert_array_equal(rows.numpy(), table[idx])
    # first half encodes y: cell (gx=0, gy=5) has sin(5 * w_0) = sin(5) in column 0, and 0 = sin(0 * w_0)
    # in the first column of the x half; cell (gx=5, gy=0) the other way round
    assert rows[5, 0].item() == pytest.approx(math.sin(5.0), abs=1e-7) and rows[5, dim // 2].item() == 0.0
    assert rows[5 * n, 0].item() == 0.0 and rows[5 * n, dim // 2].item() == pytest.approx(math.sin(5.0), abs=1e-7)


def test_pos_index_and_off_grid_error(small):
    c = torch.tensor([[[0.0, 0.0], [255.9, 256.0], [256 * 999 + 1, 256 * 3]]])
    assert small.pos_index(c).tolist() == [[1, 2, 999 * 1000 + 3 + 1]]
    with pytest.raises(GridError, match="1000"):
        small.pos_index(torch.tensor([[[256.0 * 1000, 0.0]]]))
    with pytest.raises(GridError, match="-1"):
        small.pos_index(torch.tensor([[[0.0, -3.0]]]))


# ------------------------------------------------------------------- released configuration, weights

def test_released_config_parameter_count_and_names():
    spec = get_spec("gigapath_slide")
    assert spec.kind == "slide" and spec.arch == "pathkit:longnet" and spec.n_params == 86_330_880
    assert spec.weights == ("hf_hub:prov-gigapath/prov-gigapath/slide_encoder.pth",)
    net = build_slide_encoder("gigapath_slide", device="meta")
    assert sum(p.numel() for p in net.parameters()) == 86_330_880
    sd = net.state_dict()
    assert len(sd) == 247 and "pos_embed" not in sd
    assert sd["encoder.layers.11.ffn.fc1.weight"].shape == (3072, 768)
    assert sd["patch_embed.proj.weight"].shape == (768, 1536) and sd["cls_token"].shape == (1, 1, 768)
    assert net.config["segment_length"] == [1024, 5792, 32768, 185363, 1048576]
    assert net.config["dilated_ratio"] == [1, 2, 4, 8, 16]
    assert net.norm.eps == 1e-6 and net.encoder.layer_norm.eps == 1e-5


@pytest.mark.slow
def test_loads_reference_format_checkpoint(tmp_path):
    meta = build_slide_encoder("gigapath_slide", device="meta")
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(v.shape, generator=g) * 0.02 for k, v in meta.state_dict().items()}
    path = tmp_path / "slide_encoder.pth"
    torch.save({"model": sd}, path)  # what the reference's checkpoint looks like
    net, info = load_slide_encoder("gigapath_slide", weights=str(path))
    assert info["weights"] == str(path) and len(info["weights_sha256"]) == 64
    for k in ("cls_token", "encoder.layers.7.self_attn.inner_attn_ln.bias", "norm.weight"):
        assert torch.equal(net.state_dict()[k], sd[k])
    with torch.inference_mode():
        y = net(torch.randn(1, 5, 1536, generator=g), torch.tensor([[[0, 0], [256, 0], [0, 256], [512, 512],
                                                                      [9000, 70000]]]).float(), pool="mean")
    assert y.shape == (1, 768) and torch.isfinite(y).all()
    del sd["encoder.layers.3.ffn.fc2.bias"]
    with pytest.raises(WeightsError, match="fc2.bias"):
        load_slide_encoder("gigapath_slide", weights=sd)


def test_registry_weights_offline_fail_clearly():
    # the conftest makes the HF hub offline: no download, a clear error instead
    with pytest.raises(WeightsError, match="slide_encoder.pth"):
        load_slide_encoder("gigapath_slide")


# ------------------------------------------------------------------------------------- invariances

def test_batch_equals_one_slide_at_a_time(ref, small):
    x, c = ref["inputs"]["case1"]["tile_embeds"], ref["inputs"]["case1"]["coords"]
    with torch.inference_mode():
        both = small(x, c, pool="mean")
        one = torch.cat([small(x[i:i + 1], c[i:i + 1], pool="mean") for i in range(2)])
    assert _maxerr(both, one) < 1e-5


def test_deterministic_and_subcell_shift_invariant(ref, small):
    x, c = ref["inputs"]["case1"]["tile_embeds"][:1], ref["inputs"]["case1"]["coords"][:1]
    cells = torch.floor(c / 256) * 256
    with torch.inference_mode():
        a = small(x, cells, pool="mean")
        b = small(x, cells, pool="mean")
        shifted = small(x, cells + 200.0, pool="mean")  # same cells: same position embeddings
        moved = small(x, cells + 256.0, pool="mean")  # one cell over: absolute positions change
    assert torch.equal(a, b)
    assert _maxerr(a, shifted) < 1e-6
    assert _maxerr(a, moved) > 1e-4


def test_tile_order_matters(ref, small):
    """Not an invariance of the reference: token order changes the result (hence embed_slide sorts)."""
    x, c = ref["inputs"]["case0"]["tile_embeds"][:, :600], ref["inputs"]["case0"]["coords"][:, :600]
    perm = torch.randperm(600, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a = small(x, c, pool="mean")
        b = small(x[:, perm], c[:, perm], pool="mean")
    assert _maxerr(a, b) > 1e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_close_to_fp32(ref, small, dtype):
    x, c = ref["inputs"]["case1"]["tile_embeds"], ref["inputs"]["case1"]["coords"]
    half = LongNetSlideEncoder.from_config(ref["config"]).eval()
    half.load_state_dict(ref["state_dict"])
    half = half.to(dtype)
    with torch.inference_mode():
        y = half(x.to(dtype), c, pool="mean").float()
    want = ref["outputs"]["case1"]["gap"]
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    cos = F.cosine_similarity(y, want, dim=-1)
    assert (cos > 0.999).all(), cos
    assert _maxerr(y, want) < 0.1


def test_single_tile_and_bad_inputs(small):
    with torch.inference_mode():
        y = small(torch.randn(1, 1, 1536), torch.tensor([[[512.0, 768.0]]]), pool="mean", all_layers=True)
    assert y.shape == (4, 1, 128) and torch.isfinite(y).all()
    with pytest.raises(ValueError, match="1536"):
        small(torch.randn(1, 3, 512), torch.zeros(1, 3, 2))
    with pytest.raises(ValueError, match="pool"):
        small(torch.randn(1, 3, 1536), torch.zeros(1, 3, 2), pool="max")


def test_bf16_ffn_equals_reference_upcast():
    """The bf16 CPU FFN skips the reference's float32 upcast around GELU: it must be bit for bit the same."""
    from pathkit.models.longnet import _FFN

    torch.manual_seed(0)
    ffn = _FFN(64, 256, 1e-5).to(torch.bfloat16)
    x = (torch.randn(3, 500, 64) * 3).to(torch.bfloat16)
    with torch.inference_mode():
        got = ffn(x)
        want = ffn.fc2(ffn.ffn_layernorm(F.gelu(ffn.fc1(x).float()).type_as(x)))  # torchscale's formula
    assert torch.equal(got, want)
