"""Novelty score and the "none of the trained types" flag (open-set recognition).

A classifier always answers with one of its classes: an image of a type it never saw (a
platelet for a model trained on white cells) comes out as the nearest trained type, often at
high confidence. The novelty score measures, in the embedding the head sees, how far an image
is from every labeled image; the flag says "looks like none of the trained types".

Score (``method``):

* ``"vim"`` (shipped): virtual-logit matching [Wang, Li, Feng & Zhang, "ViM: Out-of-distribution
  with virtual-logit matching", CVPR 2022]. The part of an embedding outside the principal
  subspace of the labeled embeddings (its first ``dims`` components, centred on their mean: 64, at
  most half the labeled images a fold trains on, at most the width)
  becomes an extra "none of these" logit, scaled so that on the labeled images it matches the
  mean largest class logit; the score is -log(1 - its softmax probability) next to the linear
  head's class logits. It combines what the head knows (the energy of its logits: Liu, Wang,
  Owens & Li, "Energy-based out-of-distribution detection", NeurIPS 2020) with how unusual the
  embedding is for the labeled images. Needs the head's recipe (``fit``) and embeddings much
  wider than ``dims`` (with ``dims`` >= the width there is no residual and it is the energy score).
* ``"knn"``: distance to the k-th nearest labeled embedding after L2 normalisation,
  1 - cosine similarity [Sun, Ming, Zhu & Li, "Out-of-distribution detection with deep nearest
  neighbors", ICML 2022]. Non-parametric, needs no classifier.
* ``"mahalanobis"``: smallest Mahalanobis distance to a class mean, one covariance shared by the
  classes (Ledoit-Wolf shrinkage, on the first ``dims`` principal components) [Lee, Lee, Lee &
  Shin, "A simple unified framework for detecting out-of-distribution samples and adversarial
  attacks", NeurIPS 2018].

Which one ships was measured, not assumed: scripts/benchmark_publishable.py leaves each class of
the labeled dev sets out in turn (section "Predictions a lab can publish" of docs/benchmarks.md).

Flag (set from the project's own labels): the labeled images are split in ``folds`` folds; per
fold, a scorer is fit on the other folds and scores the fold's images (cross-fitting). A new
image is scored by every fold's scorer and compared with that fold's images: its
cross-conformal p-value [Vovk, "Cross-conformal predictors", 2015] is the share of labeled
images that score at least as high; it is flagged when the p-value is <= ``alpha`` (default
0.05), so about ``alpha`` of new images of the trained types are flagged (a conformal outlier
test: Bates, Candes, Lei, Romano & Sesia, "Testing for outliers with conformal p-values",
Annals of Statistics 2023). Scoring new images with the fold scorers, not a refit on all
labels, keeps them on the scale of the calibration scores (a head refit on all labels is more
confident: on bccd_wbc, leaving each class out, it flagged 0.3% of seen-type images instead of
the intended 5%, and 15% instead of 21% of the unseen types). `score` is the mean over the
fold scorers.
`leave_one_class_out` is the check the other way round: each class in turn is removed from the
labels, the model and its threshold refit without it, and the share of its images flagged is the
recall for a type the model never saw; `NoveltyModel.fit` stores it in ``info["unseen_flagged"]``
when asked (``check=True``).

Torch-free (numpy, scipy, scikit-learn; the head is passed in); a fitted model saves to one small
``.npz`` (vim: ~0.5 MB for 1,792-wide embeddings).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from sampler.space import normalize_rows

FILE = "novelty.npz"
METHODS = ("vim", "knn", "mahalanobis")
DEFAULT_METHOD = "vim"
DEFAULT_DIMS = {"vim": 64, "mahalanobis": 128, "knn": 0}
DEFAULT_K = 5
DEFAULT_ALPHA = 0.05
DEFAULT_FOLDS = 5
MAX_REFS = 4000


# ------------------------------------------------------------------ helpers
def _l2(X) -> np.ndarray:
    """A unit-length float32 copy of the rows (sampler.space.normalize_rows: zero rows stay zero)."""
    return normalize_rows(np.array(X, dtype=np.float32, copy=True))


def kth_neighbour_distance(Q: np.ndarray, R: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """Cosine distance (1 - cos) of each row of Q to its k-th nearest row of R; both (., D) and
    L2-normalised. Returns (len(Q),) float32; k is capped at len(R)."""
    k = max(1, min(int(k), len(R)))
    out = np.empty(len(Q), np.float32)
    for s in range(0, len(Q), chunk):
        d = 1.0 - Q[s:s + chunk] @ R.T
        out[s:s + chunk] = np.partition(d, k - 1, axis=1)[:, k - 1]
    return out


def stratified_folds(y: Sequence[int], k: int, seed: int = 0) -> np.ndarray:
    """Fold index per row, each class dealt round-robin over the k folds (shuffled with `seed`)."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(y), dtype=int)
    offset = 0
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        fold[rows] = (np.arange(len(rows)) + offset) % k
        offset += len(rows)
    return fold


def conformal_quantile(scores, alpha: float) -> float:
    """The ceil((n + 1)(1 - alpha))-th smallest score: a new exchangeable score exceeds it with
    probability at most alpha (+inf when n is too small for that level)."""
    s = np.sort(np.asarray(scores, dtype=float))
    n = len(s)
    r = int(np.ceil((n + 1) * (1 - alpha)))
    return float(s[r - 1]) if 1 <= r <= n else float("inf")


def auroc(seen_scores, unseen_scores) -> float:
    """Area under the ROC curve of a score that should be higher for unseen than for seen rows
    (Mann-Whitney U / (n_seen n_unseen), ties count 1/2). NaN if either side is empty."""
    a, b = np.asarray(seen_scores, float), np.asarray(unseen_scores, float)
    if not len(a) or not len(b):
        return float("nan")
    from scipy.stats import rankdata

    r = rankdata(np.concatenate([a, b]))
    return float((r[len(a):].sum() - len(b) * (len(b) + 1) / 2) / (len(a) * len(b)))


# ------------------------------------------------------------------ the fitted scorer
@dataclass
class _Scorer:
    """The score of one fit, without a threshold (the part that is refit in every fold)."""
    method: str
    k: int = DEFAULT_K
    refs: np.ndarray | None = None      # knn: (n, D) L2-normalised labeled embeddings
    mean: np.ndarray | None = None      # mahalanobis, vim: (D,) centre
    proj: np.ndarray | None = None      # mahalanobis: (D, r) projection then whitening; vim: (D, r) principal axes
    centres: np.ndarray | None = None   # mahalanobis: (C, r) class means, whitened
    weight: np.ndarray | None = None    # vim: (C, D) the linear head's weight
    bias: np.ndarray | None = None      # vim: (C,) its bias
    scale: float = 1.0                  # vim: virtual-logit scale (mean max logit / mean residual norm)

    @classmethod
    def fit(cls, X, y, method: str, k: int, dims: int, fit=None, head=None) -> "_Scorer":
        if method == "knn":
            return cls("knn", k=k, refs=_l2(X))
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y)
        if method == "vim":
            if head is None:
                if fit is None:
                    raise ValueError("method 'vim' needs the classifier: pass fit=(X, y, n_classes) -> head with "
                                     ".logits(X), or head=(weight, bias)")
                h = fit(X, y, int(y.max()) + 1)
                head = (h.weight, h.bias) if hasattr(h, "weight") else h
            W, b = (np.asarray(a, dtype=np.float32) for a in head)
            mean = X.mean(0)
            _, _, vt = np.linalg.svd(X - mean, full_matrices=False)
            # at most half the training rows: a subspace as wide as the data (r >= n - 1) leaves the
            # labeled rows no residual, and the scale (mean max logit / mean residual) explodes
            r = max(1, min(dims, len(X) // 2, vt.shape[0]))
            s = cls("vim", mean=mean, proj=np.ascontiguousarray(vt[:r].T), weight=W, bias=b)
            s.scale = float(s._logits(X).max(1).mean() / max(s._residual(X).mean(), 1e-12))
            return s
        if method == "mahalanobis":
            from sklearn.covariance import LedoitWolf

            X = _l2(X).astype(np.float64)
            mean = X.mean(0)
            Xc = X - mean
            r = max(1, min(dims, *Xc.shape))
            _, _, vt = np.linalg.svd(Xc, full_matrices=False)
            P = vt[:r].T
            Z = Xc @ P
            labels = np.unique(y)
            mus = np.stack([Z[y == c].mean(0) for c in labels])
            resid = Z - mus[np.searchsorted(labels, y)]
            cov = LedoitWolf().fit(resid).covariance_
            w, v = np.linalg.eigh(cov)
            Wh = v / np.sqrt(np.maximum(w, 1e-12))  # Z @ Wh: whitened
            return cls("mahalanobis", mean=mean.astype(np.float32), proj=(P @ Wh).astype(np.float32),
                       centres=(mus @ Wh).astype(np.float32))
        raise ValueError(f"unknown novelty method {method!r}: use one of {METHODS}")

    def _logits(self, X) -> np.ndarray:
        return (X @ self.weight.T + self.bias).astype(np.float64)

    def _residual(self, X) -> np.ndarray:
        Xc = X - self.mean
        return np.linalg.norm(Xc - (Xc @ self.proj) @ self.proj.T, axis=1)

    def score(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if not len(X):
            return np.zeros(0, np.float32)
        if self.method == "knn":
            return kth_neighbour_distance(_l2(X), self.refs, self.k)
        if self.method == "vim":  # -log(1 - softmax probability of the virtual "none of these" logit)
            from scipy.special import logsumexp

            z = self._logits(X)
            v = self.scale * self._residual(X)
            return (logsumexp(np.c_[z, v], axis=1) - logsumexp(z, axis=1)).astype(np.float32)
        Z = (_l2(X) - self.mean) @ self.proj
        d = (Z * Z).sum(1, keepdims=True) - 2 * Z @ self.centres.T + (self.centres ** 2).sum(1)
        return np.maximum(d.min(1), 0).astype(np.float32)


def _sample_rows(y, max_refs: int, seed: int) -> np.ndarray:
    """At most `max_refs` rows, each class kept in proportion (every class at least once)."""
    n = len(y)
    if n <= max_refs:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    keep = [rng.choice(r, min(len(r), max(1, int(round(max_refs * len(r) / n)))), replace=False)
            for r in (np.flatnonzero(y == c) for c in np.unique(y))]
    return np.sort(np.concatenate(keep))


@dataclass
class NoveltyModel:
    """Novelty score and flag of one trained model (see the module docstring): one scorer per
    fold, each fit without its fold and calibrated on it (cross-conformal).

    Use `NoveltyModel.fit(X, y, fit=...)`. `score(X)` -> (N,) float32, higher = less like every
    labeled type: the mean of the fold scorers' scores (units: -log(1 - p_virtual) for "vim",
    cosine distance for "knn", squared whitened distance for "mahalanobis"). `pvalue(X)` ->
    (N,) cross-conformal p-values; `flag(X)` -> (N,) bool, pvalue <= `alpha`.
    """
    scorers: list
    calibration: list  # per fold: sorted scores of its labeled images by the scorer fit without them
    alpha: float
    info: dict = field(default_factory=dict)
    oof_scores: np.ndarray | None = None  # after fit: (n_input,) cross-fitted score per input row (not saved)
    oof_flags: np.ndarray | None = None   # after fit: (n_input,) bool, out-of-fold flag per input row (not saved)

    @property
    def method(self) -> str:
        return self.scorers[0].method

    @property
    def n(self) -> int:
        return int(sum(len(c) for c in self.calibration))

    @property
    def threshold(self) -> float:
        """The conformal 1 - alpha quantile of all cross-fitted scores: about where `score` crosses
        into flagged (the flag itself is decided per fold, by `pvalue`)."""
        return conformal_quantile(np.concatenate(self.calibration), self.alpha)

    @classmethod
    def fit(cls, X, y, method: str = DEFAULT_METHOD, alpha: float = DEFAULT_ALPHA, k: int = DEFAULT_K,
            folds: Sequence[int] | int = DEFAULT_FOLDS, dims: int | None = None, max_refs: int = MAX_REFS,
            fit=None, check: bool = False, seed: int = 0) -> "NoveltyModel":
        """Fit on the labeled embeddings X (n, D) with class indices y (n,).

        alpha: share of images of the trained types to flag (p-value threshold). folds: number
        of folds, or a fold index per row (e.g. the estimator's, to keep slides together).
        max_refs: labeled rows used (stratified sample; bounds file size and time). dims:
        principal components ("vim": 64, "mahalanobis": 128 by default). fit ("vim" only,
        required): the classifier's recipe, fit(X, y, n_classes) -> an object with ``.weight``
        (C, D) and ``.bias`` (C,) (e.g. `trainer.models.head.fit_head`), fit once per fold.
        After fitting, ``oof_scores`` holds each input row's cross-fitted score (NaN for rows
        not used); ``oof_flags`` whether it is above its fold's 1 - alpha quantile (the
        out-of-fold flags `trainer.stats.proportions` needs). check: also run
        `leave_one_class_out` and store its result in ``info["unseen_flagged"]``.
        Raises ValueError with fewer than 2 labeled images, an unknown method, or "vim" without fit.
        """
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y, dtype=int)
        if len(X) < 2 or len(X) != len(y):
            raise ValueError("a novelty model needs at least 2 labeled images (X and y of equal length)")
        if method not in METHODS:
            raise ValueError(f"unknown novelty method {method!r}: use one of {METHODS}")
        if method == "vim" and fit is None:
            raise ValueError("method 'vim' needs fit=(X, y, n_classes) -> head with .weight and .bias")
        dims = DEFAULT_DIMS[method] if dims is None else int(dims)
        if np.ndim(folds) == 0:
            fold = stratified_folds(y, max(2, min(int(folds), len(y))), seed)
        else:
            fold = np.asarray(folds, dtype=int)
        n_input = len(X)
        rows = _sample_rows(y, max_refs, seed)
        X, y, fold = X[rows], y[rows], fold[rows]
        scorers, cal = [], []
        oof = np.full(len(X), np.nan, np.float32)
        for f in np.unique(fold):
            test, train = fold == f, fold != f
            if train.sum() < 2:
                continue
            s = _Scorer.fit(X[train], y[train], method, k, dims, fit=fit)
            oof[test] = s.score(X[test])
            scorers.append(s)
            cal.append(np.sort(oof[test]))
        if not scorers:
            raise ValueError("a novelty model needs at least 2 folds with training images")
        model = cls(scorers, cal, alpha, {"method": method, "k": k, "dims": dims, "alpha": alpha,
                                          "n": int(np.isfinite(oof).sum()), "folds": len(scorers)})
        model.oof_scores = np.full(n_input, np.nan, np.float32)
        model.oof_scores[rows] = oof
        model.oof_flags = np.zeros(n_input, bool)
        for f, c in zip(np.unique(fold), cal):
            sel = rows[fold == f]
            model.oof_flags[sel] = model.oof_scores[sel] > conformal_quantile(c, alpha)
        if check:
            model.info["unseen_flagged"] = leave_one_class_out(X, y, method=method, alpha=alpha, k=k, folds=fold,
                                                               dims=dims, fit=fit)["flagged"]
        return model

    def _fold_scores(self, X) -> np.ndarray:
        return np.stack([s.score(X) for s in self.scorers])

    def score(self, X) -> np.ndarray:
        return self._fold_scores(X).mean(0).astype(np.float32)

    def pvalue(self, X) -> np.ndarray:
        """Cross-conformal p-value per row (Vovk, "Cross-conformal predictors", Annals of
        Mathematics and Artificial Intelligence 2015): (1 + sum over folds of #fold images
        scoring at least as high, each by the scorer fit without that fold) / (n + 1).
        Small = unlike the labeled images."""
        S = self._fold_scores(X)
        ge = sum(len(c) - np.searchsorted(c, S[i], side="left") for i, c in enumerate(self.calibration))
        return (1 + ge) / (self.n + 1)

    def flag(self, X) -> np.ndarray:
        return self.pvalue(X) <= self.alpha

    # ---------------------------------------------------------------- storage
    def save(self, path) -> Path:
        """Write the model to `path` (a folder gets `novelty.npz`); knn references as float16."""
        path = Path(path)
        if path.is_dir():
            path = path / FILE
        arrays = {}
        for i, s in enumerate(self.scorers):
            for name in ("refs", "mean", "proj", "centres", "weight", "bias"):
                v = getattr(s, name)
                if v is not None:
                    arrays[f"f{i}_{name}"] = v.astype(np.float16) if name == "refs" else v
            arrays[f"f{i}_calibration"] = self.calibration[i].astype(np.float32)
        meta = {"method": self.method, "folds": len(self.scorers), "k": [s.k for s in self.scorers],
                "scale": [s.scale for s in self.scorers], "alpha": self.alpha, "info": self.info}
        np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)
        return path

    @classmethod
    def load(cls, path) -> "NoveltyModel | None":
        """The model saved at `path` (file or folder holding `novelty.npz`); None if absent."""
        path = Path(path)
        if path.is_dir():
            path = path / FILE
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            scorers, cal = [], []
            for i in range(meta["folds"]):
                arr = {n: z[f"f{i}_{n}"].astype(np.float32) for n in ("refs", "mean", "proj", "centres", "weight", "bias")
                       if f"f{i}_{n}" in z}
                if "refs" in arr:  # float16 references re-normalised: a stored model scores like the fitted one
                    arr["refs"] = _l2(arr["refs"])
                scorers.append(_Scorer(meta["method"], meta["k"][i], scale=float(meta["scale"][i]), **arr))
                cal.append(z[f"f{i}_calibration"].astype(np.float32))
            return cls(scorers, cal, float(meta["alpha"]), meta.get("info", {}))


# ------------------------------------------------------------------ the check on the project's own labels
def leave_one_class_out(X, y, method: str = DEFAULT_METHOD, alpha: float = DEFAULT_ALPHA, k: int = DEFAULT_K,
                        folds: Sequence[int] | int = DEFAULT_FOLDS, dims: int | None = None, min_classes: int = 2,
                        fit=None, seed: int = 0) -> dict:
    """Each class in turn treated as a type never seen: the model (and its threshold) is fit on
    the other classes' labels, then scores the held-out class's images.

    Returns {"flagged": {class index: share of its images flagged}, "auroc": {class index: AUROC
    of its images against the other classes' cross-fitted scores}, "mean_flagged", "mean_auroc"}.
    Classes are skipped when fewer than `min_classes` others remain. fit: as in `NoveltyModel.fit`.
    """
    dims = DEFAULT_DIMS[method] if dims is None else int(dims)
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=int)
    fold = stratified_folds(y, int(folds), seed) if np.ndim(folds) == 0 else np.asarray(folds, dtype=int)
    flagged, aucs = {}, {}
    for c in np.unique(y):
        seen = y != c
        if len(np.unique(y[seen])) < min_classes or seen.sum() < 2:
            continue
        ys = np.searchsorted(np.unique(y[seen]), y[seen])  # classes renumbered 0..C-2
        m = NoveltyModel.fit(X[seen], ys, method=method, alpha=alpha, k=k, folds=fold[seen], dims=dims, fit=fit)
        flagged[int(c)] = float(np.mean(m.flag(X[~seen])))
        aucs[int(c)] = auroc(m.oof_scores[np.isfinite(m.oof_scores)], m.score(X[~seen]))
    return {"flagged": flagged, "auroc": aucs,
            "mean_flagged": float(np.mean(list(flagged.values()))) if flagged else float("nan"),
            "mean_auroc": float(np.mean(list(aucs.values()))) if aucs else float("nan")}
