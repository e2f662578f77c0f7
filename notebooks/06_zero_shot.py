# %% [markdown]
# # 06 · Zero-shot classification with image-text models (MI-Zero / CONCH protocol)
#
# An image-text model (CONCH, PLIP, QuiltNet) embeds tiles and sentences in the same space. Zero-shot
# classification needs no training labels:
#
# 1. each class has **names** ("lung adenocarcinoma", "LUAD", ...) and there are **templates**
#    ("a histopathological photograph of CLASSNAME."); every name x template prompt is embedded by the text
#    tower, L2-normalised, averaged per class and re-normalised;
# 2. each tile is scored by its cosine similarity to each class;
# 3. a slide's class score is the mean of its **top-K** tile scores (a tumour may fill only a few tiles);
#    the predicted class is the highest score; probabilities are softmax(score x logit_scale).

# %%
import pathkit as pk

# %% tags=["parameters"]
SLIDE = None                 # None: the CMU-1 sample shipped with pathkit; or a path to your own slide
MODEL = "quiltnet"           # ungated image-text models: "quiltnet", "plip"; gated: "conch"
WEIGHTS = None               # None: the registry's source (the HF hub); or a local checkpoint
TOPK = (1, 5, 10, 50)
OUT = "pathkit_out"          # folder for the results
SLIDE_MODEL = "titan_small_demo"    # slide-level section: "titan" with the gated MahmoodLab/TITAN weights
CAPTION_MODEL = "prism_small_demo"  # captions: "prism" with the gated paige-ai/Prism weights

# %%
from pathlib import Path

out = Path(OUT)
out.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# > **Weights.** The default is QuiltNet (`quiltnet`, ungated: downloaded once from the Hugging Face hub);
# > `plip` is the other ungated choice, and CONCH (`conch`, gated: accept its licence and log in) reaches ~0.9
# > balanced accuracy on TCGA NSCLC subtyping zero-shot (Lu et al., Nature Medicine 2024). The documentation
# > and CI run offline with `MODEL = "conch_small_demo"`: a **small CONCH variant with random weights** (same
# > CoCa architecture, tokenizer, attentional pooler and preprocessing; 2 layers, 32-d, 64-px input), saved as
# > one checkpoint so that its image and text towers belong together. Prompts, pooling, scores and evaluation
# > are then exactly the real pipeline, but the *predictions* mean nothing.

# %%
import warnings
import numpy as np
import pandas as pd
import plotly.express as px
import torch
from pathkit.tl.prompts import CLASSES, get_templates
from pathkit.tl.zeroshot import text_embeddings, topk_pool

if MODEL == "conch_small_demo":
    pk.models.clip.register_clip_variant(
        "conch_small_demo", "conch", {"embed_dim": 32, "vision": {"image_size": 64, "width": 48, "layers": 2, "heads": 2},
                                      "text": {"width": 48, "heads": 2, "layers": 2}},
        input_size=64, description="2-layer CONCH for demonstrations (random weights)")
    torch.manual_seed(0)
    net, _ = pk.models.clip.build_clip("conch_small_demo")
    WEIGHTS = out / "conch_small_demo.pt"
    torch.save(net.state_dict(), WEIGHTS)
clip = pk.models.clip.load_clip(MODEL, weights=WEIGHTS)
print(MODEL, "| embedding", clip.spec.embed_dim, "| logit_scale", round(float(clip.logit_scale), 2))
pk.list_models("clip")[["architecture", "embed_dim", "input", "gated", "license"]]

# %% [markdown]
# ## The prompt library
#
# Templates and class names as published by the CONCH and MI-Zero authors (read from their repositories):
# 22 CONCH templates (the first 16 are MI-Zero's), and class names for NSCLC, RCC, BRCA and colorectal tissue
# types (CRC100K).

# %%
templates = get_templates()          # CONCH's 22; get_templates("mizero") gives MI-Zero's 16
print(len(templates), "templates, e.g.:", templates[:3], "...", templates[-2:])
pd.DataFrame([(task, c, "; ".join(names)) for task, cl in CLASSES.items() for c, names in cl.items()],
             columns=["task", "class", "class names"]).set_index(["task", "class"])

# %% [markdown]
# ## Top-K pooling, by hand
#
# Four tiles, two classes. Class A is strong in one tile only; class B is moderately high everywhere. K = 1
# follows the single best tile, larger K the bulk of the slide — which is right depends on how much of the
# slide shows the class.

# %%
sims = np.array([[0.90, 0.40],
                 [0.10, 0.50],
                 [0.20, 0.45],
                 [0.15, 0.55]])
pd.DataFrame({f"K={k}": topk_pool(sims, k) for k in (1, 2, 4)}, index=["A", "B"])

# %% [markdown]
# ## Zero-shot on a real slide
#
# Tiles of the CMU-1 H&E sample are embedded by the model's **image tower** (named in the model's registry entry,
# e.g. `conch_vision_proj` for CONCH: the projected embedding; a tile encoder like any other), then scored against the colorectal tissue classes. `pk.tl.zero_shot` writes tile scores and
# the tile's best class into the tile AnnData, and returns one row per slide.

# %%
slide = pk.read_slide(SLIDE) if SLIDE else pk.datasets.cmu1_small()
tiles = pk.pp.tile(slide, tile_px=256, mpp=0.5, min_tissue=0.1)
TOWER = clip.spec.extra["image_tower"]
pk.tl.embed_tiles(tiles, slide, TOWER, weights=WEIGHTS, progress=False)   # -> tiles.obsm[f"X_{TOWER}"]
res = pk.tl.zero_shot(tiles, classes="crc100k", model=clip, use_rep=f"X_{TOWER}", topk=TOPK,
                      n_prompt_sets=20, progress=False)
print(tiles.n_obs, "tiles;", "prediction per K:", tiles.uns["zeroshot"]["pred"])
res.filter(like="pred_")

# %%
pk.pl.slide(tiles, color="zeroshot_tile_pred", slide=slide)

# %% [markdown]
# ## Balanced accuracy per K on a labelled set
#
# `pk.tl.zero_shot_eval` reports, per K, the balanced accuracy and AUROC of the full prompt ensemble, and the
# median (and quartiles) over MI-Zero's randomly sampled **prompt sets** (one class name per class and a random
# subset of templates each) — how much the result depends on the wording of the prompts.
#
# > **Labelled set used here.** There is no labelled slide set with CONCH features in `pk.datasets`, so the
# > 24 "slides" below have **planted image features**: 60 tiles of noise each, of which a few (3 to 12) point
# > towards the text embedding of the slide's true class (LUAD or LUSC). Small K finds the few informative
# > tiles (K = 1 is at the mercy of one noisy tile); averaging over all tiles (K = 50) dilutes them.

# %%
import anndata as ad
rng = np.random.default_rng(0)
text = text_embeddings(clip, "nsclc")                     # [2 classes, E], the ensemble over names x templates
print(f"cosine between the LUAD and LUSC text embeddings: {text[0] @ text[1]:.2f}")
slides, labels = {}, {}
for i in range(24):
    cls = i % 2
    feats = rng.normal(size=(60, text.shape[1])) * 0.3
    n_inf = rng.integers(3, 13)
    feats[:n_inf] += text[cls] * rng.uniform(0.6, 1.2)
    sid = f"NSCLC-{i:02d}"
    a = ad.AnnData(np.zeros((60, 1), np.float32), obs=pd.DataFrame({"slide_id": sid}, index=[str(j) for j in range(60)]))
    a.obsm[f"X_{MODEL}_vision"] = feats.astype(np.float32)
    slides[sid], labels[sid] = a, ["LUAD", "LUSC"][cls]
cohort = ad.AnnData(obs=pd.DataFrame({"slide_id": list(slides), "truth": [labels[s] for s in slides]},
                                     index=list(slides)))
pk.tl.zero_shot(slides, classes="nsclc", model=clip, topk=(1, 5, 10, 50), cohort=cohort, n_prompt_sets=20,
                progress=False)
ev = pk.tl.zero_shot_eval(cohort, "truth")
ev.round(3)

# %%
long = ev.reset_index(names="K")
fig = px.line(long, x="K", y=["balanced_accuracy", "bacc_median"], markers=True, log_x=True,
              title="balanced accuracy per K (ensemble, and median over prompt sets)", height=350)
fig.add_scatter(x=long.K, y=long.bacc_q75, mode="lines", line_dash="dot", name="prompt sets, 75th pct")
fig.add_scatter(x=long.K, y=long.bacc_q25, mode="lines", line_dash="dot", name="prompt sets, 25th pct")
fig.update_xaxes(tickvals=list(long.K), title="K (top-K tiles pooled, log scale)")
fig.update_layout(legend=dict(orientation="h", y=-0.3), yaxis_title="balanced accuracy")

# %% [markdown]
# ## With real CONCH weights
#
# ```python
# clip = pk.models.clip.load_clip("conch")                              # hf_hub:MahmoodLab/CONCH (gated)
# tiles = pk.pp.tile(slide)
# pk.tl.embed_tiles(tiles, slide, "conch_vision_proj")                  # 512-d projected image embeddings
# res = pk.tl.zero_shot(tiles, classes="nsclc", model=clip, cohort=cohort)  # reads obsm["X_conch_vision_proj"]
# pk.tl.zero_shot_eval(cohort, "oncotree_code")                         # balanced accuracy per K
# ```
# Your own classes: `classes={"tumour": ["adenocarcinoma", "tumor"], "normal": ["normal colonic mucosa"]}`;
# your own templates: any list of strings containing `CLASSNAME`.

# %% [markdown]
# ## Slide level: zero-shot, text search and captions on slide embeddings
#
# Slide foundation models with a text half compare sentences with **whole-slide** embeddings: TITAN (Mahmood
# Lab) has a CoCa text tower (CONCH's tokenizer) aligned with its slide embedding, PRISM (Paige) a BioGPT
# decoder that writes a description of the slide. `pk.tl.zero_shot(cohort, classes, model="titan",
# level="slide")` uses the same prompt machinery as the tile level (names x templates, averaged per class),
# with TITAN's 23 templates and the 46 TCGA-OT classes of its evaluation (`classes="tcga_ot"`); the score is
# the cosine between the slide embedding projected into the text space and each class.
#
# > **Offline demo: random weights.** `titan_small_demo` and `prism_small_demo` are the real architectures
# > (TITAN's tokenizer, text tower and projection; PRISM's Perceiver and cross-attending BioGPT), reduced and
# > with **random weights** written here, so that this section runs without downloads. The cohort below is
# > **planted**: 30 slide embeddings built to lie near the text embedding of their class, with noise. Zero-shot
# > and search then work by construction; the captions are meaningless (with the tiny demonstration
# > vocabulary, mostly `<unk>`). With real weights: embed the
# > cohort with `pk.tl.embed_cohort(slides, out, tile_model="conch_v15", slide_model="titan")` and use
# > `model="titan"` (the cohort's `obsm["X_titan"]`).

# %%
from pathkit.models import prism_text, slide_text
from pathkit.tl.prompts import get_classes
from pathkit.tl.zeroshot import text_embeddings as class_text

SLIDE_WEIGHTS = None
if SLIDE_MODEL == "titan_small_demo":
    SLIDE_WEIGHTS = slide_text.save_random_weights(SLIDE_MODEL, out / "titan_small_demo.safetensors")
txt = slide_text.load_slide_text(SLIDE_MODEL, weights=SLIDE_WEIGHTS)
tcga = get_classes("tcga_ot")
thoracic = {c: tcga[c] for c in ("LUAD", "LUSC", "PLEMESO")}
print(len(tcga), "TCGA-OT classes; e.g. PLEMESO:", tcga["PLEMESO"])

t = class_text(txt, thoracic, "titan")                     # [3, E] class text embeddings
pinv = np.linalg.pinv(txt.proj.cpu().numpy().astype(np.float64))  # slide space <- text space
X, truth = [], []
for i in range(30):
    c = i % 3
    X.append(t[c] @ pinv + rng.normal(size=pinv.shape[1]) * 0.1 * np.linalg.norm(t[c] @ pinv) / pinv.shape[1] ** 0.5)
    truth.append(list(thoracic)[c])
ids = [f"TH-{i:02d}" for i in range(30)]
slide_cohort = ad.AnnData(obs=pd.DataFrame({"truth": truth}, index=ids))
slide_cohort.obsm[f"X_{SLIDE_MODEL}"] = np.asarray(X, dtype=np.float32)
res = pk.tl.zero_shot(slide_cohort, thoracic, model=txt, level="slide", n_prompt_sets=20, progress=False)
pk.tl.zero_shot_eval(slide_cohort, "truth").round(3)   # one row: K = 0, the slide level

# %%
hits, fig = pk.tl.text_search(slide_cohort, "pleural mesothelioma, epithelioid type", model=txt, top=8)
print(hits.merge(slide_cohort.obs, left_on="slide_id", right_index=True)[["rank", "slide_id", "similarity", "truth"]])
fig   # thumbnails appear above the bars when cohort.obs["path"] points to readable slides

# %% [markdown]
# PRISM writes a description per slide from its tile features (Virchow, 2,560-d): the Perceiver resamples the
# tiles into 512 image latents, which BioGPT reads while decoding, with the authors' defaults (greedy, up to
# 99 new tokens). Here: two "slides" of random tile features and a tiny demonstration vocabulary.

# %%
CAPTION_WEIGHTS, TOKENIZER = None, None
if CAPTION_MODEL == "prism_small_demo":
    CAPTION_WEIGHTS = prism_text.save_random_weights(CAPTION_MODEL, out / "prism_small_demo.safetensors")
    TOKENIZER = prism_text.save_demo_tokenizer(out / "biogpt_demo_tokenizer")
dim = pk.models.get_spec(CAPTION_MODEL).extra["in_chans"]
cap_tiles = {}
for sid in ("SLIDE-A", "SLIDE-B"):
    a = ad.AnnData(np.zeros((50, 1), np.float32))
    a.obsm["X_virchow"] = rng.normal(size=(50, dim)).astype(np.float32)
    cap_tiles[sid] = a
cap_cohort = ad.AnnData(obs=pd.DataFrame(index=list(cap_tiles)))
pk.tl.caption(cap_cohort, CAPTION_MODEL, tiles=cap_tiles, weights=CAPTION_WEIGHTS, tokenizer=TOKENIZER,
              max_new_tokens=20, progress=False)
cap_cohort.obs
