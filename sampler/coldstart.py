"""Cold start (no model yet, or very few labels): TypiClust-style typical images.

Why: with no model, uncertainty is meaningless and k-center picks outliers (debris, blur).
Cluster the pool into (labeled + budget) groups and label the most *typical* image (densest
neighbourhood) of each group that has no label yet, largest groups first. One pick per group
means never a batch of near-duplicates. (Hacohen et al. 2022, "Active learning on a budget".)
"""
from __future__ import annotations

import numpy as np

from .diversity import kmeans
from .pool import Pool
from .space import Space

KNN = 20
MAX_MEMBERS = 2000


def typicality(v: np.ndarray, k: int = KNN) -> np.ndarray:
    """1 / mean cosine distance to the k nearest neighbours inside the group."""
    m = len(v)
    if m <= 1:
        return np.ones(m, np.float32)
    k = min(k, m - 1)
    d = 1.0 - v @ v.T
    np.fill_diagonal(d, np.inf)
    knn = np.partition(d, k - 1, axis=1)[:, :k]
    return (1.0 / (np.clip(knn.mean(axis=1), 0, None) + 1e-6)).astype(np.float32)


def typiclust(pool: Pool, reason_prefix: str = "cold start"):
    unl = pool.capped(pool.unlabeled_rows, salt=4)
    lab = pool.capped(pool.labeled_rows, salt=5)
    rows = np.concatenate([unl, lab])
    is_lab = np.r_[np.zeros(len(unl), bool), np.ones(len(lab), bool)]
    space = Space.fit(pool.x, rows, len(rows), pool.rng)
    v = space.transform(pool.x, rows)
    k = int(min(len(lab) + pool.budget, len(rows), pool.opt("max_clusters", len(lab) + pool.budget)))
    # huge pools: 64 points per centroid is plenty to place the centroids; every point is
    # then assigned. Small pools: all points (see diversity.kmeans).
    mppc = 64 if len(rows) > 64 * k * 4 else None
    _, assign, _ = kmeans(v, max(k, 1), seed=pool.seed, max_points_per_centroid=mppc)
    size = np.bincount(assign, minlength=k)
    n_lab = np.bincount(assign[is_lab], minlength=k)
    n_unl = size - n_lab
    cl = np.flatnonzero(n_unl > 0)
    # uncovered groups first, then the least covered; larger groups first within a level
    order = cl[np.lexsort((-size[cl], n_lab[cl] / size[cl]))]
    members_of = np.argsort(assign, kind="stable")
    starts = np.r_[0, np.cumsum(size)]
    out = []
    want = pool.budget + 8
    for rank, c in enumerate(order[:want]):
        mem = members_of[starts[c]:starts[c + 1]]
        if len(mem) > MAX_MEMBERS:
            mem = pool.rng.choice(mem, MAX_MEMBERS, replace=False)
        typ = typicality(v[mem])
        typ[is_lab[mem]] = -np.inf
        if np.isneginf(typ).all():
            continue
        j = mem[int(np.argmax(typ))]
        state = "no label yet" if n_lab[c] == 0 else f"{int(n_lab[c])} labeled"
        out.append((int(rows[j]), float(1.0 - rank / max(len(order), 1)),
                    f"{reason_prefix}: most typical image of a group of {int(size[c])} similar "
                    f"images ({state})"))
    return out
