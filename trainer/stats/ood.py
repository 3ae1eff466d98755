"""Out-of-distribution flags: is a new image far from everything the model was trained on?

A model always answers with one of its classes, even for a slide from another microscope, a
new stain, debris or an empty field. Its confidence does not reveal this reliably (softmax can
be very sure far from the data), so we also measure distance in embedding space:

* reference: (a stratified sample of) the labeled training images' embeddings, L2-normalised,
  stored with the model as `ood.npz` (float16, at most `max_refs` rows: a few MB), so an
  exported model flags OOD images on another machine without the project.
* score: mean cosine distance of an image to its k nearest reference images.
* threshold: the `quantile` (default 99 %) of the same score for the reference images
  themselves (each scored against the others): about 1 % of images like the training data
  get flagged, images from elsewhere mostly do.
Plain numpy: references are small, a matrix product is faster than building an index.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from sampler.space import normalize_rows

FILE = "ood.npz"


def _normalise(X) -> np.ndarray:
    """A unit-length float32 copy of the rows (zero rows stay zero)."""
    return normalize_rows(np.array(X, dtype=np.float32, copy=True))


def knn_mean_distance(Q: np.ndarray, R: np.ndarray, k: int, exclude_self: bool = False,
                       chunk: int = 2048) -> np.ndarray:
    """Mean cosine distance of each (normalised) row of Q to its k nearest rows of R."""
    out = np.empty(len(Q), np.float32)
    for s in range(0, len(Q), chunk):
        d = 1.0 - Q[s:s + chunk] @ R.T
        if exclude_self:  # Q is R: drop each row's zero distance to itself
            idx = np.arange(s, min(s + chunk, len(Q)))
            d[idx - s, idx] = np.inf
        kk = min(k, d.shape[1] - (1 if exclude_self else 0))
        part = np.partition(d, kk - 1, axis=1)[:, :kk]
        out[s:s + chunk] = part.mean(1)
    return out


@dataclass
class OODReference:
    refs: np.ndarray  # (n, D) float32, L2-normalised
    threshold: float
    k: int = 5
    quantile: float = 0.99

    def score(self, X) -> np.ndarray:
        """Mean cosine distance to the k nearest reference images (0 = identical direction)."""
        if len(X) == 0:
            return np.zeros(0, np.float32)
        return knn_mean_distance(_normalise(X), self.refs, self.k)

    def flags(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(scores, is_out_of_distribution)."""
        s = self.score(X)
        return s, s > self.threshold

    def save(self, folder) -> Path:
        path = Path(folder) / FILE
        np.savez_compressed(path, refs=self.refs.astype(np.float16), threshold=np.float32(self.threshold),
                            k=np.int64(self.k), quantile=np.float32(self.quantile))
        return path

    @classmethod
    def load(cls, folder) -> "OODReference | None":
        path = Path(folder) / FILE
        if not path.is_file():
            return None
        with np.load(path) as z:
            return cls(z["refs"].astype(np.float32), float(z["threshold"]), int(z["k"]), float(z["quantile"]))


def sample_rows(labels: Sequence | None, n: int, max_refs: int, seed: int = 0) -> np.ndarray:
    """At most `max_refs` row indices, every class kept in proportion (rare classes at least once)."""
    rows = np.arange(n)
    if n <= max_refs:
        return rows
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(rows, max_refs, replace=False))
    labels = np.asarray(labels)
    keep = []
    for c in np.unique(labels):
        r = rows[labels == c]
        take = max(1, int(round(max_refs * len(r) / n)))
        keep.append(rng.choice(r, min(take, len(r)), replace=False))
    return np.sort(np.concatenate(keep))


def build_reference(embeddings, labels: Sequence | None = None, max_refs: int = 2000, k: int = 5,
                    quantile: float = 0.99, seed: int = 0) -> OODReference:
    """Reference set + threshold from the embeddings of the labeled (training) images."""
    X = np.asarray(embeddings, dtype=np.float32)
    if len(X) < 2:
        raise ValueError("an out-of-distribution reference needs at least 2 labeled images")
    R = _normalise(X[sample_rows(labels, len(X), max_refs, seed)])
    k = max(1, min(k, len(R) - 1))
    own = knn_mean_distance(R, R, k, exclude_self=True)
    return OODReference(R, float(np.quantile(own, quantile)), k, quantile)
