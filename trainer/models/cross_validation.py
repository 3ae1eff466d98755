"""Out-of-fold predictions of the quick head: each labeled image judged by a head that did not train on it.

Two fold schemes live here under explicit names until a benchmark decides between them
(docs/architecture.md, follow-ups): `out_of_fold_proba`/`cross_validate` (the quality estimate and
the gate: `assign_folds`, group-aware, stratified; probabilities) and `out_of_fold` (the report's
re-review list: its own per-class round-robin folds, no groups; log-probabilities, heads fit
with rounds=10).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from trainer.models.head import fit_head, single_thread
from trainer.stats.estimate import FOLDS, assign_folds, cv_inflation, estimate


def _default_fit(X, y, n_classes, seed=0):
    return fit_head(X, y, n_classes, seed=seed)


def out_of_fold_proba(X: np.ndarray, y: Sequence[int], n_classes: int, folds: np.ndarray,
                      fit: Callable | None = None, seed: int = 0, X_eval: np.ndarray | None = None,
                      y_eval: Sequence[int] | None = None, eval_folds: np.ndarray | None = None) -> np.ndarray:
    """Class probabilities (n_eval, n_classes) of each evaluation row from a model fit without its fold.

    Training rows are (X, y, folds); a fold of -1 means "always in training". Evaluation rows
    default to the training rows; rows of fold f are predicted by `fit(X[folds != f], ...)`
    (default: the quick head, `trainer.models.head.fit_head`). A row stays NaN when its class is absent
    from its training folds (it cannot be judged) or its fold has fewer than 2 training classes.
    Torch runs on one thread meanwhile: small L-BFGS fits are several times faster that way on a
    busy CPU.
    """
    fit = fit or _default_fit
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=int)
    folds = np.asarray(folds, dtype=int)
    if X_eval is None:
        X_eval, y_eval, eval_folds = X, y, folds
    y_eval = np.asarray(y_eval, dtype=int)
    eval_folds = np.asarray(eval_folds, dtype=int)
    out = np.full((len(X_eval), n_classes), np.nan)
    with single_thread():
        for f in np.unique(eval_folds[eval_folds >= 0]):
            test = np.flatnonzero(eval_folds == f)
            train = folds != f
            if len(np.unique(y[train])) < 2:
                continue
            p = np.asarray(fit(X[train], y[train], n_classes, seed=seed).predict_proba(X_eval[test]), dtype=float)
            p[~np.isin(y_eval[test], y[train])] = np.nan
            out[test] = p
    return out


def cross_validate(X: np.ndarray, y: Sequence[int], classes: Sequence[str], groups: Sequence | None = None,
                   k: int = FOLDS, fit: Callable | None = None, seed: int = 0,
                   inflation: float | None = None) -> tuple[dict, np.ndarray]:
    """Stratified (group-aware) k-fold estimate of the quick recipe on embeddings X (n, D) with labels y.

    Returns (estimate dict, out-of-fold probabilities (n, C) with NaN rows for images that could not be judged)."""
    y = np.asarray(y, dtype=int)
    folds = assign_folds(y, k, groups, seed)
    oof = out_of_fold_proba(X, y, len(classes), folds, fit=fit, seed=seed)
    ok = ~np.isnan(oof[:, 0])
    counts = {c: int((y == i).sum()) for i, c in enumerate(classes)}
    kk = int(folds.max()) + 1 if len(folds) else k
    est = estimate(y[ok], oof[ok].argmax(1), classes, None if groups is None else np.asarray(groups)[ok], counts,
                   method=f"{kk}-fold cross-validation", seed=seed,
                   inflation=cv_inflation(kk) if inflation is None else inflation)
    return est, oof


def out_of_fold(X: np.ndarray, y: np.ndarray, n_classes: int, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Log-probabilities of every row's classes from a head that never saw it (NaN rows: class
    too rare to judge). Logs, because a head on few images is often "certain" (p = 0 or 1) and
    ranking on saturated probabilities would be arbitrary.

    Runs torch on one thread: on a busy 2-core machine a 50-image fit took 5.4 s with two threads
    and 0.2 s with one (thread hand-off dominates such small L-BFGS problems).
    """
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), int)
    for c in np.unique(y):  # stratified: each class spread evenly over the folds
        rows = np.flatnonzero(y == c)
        fold[rng.permutation(rows)] = np.arange(len(rows)) % folds
    logp = np.full((len(y), n_classes), np.nan, np.float64)
    with single_thread():
        _fill_folds(X, y, n_classes, folds, fold, logp, seed, fit_head)
    return logp


def _fill_folds(X, y, n_classes, folds, fold, logp, seed, fit_head) -> None:
    for f in range(folds):
        test, train = fold == f, fold != f
        if not test.any() or len(np.unique(y[train])) < 2:
            continue
        head = fit_head(X[train], y[train], n_classes, seed=seed, rounds=10)
        z = head.logits(X[test]).astype(np.float64)
        z -= z.max(1, keepdims=True)
        p = z - np.log(np.exp(z).sum(1, keepdims=True))
        seen = np.isin(y[test], y[train])  # a class absent from training cannot be judged
        p[~seen] = np.nan
        logp[test] = p
