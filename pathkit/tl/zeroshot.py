"""Zero-shot classification with image-text models (MI-Zero / CONCH protocol).

Class names x templates -> text embeddings, each L2-normalised, averaged per class, re-normalised.
Tile score for a class = cosine(tile image embedding, class text embedding). Slide score for a class =
mean of its top-K tile scores (`topk_pool`), for each K. Probabilities = softmax(score * logit_scale).
Sampled prompt sets (MI-Zero: one class name per class and a random subset of the templates per set) give
the spread of the result over prompts; `zero_shot_eval` reports balanced accuracy per K (the full prompt
ensemble and the median over the sets) and one-vs-rest AUROC.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import TableError
from . import prompts as _prompts
from ._zeroshot_common import _as_numpy, _cohort_ids, _l2n, _slides, class_embeddings, encode_prompts, softmax
from ._zeroshot_eval import zero_shot_eval  # re-exported: one public module

__all__ = ["class_embeddings", "encode_prompts", "text_embeddings", "topk_pool", "zero_shot", "zero_shot_eval"]


# ------------------------------------------------------------------------------------------- pooling
def topk_pool(similarities, k: int):
    """Mean of the `k` largest values of each column: [N, C] -> [C]. `k` is capped at N.

    Accepts a numpy array or a torch tensor and returns the same kind. Ties do not matter: the mean of the
    k largest values is the same whichever tied tile is taken.
    """
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1 (got {k})")
    if similarities.ndim != 2 or similarities.shape[0] == 0:
        raise ValueError(f"similarities must be [n_tiles > 0, n_classes]; got shape {tuple(similarities.shape)}")
    k = min(k, similarities.shape[0])
    if isinstance(similarities, np.ndarray):
        top = -np.partition(-similarities, k - 1, axis=0)[:k]
        return top.mean(axis=0)
    import torch

    if isinstance(similarities, torch.Tensor):
        return similarities.topk(k, dim=0).values.mean(dim=0)
    return topk_pool(np.asarray(similarities, dtype=np.float64), k)


def _topk_pool_many(sims: np.ndarray, ks) -> np.ndarray:
    """[N, C] -> [len(ks), C], sorting once."""
    srt = -np.sort(-sims, axis=0)
    csum = np.cumsum(srt, axis=0)
    out = []
    for k in ks:
        kk = min(int(k), sims.shape[0])
        out.append(csum[kk - 1] / kk)
    return np.stack(out)


def text_embeddings(encoder, classes, templates=None) -> np.ndarray:
    """Class text embeddings [C, E] (MI-Zero / CONCH ensemble over all names x templates)."""
    classes = _prompts.get_classes(classes)
    return class_embeddings(encode_prompts(encoder, classes, _prompts.get_templates(templates)))


# ------------------------------------------------------------------------------------------ inputs

def _features(adata, sid, clip_name, tower, use_rep, image_features):
    """The slide's tile image embeddings [N, E] from the clip model's image tower: given, or read from
    ``obsm[use_rep]`` (default ``X_<tower>``). Tiles are never re-read from the slide here."""
    from .embed import feature_key

    if image_features is not None:
        feats = _as_numpy(image_features)
    else:
        use_rep = use_rep or feature_key(tower)
        if use_rep == "X":
            feats = _as_numpy(adata.X if not hasattr(adata.X, "toarray") else adata.X.toarray())
        elif use_rep in adata.obsm:
            feats = _as_numpy(adata.obsm[use_rep])
        else:
            raise KeyError(f"slide {sid}: obsm[{use_rep!r}] does not exist (obsm holds {list(adata.obsm)}). "
                           f"Zero-shot with {clip_name!r} scores the embeddings of its image tower: run "
                           f"pk.tl.embed_tiles(tiles, slide, {tower!r}) first, or pass use_rep=")
        made_by = ((adata.uns.get("models") or {}).get(use_rep) or {}).get("name")
        if made_by and made_by != tower:
            raise ValueError(f"slide {sid}: {use_rep!r} holds {made_by!r} features, but zero-shot with "
                             f"{clip_name!r} needs the embeddings of its image tower {tower!r} "
                             f"(pk.tl.embed_tiles(tiles, slide, {tower!r})).")
    if feats.ndim != 2 or feats.shape[0] != adata.n_obs:
        raise ValueError(f"slide {sid}: image features have shape {feats.shape}, expected ({adata.n_obs}, dim)")
    return feats


def _load_encoder(model, weights, device):
    from ..models.clip import ClipModel, load_clip

    if isinstance(model, ClipModel):
        return model
    if hasattr(model, "encode_text") and hasattr(model, "logit_scale"):
        return model  # any object with the ClipModel interface (e.g. a user's own model)
    from .._device import resolve_device

    return load_clip(model, weights=weights, device=resolve_device(device))


# ---------------------------------------------------------------------------------------- zero_shot
def zero_shot(tiles, classes="nsclc", templates=None, model="conch", *, use_rep=None, weights=None,
              topk=(1, 5, 10, 50), image_features=None, cohort=None, key_added="zeroshot", n_prompt_sets=50,
              random_state=0, device="auto", progress=True, level="tile") -> pd.DataFrame:
    """Zero-shot slide classification from tile embeddings (MI-Zero / CONCH), or from slide embeddings.

    Parameters
    ----------
    tiles
        A tiles AnnData with features of the model's image tower (`pk.tl.embed_tiles(tiles, slide,
        "conch_vision")`), or a list / dict {slide_id: AnnData}. The slide is never read here.
        With ``level="slide"``: the cohort AnnData (one row per slide) with the slide model's embeddings.
    classes
        A prompt-library task ("nsclc", "rcc", "brca", "crc100k"; see `pathkit.tl.prompts`) or a dict
        {class: [class names]}.
    templates
        None: CONCH's 22 templates; "mizero": MI-Zero's 16; or a list of strings containing "CLASSNAME".
    model
        A clip registry name ("conch", "plip", "quiltnet") or a loaded `ClipModel`.
    use_rep
        The obsm key of the image-tower features; default ``"X_<tower>"`` (e.g. ``"X_conch_vision"``).
        Features recorded in ``uns["models"]`` as another model's are refused.
    weights
        Weights of the image-text model (path or "hf_hub:..."). None: the published weights.
    topk
        The K values of top-K mean pooling (K is capped by the number of tiles).
    image_features
        Tile image embeddings given directly instead of `use_rep`: an array [N, E] (one slide) or a list /
        dict of them.
    cohort
        Optional cohort AnnData (one row per slide, `obs["slide_id"]` or obs_names = slide ids): receives
        `obs["{key}_pred_k{K}"]`, `obs["{key}_score_{class}_k{K}"]`, `obs["{key}_prob_{class}_k{K}"]` and
        `uns[key]` (classes, ks, logit_scale, templates, per-prompt-set scores).
    key_added
        Prefix of the keys written.
    n_prompt_sets, random_state
        MI-Zero prompt sets sampled (deterministically from `random_state`) for the spread over prompts; 0
        to skip.
    level
        "tile" (default): tile embeddings of an image-text model, top-K pooled. "slide": slide embeddings of a
        slide model with a text half (``model="titan"``, ``use_rep="X_titan"``, default templates TITAN's 23,
        e.g. ``classes="tcga_ot"``); the class score is the cosine between the projected slide embedding and
        the class text embedding, written to the cohort's ``obs["{key}_pred"]``, ``obs["{key}_score_{class}"]``,
        ``obs["{key}_prob_{class}"]`` and ``uns[key]`` (``level="slide"``, ``ks=[0]``); see
        ``pathkit.tl.slide_text.zero_shot_slides``. ``topk``, ``image_features`` and ``cohort`` do not apply.

    Returns
    -------
    DataFrame, one row per slide: `pred_k{K}`, `score_{class}_k{K}`, `prob_{class}_k{K}`. Also sets, per
    tile AnnData: `obs["{key}_{class}"]` (cosine similarity of each tile to each class),
    `obs["{key}_tile_pred"]` (the tile's best class, categorical; tile-level zero-shot) and
    `uns[key]` = {model, classes, class_names, templates, ks, logit_scale, scores [nK, C], probs [nK, C],
    pred (class per K), prompt_set_names [n_sets, C], prompt_set_templates [n_sets, T] (bool),
    prompt_set_scores [n_sets, nK, C]}.
    """
    if level == "slide":
        from .slide_text import zero_shot_slides

        return zero_shot_slides(tiles, classes, templates, model, use_rep=use_rep, weights=weights,
                                key_added=key_added, n_prompt_sets=n_prompt_sets, random_state=random_state,
                                device=device, progress=progress)
    if level != "tile":
        raise ValueError(f"level must be 'tile' or 'slide' (got {level!r})")
    seed = random_state
    classes = _prompts.get_classes(classes)
    templates = _prompts.get_templates(templates)
    ks = sorted({int(k) for k in ([topk] if np.isscalar(topk) else topk)})
    if not ks or ks[0] < 1:
        raise ValueError(f"topk must be positive integers (got {topk!r})")
    slides = _slides(tiles)
    feats_given = image_features
    if image_features is not None and len(slides) > 1:
        if isinstance(image_features, dict):
            missing = [s for s, _ in slides if s not in image_features]
            if missing:
                raise KeyError(f"image_features has no entry for slides {missing}")
            feats_given = [image_features[s] for s, _ in slides]
        elif len(image_features) != len(slides):
            raise ValueError(f"image_features: {len(image_features)} arrays for {len(slides)} slides")
    elif image_features is not None:
        feats_given = [image_features]

    encoder = _load_encoder(model, weights, device)
    spec = getattr(encoder, "spec", None)
    clip_name = getattr(spec, "name", str(model))
    tower = (getattr(spec, "extra", {}) or {}).get("image_tower", f"{clip_name}_vision")
    logit_scale = float(encoder.logit_scale)
    if weights is None and getattr(encoder, "info", None):
        weights = encoder.info.get("source")  # embed tiles with the same checkpoint as the text tower
    prompt_emb = encode_prompts(encoder, classes, templates, progress=progress)
    text = class_embeddings(prompt_emb)
    set_names, set_mask = _prompts.sample_prompt_sets(classes, len(templates), int(n_prompt_sets), seed)
    set_text = [class_embeddings(prompt_emb, set_names[s], set_mask[s]) for s in range(int(n_prompt_sets))]
    cls = list(classes)

    rows = {}
    set_scores_all = {}
    for i, (sid, adata) in enumerate(slides):
        feats = _features(adata, sid, clip_name, tower, use_rep, None if feats_given is None else feats_given[i])
        if feats.shape[1] != text.shape[1]:
            raise ValueError(f"slide {sid}: image features are {feats.shape[1]}-d but {clip_name!r} text embeddings "
                             f"are {text.shape[1]}-d: the features do not come from {tower!r}")
        if feats.shape[0] == 0:
            raise ValueError(f"slide {sid}: no tiles to score")
        f = _l2n(feats)
        sims = f @ text.T
        for c, name in enumerate(cls):
            adata.obs[f"{key_added}_{name}"] = sims[:, c].astype(np.float32)
        adata.obs[f"{key_added}_tile_pred"] = pd.Categorical.from_codes(sims.argmax(axis=1), categories=cls)
        scores = _topk_pool_many(sims, ks)
        probs = softmax(scores, logit_scale)
        preds = [cls[j] for j in scores.argmax(axis=1)]
        set_scores = (np.stack([_topk_pool_many(f @ t.T, ks) for t in set_text]) if set_text
                      else np.zeros((0, len(ks), len(cls))))
        set_scores_all[sid] = set_scores
        adata.uns[key_added] = {
            "model": clip_name, "classes": cls, "class_names": {c: list(v) for c, v in classes.items()},
            "templates": list(templates), "ks": np.asarray(ks), "logit_scale": logit_scale,
            "scores": scores, "probs": probs, "pred": {f"k{k}": p for k, p in zip(ks, preds)},
            "prompt_set_names": np.array([[classes[c][j] for c, j in zip(cls, row)] for row in set_names],
                                         dtype=object).astype(str) if len(set_names) else np.zeros((0, len(cls)), str),
            "prompt_set_templates": set_mask, "prompt_set_scores": set_scores, "seed": int(seed),
        }
        row = {}
        for a, k in enumerate(ks):
            row[f"pred_k{k}"] = preds[a]
            for c, name in enumerate(cls):
                row[f"score_{name}_k{k}"] = float(scores[a, c])
                row[f"prob_{name}_k{k}"] = float(probs[a, c])
        rows[sid] = row
    result = pd.DataFrame.from_dict(rows, orient="index")
    result.index.name = "slide_id"
    if cohort is not None:
        _write_cohort(cohort, result, set_scores_all, cls, ks, logit_scale, templates, key_added, clip_name,
                      int(seed))
    return result


def _write_cohort(cohort, result, set_scores, cls, ks, logit_scale, templates, key, clip_name, seed):
    ids = _cohort_ids(cohort)
    unknown = [s for s in result.index if s not in set(ids)]
    if unknown:
        raise TableError(f"cohort: slides {unknown[:10]} are not in cohort.obs['slide_id'] / obs_names; "
                         "add them to the cohort or pass the matching tiles only")
    aligned = result.reindex(ids)
    for col in result.columns:
        vals = aligned[col].to_numpy()
        cohort.obs[f"{key}_{col}"] = vals if col.startswith("pred_") else vals.astype(np.float64)
    n_sets = next(iter(set_scores.values())).shape[0] if set_scores else 0
    arr = np.full((len(ids), n_sets, len(ks), len(cls)), np.nan)
    for i, s in enumerate(ids):
        if s in set_scores:
            arr[i] = set_scores[s]
    cohort.uns[key] = {"model": clip_name, "classes": list(cls), "ks": np.asarray(ks), "logit_scale": logit_scale,
                       "templates": list(templates), "prompt_set_scores": arr, "seed": seed}
