"""Class proportions with intervals (trainer.stats.proportions) on a known mix: fast, numpy only."""
import csv

import numpy as np
import pytest

from trainer.stats.proportions import (COLUMNS, UNSEEN, adjusted_count, calibration_matrix, confusion_counts,
                                       estimate_shares, proportions_table, write_csv)

# P(predicted category | true type): 3 classes + column 3 = flagged as unseen; row 3 = an unseen type
M = np.array([[0.80, 0.12, 0.05, 0.03],
              [0.15, 0.75, 0.05, 0.05],
              [0.05, 0.05, 0.85, 0.05],
              [0.05, 0.10, 0.05, 0.80]])


def _predict(rng, y):
    return np.array([rng.choice(4, p=M[t]) for t in y])


def _calibration(rng, n_per=150):
    y = np.repeat(np.arange(3), n_per)
    cm = confusion_counts(y, _predict(rng, y), 3, 4)
    loco = np.bincount(_predict(rng, np.full(100, 3)), minlength=4)  # images of classes left out in turn
    return calibration_matrix(cm, loco, unseen_weight=100)


def test_intervals_cover_a_known_mix_under_prior_shift():
    rng = np.random.default_rng(0)
    cal = _calibration(rng)
    hits, n, cc_err, bayes_err = 0, 0, [], []
    for r in range(25):
        q = rng.dirichlet(np.ones(4))  # unlike the calibration's mix
        y = rng.choice(4, 300, p=q)
        pred = _predict(rng, y)
        truth = np.bincount(y, minlength=4) / len(y)
        point, lo, hi = estimate_shares(np.bincount(pred, minlength=4), cal, draws=600, seed=r)
        hits += int(((lo <= truth) & (truth <= hi)).sum())
        n += 4
        cc_err.append(np.abs(np.bincount(pred, minlength=4) / len(y) - truth).mean())
        bayes_err.append(np.abs(point - truth).mean())
        assert point.sum() == pytest.approx(1) and (lo <= point).all() and (point <= hi).all()
    assert hits / n >= 0.9
    assert np.mean(bayes_err) < np.mean(cc_err)


def test_adjusted_count_recovers_the_mix_from_expected_counts():
    q = np.array([0.1, 0.6, 0.2, 0.1])
    counts = 10000 * q @ M
    np.testing.assert_allclose(adjusted_count(counts, M), q, atol=1e-3)


def test_table_columns_groups_and_csv(tmp_path):
    rng = np.random.default_rng(1)
    cal = _calibration(rng)
    y = rng.choice(4, 120, p=[0.5, 0.2, 0.2, 0.1])
    pred = _predict(rng, y)
    groups = np.where(np.arange(120) < 60, "control", "treated")
    rows = proportions_table(pred, cal, ["A", "B", "C"], groups=groups, draws=300)
    assert [(r["group"], r["class"]) for r in rows[:4]] == [("all", "A"), ("all", "B"), ("all", "C"), ("all", UNSEEN)]
    assert {r["group"] for r in rows} == {"all", "control", "treated"} and len(rows) == 12
    for g in ("all", "control", "treated"):
        part = [r for r in rows if r["group"] == g]
        assert sum(r["proportion"] for r in part) == pytest.approx(1)
        assert sum(r["count"] for r in part) == (120 if g == "all" else 60)
        assert all(0 <= r["lower"] <= r["proportion"] <= r["upper"] <= 1 for r in part)
    path = write_csv(rows, tmp_path / "preds.proportions.csv")
    with path.open() as f:
        read = list(csv.DictReader(f))
    assert tuple(read[0]) == COLUMNS == ("group", "class", "count", "proportion", "lower", "upper")
    assert len(read) == 12 and read[3]["class"] == UNSEEN


def test_without_an_unseen_row_only_trained_classes_are_estimated():
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(3), 100)
    cm = confusion_counts(y, _predict(rng, y), 3, 4)
    rows = proportions_table(_predict(rng, y), calibration_matrix(cm), ["A", "B", "C"], draws=300)
    assert [r["class"] for r in rows] == ["A", "B", "C"]
    with pytest.raises(ValueError, match="cal must be"):
        proportions_table([0, 1], np.ones((3, 3)), ["A", "B", "C"])
    with pytest.raises(ValueError, match="pred_category"):
        proportions_table([0, 5], cm, ["A", "B", "C"])
