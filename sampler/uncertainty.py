"""Uncertainty scores from class probabilities (higher = the model is less sure).

All three are in [0, 1] and cost O(N x C) with no copy of the embeddings.
"""
from __future__ import annotations

import numpy as np


def least_confidence(p: np.ndarray) -> np.ndarray:
    """1 - probability of the top class."""
    return (1.0 - p.max(axis=1)).astype(np.float32)


def top2(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(best, second best) probability per row; second is 0 with a single class."""
    if p.shape[1] == 1:
        return p[:, 0], np.zeros(len(p), p.dtype)
    part = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return part[:, 1], part[:, 0]


def top2_gap(p: np.ndarray) -> np.ndarray:
    """p1 - p2 per row, in [0, 1] (the raw top-2 margin; low = the model hesitates)."""
    a, b = top2(p)
    return a - b


def margin(p: np.ndarray) -> np.ndarray:
    """1 - (p1 - p2): the model hesitates between its two best classes."""
    return (1.0 - top2_gap(p)).astype(np.float32)


def entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy normalised by log(C): belief spread over many classes."""
    c = p.shape[1]
    if c < 2:
        return np.zeros(len(p), np.float32)
    q = np.clip(p, 1e-12, 1.0)
    return (-(q * np.log(q)).sum(axis=1) / np.log(c)).astype(np.float32)


SCORES = {"least_confidence": least_confidence, "margin": margin, "entropy": entropy}
