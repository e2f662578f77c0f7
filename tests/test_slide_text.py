"""Slide-level zero-shot, text search and captions (pk.tl.zero_shot(level="slide"), pk.tl.text_search,
pk.tl.caption) on small random-weight models: planted embeddings, the authors' logits through the public
path, refusals."""
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("sacremoses")
pytest.importorskip("conch")

import pathkit as pk
from pathkit.models import prism_text, slide_text

FIX = Path(__file__).parent / "fixtures" / "parity"
CLASSES = {"TLS": ["tertiary lymphoid structures", "lymphoid aggregates"], "NEC": ["tumour necrosis"],
           "MUC": ["mucinous adenocarcinoma", "mucin pools"]}


@pytest.fixture(scope="module")
def titan_demo(tmp_path_factory):
    path = slide_text.save_random_weights("titan_small_demo", tmp_path_factory.mktemp("w") / "titan.safetensors")
    return path, slide_text.load_slide_text("titan_small_demo", weights=path)


def planted_cohort(txt, rng, n_per=4, noise=0.05):
    """Slide embeddings x with normalize(x @ proj) close to one class's text embedding: x = t P^+ + noise."""
    from pathkit.tl.zeroshot import text_embeddings

    t = text_embeddings(txt, CLASSES, pk.tl.prompts.get_templates("titan"))  # [C, E]
    pinv = np.linalg.pinv(txt.proj.numpy().astype(np.float64))
    X, truth = [], []
    for c, name in enumerate(CLASSES):
        for _ in range(n_per):
            X.append(t[c] @ pinv + noise * rng.normal(size=pinv.shape[1]))
            truth.append(name)
    ids = [f"S{i:02d}" for i in range(len(X))]
    cohort = ad.AnnData(obs=pd.DataFrame({"slide_id": ids, "truth": truth}, index=ids))
    cohort.obsm["X_titan_small_demo"] = np.asarray(X, dtype=np.float32)
    cohort.uns["pathkit"] = {"slide_model": "titan_small_demo"}
    return cohort


def test_planted_slides_classified_and_ranked_first(titan_demo):
    path, txt = titan_demo
    cohort = planted_cohort(txt, np.random.default_rng(0))
    res = pk.tl.zero_shot(cohort, CLASSES, model="titan_small_demo", level="slide", weights=path,
                          n_prompt_sets=10, progress=False)
    assert list(res["pred"].astype(str)) == list(cohort.obs["truth"])
    assert list(cohort.obs["zeroshot_pred"].astype(str)) == list(cohort.obs["truth"])
    assert cohort.uns["zeroshot"]["level"] == "slide" and cohort.uns["zeroshot"]["templates"][0] == "CLASSNAME."
    np.testing.assert_allclose(cohort.obs[[f"zeroshot_prob_{c}" for c in CLASSES]].sum(1), 1.0, rtol=1e-6)
    ev = pk.tl.zero_shot_eval(cohort, "truth")
    assert list(ev.index) == [0] and ev.loc[0, "balanced_accuracy"] == 1.0 and ev.loc[0, "n_slides"] == 12
    assert ev.loc[0, "n_prompt_sets"] == 10
    # text search: three slides planted near the query's own text embedding come first, in any cohort order
    query = "tertiary lymphoid structures next to the tumour."
    q = txt.encode_text([query]).numpy()[0]
    pinv = np.linalg.pinv(txt.proj.numpy().astype(np.float64))
    rng = np.random.default_rng(5)
    near = np.stack([q @ pinv + 0.05 * rng.normal(size=pinv.shape[1]) for _ in range(3)]).astype(np.float32)
    order = rng.permutation(15)
    X = np.concatenate([cohort.obsm["X_titan_small_demo"], near])[order]
    ids = np.array(list(cohort.obs_names) + ["Q0", "Q1", "Q2"])[order]
    both = ad.AnnData(obs=pd.DataFrame(index=ids))
    both.obsm["X_titan_small_demo"] = X
    df, fig = pk.tl.text_search(both, query, model="titan_small_demo", weights=path, top=3)
    assert set(df["slide_id"]) == {"Q0", "Q1", "Q2"} and df["similarity"].min() > 0.9
    assert df["similarity"].is_monotonic_decreasing and list(df["rank"]) == [1, 2, 3]
    assert np.isclose(both.obs["text_search"].max(), df["similarity"].iloc[0])
    assert len(fig.data) == 1 and not fig.layout.images  # no slide files here: no thumbnails
    # reachable slides get thumbnails above their bars (here the CMU-1 sample shipped with pathkit)
    both.obs["path"] = str(Path(pk.__file__).parent / "data" / "CMU-1-Small-Region.svs")
    both.obs.loc["Q1", "path"] = "/nonexistent/slide.svs"
    _, fig = pk.tl.text_search(both, query, model=txt, top=3, thumb_px=64)
    assert len(fig.layout.images) == 2 and fig.layout.images[0].source.startswith("data:image/png;base64,")


def test_slide_zero_shot_logits_equal_authors():
    """The authors' TITAN zero_shot logits / softmax through pk.tl.zero_shot(level="slide")."""
    from test_parity_slide_text import FX, fill_weights, titan_spec

    t = FX["titan"]
    txt = slide_text.load_slide_text(titan_spec(), weights=fill_weights(t["keys"], t["seed"]))
    ids = [f"s{i}" for i in range(len(t["slides"]))]
    cohort = ad.AnnData(obs=pd.DataFrame(index=ids))
    cohort.obsm["X_titan_parity"] = t["slides"].numpy()
    res = pk.tl.zero_shot(cohort, t["classes"], t["templates"], model=txt, level="slide", n_prompt_sets=0,
                          progress=False)
    scores = res[[f"score_{c}" for c in t["classes"]]].to_numpy()
    probs = res[[f"prob_{c}" for c in t["classes"]]].to_numpy()
    assert np.abs(scores - t["logits"].numpy()).max() <= 1e-5
    assert np.abs(probs - t["probs"].numpy()).max() <= 1e-5


def test_refusals(titan_demo):
    _, txt = titan_demo
    cohort = planted_cohort(txt, np.random.default_rng(1), n_per=1)
    other = cohort.copy()
    other.obsm["X_prism"] = np.zeros((3, 1280), np.float32)
    other.uns["pathkit"] = {"slide_model": "prism"}
    with pytest.raises(ValueError, match="holds 'prism' slide embeddings.*slide_model='titan_small_demo'"):
        pk.tl.zero_shot(other, CLASSES, model=txt, level="slide", use_rep="X_prism")
    del other.obsm["X_titan_small_demo"]
    with pytest.raises(KeyError, match="embedded with slide_model='prism'"):
        pk.tl.text_search(other, "necrosis", model=txt)
    with pytest.raises(ValueError, match="empty"):
        pk.tl.text_search(cohort, "   ", model=txt)
    with pytest.raises(ValueError, match="tokens, more than the 127"):
        pk.tl.text_search(cohort, "necrosis " * 200, model=txt)
    with pytest.raises(ValueError, match="level must be"):
        pk.tl.zero_shot(cohort, CLASSES, model=txt, level="cohort")
    with pytest.raises(ValueError, match="has no text half"):
        slide_text.load_slide_text("prism", weights="random")
    wrong = cohort.copy()
    wrong.obsm["X_titan_small_demo"] = np.zeros((3, 7), np.float32)
    with pytest.raises(ValueError, match="are 48-d"):
        pk.tl.zero_shot(wrong, CLASSES, model=txt, level="slide")


def test_demo_checkpoint_loads_both_halves(titan_demo):
    from pathkit.models.titan import load_titan

    path, _ = titan_demo
    net, _ = load_titan("titan_small_demo", weights=path)  # the vision half of the same file, strictly
    out = net(torch.randn(5, 32), torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1], [2, 2]]))
    assert out.shape == (48,) and torch.isfinite(out).all()


@pytest.fixture(scope="module")
def prism_demo(tmp_path_factory):
    path = prism_text.save_random_weights("prism_small_demo", tmp_path_factory.mktemp("p") / "prism.safetensors")
    rng = np.random.default_rng(0)
    tiles = {}
    for i in range(2):
        a = ad.AnnData(np.zeros((20 + i, 1), np.float32))
        a.obsm["X_virchow"] = rng.normal(size=(20 + i, 32)).astype(np.float32)
        tiles[f"P{i}"] = a
    cohort = ad.AnnData(obs=pd.DataFrame({"slide_id": list(tiles)}, index=list(tiles)))
    return path, tiles, cohort


def test_caption_deterministic_and_written(prism_demo):
    path, tiles, cohort = prism_demo
    kw = {"tiles": tiles, "weights": path, "tokenizer": FIX / "biogpt_tiny", "max_new_tokens": 12, "progress": False}
    a = pk.tl.caption(cohort, "prism_small_demo", **kw)
    b = pk.tl.caption(cohort, "prism_small_demo", **kw)
    assert list(a.index) == ["P0", "P1"] and (a == b).all()
    assert list(cohort.obs["caption"]) == list(a) and cohort.uns["caption"]["num_beams"] == 1
    s1 = pk.tl.caption(cohort, "prism_small_demo", do_sample=True, random_state=3, key_added="cap_s", **kw)
    s2 = pk.tl.caption(cohort, "prism_small_demo", do_sample=True, random_state=3, key_added="cap_s", **kw)
    assert (s1 == s2).all()
    beams = pk.tl.caption(cohort, "prism_small_demo", num_beams=2, key_added="cap_b", **kw)
    assert beams.notna().all()
    # the caption equals the decoder's greedy ids on the Perceiver's latents, decoded
    from pathkit.models.prism import load_prism

    enc, _ = load_prism("prism_small_demo", weights=path)
    dec, tok, _ = prism_text.load_prism_decoder("prism_small_demo", weights=path, tokenizer=FIX / "biogpt_tiny")
    lat = enc.forward_features(torch.as_tensor(tiles["P0"].obsm["X_virchow"])[None])["image_latents"]
    ids = dec.generate(lat, max_new_tokens=12)
    assert ids.shape[1] <= 13 and tok.decode(ids[0], skip_special_tokens=True).strip() == a["P0"]
    bad = dict(tiles)
    bad["P1"] = tiles["P1"].copy()
    bad["P1"].uns["models"] = {"X_virchow": {"name": "uni"}}
    with pytest.raises(ValueError, match="holds 'uni' tile features"):
        pk.tl.caption(cohort, "prism_small_demo", **{**kw, "tiles": bad})
    with pytest.raises(ValueError, match="has no text decoder"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pk.tl.caption(cohort, "titan_small_demo", tiles=tiles)
