import os
import subprocess
import sys

import numpy as np
import pytest

import sampler
from sampler import STRATEGIES, Pick, select


def blobs(n_per=40, k=6, d=32, seed=0, spread=1.0):
    """k well-separated clusters; probs that make cluster 0 / 1 confusable."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)).astype(np.float32) * 3
    y = np.repeat(np.arange(k), n_per)
    x = centres[y] + spread * rng.standard_normal((len(y), d)).astype(np.float32)
    logits = rng.standard_normal((len(y), k)).astype(np.float32)
    logits[np.arange(len(y)), y] += 3
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    return x.astype(np.float32), p.astype(np.float32), y


def check(picks, labeled, want, n):
    rows = [p.row for p in picks]
    assert len(picks) == want
    assert len(set(rows)) == len(rows)
    assert all(isinstance(p, Pick) for p in picks)
    assert all(0 <= r < n for r in rows)
    assert not labeled[rows].any()
    scores = [p.score for p in picks]
    assert scores == sorted(scores, reverse=True)
    assert all(p.reason for p in picks)


def test_registry_has_one_line_descriptions():
    for name in ["random", "least_confidence", "margin", "entropy", "kcenter", "kmeans", "typiclust", "hybrid"]:
        fn, desc = STRATEGIES[name]
        assert callable(fn) and isinstance(desc, str) and "\n" not in desc and len(desc) < 160


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("n_labeled", [0, 3, 60])
@pytest.mark.parametrize("with_probs", [False, True])
def test_valid_unique_unlabeled(strategy, n_labeled, with_probs):
    x, p, _ = blobs()
    lab = np.zeros(len(x), bool)
    lab[np.random.default_rng(1).choice(len(x), n_labeled, replace=False)] = True
    keys = [f"c/{i}.tif" for i in range(len(x))]
    picks = select(x, p if with_probs else None, lab, 17, strategy=strategy, seed=3, keys=keys)
    check(picks, lab, 17, len(x))
    assert all(pk.key == keys[pk.row] for pk in picks)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_budget_larger_than_pool(strategy):
    x, p, _ = blobs(n_per=5, k=3)
    lab = np.zeros(len(x), bool)
    lab[:4] = True
    picks = select(x, p, lab, 1000, strategy=strategy)
    check(picks, lab, len(x) - 4, len(x))
    assert select(x, p, np.ones(len(x), bool), 5, strategy=strategy) == []
    assert select(x, p, lab, 0, strategy=strategy) == []


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_one_class_only(strategy):
    x, _, _ = blobs()
    p = np.ones((len(x), 1), np.float32)
    lab = np.zeros(len(x), bool)
    lab[:20] = True
    check(select(x, p, lab, 10, strategy=strategy), lab, 10, len(x))


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_all_duplicate_images(strategy):
    """Every image identical: still a full, valid batch (flagged as near-duplicates)."""
    x = np.tile(np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32), (30, 1))
    p = np.full((30, 3), 1 / 3, np.float32)
    lab = np.zeros(30, bool)
    lab[:12] = True
    picks = select(x, p, lab, 8, strategy=strategy)
    check(picks, lab, 8, 30)


def copies_dataset(seed=0):
    """8 distinct cell types (20 images each, confident predictions) plus 25 near-copies of one
    ambiguous image the model is maximally unsure about: uncertainty alone picks the copies."""
    x, p, y = blobs(n_per=20, k=8, d=48, seed=seed, spread=1.5)
    rng = np.random.default_rng(seed + 1)
    base = rng.standard_normal(48).astype(np.float32) * 3
    dup = base + 0.01 * rng.standard_normal((25, 48)).astype(np.float32)
    p = np.full_like(p, 0.01)
    p[np.arange(len(p)), y] = 1 - 0.01 * 7
    pdup = np.full((25, 8), 0.02, np.float32)
    pdup[:, :2] = 0.44
    x = np.vstack([x, dup]).astype(np.float32)
    p = np.vstack([p, pdup]).astype(np.float32)
    lab = np.zeros(len(x), bool)
    lab[rng.choice(160, 24, replace=False)] = True  # 24 labels: past the cold start
    return x, p, lab, np.arange(160, 185)


def test_uncertainty_alone_picks_copies():
    x, p, lab, dups = copies_dataset()
    picks = select(x, p, lab, 10, strategy="margin")
    assert sum(pk.row in set(dups) for pk in picks) == 10


@pytest.mark.parametrize("strategy", ["hybrid", "kcenter", "kmeans", "typiclust"])
def test_diversity_avoids_near_duplicates(strategy):
    x, p, lab, dups = copies_dataset()
    picks = select(x, p, lab, 10, strategy=strategy)
    check(picks, lab, 10, len(x))
    assert sum(pk.row in set(dups) for pk in picks) <= 1
    if strategy == "hybrid":  # still informative: the ambiguous image itself is picked once
        assert sum(pk.row in set(dups) for pk in picks) == 1
    # no two picks are near-duplicates of each other
    u = x[[pk.row for pk in picks]]
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    s = u @ u.T
    np.fill_diagonal(s, 0)
    assert s.max() < 0.99


def test_cold_start_never_near_duplicates():
    x, _, _, dups = copies_dataset()
    lab = np.zeros(len(x), bool)
    picks = select(x, None, lab, 12, strategy="hybrid")
    assert sum(pk.row in set(dups) for pk in picks) <= 1
    assert all(pk.reason.startswith("cold start") for pk in picks)
    # the 8 cell types plus the copy group: every group represented once before any repeats
    _, _, y = blobs(n_per=20, k=8, d=48, seed=0, spread=1.5)
    groups = [y[r] if r < 160 else 8 for r in (pk.row for pk in picks[:9])]
    assert len(set(groups)) == 9


def test_rare_class_not_starved():
    """Class 4 is rare and unlabeled; uncertain images are all between classes 0 and 1."""
    x, _, y = blobs(n_per=50, k=5, d=32, seed=2)
    keep = (y != 4) | (np.arange(len(y)) % 10 == 0)  # 5 images of class 4
    x, y = x[keep], y[keep]
    p = np.full((len(y), 5), 0.01, np.float32)
    p[np.arange(len(y)), y] = 0.96
    p[y == 4] = [0.45, 0.2, 0.01, 0.01, 0.33]  # rare class never the argmax
    amb = np.flatnonzero(y == 0)[:30]
    p[amb] = [0.48, 0.47, 0.02, 0.02, 0.01]
    lab = np.zeros(len(y), bool)
    for c in range(4):
        lab[np.flatnonzero(y == c)[-5:]] = True
    margin_rows = {pk.row for pk in select(x, p, lab, 8, strategy="margin")}
    assert not any(y[r] == 4 for r in margin_rows)
    picks = select(x, p, lab, 8, strategy="hybrid")
    assert any(y[pk.row] == 4 for pk in picks)
    assert any("rare class" in pk.reason for pk in picks)


def test_rare_class_slots_only_while_a_class_is_short():
    """Balanced labels: every slot goes to uncertain, varied images (a quota would buy easy
    ones); once one class falls short (below half the mean per class), it gets the slots."""
    from sampler.balance import rare_class_quota

    x, p, y = blobs(n_per=40, k=4, d=16, seed=5)
    p = np.full((len(y), 4), 0.02, np.float32)
    p[np.arange(len(y)), y] = 0.94
    lab = np.zeros(len(y), bool)
    for c in range(4):
        lab[np.flatnonzero(y == c)[:6]] = True
    assert rare_class_quota(p, lab, 20, 0.2) == {}
    picks = select(x, p, lab, 20, strategy="hybrid")
    assert not any("rare class" in pk.reason for pk in picks)
    lab[np.flatnonzero(y == 3)[1:6]] = False  # class 3: 1 label against a mean of 4.75
    assert rare_class_quota(p, lab, 20, 0.2) == {3: 2}  # 1 + 2 slots pass half the mean (2.4)
    assert rare_class_quota(p, lab, 20, 0.2, deficit=np.inf) == {3: 4}  # the rule before
    picks = select(x, p, lab, 20, strategy="hybrid")
    assert [y[pk.row] for pk in picks if "rare class" in pk.reason] == [3, 3]


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_deterministic_for_a_seed(strategy):
    x, p, _ = blobs()
    lab = np.zeros(len(x), bool)
    lab[::7] = True
    a = select(x, p, lab, 12, strategy=strategy, seed=5)
    b = select(x, p, lab, 12, strategy=strategy, seed=5)
    assert [k.row for k in a] == [k.row for k in b]


def test_labeled_rows_list_and_errors():
    x, p, _ = blobs()
    picks = select(x, p, [0, 1, 2], 5, strategy="margin")
    assert {0, 1, 2}.isdisjoint(pk.row for pk in picks)
    with pytest.raises(ValueError, match="unknown strategy"):
        select(x, p, None, 5, strategy="nope")
    with pytest.raises(ValueError):
        select(x, p[:10], None, 5)


def test_large_pool_path_pca_and_subsample():
    """Exercise the >max_pool subsample and PCA-reduced working space on a small scale."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6000, 300)).astype(np.float32)
    p = rng.dirichlet(np.ones(4), 6000).astype(np.float32)
    lab = np.zeros(6000, bool)
    lab[:200] = True
    import sampler.space as space

    old = space.MAX_WORK_ELEMS
    space.MAX_WORK_ELEMS = 100_000
    try:
        for s in ["kcenter", "kmeans", "typiclust", "hybrid"]:
            check(select(x, p, lab, 30, strategy=s, max_pool=2000), lab, 30, 6000)
    finally:
        space.MAX_WORK_ELEMS = old


def test_import_sets_openblas_coretype_before_faiss():
    flags = open("/proc/cpuinfo").read()
    want = "SKYLAKEX" if " avx512f" in flags else ("HASWELL" if " avx2" in flags else None)
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    code = ("import sys, os, sampler; assert 'faiss' not in sys.modules; "
            "print(os.environ.get('OPENBLAS_CORETYPE'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(sampler.__file__)), check=True)
    assert out.stdout.strip() == str(want)


def test_hybrid_late_rounds_are_uncertainty_only():
    """Once most of the pool is labeled (late_frac, 70%), hybrid picks the most uncertain
    images (no diversity step), and says so; before that the diversity step runs."""
    from sampler.hybrid import LATE_FRAC

    x, p, y = blobs(n_per=30, k=4, d=16, seed=3)
    n = len(y)
    rng = np.random.default_rng(0)
    lab = np.zeros(n, bool)
    lab[rng.choice(n, int(np.ceil(LATE_FRAC * n)), replace=False)] = True
    picks = select(x, p, lab, 5, strategy="hybrid", rare_frac=0.0)
    check(picks, lab, 5, n)
    assert all("late round" in pk.reason for pk in picks)
    unl = np.flatnonzero(~lab)
    m = 1 - np.diff(np.sort(p[unl], axis=1)[:, -2:], axis=1)[:, 0]
    assert {pk.row for pk in picks} == set(unl[np.argsort(-m, kind="stable")[:5]].tolist())
    early = np.zeros(n, bool)
    early[rng.choice(n, 30, replace=False)] = True
    assert not any("late round" in pk.reason for pk in select(x, p, early, 5, strategy="hybrid"))
