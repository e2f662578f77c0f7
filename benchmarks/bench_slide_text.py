"""Slide-level language on CPU: zero-shot and text search over 1,000 slides, and PRISM captions per slide,
with the released model sizes on random weights (the speed and memory do not depend on the values).

    python benchmarks/bench_slide_text.py [--slides 1000] [--classes nsclc] [--repeat 5] [--caption-slides 2]

- zero-shot: the prompts are encoded once per class set (TITAN's text tower, 12 x 768, CONCH tokenizer);
  scoring 1,000 slides is then a projection and a product. Baseline in the same run: the authors' way, one
  slide at a time (``Titan.zero_shot(slide_embedding, classifier)`` per slide: ``slide @ proj``, normalise,
  ``@ classifier``, softmax), interleaved with pathkit's batched call.
- text search: one query encoded + cosine to every slide (pathkit) vs a per-slide loop (baseline).
- captions: PRISM's Perceiver (8 x 1280, 512 latents) on 2,000 Virchow tiles, then the BioGPT decoder (24 x
  1024) generating the authors' default 99 new tokens greedily (``min_new_tokens=99``: random weights would
  emit </s> at once; real captions stop earlier, so this is the worst case), and with 3 beams.
Peak RSS (ru_maxrss) after each stage; the machine is shared with other jobs: timings are medians of
interleaved repeats. Writes benchmarks/results/bench_slide_text.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
HERE = Path(__file__).parent


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--slides", type=int, default=1000)
    ap.add_argument("--classes", default="nsclc")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--caption-slides", type=int, default=2)
    ap.add_argument("--tiles", type=int, default=2000)
    ap.add_argument("--no-beams", dest="beams", action="store_false", help="skip the 3-beam caption timing")
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    import anndata as ad
    import numpy as np
    import pandas as pd
    import torch
    import torch.nn.functional as F

    import pathkit as pk
    from pathkit.models import prism_text, slide_text
    from pathkit.tl.prompts import get_classes, get_templates
    from pathkit.tl.zeroshot import class_embeddings, encode_prompts

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    res = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M"),
           "load_before": os.getloadavg()[0], "slides": args.slides}
    r0 = rss_mb()
    txt = slide_text.load_slide_text("titan", weights="random")   # released sizes: 12 x 768, proj 768 x 768
    classes, templates = get_classes(args.classes), get_templates("titan")
    n_prompts = sum(len(v) for v in classes.values()) * len(templates)
    t = time.perf_counter()
    cls = class_embeddings(encode_prompts(txt, classes, templates))
    res["prompt_encoding_s"] = time.perf_counter() - t
    res["n_prompts"] = n_prompts
    res["prompts_per_s"] = n_prompts / res["prompt_encoding_s"]
    res["rss_after_text_tower_mb"] = rss_mb() - r0
    print(f"prompt encoding: {n_prompts} prompts in {res['prompt_encoding_s']:.2f} s", flush=True)

    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.slides, 768)).astype(np.float32)
    ids = [f"S{i:04d}" for i in range(args.slides)]
    cohort = ad.AnnData(obs=pd.DataFrame(index=ids))
    cohort.obsm["X_titan"] = X
    clf = torch.as_tensor(cls.T, dtype=torch.float32)
    proj = txt.proj

    def baseline_zero_shot():  # Titan.zero_shot, one slide per call
        return [F.softmax(F.normalize(torch.as_tensor(x)[None] @ proj, dim=-1) @ clf, dim=-1) for x in X]

    def pathkit_scoring():  # the scoring part of pk.tl.zero_shot(level="slide"), prompts already encoded
        s = txt.project(X).numpy() @ cls.T
        return np.exp(s - s.max(1, keepdims=True))

    def baseline_search(query):  # the query encoded, then one slide at a time
        q = txt.encode_text([query])[0]
        return [float(F.normalize(torch.as_tensor(x)[None] @ proj, dim=-1) @ q) for x in X]

    q = "tertiary lymphoid structures"
    times = {k: [] for k in ("zs_baseline", "zs_pathkit", "zs_pathkit_full", "search_baseline", "search_pathkit")}
    for _ in range(args.repeat):  # interleaved
        t = time.perf_counter(); baseline_zero_shot(); times["zs_baseline"].append(time.perf_counter() - t)
        t = time.perf_counter(); pathkit_scoring(); times["zs_pathkit"].append(time.perf_counter() - t)
        t = time.perf_counter(); baseline_search(q); times["search_baseline"].append(time.perf_counter() - t)
        t = time.perf_counter()
        pk.tl.text_search(cohort, "tertiary lymphoid structures", model=txt, top=10, thumbnails=False)
        times["search_pathkit"].append(time.perf_counter() - t)
    t = time.perf_counter()  # the whole public call once: prompts encoded again + scoring + obs / uns writes
    pk.tl.zero_shot(cohort, classes, model=txt, level="slide", n_prompt_sets=50, progress=False)
    times["zs_pathkit_full"].append(time.perf_counter() - t)
    for k, v in times.items():
        res[f"{k}_s"] = statistics.median(v)
    res["rss_after_zero_shot_search_mb"] = rss_mb() - r0
    print("zero-shot / search:", {k: round(v, 4) for k, v in res.items() if k.endswith("_s")}, flush=True)

    if args.caption_slides < 1:
        return finish(res, args)
    # captions, released sizes
    r1 = rss_mb()
    from pathkit.models.prism import load_prism

    enc, _ = load_prism("prism", weights="random")
    dec, _, _ = prism_text.load_prism_decoder("prism", weights="random",
                                                tokenizer=HERE.parent / "tests/fixtures/parity/biogpt_tiny")
    res["rss_prism_models_mb"] = rss_mb() - r1
    print(f"PRISM models built: +{res['rss_prism_models_mb']:.0f} MB", flush=True)
    cap = {"perceiver_s": [], "greedy_s": [], "beams3_s": [], "new_tokens": []}
    for i in range(args.caption_slides):
        h = torch.randn(1, args.tiles, 2560, generator=torch.Generator().manual_seed(i))
        with torch.inference_mode():
            t = time.perf_counter(); lat = enc.forward_features(h)["image_latents"]; cap["perceiver_s"].append(time.perf_counter() - t)
        # random weights tend to emit </s> at once: min_new_tokens forces the authors' full 99, the worst case
        t = time.perf_counter(); ids_ = dec.generate(lat, min_new_tokens=99); cap["greedy_s"].append(time.perf_counter() - t)
        cap["new_tokens"].append(int(ids_.shape[1] - 1))
        print("caption", i, {k: v[-1] for k, v in cap.items() if v}, flush=True)
        if i == 0 and args.beams:
            t = time.perf_counter(); dec.generate(lat, num_beams=3, min_new_tokens=99); cap["beams3_s"].append(time.perf_counter() - t)
    for k, v in cap.items():
        res[f"caption_{k}"] = statistics.median(v) if v else float("nan")
    res["rss_after_captions_mb"] = rss_mb() - r0
    finish(res, args)


def finish(res, args):
    res["load_after"] = os.getloadavg()[0]
    n_prompts = res["n_prompts"]

    print(f"\n{res['machine']} | torch {res['torch']} | {res['threads']} threads | load {res['load_before']:.1f} -> "
          f"{res['load_after']:.1f} (shared machine)")
    print(f"prompt encoding ({args.classes}, TITAN templates): {n_prompts} prompts in {res['prompt_encoding_s']:.2f} s "
          f"({res['prompts_per_s']:.0f} prompts/s); text tower RSS +{res['rss_after_text_tower_mb']:.0f} MB")
    print(f"{'task':34s} {'baseline s':>11s} {'pathkit s':>10s} {'ratio':>7s}")
    for name, b, p in (("zero-shot scoring, 1k slides", "zs_baseline", "zs_pathkit"),
                       ("text search, 1k slides (+ query)", "search_baseline", "search_pathkit")):
        print(f"{name:34s} {res[b + '_s']:11.4f} {res[p + '_s']:10.4f} {res[b + '_s'] / res[p + '_s']:6.1f}x")
    print(f"pk.tl.zero_shot(level='slide') end to end, {args.slides} slides, 50 prompt sets: {res['zs_pathkit_full_s']:.2f} s")
    print(f"RSS after zero-shot + search: +{res['rss_after_zero_shot_search_mb']:.0f} MB")
    if "caption_greedy_s" in res:
        print(f"caption per slide ({args.tiles} tiles): Perceiver {res['caption_perceiver_s']:.2f} s + greedy "
              f"{res['caption_new_tokens']} tokens {res['caption_greedy_s']:.1f} s; 3 beams {res['caption_beams3_s']:.1f} s; "
              f"PRISM models RSS +{res['rss_prism_models_mb']:.0f} MB")
    out = HERE / "results" / ("bench_slide_text.json" if "caption_greedy_s" in res else "bench_slide_text_zs.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
