"""trainer.stats.publishable: what a model version stores for unseen types, sets and proportions (issue 25)."""
import numpy as np

from trainer.stats.proportions import UNSEEN, proportions_table
from trainer.stats.publishable import MISSING, HeadRecorder, VersionStats, build


class _Head:
    def __init__(self, weight, bias):
        self.weight, self.bias = weight, bias

    def predict_proba(self, X):
        z = X @ self.weight.T + self.bias
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)


def _fit(X, y, n_classes, seed=0):
    """A numpy stand-in for the quick head: class means as a linear classifier (fast, torch-free)."""
    W = np.stack([X[y == c].mean(0) if (y == c).any() else np.zeros(X.shape[1]) for c in range(n_classes)])
    b = -0.5 * (W ** 2).sum(1) - 1e6 * ~np.isin(np.arange(n_classes), y)
    return _Head(4 * W.astype(np.float32), 4 * b.astype(np.float32))


def _data(rng, n_per=40, C=3, D=96, novel=40):
    centres = rng.normal(size=(C + 1, D)) * 3
    y = np.repeat(np.arange(C), n_per)
    X = (centres[y] + rng.normal(size=(len(y), D))).astype(np.float32)
    Xn = (centres[C] + rng.normal(size=(novel, D))).astype(np.float32)
    return X, y, Xn


def _oof(X, y, C, folds):
    out = np.full((len(y), C), np.nan)
    for f in np.unique(folds):
        out[folds == f] = _fit(X[folds != f], y[folds != f], C).predict_proba(X[folds == f])
    return out


def test_build_save_load_apply_flags_a_type_never_labeled(tmp_path):
    rng = np.random.default_rng(0)
    X, y, Xn = _data(rng)
    classes = ["a", "b", "c"]
    folds = np.arange(len(y)) % 5
    rec = HeadRecorder(_fit)
    oof = _oof(X, y, 3, folds)
    stats = build(X, y, classes, oof, fit=rec, folds=folds)
    stats.save(tmp_path)
    assert (tmp_path / "novelty.npz").is_file() and (tmp_path / "publishable.json").is_file()
    back = VersionStats.load(tmp_path)
    assert back.classes == classes and back.calibrator.n == len(y)
    assert back.confusion.shape == (3, 4) and back.unseen_row.shape == (4,)
    Xs = (X[:30] + rng.normal(size=(30, X.shape[1]))).astype(np.float32)
    seen = back.apply(_fit(X, y, 3).predict_proba(Xs), Xs)
    new = back.apply(_fit(X, y, 3).predict_proba(Xn), Xn)
    assert new["novel"].mean() >= 0.8 and seen["novel"].mean() <= 0.2
    assert (new["category"][new["novel"]] == 3).all()  # flagged: "unseen type", not a class
    assert all(len(s) >= 1 for s in seen["sets"])
    cal = back.calibration()
    assert cal.shape == (4, 4)
    rows = proportions_table(np.r_[seen["category"], new["category"]], cal, classes, draws=300)
    assert [r["class"] for r in rows if r["group"] == "all"] == classes + [UNSEEN]


def test_fold_heads_are_reused_not_refit():
    rng = np.random.default_rng(1)
    X, y, _ = _data(rng, n_per=20)
    calls = []

    def fit(*a, **k):
        calls.append(1)
        return _fit(*a, **k)

    folds = np.arange(len(y)) % 5
    rec = HeadRecorder(fit)
    oof = np.full((len(y), 3), np.nan)
    for f in range(5):
        oof[folds == f] = rec(X[folds != f], y[folds != f], 3, seed=0).predict_proba(X[folds == f])
    build(X, y, ["a", "b", "c"], oof, fit=rec, folds=folds)
    assert len(calls) == 5 and rec.hits == 5


def test_a_version_without_them_loads_as_none(tmp_path):
    assert VersionStats.load(tmp_path) is None
    assert "retrain" in MISSING
