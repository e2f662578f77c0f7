"""Language on slide embeddings: slide-level zero-shot (TITAN), text search over a cohort, captions (PRISM).

Zero-shot at the slide level uses the prompt machinery of tile zero-shot (:mod:`pathkit.tl.prompts`,
``encode_prompts`` / ``class_embeddings`` / MI-Zero prompt sets of :mod:`pathkit.tl.zeroshot`): each class's
name x template prompts are embedded, L2-normalised, averaged and re-normalised (TITAN's
``zero_shot_classifier``); a slide's class score is the cosine between its projected, normalised embedding
(``slide @ vision_encoder.proj``) and the class embedding (TITAN's ``zero_shot`` logits); probabilities are
the softmax of the scores (no temperature, as the authors').
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .._files import read_h5ad
from ..errors import TableError
from . import prompts as _prompts

__all__ = ["caption", "text_search", "zero_shot_slides"]


def _load_text(model, weights, device, tokenizer=None):
    from ..models.slide_text import SlideTextModel, load_slide_text

    if isinstance(model, SlideTextModel):
        return model
    from .._device import resolve_device

    return load_slide_text(model, weights=weights, device=resolve_device(device), tokenizer=tokenizer)


def _cohort_ids(cohort) -> pd.Index:
    if "slide_id" in cohort.obs:
        return pd.Index(cohort.obs["slide_id"].astype(str))
    return pd.Index(cohort.obs_names.astype(str))


def _slide_embeddings(cohort, name: str, dim: int, use_rep: str | None) -> tuple[np.ndarray, str]:
    """The cohort's slide embeddings [S, dim] of slide model `name` (NaN rows kept), refusing another model's."""
    from anndata import AnnData

    from ..models.registry import registered

    if not isinstance(cohort, AnnData):
        raise TypeError(f"cohort must be an AnnData with one row per slide (pk.tl.embed_cohort); got {type(cohort).__name__}")
    use_rep = use_rep or f"X_{name}"
    recorded = (cohort.uns.get("pathkit") or {}).get("slide_model")
    slide_models = {s.name for s in registered("slide")}
    made_by = recorded if recorded and use_rep == f"X_{recorded}" else (
        use_rep[2:] if use_rep.startswith("X_") and use_rep[2:] in slide_models else None)
    if made_by and made_by != name:
        raise ValueError(f"cohort.obsm[{use_rep!r}] holds {made_by!r} slide embeddings, but {name!r} compares text "
                         f"with {name!r} slide embeddings only: embed the cohort with slide_model={name!r} "
                         f"(pk.tl.embed_cohort(..., slide_model={name!r}))")
    if use_rep not in cohort.obsm:
        hint = f"; the cohort was embedded with slide_model={recorded!r}" if recorded else ""
        raise KeyError(f"cohort.obsm[{use_rep!r}] does not exist (obsm holds {list(cohort.obsm)}{hint}). Text on "
                       f"slides with {name!r} needs its slide embeddings: pk.tl.embed_cohort(..., slide_model={name!r})")
    X = np.asarray(cohort.obsm[use_rep], dtype=np.float32)
    if X.ndim != 2 or X.shape[1] != dim:
        raise ValueError(f"cohort.obsm[{use_rep!r}] has shape {X.shape}, but {name!r} slide embeddings are {dim}-d: "
                         "they come from another model")
    return X, use_rep


def zero_shot_slides(cohort, classes="tcga_ot", templates=None, model="titan", *, use_rep=None, weights=None,
                     key_added="zeroshot", n_prompt_sets=50, random_state=0, tokenizer=None, device="auto",
                     progress=True) -> pd.DataFrame:
    """Slide-level zero-shot on a cohort's slide embeddings; called by ``pk.tl.zero_shot(..., level="slide")``.

    Writes ``obs["{key}_pred"]`` (categorical), ``obs["{key}_score_{class}"]`` (cosine),
    ``obs["{key}_prob_{class}"]`` and ``uns[key]`` (``level="slide"``, classes, templates, ``ks=[0]``,
    logit_scale, prompt_set_scores [S, n_sets, 1, C], seed); returns one row per slide (pred, score_*, prob_*).
    Slides without an embedding (NaN rows) get NaN scores and no prediction.
    """
    from ._zeroshot_common import class_embeddings, encode_prompts, softmax

    seed = int(random_state)
    classes = _prompts.get_classes(classes)
    txt = _load_text(model, weights, device, tokenizer)
    templates = _prompts.get_templates(templates if templates is not None else
                                       (txt.spec.extra or {}).get("templates"))
    X, use_rep = _slide_embeddings(cohort, txt.name, int(txt.proj.shape[0]), use_rep)
    ok = np.isfinite(X).all(axis=1)
    if not ok.any():
        raise ValueError(f"cohort.obsm[{use_rep!r}]: no slide has an embedding (all rows NaN)")
    cls = list(classes)
    prompt_emb = encode_prompts(txt, classes, templates, progress=progress)
    text = class_embeddings(prompt_emb)
    slides = np.full((len(X), text.shape[1]), np.nan)
    slides[ok] = txt.project(X[ok]).cpu().numpy()
    scores = slides @ text.T                                     # NaN rows stay NaN
    probs = np.full_like(scores, np.nan)
    probs[ok] = softmax(scores[ok], txt.logit_scale)
    set_names, set_mask = _prompts.sample_prompt_sets(classes, len(templates), int(n_prompt_sets), seed)
    sets = np.stack([slides @ class_embeddings(prompt_emb, set_names[s], set_mask[s]).T
                     for s in range(int(n_prompt_sets))], axis=1) if n_prompt_sets else np.zeros((len(X), 0, len(cls)))
    pred = pd.Categorical([cls[j] if o else None for j, o in zip(np.nan_to_num(scores, nan=-np.inf).argmax(1), ok)],
                          categories=cls)
    ids = _cohort_ids(cohort)
    out = pd.DataFrame({"pred": pred}, index=ids)
    for c, name in enumerate(cls):
        out[f"score_{name}"] = scores[:, c]
    for c, name in enumerate(cls):
        out[f"prob_{name}"] = probs[:, c]
    out.index.name = "slide_id"
    for col in out.columns:
        cohort.obs[f"{key_added}_{col}"] = out[col].to_numpy() if col != "pred" else pred
    cohort.uns[key_added] = {
        "level": "slide", "model": txt.name, "use_rep": use_rep, "classes": cls,
        "class_names": {c: list(v) for c, v in classes.items()}, "templates": list(templates), "ks": np.array([0]),
        "logit_scale": txt.logit_scale, "prompt_set_scores": sets[:, :, None, :], "seed": seed,
        "weights": str(txt.info.get("weights"))}
    return out


def text_search(cohort, text, model="titan", *, top: int = 10, use_rep=None, weights=None, key_added="text_search",
                thumbnails: bool = True, thumb_px: int = 160, tokenizer=None, device="auto"):
    """Rank a cohort's slides by the cosine similarity of their embeddings to a sentence.

    Parameters
    ----------
    cohort
        A cohort AnnData with the model's slide embeddings (``obsm["X_titan"]``, pk.tl.embed_cohort).
    text
        The query ("tertiary lymphoid structures"), or a list of queries (each ranked on its own).
    model
        A slide model with a text half ("titan") or a loaded ``pathkit.models.slide_text.SlideTextModel``.
    top
        How many slides to return per query.
    use_rep, weights, tokenizer, device
        As in :func:`pathkit.tl.zero_shot` with ``level="slide"``.
    key_added
        ``obs[key_added]`` receives every slide's similarity (one query), or ``obs[f"{key_added}_{i}"]``.
    thumbnails
        Show each ranked slide's thumbnail above its bar when ``obs["path"]`` points to a readable slide.

    Returns
    -------
    result : pandas.DataFrame
        Columns ``query``, ``rank`` (1 = best), ``slide_id``, ``similarity`` (cosine), ``top`` rows per query.
    figure : plotly.graph_objects.Figure
        The similarities of the top slides (first query), with thumbnails when the slides are reachable.
    """
    queries = [text] if isinstance(text, str) else list(text)
    txt = _load_text(model, weights, device, tokenizer)
    X, use_rep = _slide_embeddings(cohort, txt.name, int(txt.proj.shape[0]), use_rep)
    ok = np.isfinite(X).all(axis=1)
    q = txt.encode_text(queries).cpu().numpy()
    slides = np.full((len(X), q.shape[1]), np.nan)
    slides[ok] = txt.project(X[ok]).cpu().numpy()
    sims = slides @ q.T                                            # [S, Q]
    ids = _cohort_ids(cohort)
    rows = []
    for j, query in enumerate(queries):
        order = [i for i in np.argsort(-np.nan_to_num(sims[:, j], nan=-np.inf)) if ok[i]][: int(top)]
        rows += [{"query": query, "rank": r + 1, "slide_id": ids[i], "similarity": float(sims[i, j])}
                 for r, i in enumerate(order)]
        cohort.obs[key_added if len(queries) == 1 else f"{key_added}_{j}"] = sims[:, j]
    res = pd.DataFrame(rows)
    return res, _search_figure(cohort, res[res["query"] == queries[0]], queries[0], thumbnails, thumb_px)


def _search_figure(cohort, res, query, thumbnails, thumb_px):
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=list(res["slide_id"]), y=res["similarity"], marker_color="#4c78a8",
                           hovertemplate="%{x}<br>cosine %{y:.3f}<extra></extra>"))
    fig.update_layout(title=f"slides closest to: {query!r}", yaxis_title="cosine similarity", xaxis_title="slide",
                      template="plotly_white", height=420)
    if not thumbnails or "path" not in cohort.obs or res.empty:
        return fig
    from pathlib import Path

    from ..pl._thumbs import data_uri
    from ..slide import read_slide

    paths = dict(zip(_cohort_ids(cohort), cohort.obs["path"].astype(str)))
    shown = 0
    for i, sid in enumerate(res["slide_id"]):
        p = paths.get(sid)
        if not p or not Path(p).is_file():
            continue
        try:
            with read_slide(p) as s:
                img = s.thumbnail(thumb_px)
        except Exception:  # noqa: BLE001, S112  (an unreadable slide only loses its thumbnail; the ranking stands)
            continue
        fig.add_layout_image(source=data_uri(img), xref="x", yref="paper", x=i, y=1.0, sizex=0.9, sizey=0.35,
                             xanchor="center", yanchor="bottom", layer="above")
        shown += 1
    if shown:
        fig.update_layout(height=600, margin={"t": 220})
    return fig


# ---------------------------------------------------------------------------------------------- caption
def _tiles_of(cohort, tiles, ids):
    """{slide_id: tile AnnData}: given, or the ``<slide_id>.h5ad`` files pk.tl.embed_cohort wrote."""
    from pathlib import Path

    if tiles is not None:
        tiles = dict(tiles) if isinstance(tiles, dict) else dict(zip(ids, tiles))
        missing = [s for s in ids if s not in tiles]
        if missing:
            raise TableError(f"tiles: no tile AnnData for slides {missing[:10]}")
        return tiles
    out_dir = (cohort.uns.get("cohort") or {}).get("out_dir")
    if not out_dir:
        raise ValueError("caption needs each slide's tile features: pass tiles={slide_id: AnnData} or a cohort made "
                         "by pk.tl.embed_cohort (its uns['cohort']['out_dir'] holds <slide_id>.h5ad)")
    found = {}
    for s in ids:
        f = Path(out_dir) / f"{s}.h5ad"
        if not f.is_file():
            raise FileNotFoundError(f"{f} (tile features of slide {s!r}) does not exist; rerun pk.tl.embed_cohort or "
                                    "pass tiles=")
        found[s] = read_h5ad(f, f"tile h5ad of slide {s!r}")
    return found


def caption(cohort, model="prism", *, tiles=None, use_rep=None, weights=None, tokenizer=None, max_new_tokens=99,
            num_beams=1, do_sample=False, random_state=0, key_added="caption", device="auto",
            progress=True) -> pd.Series:
    """A generated description of each slide (PRISM: Perceiver image latents -> BioGPT decoder).

    Parameters
    ----------
    cohort
        A cohort AnnData (one row per slide); its ``obs[key_added]`` receives the captions.
    model
        A slide entry with a text decoder ("prism", "prism_small_demo").
    tiles
        {slide_id: tile AnnData} with the slide encoder's tile features (``obsm["X_virchow"]`` for PRISM); None:
        the ``<slide_id>.h5ad`` files in the cohort's ``uns["cohort"]["out_dir"]`` (pk.tl.embed_cohort).
    use_rep
        The tiles' obsm key (default ``"X_<the entry's tile_model>"``); another tile model's features are refused.
    weights, tokenizer
        The PRISM checkpoint (default: the entry's hub source, gated) and BioGPT's tokenizer folder.
    max_new_tokens, num_beams, do_sample
        Decoding; the defaults are the authors' (``Prism.generate``: greedy, max_length 100 = 99 new tokens).
    random_state
        Seeds torch before each slide's decoding (matters with ``do_sample=True``): the same captions each run.

    Returns
    -------
    pandas.Series
        The captions, indexed by slide id; ``uns[key_added]`` records the decoding settings.
    """
    import torch

    from .._device import resolve_device
    from .._progress import progress_bar
    from ..models.prism import load_prism
    from ..models.prism_text import load_prism_decoder
    from ..models.registry import get_spec

    spec = get_spec(model, kind="slide")
    if not (spec.extra or {}).get("decoder"):
        raise ValueError(f"{spec.name!r} has no text decoder; captions come from 'prism'")
    dev = resolve_device(device)
    ids = list(_cohort_ids(cohort))
    tiles = _tiles_of(cohort, tiles, ids)
    tile_model = (spec.extra or {}).get("tile_model")
    use_rep = use_rep or f"X_{tile_model}"
    enc, _ = load_prism(spec, weights=weights, device=dev)
    dec, tok, info = load_prism_decoder(spec, weights=weights, device=dev, tokenizer=tokenizer)
    texts = {}
    for sid in progress_bar(ids, desc=f"{spec.name} captions", unit="slide", disable=not progress or len(ids) < 2):
        a = tiles[sid]
        made_by = ((a.uns.get("models") or {}).get(use_rep) or {}).get("name")
        if made_by and made_by != tile_model:
            raise ValueError(f"slide {sid}: {use_rep!r} holds {made_by!r} tile features; {spec.name!r} reads "
                             f"{tile_model!r} features (pk.tl.embed_tiles(tiles, slide, {tile_model!r}))")
        if use_rep not in a.obsm:
            raise KeyError(f"slide {sid}: obsm[{use_rep!r}] does not exist (obsm holds {list(a.obsm)})")
        x = torch.as_tensor(np.asarray(a.obsm[use_rep], dtype=np.float32), device=dev)
        if x.ndim != 2 or x.shape[1] != enc.in_dim or not len(x):
            raise ValueError(f"slide {sid}: tile features of shape {tuple(x.shape)}; {spec.name!r} takes "
                             f"[n_tiles > 0, {enc.in_dim}]")
        with torch.inference_mode():
            latents = enc.forward_features(x[None])["image_latents"]
        torch.manual_seed(int(random_state))
        out = dec.generate(latents, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=do_sample)
        texts[sid] = tok.decode(out[0], skip_special_tokens=True).strip()
    res = pd.Series(texts, name=key_added)
    res.index.name = "slide_id"
    cohort.obs[key_added] = res.reindex(ids).to_numpy()
    cohort.uns[key_added] = {"model": spec.name, "max_new_tokens": int(max_new_tokens), "num_beams": int(num_beams),
                             "do_sample": bool(do_sample), "seed": int(random_state), "use_rep": use_rep,
                             "weights": str(info.get("weights"))}
    return res
