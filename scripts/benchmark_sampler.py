#!/usr/bin/env python
"""Speed / memory benchmark of sampler.select on a large synthetic pool (no GPU needed).

Every measurement runs in a fresh child process that generates the same synthetic pool
(a Gaussian mixture, float32, filled chunk by chunk) and reports wall time of the selection
alone and the process's peak RSS (ru_maxrss, which includes the matrix itself).

Baselines for the default strategy (`hybrid`), same algorithm, same data, same run:
  numpy_naive : textbook numpy (distances by broadcasting (x - c)**2, full sorts)
  numpy_gemm  : numpy with matmul distances (what a careful numpy programmer writes)

    python scripts/benchmark_sampler.py                       # 1M x 1280, 1,000 picks
    python scripts/benchmark_sampler.py --n 100000 --quick    # smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import sampler  # noqa: E402  - before numpy/faiss: sets OPENBLAS_CORETYPE


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_pool(n, d, n_classes, n_labeled, seed=0, n_modes=500, chunk=8192):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_modes, d), dtype=np.float32) * 2.0
    w = rng.standard_normal((d, n_classes), dtype=np.float32) / np.sqrt(d)
    mode_class_bias = rng.standard_normal((n_modes, n_classes), dtype=np.float32)
    x = np.empty((n, d), np.float32)
    p = np.empty((n, n_classes), np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        m = rng.integers(0, n_modes, e - s)
        rng.standard_normal((e - s, d), dtype=np.float32, out=x[s:e])
        x[s:e] += centres[m]
        z = x[s:e] @ w + 2 * mode_class_bias[m]
        z -= z.max(1, keepdims=True)
        np.exp(z, out=z)
        p[s:e] = z / z.sum(1, keepdims=True)
    lab = np.zeros(n, bool)
    lab[rng.choice(n, n_labeled, replace=False)] = True
    return x, p, lab


# ---- the same hybrid algorithm, written in plain numpy -----------------------------------
def numpy_hybrid(x, p, lab, budget, gemm: bool, seed=0, beta=10, niter=20):
    from sampler.balance import rare_class_quota

    unl = np.flatnonzero(~lab)
    pu = p[unl]
    srt = np.sort(pu, axis=1)
    u = 1 - (srt[:, -1] - srt[:, -2])
    taken = np.zeros(len(unl), bool)
    picks = []
    for c, q in rare_class_quota(p, lab, budget).items():
        order = np.argsort(-np.where(taken, -np.inf, pu[:, c]))[:q]
        taken[order] = True
        picks += list(unl[order])
    n_main = budget - len(picks)
    free = np.flatnonzero(~taken)
    cand = free[np.argsort(-u[free])[:beta * n_main]]
    v = x[unl[cand]].astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v -= v.mean(0)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    w = u[cand] + 1e-3
    rng = np.random.default_rng(seed)
    cent = v[rng.choice(len(v), n_main, replace=False)].copy()

    def assign(cent):
        if gemm:
            sims = v @ cent.T
            return sims.argmax(1), sims.max(1)
        a = np.empty(len(v), np.int64)
        best = np.empty(len(v), np.float32)
        for s in range(0, len(v), 64):  # bounded memory: 64 x k x d temporaries
            dist = ((v[s:s + 64, None, :] - cent[None, :, :]) ** 2).sum(-1)
            a[s:s + 64] = dist.argmin(1)
            best[s:s + 64] = 1 - dist.min(1) / 2
        return a, best

    for _ in range(niter):
        a, _ = assign(cent)
        for k in range(n_main):
            m = a == k
            if m.any():
                c = (v[m] * w[m, None]).sum(0)
                cent[k] = c / max(np.linalg.norm(c), 1e-12)
    a, sims = assign(cent)
    for k in range(n_main):
        m = np.flatnonzero(a == k)
        if len(m):
            picks.append(unl[cand[m[np.argmax(sims[m])]]])
    return picks


def child(args):
    t0 = time.perf_counter()
    x, p, lab = make_pool(args.n, args.dim, args.classes, args.labeled)
    gen_s = time.perf_counter() - t0
    rss_after_data = peak_rss_bytes()
    probs = None if args.child == "typiclust_cold" else p
    t0 = time.perf_counter()
    if args.child.startswith("numpy_"):
        picks = numpy_hybrid(x, p, lab, args.budget, gemm=args.child == "numpy_gemm")
        n_picks = len(picks)
    else:
        strategy = "typiclust" if args.child == "typiclust_cold" else args.child
        picks = sampler.select(x, probs, lab, args.budget, strategy=strategy, seed=0)
        n_picks = len(picks)
        assert len({pk.row for pk in picks}) == args.budget and not lab[[pk.row for pk in picks]].any()
    secs = time.perf_counter() - t0
    peak = peak_rss_bytes()
    print(json.dumps({"run": args.child, "seconds": round(secs, 2), "picks": n_picks,
                      "generate_s": round(gen_s, 1), "matrix_gb": round(x.nbytes / 1e9, 3),
                      "peak_rss_gb": round(peak / 1e9, 3), "peak_over_matrix": round(peak / x.nbytes, 3),
                      "rss_after_data_gb": round(rss_after_data / 1e9, 3)}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--labeled", type=int, default=1000)
    ap.add_argument("--runs", default="hybrid,typiclust_cold,kcenter,kmeans,margin,random,numpy_gemm,numpy_naive",
                    help="comma list: strategy names, typiclust_cold (probs=None), numpy_gemm, numpy_naive")
    ap.add_argument("--out", default=str(ROOT / "test-artifacts" / "benchmark_sampler.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    import faiss  # noqa: F401  (for the version only; sampler already set OPENBLAS_CORETYPE)

    results = []
    for run in args.runs.split(","):
        cmd = [sys.executable, __file__, "--child", run, "--n", str(args.n), "--dim", str(args.dim),
               "--budget", str(args.budget), "--classes", str(args.classes), "--labeled", str(args.labeled)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            results.append({"run": run, "error": out.stderr[-500:]})
            continue
        res = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(res)
        print(json.dumps(res), flush=True)
    by = {r["run"]: r for r in results if "seconds" in r}
    summary = {}
    if "hybrid" in by:
        for b in ("numpy_naive", "numpy_gemm"):
            if b in by:
                summary[f"hybrid_speedup_vs_{b}"] = round(by[b]["seconds"] / max(by["hybrid"]["seconds"], 1e-9), 1)
    report = {"n": args.n, "dim": args.dim, "budget": args.budget, "classes": args.classes,
              "labeled": args.labeled, "cpu_count": os.cpu_count(),
              "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
              "faiss": sys.modules["faiss"].__version__, "numpy": np.__version__,
              "results": results, "summary": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(summary))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
