"""Embedding geometry used by every diversity criterion.

Why: CNN features share a large common component, so raw cosine similarities are all high;
centring on the pool mean and re-normalising spreads them out ("centred cosine"). When the
working set is large (e.g. 1M x 1280 = 4.9 GB) the vectors are projected on their top
principal components (128 by default) so that k-means / k-center fit in a fraction of the
embedding matrix and run at memory-bandwidth speed. All work is float32, in row chunks: the
full embedding matrix is never copied.
"""
from __future__ import annotations

import numpy as np

CHUNK_ROWS = 16384
MAX_WORK_ELEMS = 64_000_000  # above this many floats the working copy is PCA-reduced
PCA_DIM = 128
PCA_SAMPLE = 20000


def normalize_rows(a: np.ndarray) -> np.ndarray:
    """In-place L2 normalisation of float32 rows (zero rows stay zero)."""
    n = np.sqrt(np.einsum("ij,ij->i", a, a))
    n[n == 0] = 1.0
    a /= n[:, None]
    return a


def centred_unit(emb: np.ndarray) -> np.ndarray:
    """A float32 copy of the rows centred on their raw mean, then L2-normalised: the image QC's
    "centred cosine" (trainer.quality.embedding_scores). `Space` centres differently (unit rows
    first, then their mean, then unit again): two definitions kept apart until a benchmark decides
    (docs/architecture.md, follow-ups)."""
    x = np.array(emb, dtype=np.float32, copy=True)
    x -= x.mean(0, keepdims=True)
    return normalize_rows(x)


def gather_unit(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Unit-norm float32 copy of x[rows], gathered chunk by chunk (works on memmaps too)."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), x.shape[1]), np.float32)
    for s in range(0, len(rows), CHUNK_ROWS):
        out[s:s + CHUNK_ROWS] = x[rows[s:s + CHUNK_ROWS]]
        normalize_rows(out[s:s + CHUNK_ROWS])
    return out


class Space:
    """Centred-cosine working space, optionally PCA-reduced. Fit once, transform any rows."""

    def __init__(self, mean: np.ndarray, proj: np.ndarray | None):
        self.mean = mean.astype(np.float32)
        self.proj = None if proj is None else np.ascontiguousarray(proj, dtype=np.float32)

    @property
    def dim(self) -> int:
        return len(self.mean) if self.proj is None else self.proj.shape[1]

    @classmethod
    def fit(cls, x: np.ndarray, rows: np.ndarray, n_work: int, rng: np.random.Generator,
            max_elems: int = MAX_WORK_ELEMS, dim: int = PCA_DIM, sample: int = PCA_SAMPLE) -> "Space":
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) > sample:
            rows = np.sort(rng.choice(rows, sample, replace=False))
        s = gather_unit(x, rows)
        mean = s.mean(axis=0) if len(s) else np.zeros(x.shape[1], np.float32)
        d = x.shape[1]
        if n_work * d <= max_elems or d <= dim or len(s) < 2:
            return cls(mean, None)
        s -= mean
        cov = (s.T @ s).astype(np.float64)
        _, vecs = np.linalg.eigh(cov)
        return cls(mean, vecs[:, ::-1][:, :dim])

    def transform(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), np.float32)
        for s in range(0, len(rows), CHUNK_ROWS):
            a = gather_unit(x, rows[s:s + CHUNK_ROWS])
            a -= self.mean
            if self.proj is not None:
                a = a @ self.proj
            out[s:s + CHUNK_ROWS] = normalize_rows(a)
        return out
