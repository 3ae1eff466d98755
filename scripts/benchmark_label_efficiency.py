#!/usr/bin/env python
"""Label-efficiency benchmark: how many labels does each sampling strategy need?

Simulates the labeling loop on any ImageFolder data set, its folder labels playing the
annotator: embed every image once with the backbone (cached in <out>/embeddings.npz), hold
out a stratified test split, then per seed and strategy: pick a batch of B images
(`sampler.select`), reveal their labels, refit the one fixed recipe (`--recipe head`: a linear
head on the frozen embeddings; `--recipe refresh`: what a quick refresh runs, with its validation
split and early stopping), score macro-F1 / accuracy on the test split, repeat.

Outputs in --out: learning_curves.png, results.json (every point, means, headline numbers:
labels to first reach 95% / 98% of the full-label macro-F1 and the ratio to random; per round,
each strategy minus random on the same seed with a 95% interval, and the rounds where the
whole interval is below 0). On a few hundred images one test image changing class moves
macro-F1 by ~0.05: use `--seeds 20` before reading anything into a late-round difference.

    python scripts/benchmark_label_efficiency.py --data /work/shared/data/bccd_wbc
    python scripts/benchmark_label_efficiency.py --make-synthetic /tmp/synth_cells   # 16-bit 4-channel TIFFs
    python scripts/benchmark_label_efficiency.py --data /tmp/synth_cells --out test-artifacts/le_synth
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# torch and faiss each bring an OpenMP runtime; spinning idle threads of one starve the other
# (rounds were 10x slower). Tiny fits do not need threads anyway.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sampler  # noqa: E402  - first: sets OPENBLAS_CORETYPE before faiss loads
import numpy as np  # noqa: E402

# ----------------------------------------------------------------------------- data set


def gaussian_filter(img, sigma):
    """Separable Gaussian blur, edges mirrored (what scipy.ndimage.gaussian_filter does by
    default, truncate 4 sigma), in numpy: scipy is not a dependency of scopeloop."""
    r = int(4.0 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    out = np.asarray(img, np.float64)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="symmetric")
        out = sum(k[i] * np.take(p, np.arange(i, i + out.shape[axis]), axis=axis) for i in range(2 * r + 1))
    return out.astype(np.float32)


def make_synthetic(root, seed=0, size=96):
    """Microscopy-like 16-bit, 4-channel TIFFs (H, W, 4): ch0 nucleus, ch1 cytoplasm,
    ch2 granules, ch3 unrelated background stain. Class = morphology; one class has only 2
    images on purpose (exercises the <3-images path)."""
    import tifffile

    counts = {"round": 120, "lobed": 90, "kidney": 45, "small": 30, "granular": 15, "binuclear": 2}
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    root = Path(root)

    def ellipse(cx, cy, rx, ry, ang):
        c, s = np.cos(ang), np.sin(ang)
        u = ((xx - cx) * c + (yy - cy) * s) / rx
        v = (-(xx - cx) * s + (yy - cy) * c) / ry
        return (u * u + v * v) <= 1.0

    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cx, cy = size / 2 + rng.normal(0, 4, 2)
            ang = rng.uniform(0, np.pi)
            cell_r = rng.uniform(20, 30) if cls != "small" else rng.uniform(13, 18)
            nuc = np.zeros((size, size), bool)
            if cls in ("round", "granular"):
                r = cell_r * rng.uniform(0.45, 0.6)
                nuc |= ellipse(cx, cy, r, r * rng.uniform(0.85, 1.0), ang)
            elif cls == "small":
                nuc |= ellipse(cx, cy, cell_r * 0.8, cell_r * 0.75, ang)
            elif cls == "lobed":
                for k in range(rng.integers(3, 5)):
                    a = ang + k * rng.uniform(1.2, 1.8)
                    nuc |= ellipse(cx + 8 * np.cos(a), cy + 8 * np.sin(a), 6, 4.5, a)
            elif cls == "kidney":
                nuc |= ellipse(cx, cy, cell_r * 0.7, cell_r * 0.4, ang)
                nuc &= ~ellipse(cx + cell_r * 0.45 * np.sin(ang), cy - cell_r * 0.45 * np.cos(ang), 6, 6, 0)
            elif cls == "binuclear":
                for sgn in (-1, 1):
                    nuc |= ellipse(cx + sgn * 8 * np.cos(ang), cy + sgn * 8 * np.sin(ang), 7, 7, 0)
            cyto = ellipse(cx, cy, cell_r, cell_r * rng.uniform(0.85, 1.0), ang)
            n_gran = {"granular": 60, "lobed": 25}.get(cls, 5)
            gran = np.zeros((size, size), np.float32)
            for _ in range(rng.poisson(n_gran)):
                a, r = rng.uniform(0, 2 * np.pi), cell_r * np.sqrt(rng.uniform(0, 1))
                gx, gy = int(cx + r * np.cos(a)), int(cy + r * np.sin(a))
                if 0 <= gx < size and 0 <= gy < size:
                    gran[gy, gx] += rng.uniform(0.5, 1.0)
            gain = rng.uniform(8000, 40000)
            bg = rng.uniform(300, 2000)
            ch0 = gaussian_filter(nuc.astype(np.float32), 1.2) * rng.uniform(0.6, 1.0)
            ch1 = gaussian_filter(cyto.astype(np.float32), 2.0) * rng.uniform(0.3, 0.6)
            ch2 = gaussian_filter(gran, 1.0) * 3
            ch3 = gaussian_filter(rng.random((size, size)).astype(np.float32), 4)
            img = np.stack([ch0, ch1, ch2, ch3], -1) * gain + bg
            img = rng.poisson(np.clip(img, 0, 60000)).astype(np.float32)
            img += rng.normal(0, 150, img.shape)
            tifffile.imwrite(root / cls / f"{cls}_{i:03d}.tif", np.clip(img, 0, 65535).astype(np.uint16))
    (root / "README.md").write_text(
        "Synthetic microscopy-like cells generated by scripts/benchmark_label_efficiency.py "
        f"--make-synthetic (seed {seed}). 16-bit, 4 channels (H, W, 4): nucleus, cytoplasm, "
        f"granules, unrelated stain. Counts: {json.dumps(counts)}\n")
    return root


def embed_dataset(root, out, backbone, image_size, channels=None):
    """Embeddings of every image (cached: <out>/embeddings.npz), their labels and classes."""
    from trainer.images import image_key, scan_imagefolder
    from trainer.inference import embed_paths

    items, classes = scan_imagefolder(root)
    keys = [image_key(p, root) for p, _ in items]
    labels = np.array([classes.index(c) for _, c in items], np.int64)
    cache = Path(out) / "embeddings.npz"
    meta = f"{backbone}|{image_size}|{channels}"
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        if str(z["meta"]) == meta and list(z["all_keys"]) == keys:
            ok = z["ok_rows"]
            return z["emb"], labels[ok], [keys[i] for i in ok], classes, json.loads(str(z["skipped"]))
    t0 = time.time()
    emb, rows, skipped = embed_paths([p for p, _ in items], backbone=backbone, image_size=image_size,
                                     channels=channels, batch_size=64)
    rows = np.asarray(rows, np.int64)
    skipped_list = list(getattr(skipped, "skipped", []) or [])
    print(f"embedded {len(rows)} images in {time.time() - t0:.1f} s ({len(items) - len(rows)} skipped)")
    Path(out).mkdir(parents=True, exist_ok=True)
    np.savez(cache, emb=emb.astype(np.float32), ok_rows=rows, all_keys=np.array(keys), meta=np.array(meta),
             skipped=np.array(json.dumps(skipped_list)))
    return emb, labels[rows], [keys[i] for i in rows], classes, skipped_list


# ----------------------------------------------------------------------------- metrics


def macro_f1(y, pred, eval_classes):
    f1 = []
    for c in eval_classes:
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        f1.append(2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0)
    return float(np.mean(f1))


def stratified_split(y, test_frac, seed, notes):
    """Per class: round(n * test_frac) test images, but at least 1 in the pool; classes with
    fewer than 3 images stay entirely in the pool (they cannot be both learned and tested)."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        if len(idx) < 3:
            notes.add(int(c))
            continue
        k = min(len(idx) - 1, max(1, int(round(len(idx) * test_frac))))
        test[idx[:k]] = True
    return test


# ----------------------------------------------------------------------------- simulation


RECIPES = {
    "head": "trainer.head.fit_head on every labeled image (linear head on frozen embeddings, "
            "class_weight=balanced, fit to convergence)",
    "refresh": "what a quick refresh runs: validation images chosen by key hash "
               "(scopeloop.refresh.fixed_split), trainer.head.fit_head on the rest with early stopping",
}


def recipe_fit(name, n_classes, keys, seed):
    """fit(rows, X, y) -> head for the named recipe; the same for every strategy."""
    from trainer.head import fit_head

    if name == "head":
        return lambda rows, X, y: fit_head(X, y, n_classes, seed=seed)
    from scopeloop.refresh import fixed_split

    def fit(rows, X, y):
        tr, va = fixed_split([keys[r] for r in rows], y.tolist())
        return fit_head(X[tr], y[tr], n_classes, seed=seed, X_val=X[va] if va else None,
                        y_val=y[va] if va else None)
    return fit


def run_curve(x, y, fit, strategy, seed, batch, max_labels, eval_classes, xt, yt, class_names):
    mask = np.zeros(len(x), bool)
    probs, points = None, []
    rnd = 0
    while mask.sum() < min(max_labels, len(x)):
        picks = sampler.select(x, probs, mask, min(batch, max_labels - int(mask.sum())), strategy=strategy,
                               seed=seed * 1000 + rnd, class_names=class_names)
        rows = [p.row for p in picks]
        assert len(rows) and not mask[rows].any() and len(set(rows)) == len(rows)
        mask[rows] = True
        head = fit(np.flatnonzero(mask), x[mask], y[mask])
        pred = head.predict_proba(xt).argmax(1)
        points.append({"labels": int(mask.sum()), "macro_f1": macro_f1(yt, pred, eval_classes),
                       "accuracy": float(np.mean(pred == yt)),
                       "classes_seen": int(len(np.unique(y[mask])))})
        probs = head.predict_proba(x)
        rnd += 1
    return points


def t975(df):
    """97.5% quantile of Student's t (two-sided 95% interval); no scipy needed."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
             10: 2.228, 12: 2.179, 15: 2.131, 19: 2.093, 20: 2.086, 24: 2.064, 30: 2.042, 40: 2.021, 60: 2.0}
    return table[max(k for k in table if k <= df)] if df < 120 else 1.96


def paired_difference(curves, random_curves):
    """Per round: macro-F1 of the strategy minus random's on the SAME seed (same test split),
    mean and 95% confidence half-width over seeds (t distribution). A round is "significantly
    worse" only when the whole interval lies below 0: with a few hundred images a single test
    image flipping class moves macro-F1 by ~0.05, so means of 5 seeds differ by noise alone."""
    n = min(min(len(c) for c in curves), min(len(c) for c in random_curves))
    k = min(len(curves), len(random_curves))
    d = np.array([[curves[j][i]["macro_f1"] - random_curves[j][i]["macro_f1"] for i in range(n)] for j in range(k)])
    mean = d.mean(0)
    half = (t975(k - 1) * d.std(0, ddof=1) / np.sqrt(k)) if k > 1 else np.full(n, np.nan)
    labels = [curves[0][i]["labels"] for i in range(n)]
    return {"diff_mean": mean.round(4).tolist(), "diff_ci95": np.asarray(half).round(4).tolist(),
            "rounds_significantly_worse_than_random": [labels[i] for i in range(1, n) if mean[i] + half[i] < 0]}


def first_reach(labels, values, level):
    for n, v in zip(labels, values):
        if v >= level:
            return int(n)
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/work/shared/data/bccd_wbc", help="ImageFolder root")
    ap.add_argument("--out", default=None, help="output folder (default test-artifacts/label_efficiency/<data name>)")
    ap.add_argument("--make-synthetic", metavar="DIR", help="write the synthetic 16-bit TIFF set to DIR and exit")
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=224, help="embedding size (default: the product's 224 px)")
    ap.add_argument("--channels", default=None, help="e.g. 0,1,2: image channels fed to the backbone")
    ap.add_argument("--batch", type=int, default=10, help="labels per round (B)")
    ap.add_argument("--max-labels", type=int, default=None, help="stop at this many labels (default: whole pool)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--test-frac", type=float, default=0.3)
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="head",
                    help="retraining recipe, the same for every strategy: " +
                         "; ".join(f"{k} = {v}" for k, v in RECIPES.items()))
    ap.add_argument("--strategies", default=",".join(sampler.STRATEGIES))
    args = ap.parse_args()
    if args.make_synthetic:
        print(f"wrote {make_synthetic(args.make_synthetic)}")
        return
    import torch

    torch.set_flush_denormal(True)
    torch.set_num_threads(1)
    data = Path(args.data)
    out = Path(args.out or ROOT / "test-artifacts" / "label_efficiency" / data.name)
    out.mkdir(parents=True, exist_ok=True)
    channels = [int(c) for c in args.channels.split(",")] if args.channels else None
    emb, y, keys, classes, skipped = embed_dataset(data, out, args.backbone, args.image_size, channels)
    n_classes = len(classes)
    counts = {classes[c]: int(n) for c, n in enumerate(np.bincount(y, minlength=n_classes))}
    strategies = args.strategies.split(",")
    if "random" not in strategies:
        strategies.insert(0, "random")
    notes_small: set[int] = set()
    results = {s: [] for s in strategies}
    full = []
    t0 = time.time()
    for seed in range(args.seeds):
        test = stratified_split(y, args.test_frac, seed, notes_small)
        x, yp, xt, yt = emb[~test], y[~test], emb[test], y[test]
        eval_classes = sorted(set(yt.tolist()))
        max_labels = min(args.max_labels or len(x), len(x))
        fit = recipe_fit(args.recipe, n_classes, [k for k, t in zip(keys, test) if not t], seed)
        head = fit(np.arange(len(x)), x, yp)
        pred = head.predict_proba(xt).argmax(1)
        full.append({"macro_f1": macro_f1(yt, pred, eval_classes), "accuracy": float(np.mean(pred == yt)),
                     "pool": int(len(x)), "test": int(len(xt))})
        for s in strategies:
            results[s].append(run_curve(x, yp, fit, s, seed, args.batch, max_labels, eval_classes,
                                        xt, yt, classes))
        print(f"seed {seed} done ({time.time() - t0:.0f} s): full-label macro-F1 {full[-1]['macro_f1']:.3f}", flush=True)

    full_f1 = float(np.mean([f["macro_f1"] for f in full]))
    summary = {}
    for s in strategies:
        n = min(len(c) for c in results[s])
        labels = [results[s][0][i]["labels"] for i in range(n)]
        f1 = np.array([[c[i]["macro_f1"] for i in range(n)] for c in results[s]])
        acc = np.array([[c[i]["accuracy"] for i in range(n)] for c in results[s]])
        summary[s] = {"labels": labels, "f1_mean": f1.mean(0).tolist(), "f1_std": f1.std(0).tolist(),
                      "acc_mean": acc.mean(0).tolist(), "acc_std": acc.std(0).tolist(),
                      "labels_to_95": first_reach(labels, f1.mean(0), 0.95 * full_f1),
                      "labels_to_98": first_reach(labels, f1.mean(0), 0.98 * full_f1)}
    rnd = summary["random"]
    for s, v in summary.items():
        for lvl in ("95", "98"):
            a, b = v[f"labels_to_{lvl}"], rnd[f"labels_to_{lvl}"]
            v[f"ratio_to_random_{lvl}"] = round(a / b, 3) if a and b else None
        m = min(len(v["f1_mean"]), len(rnd["f1_mean"]))
        worse = [(v["labels"][i], round(v["f1_mean"][i] - rnd["f1_mean"][i], 4)) for i in range(1, m)
                 if v["f1_mean"][i] < rnd["f1_mean"][i]]
        v["rounds_worse_than_random_after_first"] = worse
        v["mean_f1_gain_over_random"] = round(float(np.mean(np.array(v["f1_mean"][:m]) - np.array(rnd["f1_mean"][:m]))), 4)
        v.update(paired_difference(results[s], results["random"]))
    headline = {s: {k: summary[s][k] for k in ("labels_to_95", "labels_to_98", "ratio_to_random_95",
                                                 "ratio_to_random_98", "mean_f1_gain_over_random")}
                | {"n_rounds_worse_than_random_after_first": len(summary[s]["rounds_worse_than_random_after_first"]),
                   "rounds_significantly_worse_than_random": summary[s]["rounds_significantly_worse_than_random"]}
                for s in strategies}
    report = {
        "data": str(data), "classes": classes, "class_counts": counts, "n_images": int(len(y)),
        "skipped_images": skipped, "backbone": args.backbone, "image_size": args.image_size,
        "channels": channels, "batch": args.batch, "seeds": args.seeds, "test_frac": args.test_frac,
        "recipe": f"{args.recipe}: {RECIPES[args.recipe]}",
        "full_label": {"macro_f1_mean": full_f1, "per_seed": full},
        "notes": [f"class {classes[c]!r} has {counts[classes[c]]} image(s) (< 3): kept in the labeling pool only, "
                  f"not in the test split; macro-F1 averages over the classes present in the test split"
                  for c in sorted(notes_small)],
        "headline": headline, "summary": summary,
        "curves": {s: results[s] for s in strategies},
        "seconds": round(time.time() - t0, 1),
    }
    (out / "results.json").write_text(json.dumps(report, indent=1))
    plot(summary, full_f1, out / "learning_curves.png", f"{data.name}: B={args.batch}, {args.seeds} seeds")
    print(json.dumps({"full_label_macro_f1": round(full_f1, 4), "notes": report["notes"], "headline": headline}, indent=1))
    print(f"wrote {out / 'results.json'} and {out / 'learning_curves.png'}")


def plot(summary, full_f1, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(19, 5))
    color = {s: f"C{i % 10}" for i, s in enumerate(summary)}  # one colour per strategy in every panel
    ax = axes[2]
    for s, v in summary.items():
        if s == "random":
            continue
        x = v["labels"][:len(v["diff_mean"])]
        m, h = np.array(v["diff_mean"]), np.array(v["diff_ci95"])
        ax.plot(x, m, label=s, lw=2.5 if s == "hybrid" else 1.2, color=color[s])
        ax.fill_between(x, m - h, m + h, alpha=0.12, color=color[s])
    ax.axhline(0, color="k", lw=1)
    ax.set_xlabel("number of labels")
    ax.set_ylabel("macro-F1 minus random's (same seed)")
    ax.set_title("gain over random, 95% interval over seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for ax, key, name in ((axes[0], "f1", "macro-F1"), (axes[1], "acc", "accuracy")):
        for s, v in summary.items():
            m, sd = np.array(v[f"{key}_mean"]), np.array(v[f"{key}_std"])
            lw = 2.5 if s in ("hybrid", "random") else 1.2
            ax.plot(v["labels"], m, label=s, lw=lw, color=color[s])
            ax.fill_between(v["labels"], m - sd, m + sd, alpha=0.12, color=color[s])
        if key == "f1":
            ax.axhline(full_f1, color="k", ls="--", lw=1, label="all labels")
            ax.axhline(0.95 * full_f1, color="gray", ls=":", lw=1, label="95% of all labels")
        ax.set_xlabel("number of labels")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title + " (mean ± 1 s.d. over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
