"""The default strategy: informative AND varied batches.

1. No model yet, or fewer labels than `cold_start_labels` (default 2 per class, at least 10):
   TypiClust cold start (`sampler.coldstart`).
2. A share of the batch goes to the classes with the fewest labels (`sampler.balance`).
3. The rest: the `beta` x budget most uncertain images (margin) are pre-selected, clustered
   into as many groups as picks are left with uncertainty-weighted k-means, and the image
   nearest each group centre is taken (Zhdanov 2019, "Diverse mini-batch active learning").
   Pre-selecting keeps the diversity step small (10k x 1280 for 1,000 picks), whatever the pool.
"""
from __future__ import annotations

import numpy as np

from .balance import rare_class_quota
from .coldstart import typiclust
from .diversity import kmeans, representatives
from .pool import Pool
from .space import Space
from .uncertainty import margin, top2

BETA = 10
RARE_FRAC = 0.25


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, best first (stable on ties)."""
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, np.int64)
    part = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return part[np.argsort(-scores[part], kind="stable")]


def hybrid(pool: Pool):
    p = pool.probs
    n_lab = len(pool.labeled_rows)
    if p is None:
        return typiclust(pool, "cold start (no model yet)")
    c = p.shape[1]
    if n_lab < int(pool.opt("cold_start_labels", max(10, 2 * c))):
        return typiclust(pool, "cold start (few labels)")

    unl = pool.unlabeled_rows
    pu = p[unl]
    u = margin(pu)
    a, b = top2(pu)
    taken = np.zeros(len(unl), bool)
    out = []
    # 2. rare classes
    quota = rare_class_quota(p, pool.labeled, pool.budget, float(pool.opt("rare_frac", RARE_FRAC)))
    for cls, q in sorted(quota.items()):
        pc = np.where(taken, -np.inf, pu[:, cls])
        for j in _top(pc, q):
            taken[j] = True
            out.append((int(unl[j]), float(u[j]),
                        f"rare class: likely {pool.class_name(cls)} (p={pu[j, cls]:.2f}), "
                        f"a class with few labels"))
    # 3. uncertain + diverse
    n_main = pool.budget - len(out)
    if n_main > 0:
        beta = float(pool.opt("beta", BETA))
        free = np.flatnonzero(~taken)
        cand = free[_top(u[free], int(max(n_main, beta * n_main)))]
        space = Space.fit(pool.x, unl[cand], len(cand), pool.rng)
        v = space.transform(pool.x, unl[cand])
        w = u[cand] + 1e-3
        _, assign, sims = kmeans(v, min(n_main, len(cand)), seed=pool.seed, weights=w)
        clusters, members = representatives(assign, sims)
        weight = np.bincount(assign, weights=w, minlength=assign.max() + 1)[clusters]
        for j in members[np.argsort(-weight, kind="stable")]:
            r = cand[j]
            taken[r] = True
            out.append((int(unl[r]), float(u[r]),
                        f"uncertain and unlike the rest of the batch: top two classes "
                        f"{a[r]:.2f} vs {b[r]:.2f}"))
        # extras (used only if near-duplicate removal needs replacements)
        for r in cand:
            if not taken[r] and len(out) < pool.budget * 2 + 8:
                out.append((int(unl[r]), float(u[r]), f"uncertain: top two classes {a[r]:.2f} vs {b[r]:.2f}"))
    return out
