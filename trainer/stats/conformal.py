"""Prediction sets with a stated coverage: split conformal prediction on out-of-fold probabilities.

Instead of one guess, a set of classes that holds the true class for at least ``coverage`` of
new images of the trained types ("Neutrophil or Eosinophil (90%)"). Calibrated on the
out-of-fold probabilities the quality estimator already computes (each labeled image judged by a
head fit without its fold), so no labels are set aside.

* Conformity score (``score``): ``"lac"`` (default), 1 - probability of the true class; a class
  is in the set when its probability is at least 1 - threshold: the smallest sets on average
  [Sadinle, Lei & Wasserman, "Least ambiguous set-valued classifiers with bounded error levels",
  JASA 2019]. ``"aps"``: the probability mass of the classes at least as likely as the true one
  (non-randomised adaptive prediction sets) [Romano, Sesia & Candes, "Classification with valid
  and adaptive coverage", NeurIPS 2020].
* Threshold: the ceil((n + 1) * coverage)-th smallest calibration score [Vovk, Gammerman &
  Shafer, "Algorithmic learning in a random world", 2005; Angelopoulos & Bates, "A gentle
  introduction to conformal prediction and distribution-free uncertainty quantification", 2021].
* Class-conditional (Mondrian) where the labels allow: a class with at least
  ``min_per_class(coverage)`` calibration images gets its own threshold (computed on its images
  only), so the coverage holds for that class [Vovk 2012, "Conditional validity of inductive
  conformal predictors"]; a class with fewer uses the marginal threshold (all calibration images),
  whose guarantee is on average over classes only. The rule: at least
  max(MIN_PER_CLASS, ceil(coverage / (1 - coverage))) images (the smallest number for which the
  class's quantile is finite is ceil(coverage / (1 - coverage))).
* A set is never empty: when no class passes, the most probable class is the set (this only
  raises coverage; images of no trained type are the novelty flag's job, `trainer.stats.openset`).
  So when the model's accuracy exceeds the requested coverage, sets are single classes and the
  coverage is the accuracy (above nominal); ``mask(..., allow_empty=True)`` gives the raw sets.

Guarantee and its limits: for images exchangeable with the calibration images (same sources,
same mix of types, or per class under Mondrian), coverage >= the nominal level, and at most
1/(n + 1) above it. The published model is fit on all labels while the scores come from fold
models trained on (k-1)/k of them; scripts/benchmark_publishable.py measures what that does.
Torch-free (numpy).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

DEFAULT_COVERAGE = 0.9
MIN_PER_CLASS = 20
SCORES = ("lac", "aps")


def min_per_class(coverage: float) -> int:
    """Calibration images a class needs for its own (class-conditional) threshold."""
    return max(MIN_PER_CLASS, math.ceil(coverage / (1 - coverage) - 1e-9))


def conformity_scores(probs: np.ndarray, score: str = "lac") -> np.ndarray:
    """(N, C) score of every class for every row: lower = more conforming."""
    p = np.asarray(probs, dtype=float)
    if score == "lac":
        return 1.0 - p
    if score == "aps":  # mass of the classes at least as probable as this one
        order = np.argsort(-p, axis=1, kind="stable")
        cum = np.cumsum(np.take_along_axis(p, order, 1), 1)
        out = np.empty_like(p)
        np.put_along_axis(out, order, cum, 1)
        return out
    raise ValueError(f"unknown conformity score {score!r}: use one of {SCORES}")


def _quantile(s: np.ndarray, coverage: float) -> float:
    s = np.sort(s)
    r = math.ceil((len(s) + 1) * coverage - 1e-9)
    return float(s[r - 1]) if 1 <= r <= len(s) else float("inf")


@dataclass
class ConformalCalibrator:
    """Calibration scores and the thresholds at one coverage; see the module docstring.

    scores (n,) conformity score of each calibration image's true class, labels (n,) its class.
    `sets(probs)` -> list of class-index lists; `mask(probs)` -> (N, C) bool.
    """
    scores: np.ndarray
    labels: np.ndarray
    n_classes: int
    coverage: float = DEFAULT_COVERAGE
    score: str = "lac"
    class_conditional: bool = True

    @property
    def n(self) -> int:
        return int(len(self.scores))

    @property
    def n_per_class(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.n_classes)

    @property
    def conditional(self) -> np.ndarray:
        """(C,) bool: which classes have their own threshold."""
        if not self.class_conditional:
            return np.zeros(self.n_classes, bool)
        return self.n_per_class >= min_per_class(self.coverage)

    @property
    def thresholds(self) -> np.ndarray:
        """(C,) score threshold per class (inf: the class is always in the set)."""
        marginal = _quantile(self.scores, self.coverage)
        cond = self.conditional
        return np.array([_quantile(self.scores[self.labels == c], self.coverage) if cond[c] else marginal
                         for c in range(self.n_classes)])

    def at(self, coverage: float) -> "ConformalCalibrator":
        """The same calibration at another coverage (e.g. `predict --coverage 0.95`)."""
        if not 0 < coverage < 1:
            raise ValueError(f"coverage must lie strictly between 0 and 1, got {coverage}")
        return replace(self, coverage=float(coverage))

    def mask(self, probs, allow_empty: bool = False) -> np.ndarray:
        """(N, C) bool membership of each class in each row's set; probs (N, C) rows summing to 1.
        allow_empty: the raw conformal sets (may be empty; coverage nearer the nominal level)."""
        p = np.asarray(probs, dtype=float)
        if p.ndim != 2 or p.shape[1] != self.n_classes:
            raise ValueError(f"probs must be (N, {self.n_classes}), got {p.shape}")
        m = conformity_scores(p, self.score) <= self.thresholds[None, :] + 1e-12
        if len(p) and not allow_empty:
            m[np.arange(len(p)), p.argmax(1)] = True  # never empty
        return m

    def sets(self, probs) -> list[list[int]]:
        """Per row, the class indices in its prediction set, most probable first."""
        p = np.asarray(probs, dtype=float)
        m = self.mask(p)
        return [[int(c) for c in np.argsort(-p[i], kind="stable") if m[i, c]] for i in range(len(p))]

    def describe(self, classes: Sequence[str] | None = None) -> str:
        """One line: the coverage, the n behind it and the rule per class."""
        names = list(classes) if classes is not None else [str(c) for c in range(self.n_classes)]
        cond, npc = self.conditional, self.n_per_class
        own = [f"{names[c]} (n = {npc[c]})" for c in range(self.n_classes) if cond[c]]
        shared = [f"{names[c]} (n = {npc[c]})" for c in range(self.n_classes) if not cond[c]]
        out = f"prediction sets at {self.coverage:.0%} coverage, calibrated on n = {self.n} out-of-fold predictions"
        if own:
            out += "; per-class coverage for " + ", ".join(own)
        if shared:
            out += "; coverage on average over classes for " + ", ".join(shared)
        return out

    def to_dict(self) -> dict:
        return {"scores": [float(s) for s in self.scores], "labels": [int(v) for v in self.labels],
                "n_classes": self.n_classes, "coverage": self.coverage, "score": self.score,
                "class_conditional": self.class_conditional}

    @classmethod
    def from_dict(cls, d: dict) -> "ConformalCalibrator":
        return cls(np.asarray(d["scores"], float), np.asarray(d["labels"], int), int(d["n_classes"]),
                   float(d["coverage"]), d.get("score", "lac"), bool(d.get("class_conditional", True)))


def calibrate(oof_probs, y, coverage: float = DEFAULT_COVERAGE, score: str = "lac",
              class_conditional: bool = True) -> ConformalCalibrator:
    """Calibrate prediction sets on out-of-fold probabilities.

    oof_probs (n, C): each labeled image's class probabilities from a model fit without it (rows
    with NaN, e.g. images whose class was absent from their training folds, are dropped);
    y (n,) class indices. Raises ValueError on mismatched shapes, a coverage outside (0, 1) or
    no usable row.
    """
    p = np.asarray(oof_probs, dtype=float)
    y = np.asarray(y, dtype=int)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"oof_probs must be (n, C) with one label per row: got {p.shape} and {y.shape}")
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must lie strictly between 0 and 1, got {coverage}")
    ok = np.isfinite(p).all(1)
    if not ok.any():
        raise ValueError("no out-of-fold prediction to calibrate on")
    p, y = p[ok], y[ok]
    s = conformity_scores(p, score)[np.arange(len(y)), y]
    return ConformalCalibrator(s, y, p.shape[1], float(coverage), score, class_conditional)
