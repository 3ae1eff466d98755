#!/usr/bin/env python
"""Label-efficiency benchmark: how many labels do the learner and the sampler need?

Simulates the labeling loop on any ImageFolder data set, its folder labels playing the
annotator: embed every image once (both embeddings in one pass, cached in
<out>/embeddings.npz), hold out a stratified test split, then per seed, recipe (`--recipes`:
the retraining rule) and strategy (`--strategies`: the picking rule): pick a batch of B
images (`sampler.select`), reveal their labels, refit, score macro-F1 / accuracy on the test
split, repeat. Recipes: `head` (today's linear head on the pre-logits embedding: the
reference), `multiscale` (scopeloop's quick learner), `multiscale+self` (plus self-training).

Headline numbers (results.json "headline", and the PNG's title):
* product ratio: labels a recipe/strategy needs to reach 95% of the reference's full-label
  macro-F1, divided by what random picks + the reference recipe need (what a lab saves
  against labeling at random and training the usual transfer-learning probe);
* active-learning ratio: a strategy vs random picks with the same recipe, to 95% of that
  recipe's own full-label macro-F1;
* ceilings: each recipe's full-label macro-F1 and its gain over the reference (95% interval);
* per round, each strategy minus random on the same seed with a 95% interval, and the rounds
  where the whole interval is below 0. On a few hundred images one test image changing class
  moves macro-F1 by ~0.05: use `--seeds 20` before reading anything into a difference.

    python scripts/benchmark_label_efficiency.py --data ../shared/data/bccd_wbc --seeds 20
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

import numpy as np  # noqa: E402

import sampler  # noqa: E402  - first: sets OPENBLAS_CORETYPE before faiss loads

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


def embed_dataset(root, out, backbone, image_size, channels=None, weights="imagenet"):
    """Both embeddings of every image (cached: <out>/embeddings.npz, or embeddings-<file stem>.npz
    for a weights file; raw pooled blocks of the two orientations):
    ({"final": (N, D), "multiscale": (N, D')}, labels, keys, classes, skipped)."""
    from trainer.io.folders import image_key, scan_imagefolder
    from trainer.models.backbone import create_backbone
    from trainer.models.features import combine
    from trainer.models.inference import run_model

    items, classes = scan_imagefolder(root)
    keys = [image_key(p, root) for p, _ in items]
    labels = np.array([classes.index(c) for _, c in items], np.int64)
    cache = Path(out) / ("embeddings.npz" if weights == "imagenet" else f"embeddings-{Path(weights).stem}.npz")
    meta = f"{backbone}|{image_size}|{channels}|parts-v1" + ("" if weights == "imagenet" else f"|{weights}")
    z = np.load(cache, allow_pickle=False) if cache.is_file() else None
    if z is None or str(z["meta"]) != meta or list(z["all_keys"]) != keys:
        t0 = time.time()
        import torch

        emb, pre, _ = create_backbone(backbone, weights, "multiscale")

        class RawParts(torch.nn.Module):  # one pass -> every pooled block of both orientations
            num_features = 2 * emb.num_features

            def __init__(self):
                super().__init__()
                self.emb = emb

            def forward(self, x):
                return torch.cat([b for view in self.emb.parts(x) for b in view], 1)

        res = run_model(RawParts(), [p for p, _ in items], image_size, pre.mean, pre.std, channels,
                        batch_size=64, desc="embedding")
        print(f"embedded {len(res.rows)} images in {time.time() - t0:.1f} s ({len(items) - len(res.rows)} skipped)")
        Path(out).mkdir(parents=True, exist_ok=True)
        np.savez(cache, raw=res.embeddings.astype(np.float32), dims=np.array(emb.block_dims), ok_rows=res.rows,
                 all_keys=np.array(keys), meta=np.array(meta),
                 skipped=np.array(json.dumps(list(getattr(res.skipped, "skipped", []) or []))))
        z = np.load(cache, allow_pickle=False)
    raw, dims, ok = z["raw"], [int(d) for d in z["dims"]], z["ok_rows"]
    cuts = np.cumsum([0] + dims * 2)
    blocks = [raw[:, cuts[i]:cuts[i + 1]] for i in range(len(cuts) - 1)]
    views = [blocks[:len(dims)], blocks[len(dims):]]
    spaces = {"final": np.ascontiguousarray(views[0][-1]), "multiscale": combine(views).astype(np.float32)}
    return spaces, labels[ok], [keys[i] for i in ok], classes, json.loads(str(z["skipped"]))


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
    "head": ("final", "today's quick head, the reference: trainer.models.head.fit_head (linear, class-balanced) on "
                      "the frozen backbone's pre-logits embedding"),
    "multiscale": ("multiscale", "the same head on the multiscale embedding (trainer.models.features: last two stages + "
                                 "pre-logits, two orientations)"),
    "ssl": ("ssl", "the multiscale head on the embedding of a self-supervised adapted backbone (--ssl-weights FILE, "
                   "made by scripts/benchmark_ssl.py: trainer.models.ssl on the whole set, no labels)"),
    "multiscale+self": ("multiscale", "multiscale, plus one round of class-balanced self-training on the pool "
                                      "(fit_head X_unlabeled: trainer.models.head.pseudo_labels)"),
}
DEFAULT_RECIPE = "multiscale"  # what scopeloop's quick refresh runs (trainer.models.features.DEFAULT_FEATURES)


def recipe_fit(name, n_classes, seed):
    """fit(X_labeled, y, X_unlabeled) -> head for the named recipe; the same for every strategy."""
    from trainer.models.head import fit_head

    if name.endswith("+self"):
        return lambda X, y, Xu: fit_head(X, y, n_classes, seed=seed, X_unlabeled=Xu)
    return lambda X, y, Xu: fit_head(X, y, n_classes, seed=seed)


def parse_strategy(spec):
    """"hybrid" -> ("hybrid", {}); "hybrid:rare_frac=0.1:deficit=inf" -> ("hybrid", {...}): a
    strategy with some of its `sampler.select` options changed (an old default against the new)."""
    name, *kv = spec.split(":")
    return name, {k: float(v) for k, v in (item.split("=", 1) for item in kv)}


def run_curve(x, y, fit, strategy, seed, batch, max_labels, eval_classes, xt, yt, class_names):
    strategy, options = parse_strategy(strategy)
    mask = np.zeros(len(x), bool)
    probs, points = None, []
    rnd = 0
    while mask.sum() < min(max_labels, len(x)):
        picks = sampler.select(x, probs, mask, min(batch, max_labels - int(mask.sum())), strategy=strategy,
                               seed=seed * 1000 + rnd, class_names=class_names, **options)
        rows = [p.row for p in picks]
        assert len(rows) and not mask[rows].any() and len(set(rows)) == len(rows)
        mask[rows] = True
        head = fit(x[mask], y[mask], x[~mask])
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


def curve_name(recipe, strategy):
    return f"{recipe}/{strategy}"


def summarise(results, full_f1, ref_full):
    """Per curve: mean/s.d. per round and labels to reach 95% / 98% of its recipe's full-label
    macro-F1 and 95% of the reference's."""
    summary = {}
    for name, curves in results.items():
        recipe = name.split("/")[0]
        n = min(len(c) for c in curves)
        labels = [curves[0][i]["labels"] for i in range(n)]
        f1 = np.array([[c[i]["macro_f1"] for i in range(n)] for c in curves])
        acc = np.array([[c[i]["accuracy"] for i in range(n)] for c in curves])
        summary[name] = {"labels": labels, "f1_mean": f1.mean(0).tolist(), "f1_std": f1.std(0).tolist(),
                         "acc_mean": acc.mean(0).tolist(), "acc_std": acc.std(0).tolist(),
                         "labels_to_95": first_reach(labels, f1.mean(0), 0.95 * full_f1[recipe]),
                         "labels_to_98": first_reach(labels, f1.mean(0), 0.98 * full_f1[recipe]),
                         "labels_to_95_of_reference": first_reach(labels, f1.mean(0), 0.95 * ref_full)}
    return summary


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="ImageFolder root (one folder per class)")
    ap.add_argument("--out", default=None, help="output folder (default test-artifacts/label_efficiency/<data name>)")
    ap.add_argument("--make-synthetic", metavar="DIR", help="write the synthetic 16-bit TIFF set to DIR and exit")
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=224, help="embedding size (default: the product's 224 px)")
    ap.add_argument("--channels", default=None, help="e.g. 0,1,2: image channels fed to the backbone")
    ap.add_argument("--batch", type=int, default=None, help="labels per round (B; default 2%% of the pool, at least 4)")
    ap.add_argument("--max-labels", type=int, default=None, help="stop at this many labels (default: whole pool)")
    ap.add_argument("--ssl-weights", default=None, help="backbone file for the 'ssl' recipe (scripts/benchmark_ssl.py)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--test-frac", type=float, default=0.3)
    ap.add_argument("--recipes", default=f"head,{DEFAULT_RECIPE}",
                    help="retraining recipes (the first is the reference, normally 'head'): " +
                         "; ".join(f"{k} = {v[1]}" for k, v in RECIPES.items()))
    ap.add_argument("--strategies", default="random,hybrid",
                    help=f"of {', '.join(sampler.STRATEGIES)}; name:option=value[:...] runs a strategy with "
                         "changed options, e.g. hybrid:rare_frac=0.1:deficit=inf (the sampler before issue 15)")
    args = ap.parse_args()
    if args.make_synthetic:
        print(f"wrote {make_synthetic(args.make_synthetic)}")
        return
    if not args.data:
        ap.error("--data <ImageFolder> is required (or --make-synthetic DIR)")
    import torch

    torch.set_flush_denormal(True)
    torch.set_num_threads(1)
    data = Path(args.data)
    out = Path(args.out or ROOT / "test-artifacts" / "label_efficiency" / data.name)
    out.mkdir(parents=True, exist_ok=True)
    channels = [int(c) for c in args.channels.split(",")] if args.channels else None
    spaces, y, keys, classes, skipped = embed_dataset(data, out, args.backbone, args.image_size, channels)
    if "ssl" in args.recipes.split(","):
        if not args.ssl_weights:
            ap.error("the 'ssl' recipe needs --ssl-weights FILE (an adapted backbone from scripts/benchmark_ssl.py)")
        adapted, y_ssl, keys_ssl, _, _ = embed_dataset(data, out, args.backbone, args.image_size, channels, args.ssl_weights)
        if keys_ssl != keys:
            ap.error("the adapted backbone read a different set of images than the ImageNet one")
        spaces["ssl"] = adapted["multiscale"]
    n_classes = len(classes)
    counts = {classes[c]: int(n) for c, n in enumerate(np.bincount(y, minlength=n_classes))}
    recipes = args.recipes.split(",")
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        ap.error(f"unknown recipe(s) {unknown}: choose from {', '.join(RECIPES)}")
    strategies = args.strategies.split(",")
    bad = [x for x in strategies if parse_strategy(x)[0] not in sampler.STRATEGIES]
    if bad:
        ap.error(f"unknown strategy {bad}: choose from {', '.join(sampler.STRATEGIES)}")
    if "random" not in strategies:
        strategies.insert(0, "random")
    notes_small: set[int] = set()
    results = {curve_name(r, s): [] for r in recipes for s in strategies}
    full = {r: [] for r in recipes}
    batch = args.batch
    t0 = time.time()
    for seed in range(args.seeds):
        test = stratified_split(y, args.test_frac, seed, notes_small)
        yp, yt = y[~test], y[test]
        eval_classes = sorted(set(yt.tolist()))
        batch = args.batch or max(4, int(round(0.02 * len(yp))))
        max_labels = min(args.max_labels or len(yp), len(yp))
        for r in recipes:
            emb = spaces[RECIPES[r][0]]
            x, xt = emb[~test], emb[test]
            fit = recipe_fit(r, n_classes, seed)
            pred = fit(x, yp, x[:0]).predict_proba(xt).argmax(1)
            full[r].append({"macro_f1": macro_f1(yt, pred, eval_classes), "accuracy": float(np.mean(pred == yt)),
                            "pool": int(len(x)), "test": int(len(xt))})
            for s in strategies:
                results[curve_name(r, s)].append(run_curve(x, yp, fit, s, seed, batch, max_labels, eval_classes,
                                                           xt, yt, classes))
        print(f"seed {seed} done ({time.time() - t0:.0f} s): full-label macro-F1 "
              + ", ".join(f"{r} {full[r][-1]['macro_f1']:.3f}" for r in recipes), flush=True)

    full_f1 = {r: float(np.mean([f["macro_f1"] for f in full[r]])) for r in recipes}
    ref, ref_curve = recipes[0], curve_name(recipes[0], "random")
    summary = summarise(results, full_f1, full_f1[ref])
    for name, v in summary.items():
        recipe = name.split("/")[0]
        rnd = summary[curve_name(recipe, "random")]
        # active-learning ratio: this strategy vs random picks, same recipe, to 95% of its own ceiling
        v["active_learning_ratio_95"] = _ratio(v["labels_to_95"], rnd["labels_to_95"])
        v["active_learning_ratio_98"] = _ratio(v["labels_to_98"], rnd["labels_to_98"])
        # product ratio: vs random picks + the reference recipe, to 95% of the reference's ceiling
        v["product_ratio_95"] = _ratio(v["labels_to_95_of_reference"], summary[ref_curve]["labels_to_95_of_reference"])
        v.update(paired_difference(results[name], results[curve_name(recipe, "random")]))
    headline = {name: {k: v[k] for k in ("labels_to_95", "labels_to_95_of_reference", "active_learning_ratio_95",
                                          "active_learning_ratio_98", "product_ratio_95",
                                          "rounds_significantly_worse_than_random")}
                for name, v in summary.items()}
    ceilings = {r: {"macro_f1": round(full_f1[r], 4), "gain_over_reference": round(full_f1[r] - full_f1[ref], 4),
                    "gain_ci95": _paired_ci([f["macro_f1"] for f in full[r]], [f["macro_f1"] for f in full[ref]])}
                for r in recipes}
    report = {
        "data": data.name, "classes": classes, "class_counts": counts, "n_images": int(len(y)),
        "skipped_images": skipped, "backbone": args.backbone, "image_size": args.image_size,
        "channels": channels, "batch": batch, "seeds": args.seeds, "test_frac": args.test_frac,
        "recipes": {r: RECIPES[r][1] for r in recipes}, "reference": ref,
        "full_label": {r: {"macro_f1_mean": full_f1[r], "per_seed": full[r]} for r in recipes},
        "ceilings": ceilings,
        "notes": [f"class {classes[c]!r} has {counts[classes[c]]} image(s) (< 3): kept in the labeling pool only, "
                  f"not in the test split; macro-F1 averages over the classes present in the test split"
                  for c in sorted(notes_small)],
        "headline": headline, "summary": summary,
        "curves": results,
        "seconds": round(time.time() - t0, 1),
    }
    (out / "results.json").write_text(json.dumps(report, indent=1))
    main_curve = curve_name(recipes[-1], "hybrid" if "hybrid" in strategies else strategies[-1])
    h = headline.get(main_curve, {})
    title = (f"{data.name}: {len(y)} images, B={batch}, {args.seeds} seeds. {main_curve}: product ratio "
             f"{h.get('product_ratio_95')}, active-learning ratio {h.get('active_learning_ratio_95')}")
    plot(summary, full_f1, ref, out / "learning_curves.png", title)
    print(json.dumps({"full_label_macro_f1": {r: round(v, 4) for r, v in full_f1.items()}, "ceilings": ceilings,
                      "notes": report["notes"], "headline": headline}, indent=1))
    print(f"wrote {out / 'results.json'} and {out / 'learning_curves.png'}")


def _paired_ci(a, b):
    """95% t-interval of the mean of a - b over seeds (None with one seed)."""
    d = np.asarray(a) - np.asarray(b)
    if len(d) < 2:
        return None
    h = t975(len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return [round(float(d.mean() - h), 4), round(float(d.mean() + h), 4)]


def plot(summary, full_f1, ref, path, title):
    """Left: macro-F1 vs labels for every recipe/strategy with the ceilings; right: each
    strategy minus random picks (same recipe, same seed) with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
    recipes = list(dict.fromkeys(n.split("/")[0] for n in summary))
    color = {r: f"C{i % 10}" for i, r in enumerate(recipes)}
    style = lambda name: "--" if name.endswith("/random") else "-"  # noqa: E731
    ax = axes[0]
    for name, v in summary.items():
        r = name.split("/")[0]
        m, sd = np.array(v["f1_mean"]), np.array(v["f1_std"])
        ax.plot(v["labels"], m, style(name), color=color[r], lw=2.2 if not name.endswith("/random") else 1.4, label=name)
        ax.fill_between(v["labels"], m - sd, m + sd, alpha=0.08, color=color[r])
    for r in recipes:
        ax.axhline(full_f1[r], color=color[r], ls=":", lw=1)
    ax.axhline(0.95 * full_f1[ref], color="gray", ls="-.", lw=1, label=f"95% of {ref}'s all-label macro-F1")
    ax.set_xlabel("number of labels")
    ax.set_ylabel("macro-F1 on held-out images")
    ax.set_title("learning curves (mean ± 1 s.d.; dotted: all labels)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    for name, v in summary.items():
        if name.endswith("/random"):
            continue
        r = name.split("/")[0]
        x = v["labels"][:len(v["diff_mean"])]
        m, h = np.array(v["diff_mean"]), np.array(v["diff_ci95"])
        ax.plot(x, m, color=color[r], lw=2, label=f"{name} minus {r}/random")
        ax.fill_between(x, m - h, m + h, alpha=0.15, color=color[r])
    ax.axhline(0, color="k", lw=1)
    ax.set_xlabel("number of labels")
    ax.set_ylabel("macro-F1 difference (same seed)")
    ax.set_title("gain of the sampler over random picks, 95% interval over seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
