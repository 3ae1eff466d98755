"""Class proportions per group with 95% intervals, corrected for the classifier's known errors.

Counting the model's predictions ("classify and count") is biased whenever the model errs: a
folder with few monocytes gets the lymphocytes mistaken for monocytes added to its count, and
the bias changes with the folder's mix of types (prior shift). The share of each type is
therefore estimated with the model's cross-validated confusion, under the prior-shift
assumption that P(predicted category | true type) is the same in the new folder as in the
labeled images:

* Bayesian quantification (shipped) [Ziegler & Czyz, "Bayesian quantification with black-box
  estimators", TMLR 2024; the EM counterpart is Saerens, Latinne & Decaestecker, "Adjusting the
  outputs of a classifier to new a priori probabilities", Neural Computation 2002]: the group's
  predicted categories are draws from sum_t q_t M[t, .], with q ~ Dirichlet(prior) the group's
  true shares and each confusion row M[t] ~ Dirichlet(1/K + calibration counts of row t);
  the unknown true type of each predicted item is a latent variable. A Gibbs sampler draws
  (q, M, latent types) jointly, so the interval holds both the sampling of the group's images
  and the uncertainty of the confusion matrix (a class with 5 labels has a vague row). The
  95% interval covers both the share in the population the group was sampled from (q) and the
  share among the group's own images (the latent types counted): the union of their
  equal-tailed posterior intervals. The point value is the posterior mean of q; every draw
  lies on the simplex (no clipping).
* `adjusted_count` is the classic point estimate [Forman, "Quantifying counts and costs via
  classification", Data Mining and Knowledge Discovery 2008; Buck et al. 1966]: solve
  M^T q = observed shares, clipped to the simplex; kept for the benchmark.

Categories: the C trained classes plus, when the model flags novelty, "unseen type" (predicted
category C = flagged). The calibration confusion `cal` (C or C+1 rows, C+1 columns) holds the
out-of-fold predicted categories of the labeled images (rows 0..C-1) and, as row C, those of the
images of each class while it was left out (`trainer.stats.openset.leave_one_class_out`): how
a type the model never saw gets predicted. That last row is a guess about types nobody labeled:
it enters with the weight of `unseen_weight` images.

Output rows: group, class, count (images predicted as the class, or flagged for "unseen
type", in the group), proportion (the corrected share), lower, upper (its 95% interval).
Torch-free (numpy).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

UNSEEN = "unseen type"
ALL = "all"
COLUMNS = ("group", "class", "count", "proportion", "lower", "upper")
CONFIDENCE = 0.95


def confusion_counts(y_true, pred_category, n_true: int, n_pred: int) -> np.ndarray:
    """(n_true, n_pred) counts of (true type, predicted category) pairs."""
    cm = np.zeros((n_true, n_pred), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=int), np.asarray(pred_category, dtype=int)), 1)
    return cm


def adjusted_count(counts, cal) -> np.ndarray:
    """Adjusted classify-and-count point estimate (Forman 2008): shares q (T,) on the simplex
    with M^T q closest (least squares) to the observed shares; counts (K,), cal (T, K)."""
    from scipy.optimize import nnls

    counts = np.asarray(counts, float)
    M = np.asarray(cal, float) + 1e-9
    M = M / M.sum(1, keepdims=True)
    obs = counts / max(counts.sum(), 1e-12)
    # the sum-to-one constraint as a heavily weighted extra equation
    A = np.vstack([M.T, 1e3 * np.ones(len(M))])
    q, _ = nnls(A, np.concatenate([obs, [1e3]]))
    return q / max(q.sum(), 1e-12)


def _dirichlet(rng, alpha: np.ndarray) -> np.ndarray:
    g = rng.gamma(alpha)
    return g / np.maximum(g.sum(-1, keepdims=True), 1e-300)


def posterior_shares(counts, cal, prior: float = 1.0, draws: int = 2000, burn: int = 300,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Posterior draws of the true shares behind the predicted-category counts of one group.

    counts (K,) predicted-category counts; cal (T, K) calibration counts (rows: true type, may be
    fractional); prior: Dirichlet concentration of q per type. Gibbs sampling (module
    docstring), `burn` iterations discarded. Returns (q, own), each (draws, T): q the shares of
    the population the group was sampled from, own the shares among the group's own items
    (the latent true types counted; can be exactly 0).
    """
    rng = np.random.default_rng(seed)
    counts = np.asarray(counts, dtype=np.int64)
    cal = np.asarray(cal, dtype=float)
    T, K = cal.shape
    if counts.shape != (K,):
        raise ValueError(f"counts must have {K} entries (the columns of cal), got {counts.shape}")
    beta = cal + 1.0 / K
    q = np.full(T, 1.0 / T)
    M = beta / beta.sum(1, keepdims=True)
    cols = np.flatnonzero(counts)
    out = np.empty((draws, T))
    own = np.empty((draws, T))
    n = max(int(counts.sum()), 1)
    for it in range(burn + draws):
        w = q[:, None] * M[:, cols]                                   # (T, k) p(true t, pred j)
        w /= np.maximum(w.sum(0, keepdims=True), 1e-300)
        Z = np.zeros((T, K))
        Z[:, cols] = rng.multinomial(counts[cols], w.T).T              # latent true types per column
        q = _dirichlet(rng, prior + Z.sum(1))
        M = _dirichlet(rng, beta + Z)
        if it >= burn:
            out[it - burn] = q
            own[it - burn] = Z.sum(1) / n
    return out, own


def estimate_shares(counts, cal, prior: float = 1.0, confidence: float = CONFIDENCE, draws: int = 2000,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point, lower, upper), each (T,): the posterior mean of the shares and a `confidence`
    interval that holds both the share in the sampled population (equal-tailed posterior
    interval of q) and the share among the group's own items (the same for the latent counts):
    the union of the two, which differ mainly when a type is absent from the group (its own
    share is then 0, which no draw of q reaches)."""
    q, own = posterior_shares(counts, cal, prior, draws, seed=seed)
    a = (1 - confidence) / 2
    lo = np.minimum(np.quantile(q, a, axis=0), np.quantile(own, a, axis=0))
    hi = np.maximum(np.quantile(q, 1 - a, axis=0), np.quantile(own, 1 - a, axis=0))
    return q.mean(0), lo, hi


def calibration_matrix(confusion, unseen_row=None, unseen_weight: float = 5.0) -> np.ndarray:
    """The calibration counts `posterior_shares` uses, (C+1, C+1) when `unseen_row` is given.

    confusion (C, C+1): out-of-fold counts of (true class, predicted category; column C =
    flagged as unseen) on the labeled images. unseen_row (C+1,): predicted categories of the
    images of left-out classes (leave-one-class-out), rescaled to sum to `unseen_weight`
    images (a type nobody labeled may behave unlike the left-out ones: a weak row). Without it
    only the C trained types are estimated (an "unseen type" column is still allowed).
    """
    cm = np.asarray(confusion, dtype=float)
    if unseen_row is None:
        return cm
    r = np.asarray(unseen_row, dtype=float)
    r = r / max(r.sum(), 1e-12) * unseen_weight
    return np.vstack([cm, r[None, :]])


def proportions_table(pred_category, cal, classes: Sequence[str], groups: Sequence | None = None,
                      confidence: float = CONFIDENCE, prior: float = 1.0, draws: int = 2000,
                      seed: int = 0) -> list[dict]:
    """Rows {group, class, count, proportion, lower, upper}: group "all" (every item) first,
    then each group in sorted order; per group one row per trained class and, when `cal` has a
    row for it, one "unseen type" row.

    pred_category (N,) int: the predicted class of each item, or len(classes) for items flagged
    as none of the trained types. cal: `calibration_matrix(...)`, (C or C+1, C+1). groups (N,):
    group label per item (folder, image, file-name group) or None. Raises ValueError when
    shapes disagree.
    """
    pred = np.asarray(pred_category, dtype=int)
    cal = np.asarray(cal, dtype=float)
    C = len(classes)
    if cal.shape[1] != C + 1 or cal.shape[0] not in (C, C + 1):
        raise ValueError(f"cal must be ({C} or {C + 1}, {C + 1}) for {C} classes, got {cal.shape}")
    if len(pred) and (pred.min() < 0 or pred.max() > C):
        raise ValueError(f"pred_category must lie in 0..{C} ({C} = unseen type)")
    names = list(classes) + ([UNSEEN] if cal.shape[0] == C + 1 else [])
    parts = [(ALL, np.ones(len(pred), bool))]
    if groups is not None:
        g = np.asarray([str(v) for v in groups])
        if len(g) != len(pred):
            raise ValueError("groups must have one entry per item")
        parts += [(name, g == name) for name in sorted(set(g.tolist()))]
    rows = []
    for name, sel in parts:
        counts = np.bincount(pred[sel], minlength=C + 1)
        point, lo, hi = estimate_shares(counts, cal, prior, confidence, draws, seed)
        for t, cls in enumerate(names):
            rows.append({"group": name, "class": cls, "count": int(counts[t]) if t <= C else 0,
                         "proportion": float(point[t]), "lower": float(lo[t]), "upper": float(hi[t])})
    return rows


def write_csv(rows: Sequence[dict], path) -> Path:
    """Write `proportions_table` rows with the contract's columns (group,class,count,proportion,lower,upper)."""
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, **{k: f"{r[k]:.4f}" for k in ("proportion", "lower", "upper")}})
    return path
