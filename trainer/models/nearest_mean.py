"""A nearest-class-mean learner with the quick head's interface: fast and stable, for simulations
of the estimator (tests, scripts/benchmark_estimator.py) where thousands of fits must take seconds."""
from __future__ import annotations

import numpy as np


class NearestMean:
    """Class means in feature space; probabilities from a unit-variance Gaussian per class.
    A class without rows gets a mean far away (it is never predicted)."""

    def __init__(self, X, y, n_classes):
        self.m = np.stack([X[y == c].mean(0) if (y == c).any() else np.full(X.shape[1], 1e6) for c in range(n_classes)])

    def predict_proba(self, X):
        """(n, n_classes) probabilities."""
        z = -((X[:, None, :] - self.m[None]) ** 2).sum(2) / 2
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)


def fit_nearest_mean(X, y, n_classes, seed=0) -> NearestMean:
    """`fit_head`'s signature (`seed` unused: the fit is deterministic)."""
    return NearestMean(X, y, n_classes)
