"""Class-balance awareness: predicted-rare classes are not starved.

Why: uncertain images sit between the common classes, so a rare class (3 basophils among 350
cells) may never be picked and never learned. A share of every batch (25% by default) is
water-filled over the classes with the fewest labels (as the model reads the labeled images),
each slot going to the unlabeled image the model finds most likely to be of that class.
"""
from __future__ import annotations

import numpy as np


def rare_class_quota(probs: np.ndarray, labeled: np.ndarray, budget: int, frac: float = 0.25) -> dict[int, int]:
    c = probs.shape[1]
    reserve = int(round(frac * budget))
    if c < 2 or reserve <= 0:
        return {}
    lab_counts = np.bincount(probs[labeled].argmax(axis=1), minlength=c).astype(float)
    given = np.zeros(c)
    n_unl = int((~labeled).sum())
    for _ in range(min(reserve, n_unl)):
        j = int(np.argmin(lab_counts + given))
        given[j] += 1
    return {j: int(g) for j, g in enumerate(given) if g > 0}
