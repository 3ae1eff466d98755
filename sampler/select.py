"""`sampler.select`: the one entry point, and the registry of named strategies.

Every strategy returns candidate rows ranked best first with a score and a human reason;
`select` then enforces the contract (unique, unlabeled, exactly min(budget, #unlabeled)),
removes near-duplicates for the diversity-aware strategies, and fills short batches.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._faiss import max_sim
from .coldstart import typiclust
from .diversity import kcenter, kmeans_reps
from .hybrid import hybrid
from .pool import Pool
from .space import CHUNK_ROWS, gather_unit
from .uncertainty import SCORES, top2

DUP_THRESHOLD = 0.99  # raw cosine similarity above which two images count as near-duplicates


@dataclass(frozen=True)
class Pick:
    row: int      # row in the embedding matrix
    key: str      # image key (path relative to the image root)
    score: float  # priority, higher = label first
    reason: str   # which criterion picked it, in words


def _random(pool: Pool):
    rows = pool.rng.permutation(pool.unlabeled_rows)[:pool.budget]
    return [(int(r), 1.0 - i / max(len(rows), 1), "random: baseline pick") for i, r in enumerate(rows)]


def _uncertainty(name: str, words: str):
    fn = SCORES[name]

    def strategy(pool: Pool):
        if pool.probs is None:
            return typiclust(pool, f"cold start (no model yet, {name} needs one)")
        unl = pool.unlabeled_rows
        pu = pool.probs[unl]
        s = fn(pu)
        tie = pool.rng.random(len(unl))
        order = np.lexsort((tie, -s))[:pool.budget]
        a, b = top2(pu[order])
        return [(int(unl[j]), float(s[j]), f"{words} (top two classes {x:.2f} vs {y:.2f})")
                for j, x, y in zip(order, a, b)]

    strategy.__name__ = name
    return strategy


STRATEGIES: dict[str, tuple] = {
    "random": (_random, "Random unlabeled images: the baseline every other strategy must beat."),
    "least_confidence": (_uncertainty("least_confidence", "least confidence: the model's best guess is weak"),
                         "Images whose most likely class still has a low probability."),
    "margin": (_uncertainty("margin", "margin: the model hesitates between two classes"),
               "Images where the model hesitates between its two most likely classes."),
    "entropy": (_uncertainty("entropy", "entropy: the model's belief is spread over classes"),
                "Images where the model spreads its belief over many classes."),
    "kcenter": (kcenter, "Images least similar to anything already labeled, to cover all the "
                         "variety in the data (core-set)."),
    "kmeans": (kmeans_reps, "The most central image of each of as many groups of similar-looking "
                            "images as you asked for."),
    "typiclust": (typiclust, "Cold start: the most typical image of each group of similar images "
                             "that has no label yet; needs no model."),
    "hybrid": (hybrid, "Default: images the model is unsure about, one per group of look-alikes "
                       "(late on, just the most unsure), plus some for classes with few labels."),
}
# strategies that promise "never a batch of near-duplicates"
DEDUPE = {"kcenter", "kmeans", "typiclust", "hybrid"}


def _as_mask(labeled_mask, n: int) -> np.ndarray:
    if labeled_mask is None:
        return np.zeros(n, bool)
    m = np.asarray(labeled_mask)
    if m.dtype == bool:
        if m.shape != (n,):
            raise ValueError(f"labeled_mask has shape {m.shape}, expected ({n},)")
        return m.copy()
    mask = np.zeros(n, bool)  # also accept a list of labeled row numbers
    mask[m.astype(np.int64)] = True
    return mask


def _max_cos_to_rows(x, q_unit: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Max raw cosine of each query with x[rows], scanning rows in chunks."""
    best = np.full(len(q_unit), -np.inf, np.float32)
    for s in range(0, len(rows), CHUNK_ROWS):
        np.maximum(best, max_sim(q_unit, gather_unit(x, rows[s:s + CHUNK_ROWS]))[0], out=best)
    return best


def _finalize(pool: Pool, ranked, dedupe: bool, threshold: float):
    """Unique + unlabeled, near-duplicates moved out (diversity strategies), topped up to
    exactly min(budget, #unlabeled) with seeded random fillers, sorted by score."""
    budget = min(pool.budget, len(pool.unlabeled_rows))
    seen, clean = set(), []
    for row, score, reason in ranked:
        if row not in seen and not pool.labeled[row]:
            seen.add(row)
            clean.append((row, float(score), reason))
    lo = min((s for _, s, _ in clean), default=1.0)
    rest = np.setdiff1d(pool.unlabeled_rows, np.fromiter(seen, np.int64, len(seen)))
    rest = np.random.default_rng([pool.seed, 99]).permutation(rest)
    if not dedupe:
        clean += [(int(r), lo * 0.5 / (1 + i), "filler: batch topped up at random")
                  for i, r in enumerate(rest[:max(0, budget - len(clean))])]
        out = clean[:budget]
    else:
        picked, deferred, kept = [], [], None
        # candidates in rank order, then random fillers in blocks, until the batch is full
        blocks = [clean] + [[(int(r), lo * 0.5 / (1 + s + i), "filler: batch topped up at random")
                             for i, r in enumerate(rest[s:s + 4 * budget + 64])]
                            for s in range(0, len(rest), 4 * budget + 64)]
        for block in blocks:
            if len(picked) == budget or not block:
                break
            q = gather_unit(pool.x, np.asarray([r for r, _, _ in block], np.int64))
            if kept is None:
                kept = np.empty((budget, q.shape[1]), np.float32)
            ref = _max_cos_to_rows(pool.x, q, pool.labeled_rows)
            for i, item in enumerate(block):
                if len(picked) == budget:
                    break
                n = len(picked)
                if ref[i] >= threshold or (n and float((kept[:n] @ q[i]).max()) >= threshold):
                    deferred.append(item)
                else:
                    kept[n] = q[i]
                    picked.append(item)
        floor = min((s for _, s, _ in picked), default=1.0) * 0.25
        out = picked + [(r, floor / (1 + i), why + " [near-duplicate of a labeled or picked image]")
                        for i, (r, _, why) in enumerate(deferred[:budget - len(picked)])]
    out.sort(key=lambda t: -t[1])  # stable: strategy order breaks ties
    return out


def select(embeddings, probs, labeled_mask, budget, strategy="hybrid", seed=0, keys=None, **options):
    """Rank unlabeled images for labeling.

    embeddings (N, D) float array; probs (N, C) class probabilities or None (no model yet:
    cold start); labeled_mask (N,) bool (or a list of labeled rows); budget: how many images.
    keys: image keys per row (default: the row number as text). options: strategy knobs
    (class_names, beta, rare_frac, cold_start_labels, dup_threshold, max_pool, ...).
    Returns `Pick`s, best first, at most min(budget, #unlabeled), unique, unlabeled.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {sorted(STRATEGIES)}")
    x = embeddings if isinstance(embeddings, np.ndarray) else np.asarray(embeddings, np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (N, D), got shape {x.shape}")
    n = len(x)
    if probs is not None:
        probs = np.asarray(probs, np.float32)
        if probs.ndim != 2 or len(probs) != n:
            raise ValueError(f"probs must be (N={n}, C), got shape {probs.shape}")
    if keys is not None and len(keys) != n:
        raise ValueError(f"keys has {len(keys)} entries for {n} embeddings")
    mask = _as_mask(labeled_mask, n)
    budget = int(budget)
    if budget <= 0 or mask.all():
        return []
    pool = Pool(x, probs, mask, min(budget, int((~mask).sum())), int(seed), options)
    ranked = STRATEGIES[strategy][0](pool)
    final = _finalize(pool, ranked, strategy in DEDUPE,
                      float(options.get("dup_threshold", DUP_THRESHOLD)))
    return [Pick(r, str(keys[r]) if keys is not None else str(r), float(s), why) for r, s, why in final]
