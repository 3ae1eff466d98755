"""Class-balance awareness: predicted-rare classes are not starved.

Why: uncertain images sit between the common classes, so a rare class (3 basophils among 350
cells) may never be picked and never learned. Up to a share of every batch
(`sampler.hybrid.RARE_FRAC`) is water-filled over the classes with the fewest labels (as the
model reads the labeled images), each slot going to the unlabeled image the model finds most
likely to be of that class, but only while a class is short: below `deficit` (half) of the
mean labels per class. On a balanced pool the slots go back to uncertainty x diversity (a
quota there buys easy images: measured on pbc_blood, docs/benchmarks.md "Learning engine").
"""
from __future__ import annotations

import numpy as np


DEFICIT = 0.5


def rare_class_quota(probs: np.ndarray, labeled: np.ndarray, budget: int, frac: float = 0.25,
                     deficit: float = DEFICIT) -> dict[int, int]:
    """{class: slots} for the short classes. probs (N, C), labeled (N,) bool; at most
    round(frac x budget) slots in all; a class is short while its count (labeled images the
    model assigns to it, plus slots given) is below deficit x the mean count per class
    (deficit=inf: every slot is given, the rule before the multiscale learner)."""
    c = probs.shape[1]
    reserve = int(round(frac * budget))
    if c < 2 or reserve <= 0:
        return {}
    lab_counts = np.bincount(probs[labeled].argmax(axis=1), minlength=c).astype(float)
    bar = deficit * lab_counts.mean()
    given = np.zeros(c)
    n_unl = int((~labeled).sum())
    for _ in range(min(reserve, n_unl)):
        j = int(np.argmin(lab_counts + given))
        if lab_counts[j] + given[j] >= bar:
            break
        given[j] += 1
    return {j: int(g) for j, g in enumerate(given) if g > 0}
