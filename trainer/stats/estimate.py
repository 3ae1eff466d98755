"""One estimator of model quality on labeled data, used by the gate, status, the report and the model card.

How good is the model? is answered with k-fold cross-validation over *all* labeled images:
every label trains the published model, and each image is judged by a head fit on the other
folds (out-of-fold predictions), so no label is spent on a fixed validation split and no score
comes from images the judging model saw. The scores (macro-F1, balanced accuracy, accuracy)
come with a 95% interval and the number of images behind them:

* accuracy: exact binomial (Clopper-Pearson) interval [Clopper & Pearson 1934];
* balanced accuracy: posterior of the mean per-class recall, each recall Beta(k + 1, n - k + 1)
  [Brodersen et al., "The balanced accuracy and its posterior distribution", ICPR 2010];
* macro-F1: per class (TP, FP, FN) ~ Gamma(count + 1), F1 = 2TP / (2TP + FP + FN)
  [Goutte & Gaussier, "A probabilistic interpretation of precision, recall and F-score", ECIR 2005];
* each widened to cover the percentile bootstrap over images (over groups, e.g. slides, when
  known: images of one slide are not independent). The bootstrap alone collapses to
  "1.00 - 1.00" when every prediction is right, which on 9 images says nothing; the posteriors
  never collapse.

Too few labels is a state, not a number: the estimate is "not enough labels yet" when a labeled
class has fewer than MIN_PER_CLASS (3) images (with 1 or 2 a class's recall can only be 0, 0.5
or 1 and its out-of-fold model saw at most one other example of it), when fewer than 2 classes
could be evaluated, or when an interval is wider than +-MAX_HALF_WIDTH (0.2: narrower than
that, "about 0.7" and "about 0.9" can be told apart; wider, the number does not say whether the
model works). Classes with no labels at all are not part of the estimate and are listed as such.

The gate uses `paired_difference`: two sets of out-of-fold predictions on the same images,
bootstrapped together, so the interval is of the *difference* (far narrower than comparing two
separate intervals).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from trainer.stats.metrics import confusion_matrix, scores_from_confusions

CONFIDENCE = 0.95
MIN_PER_CLASS = 3
MAX_HALF_WIDTH = 0.2
FOLDS = 5
METRICS = ("macro_f1", "balanced_accuracy", "accuracy")
NAMES = {"macro_f1": "macro-F1", "balanced_accuracy": "balanced accuracy", "accuracy": "accuracy"}


def assign_folds(y: Sequence[int], k: int = FOLDS, groups: Sequence | None = None, seed: int = 0) -> np.ndarray:
    """Fold index (0..k-1) per row: stratified by class; with `groups` whole groups share a fold.

    Classes are dealt round-robin over the folds (a class of 3 images lands in 3 different
    folds). With groups, each group goes with its majority class, biggest groups first, to the
    fold with the fewest rows so far. Deterministic for a given `seed`.
    """
    y = np.asarray(y, dtype=int)
    n = len(y)
    k = max(2, min(k, n)) if n else k
    rng = np.random.default_rng(seed)
    fold = np.zeros(n, dtype=int)
    if groups is None:
        offset = 0
        for c in np.unique(y):
            rows = np.flatnonzero(y == c)
            fold[rng.permutation(rows)] = (np.arange(len(rows)) + offset) % k
            offset += len(rows)
        return fold
    groups = np.asarray([str(g) for g in groups])
    by_group: dict[str, np.ndarray] = {g: np.flatnonzero(groups == g) for g in np.unique(groups)}
    majority = {g: int(np.bincount(y[r]).argmax()) for g, r in by_group.items()}
    sizes = np.zeros(k, dtype=int)
    for c in np.unique(y):
        gs = [g for g in by_group if majority[g] == c]
        gs = [gs[i] for i in rng.permutation(len(gs))]
        gs.sort(key=lambda g: -len(by_group[g]))
        class_sizes = np.zeros(k, dtype=int)
        for g in gs:  # spread the class first, then balance the overall fold sizes
            f = int(np.lexsort((sizes, class_sizes))[0])
            fold[by_group[g]] = f
            sizes[f] += len(by_group[g])
            class_sizes[f] += len(by_group[g])
    return fold


def _bootstrap_weights(n: int, groups, B: int, rng) -> np.ndarray:
    """(B, n) how often each row is drawn: rows resampled, or whole groups when given."""
    if groups is None:
        return rng.multinomial(n, np.full(n, 1.0 / n), size=B).astype(np.float32)
    _, gid = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    G = gid.max() + 1
    return rng.multinomial(G, np.full(G, 1.0 / G), size=B)[:, gid].astype(np.float32)


def _bootstrap_cms(y, pred, C, W) -> np.ndarray:
    onehot = np.zeros((len(y), C * C), dtype=np.float32)
    onehot[np.arange(len(y)), np.asarray(y) * C + np.asarray(pred)] = 1
    return (W @ onehot).reshape(len(W), C, C)


def _quantiles(draws, alpha) -> tuple[float, float]:
    d = np.asarray(draws, dtype=float)
    d = d[np.isfinite(d)]
    if not len(d):
        return float("nan"), float("nan")
    lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def clopper_pearson(k: float, n: float, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact binomial interval for k successes in n trials (Clopper & Pearson 1934); k, n may be
    effective (non-integer) counts."""
    from scipy.stats import beta

    if n <= 0:
        return 0.0, 1.0
    a = 1 - confidence
    lo = 0.0 if k <= 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k >= n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def _posterior_draws(cm: np.ndarray, S: int, rng) -> dict[str, np.ndarray]:
    """Balanced accuracy (Brodersen 2010) and macro-F1 (Goutte & Gaussier 2005) posterior draws.
    `cm` may hold effective (non-integer) counts."""
    cm = np.asarray(cm, dtype=float)
    tp = np.diag(cm)
    support, predicted = cm.sum(1), cm.sum(0)
    present = support > 0
    rec = rng.beta(tp[present] + 1, support[present] - tp[present] + 1, size=(S, int(present.sum())))
    fp, fn = predicted - tp, support - tp
    g = lambda a: rng.gamma(a[present] + 1, size=(S, int(present.sum())))  # noqa: E731
    TP, FP, FN = g(tp), g(fp), g(fn)
    return {"balanced_accuracy": rec.mean(1), "macro_f1": (2 * TP / (2 * TP + FP + FN)).mean(1)}


def estimate(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str], groups: Sequence | None = None,
             labeled_counts: dict | None = None, method: str = "held-out images", n_boot: int = 2000,
             seed: int = 0, confidence: float = CONFIDENCE, inflation: float = 1.0,
             available: int | None = None) -> dict:
    """Scores with 95% intervals, per-class rows and the "enough labels" verdict, as a JSON-able dict.

    available: images in the project (labeled or not). When the labels an estimate to
    +-MAX_HALF_WIDTH needs are more than that (the demo's 51 images, issue 22), the advice says so
    instead of asking for what cannot be labeled, and `headline` shows the scores with their
    (wide) intervals: the best estimate the project allows.

    y_true, y_pred: class indices of the evaluated images (out-of-fold predictions). groups:
    optional group per image (bootstrap by group). labeled_counts: {class: labeled images}, for
    the minimum-labels rule and the advice (default: counts of y_true). inflation: variance
    factor of the estimate over that of independent test images (1 for a held-out split;
    `cv_inflation(k)` for k-fold out-of-fold predictions): counts enter the exact and posterior
    intervals divided by it, and bootstrap intervals widen by its square root.

    Returns {"method", "n", "n_labeled", "confidence", "enough", "why_not", "fix", "metrics":
    {name: {"value", "low", "high"}}, "per_class": {class: {"labeled", "evaluated", "precision",
    "recall", "f1", "recall_low", "recall_high"}}, "classes", "confusion_matrix"}; per-class
    scores are None for a class without evaluated images.
    """

    classes = list(classes)
    C = len(classes)
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    n = len(y_true)
    if labeled_counts is None:
        labeled_counts = {c: int((y_true == i).sum()) for i, c in enumerate(classes)}
    labeled_counts = {c: int(labeled_counts.get(c, 0)) for c in classes}
    cm = confusion_matrix(y_true, y_pred, C) if n else np.zeros((C, C), dtype=np.int64)
    alpha = 1 - confidence
    rng = np.random.default_rng(seed)
    metrics: dict = {}
    if n:
        point = {k: float(v[0]) for k, v in scores_from_confusions(cm[None]).items()}
        boot = scores_from_confusions(_bootstrap_cms(y_true, y_pred, C, _bootstrap_weights(n, groups, n_boot, rng)))
        post = _posterior_draws(cm / inflation, 4000, rng)
        correct = float(np.trace(cm))
        f = math.sqrt(inflation)
        for k in METRICS:
            v = point[k]
            lo, hi = (clopper_pearson(correct / inflation, n / inflation, confidence) if k == "accuracy"
                      else _quantiles(post[k], alpha))
            if k != "accuracy" or groups is not None:
                blo, bhi = _quantiles(boot[k], alpha)
                lo, hi = min(lo, max(0.0, v - f * (v - blo))), max(hi, min(1.0, v + f * (bhi - v)))
            metrics[k] = {"value": point[k], "low": lo, "high": hi}
    per_class = {}
    support, predicted, tp = cm.sum(1), cm.sum(0), np.diag(cm)
    for i, c in enumerate(classes):
        row = {"labeled": labeled_counts[c], "evaluated": int(support[i]), "precision": None, "recall": None,
               "f1": None, "recall_low": None, "recall_high": None}
        if support[i]:
            row["recall"] = float(tp[i] / support[i])
            row["precision"] = float(tp[i] / predicted[i]) if predicted[i] else 0.0
            row["f1"] = float(2 * tp[i] / (support[i] + predicted[i]))
            row["recall_low"], row["recall_high"] = clopper_pearson(int(tp[i]), int(support[i]), confidence)
        per_class[c] = row
    why, fix = _verdict(n, metrics, per_class, available)
    return {"method": method, "n": n, "n_labeled": int(sum(labeled_counts.values())), "confidence": confidence,
            "inflation": inflation, "available": available,
            "unreachable": bool(why) and fix.startswith(UNREACHABLE),
            "enough": not why, "why_not": why, "fix": fix, "metrics": metrics, "per_class": per_class,
            "classes": classes, "confusion_matrix": cm.tolist()}


UNREACHABLE = "too few images in the project"   # how the advice starts when labels cannot fix it


def _verdict(n: int, metrics: dict, per_class: dict, available: int | None = None) -> tuple[str, str]:
    few = {c: r["labeled"] for c, r in per_class.items() if 0 < r["labeled"] < MIN_PER_CLASS}
    if few:
        return (f"fewer than {MIN_PER_CLASS} labeled images of {', '.join(few)}",
                "label at least " + ", ".join(f"{MIN_PER_CLASS - k} more {c}" for c, k in few.items()))
    evaluated = [c for c, r in per_class.items() if r["evaluated"]]
    if len(evaluated) < 2:
        return ("fewer than 2 classes could be evaluated",
                f"label at least {MIN_PER_CLASS} images of each of 2 or more classes")
    widest = max((m["high"] - m["low"]) / 2 for m in metrics.values())
    if not widest <= MAX_HALF_WIDTH:
        need = int(math.ceil(n * (widest / MAX_HALF_WIDTH) ** 2))
        why = f"the 95% interval is +-{widest:.2f} wide (more than +-{MAX_HALF_WIDTH})"
        if available is not None and need > available:
            return why, (f"{UNREACHABLE}: about {need} evaluated images would give +-{MAX_HALF_WIDTH}, it has "
                         f"{available}; add images for a narrower estimate")
        return why, f"label more images: about {need} evaluated images give +-{MAX_HALF_WIDTH} ({n} now)"
    return "", ""


def cv_inflation(k: int) -> float:
    """Variance factor of a k-fold cross-validated score over an independent test set of the same
    size: 1 + n_test / n_train * k = 1 + k / (k - 1) (Nadeau & Bengio, "Inference for the
    generalization error", Machine Learning 52, 2003: the corrected resampled variance). Fold
    models share most of their training images, so their errors are correlated; without the
    correction the intervals covered the published model's accuracy in only ~80% of synthetic
    problems (docs/benchmarks.md)."""
    return 1.0 + k / (k - 1.0)


def estimate_from_confusion(cm, classes: Sequence[str], labeled_counts: dict | None = None,
                            method: str = "held-out validation images") -> dict:
    """The same estimate from a stored confusion matrix (a deep model's held-out split, older versions)."""
    cm = np.asarray(cm, dtype=int)
    y_true = np.repeat(np.repeat(np.arange(len(cm)), len(cm)), cm.ravel())
    y_pred = np.repeat(np.tile(np.arange(len(cm)), len(cm)), cm.ravel())
    return estimate(y_true, y_pred, classes, labeled_counts=labeled_counts, method=method)


def from_metrics(metrics: dict) -> dict | None:
    """The estimate stored in a version's metrics.json, or one built from its validation confusion matrix."""
    if not metrics:
        return None
    if metrics.get("estimate"):
        return metrics["estimate"]
    val = metrics.get("validation") or {}
    counts = metrics.get("counts") or {}
    if val.get("n") and val.get("confusion_matrix"):
        labeled = {c: int((counts.get("train") or {}).get(c, 0)) + int((counts.get("validation") or {}).get(c, 0))
                   for c in val["classes"]}
        return estimate_from_confusion(val["confusion_matrix"], val["classes"], labeled if any(labeled.values()) else None)
    return None


def paired_difference(y_true, pred_a, pred_b, n_classes: int, groups: Sequence | None = None,
                      metric: str = "macro_f1", n_boot: int = 2000, seed: int = 0,
                      confidence: float = CONFIDENCE, inflation: float = 1.0) -> dict:
    """metric(a) - metric(b) on the same images with a paired bootstrap interval (images or groups
    resampled once, both predictions scored on each resample; the interval widened by
    sqrt(inflation) around the observed difference, see `cv_inflation`). Returns {"a", "b",
    "diff", "low", "high", "n"}; with no images every number is None."""
    y_true = np.asarray(y_true, dtype=int)
    n = len(y_true)
    if n == 0:
        return {"a": None, "b": None, "diff": None, "low": None, "high": None, "n": 0}

    a = float(scores_from_confusions(confusion_matrix(y_true, pred_a, n_classes)[None])[metric][0])
    b = float(scores_from_confusions(confusion_matrix(y_true, pred_b, n_classes)[None])[metric][0])
    W = _bootstrap_weights(n, groups, n_boot, np.random.default_rng(seed))
    d = (scores_from_confusions(_bootstrap_cms(y_true, pred_a, n_classes, W))[metric]
         - scores_from_confusions(_bootstrap_cms(y_true, pred_b, n_classes, W))[metric])
    lo, hi = _quantiles(d, 1 - confidence)
    f = math.sqrt(inflation)
    return {"a": a, "b": b, "diff": a - b, "low": a - b - f * (a - b - lo), "high": a - b + f * (hi - (a - b)), "n": n}


def paired_probability_difference(y_true, proba_a, proba_b, groups: Sequence | None = None, n_boot: int = 2000,
                                  seed: int = 0, confidence: float = CONFIDENCE, inflation: float = 1.0,
                                  balanced: bool = True) -> dict:
    """Class-balanced mean probability of the labeled class, a minus b, on the same images, with a
    paired bootstrap interval (as `paired_difference`). The gate's statistic: unlike macro-F1 it
    uses how sure each prediction is, so on a few dozen images it tells a model trained on
    scrambled labels from a good one, and one more correct label does not flip it. Both models
    come from the same fitting recipe, so the score's rewarding of confident predictions (it is
    not a proper scoring rule) favours neither. Returns {"a", "b", "diff", "low", "high", "n"}."""
    y_true = np.asarray(y_true, dtype=int)
    n = len(y_true)
    if n == 0:
        return {"a": None, "b": None, "diff": None, "low": None, "high": None, "n": 0}
    rows = np.arange(n)
    sa, sb = np.asarray(proba_a, float)[rows, y_true], np.asarray(proba_b, float)[rows, y_true]
    W = np.vstack([np.ones((1, n), np.float32), _bootstrap_weights(n, groups, n_boot, np.random.default_rng(seed))])
    per_a, per_b = [], []
    for c in (np.unique(y_true) if balanced else [None]):
        idx = y_true == c if balanced else np.ones(n, bool)
        den = W[:, idx].sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_a.append(np.where(den > 0, W[:, idx] @ sa[idx] / den, np.nan))
            per_b.append(np.where(den > 0, W[:, idx] @ sb[idx] / den, np.nan))
    a, b = np.nanmean(per_a, 0), np.nanmean(per_b, 0)
    d = a[1:] - b[1:]
    lo, hi = _quantiles(d, 1 - confidence)
    f, diff = math.sqrt(inflation), float(a[0] - b[0])
    return {"a": float(a[0]), "b": float(b[0]), "diff": diff, "low": diff - f * (diff - lo),
            "high": diff + f * (hi - diff), "n": n}


def _fmt(m: dict) -> str:
    return f"{m['value']:.2f} (95% interval {m['low']:.2f}-{m['high']:.2f})"


def not_enough_text(est: dict) -> str:
    if est.get("unreachable"):   # no label can fix it: the scores with their wide intervals (issue 22)
        m = est["metrics"]
        return (f"macro-F1 {_fmt(m['macro_f1'])}, balanced accuracy {_fmt(m['balanced_accuracy'])}, accuracy "
                f"{_fmt(m['accuracy'])}; n = {est['n']} images, {est['method']}; intervals still wide: {est['fix']}")
    return f"not enough labels yet to estimate (n = {est['n_labeled']}): {est['why_not']}; {est['fix']}"


def headline(est: dict | None) -> str:
    """One line for status, the report and the model card; never a bare point value."""
    if not est:
        return "no estimate yet (no model trained on labeled images)"
    if not est.get("enough"):
        return not_enough_text(est)
    m = est["metrics"]
    unlabeled = [c for c, r in est.get("per_class", {}).items() if not r["labeled"]]
    return (f"macro-F1 {_fmt(m['macro_f1'])}, balanced accuracy {_fmt(m['balanced_accuracy'])}, "
            f"accuracy {_fmt(m['accuracy'])}; n = {est['n']} images, {est['method']}"
            + (f"; not labeled yet, not estimated: {', '.join(unlabeled)}" if unlabeled else ""))


def per_class_lines(est: dict) -> list[str]:
    """Per class: recall with its interval and counts, or why there is no score."""
    out = []
    for c, r in est["per_class"].items():
        if not r["labeled"]:
            out.append(f"{c}: no labeled images yet")
        elif not r["evaluated"]:
            out.append(f"{c}: no evaluated images ({r['labeled']} labeled)")
        else:
            out.append(f"{c}: recall {r['recall']:.2f} (95% interval {r['recall_low']:.2f}-{r['recall_high']:.2f}), "
                       f"precision {r['precision']:.2f}, F1 {r['f1']:.2f}; {r['evaluated']} evaluated of {r['labeled']} labeled")
    return out
