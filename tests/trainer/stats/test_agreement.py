"""Krippendorff's alpha with bootstrap intervals (trainer.stats.agreement): fast, numpy only."""
import numpy as np
import pytest

from trainer.stats.agreement import agreement, alpha, coincidences, unit_counts
from trainer.stats.consensus import Vote, consensus

CLASSES = ["A", "B", "C"]


def test_krippendorff_reference_example():
    """Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 coders, 12 units,
    missing values, nominal alpha = 0.743; the coincidence matrix as printed there."""
    rows = [[1, 2, 3, 3, 2, 1, 4, 1, 2, 0, 0, 0], [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, 0, 3],
            [0, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, 0], [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, 0]]
    counts = np.zeros((12, 5))
    for r in rows:
        for u, v in enumerate(r):
            if v:
                counts[u, v - 1] += 1
    est = alpha(counts, n_boot=500)
    assert est.alpha == pytest.approx(0.743, abs=5e-4) and est.n_tasks == 11 and est.n_values == 40
    assert est.low < est.alpha < est.high
    o = coincidences(counts)
    assert o.sum() == pytest.approx(40) and o[0, 0] == pytest.approx(7) and o[0, 1] == pytest.approx(4 / 3)


def test_perfect_agreement_gives_alpha_one():
    votes = [Vote(i, a, CLASSES[i % 3]) for i in range(30) for a in ("ann", "bob", "cy")[: 2 + i % 2]]
    ag = agreement(votes, classes=CLASSES, n_boot=200)
    assert ag.project.alpha == 1.0 and ag.project.low == 1.0 and ag.project.n_tasks == 30
    assert all(e.alpha == 1.0 for e in ag.per_class.values())
    assert all(a.agreement == 1.0 and a.n > 0 for a in ag.per_annotator.values())
    assert np.count_nonzero(ag.coincidence - np.diag(np.diag(ag.coincidence))) == 0
    assert "alpha 1.00" in ag.status_line()


def _simulate(rng, n_tasks, acc, p):
    """n_tasks tasks, each labeled by 2 or 3 members of the team drawn at random."""
    names = list(acc)
    y = rng.choice(len(p), n_tasks, p=p)
    votes = []
    for i in range(n_tasks):
        for a in rng.choice(names, 2 + (rng.random() < 0.3), replace=False):
            lab = y[i] if rng.random() < acc[a] else rng.integers(0, len(p))
            votes.append(Vote(i, str(a), CLASSES[lab]))
    return votes


def test_alpha_interval_covers_the_simulated_truth():
    acc, p = {"ann": 0.9, "bob": 0.8, "careless": 0.4}, [0.5, 0.3, 0.2]
    rng = np.random.default_rng(0)
    truth = alpha(unit_counts(_simulate(rng, 20000, acc, p), CLASSES)[1], n_boot=0).alpha
    hits, reps = 0, 60
    for r in range(reps):
        counts = unit_counts(_simulate(rng, 80, acc, p), CLASSES)[1]
        est = alpha(counts, n_boot=400, seed=r)
        hits += est.low <= truth <= est.high
    assert 0.2 < truth < 0.8
    assert hits / reps >= 0.85  # nominal 95%: scripts/benchmark_consensus.py measures it at 200 repeats


def test_per_annotator_and_per_class_and_reviewers_left_out():
    rng = np.random.default_rng(1)
    votes = _simulate(rng, 300, {"ann": 0.95, "bob": 0.95, "careless": 0.3}, [0.4, 0.3, 0.3])
    votes += [Vote(i, "dr_path", "A") for i in range(5)]  # a reviewer: not part of alpha
    cons = consensus(votes, classes=CLASSES, reviewers={"dr_path"})
    ag = agreement(votes, reviewers={"dr_path"}, cons=cons, n_boot=300)
    assert "dr_path" not in ag.per_annotator and ag.project.n_tasks == 300
    pa = ag.per_annotator
    assert pa["careless"].agreement < pa["ann"].agreement - 0.2
    assert pa["careless"].interval[1] < pa["ann"].interval[0]
    assert pa["careless"].alpha.alpha < pa["ann"].alpha.alpha
    assert set(ag.per_class) == set(CLASSES) and all(-1 <= e.alpha <= 1 for e in ag.per_class.values())
    assert "lowest: careless" in ag.status_line()
    d = ag.to_dict()
    assert d["project"]["n_tasks"] == 300 and len(d["coincidence"]) == 3
    # restricted to a subset of tasks (the random overlap share)
    assert agreement(votes, reviewers={"dr_path"}, cons=cons, tasks=range(100), n_boot=100).project.n_tasks == 100


def test_confused_pairs_come_from_the_coincidences():
    votes = [Vote(i, "ann", "A") for i in range(20)] + [Vote(i, "bob", "B" if i < 8 else "A") for i in range(20)]
    votes += [Vote(100 + i, "ann", "C") for i in range(10)] + [Vote(100 + i, "bob", "C") for i in range(10)]
    ag = agreement(votes, classes=CLASSES, n_boot=100)
    assert ag.confused_pairs()[0][:2] == ("A", "B") and ag.confused_pairs()[0][2] == pytest.approx(8)  # 8 tasks: A against B


def test_no_overlap_is_not_measured():
    ag = agreement([Vote(1, "ann", "A"), Vote(2, "bob", "B")], classes=CLASSES, n_boot=100)
    assert not np.isfinite(ag.project.alpha) and ag.project.n_tasks == 0
    assert "not measured yet" in ag.status_line()
