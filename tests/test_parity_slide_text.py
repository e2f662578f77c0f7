"""Parity of TITAN's text encoder and PRISM's BioGPT decoder with the authors' code on random weights
(tests/fixtures/parity/make_slide_text.py ran the authors' code and saved the outputs)."""
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("sacremoses")
pytest.importorskip("conch")

from pathkit.errors import WeightsError
from pathkit.models import prism_text, slide_text
from pathkit.models.registry import ModelSpec
from pathkit.tl.zeroshot import class_embeddings, encode_prompts

FIX = Path(__file__).parent / "fixtures" / "parity"
FX = torch.load(FIX / "slide_text.pt", weights_only=True)


def fill_weights(key_shapes, seed):
    """Same as make_slide_text.fill_weights: both sides draw every tensor from one seeded generator."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in key_shapes:
        r = torch.randn(shape, generator=g)
        if k.endswith(("norm.weight", "ln_final.weight")) or (".ln_" in k and k.endswith(".weight")):
            out[k] = 1.0 + 0.1 * r
        elif k.endswith("bias"):
            out[k] = 0.05 * r
        elif len(shape) == 1:
            out[k] = 0.3 * r
        else:
            out[k] = r / shape[-1] ** 0.5
    return out


def titan_spec():
    c = FX["titan"]["config"]
    return ModelSpec(name="titan_parity", kind="slide", arch="pathkit:titan", embed_dim=c["embed_dim"],
                     extra={"text": {**{k: c[k] for k in ("context_length", "vocab_size", "width", "heads", "layers")},
                                     "embed_dim": c["embed_dim"], "pad_id": 0}})


def prism_spec():
    c = FX["prism"]["config"]
    return ModelSpec(name="prism_parity", kind="slide", arch="pathkit:prism_perceiver", embed_dim=24,
                     extra={"tokenizer": str(FIX / "biogpt_tiny"),
                            "decoder": {**c, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
                                        "scale_embedding": True, "hidden_act": "gelu"}})


@pytest.fixture(scope="module")
def titan():
    t = FX["titan"]
    return slide_text.load_slide_text(titan_spec(), weights=fill_weights(t["keys"], t["seed"]))


@pytest.fixture(scope="module")
def prism():
    p = FX["prism"]
    return prism_text.load_prism_decoder(prism_spec(), weights=fill_weights(p["keys"], p["seed"]))


def test_titan_tokenizer_equals_authors(titan):
    t = FX["titan"]
    ids = titan.tokenizer(t["prompts"])  # punctuation, numbers, unicode, whitespace, one over-long prompt
    assert torch.equal(ids, t["token_ids"])
    assert (ids[:, -1] == 0).all() and ids.shape == (len(t["prompts"]), 128)


def test_titan_text_embeddings_match(titan):
    t = FX["titan"]
    emb = titan.text(t["token_ids"])
    assert (emb - t["text_embedding"]).abs().max().item() <= 1e-5
    # the public path (tokenize + tower + L2 norm) on the prompts the tower accepts
    ok = [i for i, p in enumerate(t["prompts"]) if p.strip() and len(p) < 200]
    enc = titan.encode_text([t["prompts"][i] for i in ok])
    ref = torch.nn.functional.normalize(t["text_embedding"][ok], dim=-1)
    assert (enc - ref).abs().max().item() <= 1e-5


def test_titan_zero_shot_logits_match(titan):
    t = FX["titan"]
    cls = class_embeddings(encode_prompts(titan, t["classes"], t["templates"]))  # [C, E]
    assert np.abs(cls - t["classifier"].T.numpy()).max() <= 1e-5
    slides = titan.project(t["slides"].numpy()).numpy()
    logits = slides @ cls.T
    assert np.abs(logits - t["logits"].numpy()).max() <= 1e-5
    assert (logits.argmax(1) == t["logits"].numpy().argmax(1)).all()


def test_titan_bad_prompts(titan):
    with pytest.raises(ValueError, match="empty"):
        titan.encode_text(["a tumour.", "  "])
    with pytest.raises(ValueError, match="tokens, more than the 127"):
        titan.encode_text(["tumour " * 300])


def test_titan_missing_text_half_names_tensors(tmp_path):
    t = FX["titan"]
    sd = {k: v for k, v in fill_weights(t["keys"], t["seed"]).items() if not k.startswith("text_encoder.")}
    with pytest.raises(WeightsError, match=r"lack the text half of TITAN: missing text_encoder\.positional_embedding, text_encoder\.cls_emb"):
        slide_text.load_slide_text(titan_spec(), weights=sd)
    sd = {k: v for k, v in fill_weights(t["keys"], t["seed"]).items() if k != "vision_encoder.proj"}
    with pytest.raises(WeightsError, match=r"missing vision_encoder\.proj"):
        slide_text.load_slide_text(titan_spec(), weights=sd)


def test_prism_tokenizer_equals_authors(prism):
    p = FX["prism"]
    _, tok, _ = prism
    for text, ref in zip(p["prompts"], p["token_ids"]):
        assert torch.equal(prism_text.tokenize(tok, [text])[0], ref), text
    assert torch.equal(prism_text.tokenize(tok, p["prompts"][:4]), p["token_ids_batch"])  # padded with <pad> = 1


def test_prism_greedy_and_beam_ids_identical(prism):
    p = FX["prism"]
    dec, _, _ = prism
    greedy = dec.generate(p["latents"], max_new_tokens=p["greedy_max_length"] - 1)
    assert torch.equal(greedy, p["greedy"])
    beams = dec.generate(p["latents"], max_new_tokens=p["beams_max_length"] - 1, num_beams=p["num_beams"])
    assert torch.equal(beams, p["beams"])
    logits = dec(p["token_ids"][1][None], p["latents"][:1])[0][:, ::97]
    assert (logits - p["logits_prompt1_every97"]).abs().max().item() <= 1e-4
    # the latents matter: other latents, other words
    assert not torch.equal(dec.generate(p["latents"].flip(0), max_new_tokens=8)[:, :9], greedy[:, :9])


def test_prism_missing_decoder_names_tensors():
    p = FX["prism"]
    sd = {k: v for k, v in fill_weights(p["keys"], p["seed"]).items() if ".x_attn." not in k}
    with pytest.raises(WeightsError, match=r"lack PRISM's text decoder: missing text_decoder\.model\.biogpt\.layers\.2\.x_attn"):
        prism_text.load_prism_decoder(prism_spec(), weights=sd)


def test_demo_tokenizer_is_the_fixture_one(tmp_path):
    d = prism_text.save_demo_tokenizer(tmp_path)
    for f in ("vocab.json", "merges.txt"):
        assert (d / f).read_bytes() == (FIX / "biogpt_tiny" / f).read_bytes()
