"""Benchmark: the Prov-GigaPath slide encoder (LongNet, dilated attention) on CPU vs dense attention.

    python benchmarks/bench_longnet.py [--sizes 1000 10000 30000] [--threads 2] [--dense-max 10000] [--out F]

Released architecture (gigapath_slide: 12 layers, 768-d, 16 heads), random weights, one slide of L tiles
on random cells of the 1000 x 1000 grid, float32, one forward pass (mean pooling). Each measurement runs in
a fresh subprocess so that its peak RSS (ru_maxrss) is its own. Baseline, measured in the same run: the
same model with full softmax attention over the whole sequence (F.scaled_dot_product_attention), which is
O(L^2) in time; above --dense-max tiles it is not run and its time is extrapolated (marked "est.").
Also reported: the time of the model's linear layers alone ("no-attn": attention replaced by the identity on v), which any attention needs.
Writes benchmarks/results/bench_longnet.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _worker(L: int, method: str, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    from pathkit.models.longnet import _DilatedSelfAttention, build_slide_encoder

    torch.manual_seed(0)
    net = build_slide_encoder("gigapath_slide", device="cpu")  # default init: random weights
    if method == "dense":
        def dense_forward(self, x):
            B, n, E = x.shape
            q, k, v = (p(x).view(B, n, self.heads, E // self.heads).transpose(1, 2)
                       for p in (self.q_proj, self.k_proj, self.v_proj))
            o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, n, E)
            return self.out_proj(self.inner_attn_ln(o))
        _DilatedSelfAttention.forward = dense_forward
    elif method == "gemm":  # linear layers only: attention replaced by the identity on v
        def gemm_forward(self, x):
            self.q_proj(x), self.k_proj(x)
            return self.out_proj(self.inner_attn_ln(self.v_proj(x)))
        _DilatedSelfAttention.forward = gemm_forward
    g = torch.Generator().manual_seed(1)
    cells = torch.randperm(1000 * 1000, generator=g)[:L]
    coords = torch.stack([cells // 1000, cells % 1000], dim=-1).float()[None] * 256
    x = torch.randn(1, L, 1536, generator=g)
    with torch.inference_mode():
        net(x[:, :64], coords[:, :64], pool="mean")  # kernels warmed up
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t = time.perf_counter()
        y = net(x, coords, pool="mean")
        dt = time.perf_counter() - t
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
    # CPU seconds (all threads): on a shared machine, wall time depends on the neighbours' load, this less so
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    assert torch.isfinite(y).all()
    return {"L": L, "method": method, "seconds": dt, "cpu_seconds": cpu, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_forward_mb": rss0, "threads": threads}


def _run(L, method, threads, timeout):
    cmd = [sys.executable, __file__, "--worker", str(L), method, "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"L": L, "method": method, "error": f"timed out after {timeout} s"}
    if p.returncode != 0:
        return {"L": L, "method": method, "error": (p.stderr.strip().splitlines() or ["?"])[-1],
                "returncode": p.returncode}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["wall_with_startup_s"] = time.perf_counter() - t
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 30000])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dense-max", type=int, default=10000, help="largest L run with dense attention")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--out", default=str(HERE / "results" / "bench_longnet.json"))
    ap.add_argument("--worker", nargs=2, metavar=("L", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(int(args.worker[0]), args.worker[1], args.threads)))
        return

    import torch

    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
            "python": platform.python_version(), "gpu": "none (CPU only)",
            "loadavg_start": os.getloadavg()}
    rows = []
    for L in args.sizes:
        for method in ("dilated", "gemm", "dense"):
            if method == "dense" and L > args.dense_max:
                continue
            r = _run(L, method, args.threads, args.timeout)
            rows.append(r)
            print(json.dumps(r), flush=True)
    meta["loadavg_end"] = os.getloadavg()

    by = {(r["L"], r["method"]): r for r in rows}
    dense_done = sorted(L for (L, m), r in by.items() if m == "dense" and "seconds" in r)
    table = []
    for L in args.sizes:
        d, gm, de = by.get((L, "dilated"), {}), by.get((L, "gemm"), {}), by.get((L, "dense"))
        if de is None and dense_done:  # quadratic extrapolation of the attention part, from the largest run
            L0 = dense_done[-1]
            t0, g0 = by[(L0, "dense")]["seconds"], by.get((L0, "gemm"), {}).get("seconds", 0.0)
            est = g0 * L / L0 + (t0 - g0) * (L / L0) ** 2
            de = {"seconds": est, "estimated": True}
        table.append({"L": L, "dilated_s": d.get("seconds"), "dilated_cpu_s": d.get("cpu_seconds"),
                      "dense_cpu_s": de.get("cpu_seconds") if de else None, "dilated_peak_rss_mb": d.get("peak_rss_mb"),
                      "dilated_rss_before_mb": d.get("rss_before_forward_mb"), "no_attention_s": gm.get("seconds"),
                      "dense_s": de.get("seconds") if de else None,
                      "dense_estimated": bool(de and de.get("estimated")),
                      "dense_peak_rss_mb": de.get("peak_rss_mb") if de else None,
                      "errors": {m: by[(L, m)]["error"] for m in ("dilated", "gemm", "dense")
                                 if (L, m) in by and "error" in by[(L, m)]}})

    def f(v, fmt="{:.1f}"):
        return "-" if v is None else fmt.format(v)

    print(f"\nLongNet slide encoder (gigapath_slide, random weights, fp32, CPU, {args.threads} threads), "
          f"torch {meta['torch']}, load avg {meta['loadavg_start'][0]:.1f} -> {meta['loadavg_end'][0]:.1f}")
    print(f"{'tiles':>7} | {'dilated s':>9} | {'cpu s':>7} | {'peak RSS MB':>11} | {'no-attn s':>9} | "
          f"{'dense s':>11} | {'cpu s':>7} | {'dense RSS MB':>12} | {'dense/dilated':>13}")
    for t in table:
        ratio = t["dense_s"] / t["dilated_s"] if t["dense_s"] and t["dilated_s"] else None
        dense = f(t["dense_s"]) + (" est." if t["dense_estimated"] else "")
        print(f"{t['L']:>7} | {f(t['dilated_s']):>9} | {f(t['dilated_cpu_s']):>7} | "
              f"{f(t['dilated_peak_rss_mb'], '{:.0f}'):>11} | {f(t['no_attention_s']):>9} | {dense:>11} | "
              f"{f(t['dense_cpu_s']):>7} | {f(t['dense_peak_rss_mb'], '{:.0f}'):>12} | {f(ratio, '{:.2f}x'):>13}")
        if t["errors"]:
            print("        errors:", t["errors"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"meta": meta, "runs": rows, "table": table}, indent=2))
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
