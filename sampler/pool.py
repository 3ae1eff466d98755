"""The selection problem handed to every strategy (one object, so strategies stay small)."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

# Diversity work on pools larger than this runs on a seeded uniform subsample of the unlabeled
# rows: a uniform sample of 200k covers the same modes as 1M, and greedy k-center / k-means then
# stay within seconds and a few hundred MB on 2 CPU cores.
MAX_POOL = 200_000


@dataclass
class Pool:
    x: np.ndarray                 # (N, D) embeddings (float32 preferred; memmap fine)
    probs: np.ndarray | None      # (N, C) class probabilities, None before a model exists
    labeled: np.ndarray           # (N,) bool
    budget: int
    seed: int = 0
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        self.rng = np.random.default_rng(self.seed)

    def opt(self, name, default):
        return self.options.get(name, default)

    @cached_property
    def unlabeled_rows(self) -> np.ndarray:
        return np.flatnonzero(~self.labeled)

    @cached_property
    def labeled_rows(self) -> np.ndarray:
        return np.flatnonzero(self.labeled)

    def capped(self, rows: np.ndarray, salt: int = 0) -> np.ndarray:
        """rows, or a seeded sorted uniform subsample of MAX_POOL of them."""
        cap = int(self.opt("max_pool", MAX_POOL))
        if len(rows) <= cap:
            return rows
        rng = np.random.default_rng([self.seed, salt])
        return np.sort(rng.choice(rows, cap, replace=False))

    def class_name(self, c: int) -> str:
        names = self.opt("class_names", None)
        return str(names[c]) if names is not None and c < len(names) else f"class {c}"
