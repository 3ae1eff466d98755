"""Conformal prediction sets (trainer.stats.conformal) on a synthetic problem: fast, numpy only."""
import numpy as np
import pytest

from trainer.stats.conformal import ConformalCalibrator, calibrate, min_per_class


def _problem(rng, n, C=4, temp=1.5):
    """Probabilities that are calibrated by construction: y is drawn from p itself."""
    logits = rng.normal(0, temp, (n, C))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(C, p=row) for row in p])
    return p, y


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
@pytest.mark.parametrize("score", ["lac", "aps"])
def test_coverage_holds_on_new_data(coverage, score):
    rng = np.random.default_rng(1)
    hits = []
    for rep in range(20):
        p, y = _problem(rng, 400)
        pt, yt = _problem(rng, 1000)
        cal = calibrate(p, y, coverage, score=score)
        m = cal.mask(pt, allow_empty=True)
        hits.append(m[np.arange(len(yt)), yt].mean())
    assert abs(np.mean(hits) - coverage) < 0.02
    assert cal.conditional.all() and cal.n == 400


def test_sets_are_never_empty_and_ordered():
    rng = np.random.default_rng(2)
    p, y = _problem(rng, 300)
    cal = calibrate(p, y, 0.5)
    sets = cal.sets(p[:50])
    assert all(len(s) >= 1 for s in sets)
    assert all(s[0] == int(np.argmax(p[i])) for i, s in enumerate(sets))
    assert cal.mask(p[:50]).sum() >= cal.mask(p[:50], allow_empty=True).sum()


def test_small_classes_share_the_marginal_threshold_and_nan_rows_are_dropped():
    rng = np.random.default_rng(3)
    p, y = _problem(rng, 300, C=3)
    y[:300][y == 2] = 0
    y[:5] = 2  # a rare class: 5 calibration images
    p = np.vstack([p, np.full((3, 3), np.nan)])
    y = np.concatenate([y, [0, 1, 2]])
    cal = calibrate(p, y, 0.9)
    assert cal.n == 300 and cal.n_per_class[2] == 5
    assert list(cal.conditional) == [True, True, False]
    assert cal.thresholds[2] == pytest.approx(cal.at(0.9).thresholds[2])
    assert "coverage on average over classes for C (n = 5)" in cal.describe(["A", "B", "C"])
    assert min_per_class(0.9) >= 9 and min_per_class(0.99) >= 99
    back = ConformalCalibrator.from_dict(cal.to_dict())
    np.testing.assert_array_equal(back.mask(p[:300]), cal.mask(p[:300]))
    assert back.at(0.95).coverage == 0.95


def test_clear_errors():
    with pytest.raises(ValueError, match="coverage"):
        calibrate(np.full((3, 2), 0.5), [0, 1, 0], 1.0)
    with pytest.raises(ValueError, match="one label per row"):
        calibrate(np.full((3, 2), 0.5), [0, 1], 0.9)
    with pytest.raises(ValueError, match="no out-of-fold"):
        calibrate(np.full((3, 2), np.nan), [0, 1, 0], 0.9)
    with pytest.raises(ValueError, match="probs must be"):
        calibrate(np.full((3, 2), 0.5), [0, 1, 0], 0.9).mask(np.ones((2, 3)))
