"""Novelty score and unseen-type flag (trainer.stats.openset) on synthetic embeddings: fast, numpy only."""
import numpy as np
import pytest

from trainer.stats.openset import NoveltyModel, auroc, conformal_quantile, leave_one_class_out


class _Head:
    """A nearest-class-mean linear classifier: the `fit` recipe "vim" needs, without torch."""

    def __init__(self, X, y, n_classes):
        mu = np.stack([X[y == c].mean(0) if np.any(y == c) else np.zeros(X.shape[1]) for c in range(n_classes)])
        self.weight = (4 * mu).astype(np.float32)
        self.bias = (-2 * (mu * mu).sum(1)).astype(np.float32)


def _clusters(rng, n_per, centres, spread=0.35):
    X = np.concatenate([c + rng.normal(0, spread, (n_per, centres.shape[1])) for c in centres]).astype(np.float32)
    return X, np.repeat(np.arange(len(centres)), n_per)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (5, 32)) + 2.0  # one image source: embeddings share a direction
    X, y = _clusters(rng, 80, centres)
    Xt, yt = _clusters(rng, 40, centres)
    return X, y, Xt, yt


@pytest.mark.parametrize("method", ["vim", "knn", "mahalanobis"])
def test_a_class_left_out_is_flagged(data, method):
    X, y, Xt, yt = data
    seen = y != 4
    # vim's residual lives outside the first `dims` principal axes: few of 32 here (1,792 in the product)
    m = NoveltyModel.fit(X[seen], y[seen], method=method, alpha=0.05, fit=_Head, dims=8 if method == "vim" else None)
    new_type, known = Xt[yt == 4], Xt[yt != 4]
    assert m.flag(new_type).mean() >= 0.9
    assert m.flag(known).mean() <= 0.15
    assert auroc(m.score(known), m.score(new_type)) > 0.95
    assert m.oof_scores.shape == (seen.sum(),) and np.isfinite(m.oof_scores).all()
    assert 0 < m.oof_flags.mean() <= 0.15


def test_flag_is_pvalue_at_alpha_and_round_trips(data, tmp_path):
    X, y, Xt, _ = data
    m = NoveltyModel.fit(X, y, method="vim", alpha=0.1, fit=_Head, dims=8)
    p = m.pvalue(Xt)
    assert ((p > 0) & (p <= 1)).all()
    assert np.array_equal(m.flag(Xt), p <= 0.1)
    path = m.save(tmp_path)
    assert path.name == "novelty.npz" and path.stat().st_size < 1_000_000
    back = NoveltyModel.load(tmp_path)
    assert back.method == "vim" and back.alpha == pytest.approx(0.1) and back.n == m.n
    np.testing.assert_allclose(back.score(Xt), m.score(Xt), rtol=1e-4, atol=1e-5)
    assert np.array_equal(back.flag(Xt), m.flag(Xt))
    assert NoveltyModel.load(tmp_path / "nothing") is None
    knn = NoveltyModel.fit(X, y, method="knn")
    knn.save(tmp_path / "knn.npz")
    assert np.mean(NoveltyModel.load(tmp_path / "knn.npz").flag(Xt) == knn.flag(Xt)) > 0.98  # float16 refs


def test_leave_one_class_out_reports_each_class(data):
    X, y, _, _ = data
    r = leave_one_class_out(X, y, method="knn", alpha=0.05)
    assert set(r["flagged"]) == {0, 1, 2, 3, 4}
    assert r["mean_flagged"] > 0.9 and r["mean_auroc"] > 0.95


def test_conformal_quantile_and_auroc():
    s = np.arange(1, 20, dtype=float)  # 19 scores: the 95% level needs the 19th
    assert conformal_quantile(s, 0.05) == 19
    assert conformal_quantile(s[:5], 0.05) == float("inf")
    assert auroc([0, 1], [2, 3]) == 1.0 and auroc([0, 1], [0, 1]) == 0.5
    assert np.isnan(auroc([], [1]))


def test_clear_errors():
    X = np.zeros((1, 4))
    with pytest.raises(ValueError, match="at least 2"):
        NoveltyModel.fit(X, [0])
    with pytest.raises(ValueError, match="unknown novelty method"):
        NoveltyModel.fit(np.zeros((4, 4)), [0, 0, 1, 1], method="magic")
    with pytest.raises(ValueError, match="needs fit"):
        NoveltyModel.fit(np.zeros((4, 4)), [0, 0, 1, 1], method="vim")


def test_vim_scores_stay_readable_with_few_labels():
    """40 labels in a 256-wide embedding: the default 64-dim subspace would span each fold's
    training rows (no residual, an exploding virtual-logit scale, scores ~1e7); capped at half
    the rows, the scores stay of the order of the class logits and still rank a new type first."""
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 1, (5, 256)) + 1.0
    X, y = _clusters(rng, 10, centres, spread=0.5)
    seen = y != 4
    m = NoveltyModel.fit(X[seen], y[seen], method="vim", fit=_Head)
    assert all(s.proj.shape[1] <= 32 // 2 for s in m.scorers)  # 4 classes x 10, 5 folds: 32 rows per fold
    Xt, yt = _clusters(rng, 10, centres, spread=0.5)
    s = m.score(Xt)
    logit = np.abs(m.scorers[0]._logits(Xt)).max()  # this toy head's logits are ~1e3
    assert np.isfinite(s).all() and s.max() < 10 * logit and m.scorers[0].scale < 1e3
    assert auroc(s[yt != 4], s[yt == 4]) > 0.9
