"""Zero-shot (MI-Zero / CONCH protocol): pooling, text-embedding averaging, slide predictions, evaluation —
all against hand computations."""
from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from _small_models import CONCH_SMALL

import pathkit as pk
from pathkit.tl import prompts
from pathkit.tl.zeroshot import class_embeddings, encode_prompts, text_embeddings, topk_pool

SIMS = np.array([[0.1, 0.9],
                 [0.5, 0.2],
                 [0.3, 0.2],
                 [0.5, 0.4]])


# ------------------------------------------------------------------------------------------ topk_pool
@pytest.mark.parametrize("k, expected", [
    (1, [0.5, 0.9]),                       # ties at the top of column 0
    (2, [0.5, 0.65]),
    (3, [(0.5 + 0.5 + 0.3) / 3, (0.9 + 0.4 + 0.2) / 3]),  # tie inside column 1's top 3
    (10, [0.35, 0.425]),                   # k > N: all tiles
])
def test_topk_pool_by_hand(k, expected):
    np.testing.assert_allclose(topk_pool(SIMS, k), expected, rtol=1e-12)
    t = topk_pool(torch.tensor(SIMS), k)
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), expected, rtol=1e-12)


def test_topk_pool_rejects_bad_input():
    with pytest.raises(ValueError):
        topk_pool(SIMS, 0)
    with pytest.raises(ValueError):
        topk_pool(np.zeros((0, 2)), 1)


# ------------------------------------------------------------------------------------------ prompts
def test_prompt_library():
    assert len(prompts.CONCH_TEMPLATES) == 22 and len(set(prompts.CONCH_TEMPLATES)) == 22
    assert list(prompts.MIZERO_TEMPLATES) == list(prompts.CONCH_TEMPLATES[:16])
    assert prompts.CONCH_TEMPLATES[11] == "a histopathological photograph of CLASSNAME."
    assert list(prompts.get_classes("nsclc")) == ["LUAD", "LUSC"]
    assert list(prompts.get_classes("rcc")) == ["CCRCC", "PRCC", "CHRCC"]
    assert list(prompts.get_classes("brca")) == ["IDC", "ILC"]
    assert len(prompts.get_classes("coadread")) == 9
    assert prompts.get_classes({"A": "x", "B": ["y", "z"]}) == {"A": ["x"], "B": ["y", "z"]}
    with pytest.raises(ValueError, match="CLASSNAME"):
        prompts.get_templates(["no placeholder"])
    with pytest.raises(KeyError, match="unknown prompt set"):
        prompts.get_classes("melanoma")


def test_mizero_prompt_set_sampling():
    classes = prompts.get_classes("rcc")
    names, mask = prompts.sample_prompt_sets(classes, 16, n_sets=50, seed=0)
    assert names.shape == (50, 3) and mask.shape == (50, 16)
    assert (names >= 0).all() and (names < 4).all()
    sizes = mask.sum(axis=1)
    assert sizes.min() >= 1 and sizes.max() <= 16 and len(set(sizes)) > 5  # sizes drawn from 1..16
    names2, mask2 = prompts.sample_prompt_sets(classes, 16, n_sets=50, seed=0)
    assert (names == names2).all() and (mask == mask2).all()
    assert not (prompts.sample_prompt_sets(classes, 16, n_sets=50, seed=1)[1] == mask).all()


# ------------------------------------------------------------------------------------------ text side
class TableEncoder:
    """A fake text encoder: fixed, unnormalised vectors per prompt."""

    logit_scale = 10.0

    def __init__(self, table):
        self.table = table

    def encode_text(self, texts):
        return torch.tensor([self.table[t] for t in texts], dtype=torch.float64)


def test_text_embedding_averaging_by_hand():
    table = {"x1.": [3.0, 4.0], "an image of x1.": [0.0, 2.0], "x2.": [1.0, 0.0], "an image of x2.": [0.0, -5.0],
             "y.": [-1.0, 0.0], "an image of y.": [0.0, -3.0]}
    classes = {"X": ["x1", "x2"], "Y": ["y"]}
    templates = ["CLASSNAME.", "an image of CLASSNAME."]
    emb = text_embeddings(TableEncoder(table), classes, templates)
    # X: normalised prompts (.6,.8), (0,1), (1,0), (0,-1) -> mean (.4,.2) -> renormalised
    # Y: (-1,0), (0,-1) -> mean (-.5,-.5) -> renormalised
    np.testing.assert_allclose(emb, [[2 / 5 ** 0.5, 1 / 5 ** 0.5], [-(0.5 ** 0.5), -(0.5 ** 0.5)]], rtol=1e-12)
    # one prompt set: name x2 for X, template 0 only -> (1, 0)
    per = encode_prompts(TableEncoder(table), classes, templates)
    one = class_embeddings(per, names=[1, 0], template_mask=[True, False])
    np.testing.assert_allclose(one, [[1.0, 0.0], [-1.0, 0.0]], atol=1e-12)


# ----------------------------------------------------------------------------------- zero_shot on tiles


def _need_conch_tokenizer():
    pytest.importorskip("transformers")
    from pathkit.errors import WeightsError
    from pathkit.models.clip import conch_tokenizer_path

    try:
        conch_tokenizer_path()
    except WeightsError:
        pytest.skip("CONCH's tokenizer is not installed (pip install conch-fork)")


@pytest.fixture(scope="module")
def small_conch():
    _need_conch_tokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return pk.models.clip.load_clip("conch", weights="random", config=CONCH_SMALL)


def _planted_slide(sid, text, cls_idx, n=20, n_aligned=5, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, text.shape[1])) * 0.05
    feats[:n_aligned] = text[cls_idx] * 3.0 + rng.normal(size=(n_aligned, text.shape[1])) * 1e-3
    a = ad.AnnData(np.zeros((n, 4), np.float32), obs=pd.DataFrame({"slide_id": sid}, index=[str(i) for i in
                                                                                               range(n)]))
    a.obsm["X_conch_vision_proj"] = feats.astype(np.float32)
    a.uns["slide"] = {"slide_id": sid}
    return a


def test_zero_shot_planted_features(small_conch, tmp_path):
    text = text_embeddings(small_conch, "nsclc")
    slides = {"S1": _planted_slide("S1", text, 0, seed=1), "S2": _planted_slide("S2", text, 1, seed=2)}
    cohort = ad.AnnData(obs=pd.DataFrame({"slide_id": ["S2", "S1", "S3"]}, index=["a", "b", "c"]))
    res = pk.tl.zero_shot(slides, classes="nsclc", model=small_conch, topk=(1, 5, 50), cohort=cohort,
                          n_prompt_sets=8)
    assert res.loc["S1", "pred_k5"] == "LUAD" and res.loc["S2", "pred_k5"] == "LUSC"
    assert res.loc["S1", "pred_k1"] == "LUAD" and res.loc["S2", "pred_k1"] == "LUSC"
    # tile scores are cosine similarities; slide score = mean of the top-K tile scores (K capped at 20)
    s1 = slides["S1"]
    f = s1.obsm["X_conch_vision_proj"] / np.linalg.norm(s1.obsm["X_conch_vision_proj"], axis=1, keepdims=True)
    np.testing.assert_allclose(s1.obs["zeroshot_LUAD"], f @ text[0], rtol=1e-5)
    tile_pred = np.where(f @ text[0] >= f @ text[1], "LUAD", "LUSC")
    assert (s1.obs["zeroshot_tile_pred"].astype(str).to_numpy() == tile_pred).all()
    assert (tile_pred[:5] == "LUAD").all()
    top5 = np.sort(f @ text[1])[::-1][:5].mean()
    assert res.loc["S1", "score_LUSC_k5"] == pytest.approx(top5, rel=1e-6)
    assert res.loc["S1", "score_LUAD_k50"] == pytest.approx((f @ text[0]).mean(), rel=1e-6)
    d = small_conch.logit_scale * (res.loc["S1", "score_LUAD_k5"] - res.loc["S1", "score_LUSC_k5"])
    assert res.loc["S1", "prob_LUAD_k5"] == pytest.approx(1 / (1 + np.exp(-d)), rel=1e-6)
    # cohort rows follow the cohort's order; a slide without tiles gets NaN
    assert list(cohort.obs["zeroshot_pred_k5"].iloc[:2]) == ["LUSC", "LUAD"]
    assert np.isnan(cohort.obs["zeroshot_score_LUAD_k5"].iloc[2])
    assert cohort.uns["zeroshot"]["prompt_set_scores"].shape == (3, 8, 3, 2)
    u = s1.uns["zeroshot"]
    assert u["classes"] == ["LUAD", "LUSC"] and len(u["templates"]) == 22 and u["pred"]["k5"] == "LUAD"
    s1.write_h5ad(tmp_path / "s1.h5ad")  # what zero_shot stores must be writable
    back = ad.read_h5ad(tmp_path / "s1.h5ad")
    np.testing.assert_allclose(back.uns["zeroshot"]["scores"], u["scores"])


def test_zero_shot_refuses_features_of_another_model(small_conch):
    a = ad.AnnData(obs=pd.DataFrame(index=["0", "1", "2"]))
    a.obsm["X_gigapath_tile"] = np.ones((3, 32), np.float32)
    a.uns["models"] = {"X_gigapath_tile": {"name": "gigapath_tile"}}
    with pytest.raises(ValueError, match="'gigapath_tile' features.*conch_vision"):
        pk.tl.zero_shot(a, model=small_conch, use_rep="X_gigapath_tile", n_prompt_sets=0)
    with pytest.raises(KeyError, match=r"X_conch_vision_proj.*embed_tiles\(tiles, slide, .conch_vision_proj.\)"):
        pk.tl.zero_shot(a, model=small_conch, n_prompt_sets=0)  # never re-reads a slide


# ---------------------------------------------------------------------------------------- evaluation
def test_zero_shot_eval_by_hand():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.5, 0.1], [0.1, 0.6, 0.2], [0.0, 0.7, 0.1],
                       [0.1, 0.2, 0.8], [0.6, 0.1, 0.3]])
    labels = ["A", "A", "B", "B", "C", "C"]
    out = pk.tl.zero_shot_eval(scores, labels, classes=["A", "B", "C"], logit_scale=50.0)
    # predictions A, B, B, B, C, A -> recall A 1/2, B 1, C 1/2
    assert out["balanced_accuracy"].iloc[0] == pytest.approx(2 / 3)
    assert out["n_slides"].iloc[0] == 6
    # one-vs-rest AUROC by counting correctly ordered (positive, negative) pairs of softmax probabilities
    z = np.exp(50.0 * scores)
    probs = z / z.sum(axis=1, keepdims=True)
    y = np.array([0, 0, 1, 1, 2, 2])
    aucs = []
    for c in range(3):
        pos, neg = probs[y == c, c], probs[y != c, c]
        aucs.append(np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg]))
    assert out["auroc"].iloc[0] == pytest.approx(np.mean(aucs))
    two = np.array([[0.2, 0.1], [0.1, 0.3], [0.3, 0.25], [0.0, 0.4]])
    out2 = pk.tl.zero_shot_eval({5: two}, ["A", "B", "B", "B"], classes=["A", "B"], logit_scale=100.0)
    # predictions A, B, A, B -> recall A 1, B 2/3; every B slide has a higher p(B) than the A slide -> AUROC 1
    assert out2.loc[5, "balanced_accuracy"] == pytest.approx(5 / 6)
    assert out2.loc[5, "auroc"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="logit_scale"):
        pk.tl.zero_shot_eval(two, ["A", "B", "B", "B"], classes=["A", "B"])
    with pytest.raises(ValueError, match="not among the classes"):
        pk.tl.zero_shot_eval(two, ["A", "B", "B", "Z"], classes=["A", "B"], logit_scale=1.0)


def test_zero_shot_eval_on_cohort_prompt_sets(small_conch):
    text = text_embeddings(small_conch, "nsclc")
    slides = {f"S{i}": _planted_slide(f"S{i}", text, i % 2, seed=i) for i in range(6)}
    cohort = ad.AnnData(obs=pd.DataFrame({"slide_id": list(slides), "truth": ["LUAD", "LUSC"] * 3},
                                         index=list(slides)))
    pk.tl.zero_shot(slides, classes="nsclc", model=small_conch, topk=(1, 5), cohort=cohort, n_prompt_sets=10)
    out = pk.tl.zero_shot_eval(cohort, "truth")
    assert list(out.index) == [1, 5]
    assert out.loc[5, "balanced_accuracy"] == pytest.approx(1.0) and out.loc[5, "auroc"] == pytest.approx(1.0)
    # the median over prompt sets, by hand from the stored per-set scores
    sets = cohort.uns["zeroshot"]["prompt_set_scores"][:, :, 1]  # K = 5
    y = np.array([0, 1] * 3)
    baccs = []
    for s in range(10):
        pred = sets[:, s].argmax(axis=1)
        baccs.append(np.mean([(pred[y == c] == c).mean() for c in (0, 1)]))
    assert out.loc[5, "bacc_median"] == pytest.approx(np.median(baccs))
    assert out.loc[5, "n_prompt_sets"] == 10
    assert pk.tl.zero_shot_eval(cohort, "truth", n_prompt_sets=3, random_state=0).loc[5, "n_prompt_sets"] == 3
    with pytest.raises(ValueError, match="seed=0"):
        pk.tl.zero_shot_eval(cohort, "truth", random_state=1)
    with pytest.raises(ValueError, match="only 10 sets"):
        pk.tl.zero_shot_eval(cohort, "truth", n_prompt_sets=50)
    same = pk.tl.zero_shot_eval(list(slides.values()), ["LUAD", "LUSC"] * 3)
    pd.testing.assert_frame_equal(same, out)


# ------------------------------------------------------------------------------ slide -> tiles -> zero-shot
@pytest.fixture
def tiny_conch_entry():
    """A tiny CONCH variant in the registry for one test, removed afterwards."""
    from pathkit.models import registry
    from pathkit.models.clip import register_clip_variant
    from pathkit.models.tile_encoders import BUILDERS

    _need_conch_tokenizer()
    spec = register_clip_variant("conch_tiny_test", "conch", CONCH_SMALL, input_size=64,
                                 description="tiny random CONCH for tests")
    yield spec
    registry._REGISTRY.pop("conch_tiny_test", None)
    registry._REGISTRY.pop("conch_tiny_test_vision", None)
    BUILDERS.pop("conch_tiny_test_vision", None)


def test_zero_shot_on_tiles_embedded_with_the_image_tower(tmp_path, tiny_conch_entry):
    """From a (synthetic) slide: the tiles are embedded with the clip model's image tower through
    pk.tl.embed_tiles (next to another model's features), and zero_shot reads them from obsm."""
    from pathkit.models.clip import build_clip
    from pathkit.tl._preprocess import TilePreprocess

    torch.manual_seed(3)
    net, _ = build_clip("conch_tiny_test")
    ckpt = tmp_path / "conch_tiny.pt"
    torch.save(net.state_dict(), ckpt)
    model = pk.models.clip.load_clip("conch_tiny_test", weights=ckpt)

    path = pk.datasets.synthetic_slide(tmp_path / "syn.tiff", width=768, height=512)
    slide = pk.read_slide(path)
    tiles = pk.pp.tile(slide, tile_px=64, mpp=0.5)[:6].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pk.tl.embed_tiles(tiles, slide, "vit_tiny_test", weights="random", device="cpu", num_workers=0,
                          progress=False)
    pk.tl.embed_tiles(tiles, slide, "conch_tiny_test_vision", weights=ckpt, device="cpu", dtype="float32",
                      num_workers=0, progress=False)
    res = pk.tl.zero_shot(tiles, classes="brca", model=model, topk=(1, 3), n_prompt_sets=2, device="cpu",
                          progress=False)
    feats = tiles.obsm["X_conch_tiny_test_vision"]
    assert feats.shape == (6, 32)
    # the same tiles through ClipModel.encode_image
    pixels = torch.from_numpy(np.stack([slide.read_tile(x, y, tile_px=64, mpp=0.5)
                                        for x, y in zip(tiles.obs["x"], tiles.obs["y"])])).permute(0, 3, 1, 2)
    with torch.no_grad():
        ref = model.encode_image(TilePreprocess(model.spec)(pixels)).numpy()
    np.testing.assert_allclose(feats / np.linalg.norm(feats, axis=1, keepdims=True), ref, atol=1e-5)
    text = text_embeddings(model, "brca")
    assert res.loc[slide.slide_id, "score_IDC_k1"] == pytest.approx((ref @ text[0]).max(), abs=1e-5)
