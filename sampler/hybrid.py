"""The default strategy: informative AND varied batches.

1. No model yet, or fewer labels than `cold_start_labels` (default 2 per class, at least 10):
   TypiClust cold start (`sampler.coldstart`).
2. Up to a share of the batch (`rare_frac`, 20%) goes to the classes that are short of labels
   (fewer than `deficit`, half, of the mean per class; `sampler.balance`): macro-F1 weighs
   every class alike; on a balanced pool these slots go to step 3.
3. The rest: the `beta` x budget most uncertain images (margin), but at most `cand_frac` (30%)
   of the unlabeled images, are pre-selected, clustered into as many groups as picks are left
   with uncertainty-weighted k-means, and the image nearest each group centre is taken
   (Zhdanov 2019, "Diverse mini-batch active learning"). Pre-selecting keeps the diversity
   step small (10k x 1280 for 1,000 picks), whatever the pool; the 30% cap keeps it about
   *uncertain* images when the pool is small (10 x budget would otherwise be most of it).
4. Late rounds (`late_frac`: 70% of the pool labeled): the remaining images are few and mostly
   easy, so spreading picks over them only dilutes the uncertainty signal: plain margin.
Tuned on bccd_wbc + the synthetic set, 5 seeds each (docs/benchmarks.md, "Sampler: label
efficiency"); `rare_frac` and `deficit` re-tuned for the multiscale learner (0.1 for every
class -> 0.2 for short classes only: bccd 20 seeds, synthetic 20, pbc_blood 5; "Learning
engine"); `rare_frac`, `deficit`, `beta`, `cand_frac`, `late_frac`, `pick`, `cold_start_labels` are
`select(...)` options.
"""
from __future__ import annotations

import numpy as np

from .balance import DEFICIT, rare_class_quota
from .coldstart import typiclust
from .diversity import kmeans, representatives
from .pool import Pool
from .space import Space
from .uncertainty import margin, top2

BETA = 10
RARE_FRAC = 0.2   # share of the batch for the classes with the fewest labels (0.25, then 0.1 for the old learner)
LATE_FRAC = 0.7   # once this share of the pool is labeled: uncertainty only, no diversity step
CAND_FRAC = 0.3   # the pre-selection never takes more than this share of the unlabeled images
PICK = "centre"    # per group: "centre" (image nearest the group centre) or "margin" (most uncertain)


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
    quota = rare_class_quota(p, pool.labeled, pool.budget, float(pool.opt("rare_frac", RARE_FRAC)),
                             float(pool.opt("deficit", DEFICIT)))
    for cls, q in sorted(quota.items()):
        pc = np.where(taken, -np.inf, pu[:, cls])
        for j in _top(pc, q):
            taken[j] = True
            out.append((int(unl[j]), float(u[j]),
                        f"rare class: likely {pool.class_name(cls)} (p={pu[j, cls]:.2f}), "
                        f"a class with few labels"))
    # 3. uncertain + diverse
    n_main = pool.budget - len(out)
    late = n_lab / max(len(p), 1) >= float(pool.opt("late_frac", LATE_FRAC))
    if n_main > 0 and late:
        free = np.flatnonzero(~taken)
        for r in free[_top(u[free], pool.budget * 2 + 8 - len(out))]:
            taken[r] = True
            out.append((int(unl[r]), float(u[r]), f"uncertain (late round, most images labeled): "
                                                   f"top two classes {a[r]:.2f} vs {b[r]:.2f}"))
    elif n_main > 0:
        beta = float(pool.opt("beta", BETA))
        free = np.flatnonzero(~taken)
        n_cand = int(max(n_main, min(beta * n_main, float(pool.opt("cand_frac", CAND_FRAC)) * len(free))))
        cand = free[_top(u[free], n_cand)]
        space = Space.fit(pool.x, unl[cand], len(cand), pool.rng)
        v = space.transform(pool.x, unl[cand])
        w = u[cand] + 1e-3
        _, assign, sims = kmeans(v, min(n_main, len(cand)), seed=pool.seed, weights=w)
        clusters, members = representatives(assign, u[cand] if pool.opt("pick", PICK) == "margin" else sims)
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
