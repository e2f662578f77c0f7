"""Benchmark: the Prov-GigaPath slide encoder (LongNet, dilated attention) on CPU vs dense attention.

    python benchmarks/bench_longnet.py [--sizes 1000 10000 30000] [--dtypes auto float32] [--repeat 1]
                                       [--methods dilated gemm dense] [--threads 2] [--dense-max 10000] [--out F]

Released architecture (gigapath_slide: 12 layers, 768-d, 16 heads), random weights, one slide of L tiles
on random cells of the 1000 x 1000 grid, one forward pass (mean pooling), in each of --dtypes: "auto" is
pathkit's default (`pathkit._device.resolve_dtype`: bfloat16 on CPUs with native bf16, float32 elsewhere;
the model's weights and activations in that dtype, as `pk.tl.embed_slide` runs it), "float32" the exact path.
The dtypes (and --repeat rounds) are interleaved per size (A, B, A, B) so that a busy machine slows both alike. Each measurement runs in
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


def _worker(L: int, method: str, threads: int, dtype: str = "float32") -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    from pathkit._device import dtype_name, resolve_dtype
    from pathkit.models.longnet import _DilatedSelfAttention, build_slide_encoder

    cdt = resolve_dtype(dtype, "cpu")
    torch.manual_seed(0)
    net = build_slide_encoder("gigapath_slide", device="cpu").to(cdt)  # default init: random weights
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
    x = torch.randn(1, L, 1536, generator=g).to(cdt)
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
    return {"L": L, "method": method, "dtype": dtype, "compute_dtype": dtype_name(cdt), "seconds": dt, "cpu_seconds": cpu, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_forward_mb": rss0, "threads": threads}


def _run(L, method, threads, timeout, dtype="float32"):
    cmd = [sys.executable, __file__, "--worker", str(L), method, "--threads", str(threads), "--dtype", dtype]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"L": L, "method": method, "dtype": dtype, "error": f"timed out after {timeout} s"}
    if p.returncode != 0:
        return {"L": L, "method": method, "dtype": dtype, "error": (p.stderr.strip().splitlines() or ["?"])[-1],
                "returncode": p.returncode}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["wall_with_startup_s"] = time.perf_counter() - t
    out["loadavg_after"] = os.getloadavg()[0]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 30000])
    ap.add_argument("--dtypes", nargs="+", default=["auto", "float32"])
    ap.add_argument("--methods", nargs="+", default=["dilated", "gemm", "dense"], choices=["dilated", "gemm", "dense"])
    ap.add_argument("--repeat", type=int, default=1, help="interleaved rounds per size (best kept)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dense-max", type=int, default=10000, help="largest L run with dense attention")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--out", default=str(HERE / "results" / "bench_longnet.json"))
    ap.add_argument("--worker", nargs=2, metavar=("L", "METHOD"), help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(int(args.worker[0]), args.worker[1], args.threads, args.dtype)))
        return

    import torch

    from pathkit._device import dtype_name, resolve_dtype

    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
            "python": platform.python_version(), "gpu": "none (CPU only)",
            "dtypes": {d: dtype_name(resolve_dtype(d, "cpu")) for d in args.dtypes},
            "loadavg_start": os.getloadavg()}
    rows = []
    for L in args.sizes:
        for _ in range(args.repeat):
            for method in args.methods:
                if method == "dense" and L > args.dense_max:
                    continue
                for dt in args.dtypes:  # A, B, A, B
                    r = _run(L, method, args.threads, args.timeout, dt)
                    rows.append(r)
                    print(json.dumps(r), flush=True)
    meta["loadavg_end"] = os.getloadavg()

    def best(L, method, dt):
        ok = [r for r in rows if (r["L"], r["method"], r.get("dtype")) == (L, method, dt) and "seconds" in r]
        return min(ok, key=lambda r: r["seconds"]) if ok else {}

    table = []
    for L in args.sizes:
        for dt in args.dtypes:
            d, gm, de = best(L, "dilated", dt), best(L, "gemm", dt), best(L, "dense", dt)
            errs = [r["error"] for r in rows if (r["L"], r.get("dtype")) == (L, dt) and "error" in r]
            table.append({"L": L, "dtype": dt, "compute_dtype": meta["dtypes"][dt],
                          "dilated_s": d.get("seconds"), "dilated_cpu_s": d.get("cpu_seconds"),
                          "dilated_peak_rss_mb": d.get("peak_rss_mb"), "dilated_rss_before_mb": d.get("rss_before_forward_mb"),
                          "no_attention_s": gm.get("seconds"), "dense_s": de.get("seconds"),
                          "dense_peak_rss_mb": de.get("peak_rss_mb"), "load_after": d.get("loadavg_after"),
                          "errors": errs})

    def f(v, fmt="{:.1f}"):
        return "-" if v is None else fmt.format(v)

    print(f"\nLongNet slide encoder (gigapath_slide, random weights, CPU, {args.threads} threads), torch "
          f"{meta['torch']}, dtypes {meta['dtypes']}, load avg {meta['loadavg_start'][0]:.1f} -> {meta['loadavg_end'][0]:.1f}")
    print(f"{'tiles':>7} | {'dtype':>8} | {'dilated s':>9} | {'cpu s':>7} | {'peak RSS MB':>11} | {'no-attn s':>9} | "
          f"{'dense s':>8} | {'load':>5} | {'vs float32':>10}")
    ref = {t["L"]: t["dilated_s"] for t in table if t["compute_dtype"] == "float32"}
    for t in table:
        ratio = ref[t["L"]] / t["dilated_s"] if ref.get(t["L"]) and t["dilated_s"] else None
        print(f"{t['L']:>7} | {t['compute_dtype'][:8]:>8} | {f(t['dilated_s']):>9} | {f(t['dilated_cpu_s']):>7} | "
              f"{f(t['dilated_peak_rss_mb'], '{:.0f}'):>11} | {f(t['no_attention_s']):>9} | {f(t['dense_s']):>8} | "
              f"{f(t['load_after']):>5} | {f(ratio, '{:.2f}x'):>10}")
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
