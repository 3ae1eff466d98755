"""Persistent FAISS index of image embeddings, keyed by image key.

Why: the ML backend and the sampler need "images like this one" and near-duplicate checks
without re-reading embeddings. Cosine similarity (inner product on unit vectors).
Exact flat index for small pools; IVF-Flat (approximate, nprobe=16, recall ~.999 measured)
past `approx_threshold` vectors; searched on GPU when faiss-gpu sees one. The backbone name is
stored: embeddings of another backbone live in another space, so a mismatch forces a rebuild.

On disk (`<workdir>/index/`): index.faiss, keys.json (row -> key), meta.json.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ._faiss import faiss, gpu_available
from .space import CHUNK_ROWS, normalize_rows

APPROX_THRESHOLD = 200_000
FORMAT = 1


class BackboneMismatch(ValueError):
    """The index on disk was built from another backbone (or dimension): rebuild it."""


def _unit(x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    return normalize_rows(np.array(x, dtype=np.float32, copy=True, order="C"))


class EmbeddingIndex:
    def __init__(self, dim: int, backbone: str, approx_threshold: int = APPROX_THRESHOLD,
                 nprobe: int = 16, use_gpu: bool | str = "auto"):
        self.dim = int(dim)
        self.backbone = str(backbone)
        self.approx_threshold = int(approx_threshold)
        self.nprobe = int(nprobe)
        self.use_gpu = use_gpu
        self.keys: list[str] = []
        self._row: dict[str, int] = {}
        self._index = faiss().IndexFlatIP(self.dim)
        self._gpu = None

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def build(cls, embeddings, keys, backbone: str, **kw) -> "EmbeddingIndex":
        emb = np.asarray(embeddings)
        idx = cls(emb.shape[1], backbone, **kw)
        idx.add(emb, keys)
        return idx

    @property
    def kind(self) -> str:
        return "ivf" if isinstance(self._index, faiss().IndexIVF) else "flat"

    def __len__(self) -> int:
        return self._index.ntotal

    def __contains__(self, key) -> bool:
        return key in self._row

    def row(self, key: str) -> int:
        return self._row[key]

    def add(self, embeddings, keys) -> int:
        """Add images not yet in the index (keys already present are skipped). Returns #added."""
        emb = np.asarray(embeddings)
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise ValueError(f"expected (n, {self.dim}) embeddings, got {emb.shape}")
        keys = [str(k) for k in keys]
        if len(keys) != len(emb):
            raise ValueError(f"{len(keys)} keys for {len(emb)} embeddings")
        new, seen = [], set()
        for i, k in enumerate(keys):
            if k not in self._row and k not in seen:
                seen.add(k)
                new.append(i)
        if not new:
            return 0
        new = np.asarray(new, np.int64)
        if self.kind == "flat" and len(self) + len(new) >= self.approx_threshold:
            self._to_ivf(emb, new)
        for s in range(0, len(new), CHUNK_ROWS):
            self._index.add(_unit(emb[new[s:s + CHUNK_ROWS]]))
        for i in new:
            self._row[keys[i]] = len(self.keys)
            self.keys.append(keys[i])
        self._gpu = None
        return len(new)

    def _to_ivf(self, emb, new):
        """Switch to IVF-Flat: nlist ~ sqrt(n); trained on 64 points per list (a deliberate
        subsample: enough to place the lists, and minutes faster than faiss' 256)."""
        f = faiss()
        n = len(self) + len(new)
        nlist = int(min(65536, max(16, round(math.sqrt(n)))))
        rng = np.random.default_rng(0)
        n_train = min(n, 64 * nlist)
        pick = np.sort(rng.choice(n, n_train, replace=False))
        old = self._index.reconstruct_n(0, len(self)) if len(self) else np.zeros((0, self.dim), np.float32)
        train = np.concatenate([old[pick[pick < len(old)]],
                                _unit(emb[new[pick[pick >= len(old)] - len(old)]])]) if n_train else old
        quant = f.IndexFlatIP(self.dim)
        ivf = f.IndexIVFFlat(quant, self.dim, nlist, f.METRIC_INNER_PRODUCT)
        ivf.cp.max_points_per_centroid = 64
        ivf.cp.min_points_per_centroid = 1
        ivf.train(train)
        ivf.nprobe = self.nprobe
        if len(old):
            ivf.add(old)
        self._quant = quant
        self._index = ivf

    # ---- search -------------------------------------------------------------------------
    def _searcher(self):
        if self.use_gpu and gpu_available():  # pragma: no cover - no GPU on CI
            if self._gpu is None:
                f = faiss()
                self._res = getattr(self, "_res", None) or f.StandardGpuResources()
                self._gpu = f.index_cpu_to_gpu(self._res, 0, self._index)
            return self._gpu
        return self._index

    def search(self, queries, k: int = 10):
        """Cosine similarities and rows of the k nearest images: (sims (q, k), rows (q, k));
        rows are -1 where fewer than k images exist. `index.keys[row]` names the image."""
        q = _unit(queries)
        k = int(min(k, max(len(self), 1)))
        return self._searcher().search(q, k)

    def search_keys(self, queries, k: int = 10) -> list[list[tuple[str, float]]]:
        sims, rows = self.search(queries, k)
        return [[(self.keys[r], float(s)) for s, r in zip(srow, rrow) if r >= 0]
                for srow, rrow in zip(sims, rows)]

    # ---- persistence --------------------------------------------------------------------
    def save(self, folder) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        f = faiss()
        meta = {"format": FORMAT, "backbone": self.backbone, "dim": self.dim, "kind": self.kind,
                "ntotal": len(self), "metric": "cosine", "nprobe": self.nprobe,
                "approx_threshold": self.approx_threshold, "faiss_version": f.__version__}
        tmp = folder / "index.faiss.tmp"
        f.write_index(self._index, str(tmp))
        os.replace(tmp, folder / "index.faiss")
        for name, obj in (("keys.json", self.keys), ("meta.json", meta)):
            t = folder / (name + ".tmp")
            t.write_text(json.dumps(obj, indent=None if name == "keys.json" else 2))
            os.replace(t, folder / name)
        return folder

    @classmethod
    def load(cls, folder, backbone: str | None = None, dim: int | None = None, **kw) -> "EmbeddingIndex":
        """Load an index; raises BackboneMismatch if `backbone`/`dim` are given and differ."""
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        if backbone is not None and meta["backbone"] != backbone:
            raise BackboneMismatch(f"index in {folder} was built with backbone {meta['backbone']!r}, "
                                   f"not {backbone!r}: rebuild it")
        if dim is not None and meta["dim"] != int(dim):
            raise BackboneMismatch(f"index in {folder} has dimension {meta['dim']}, not {dim}: rebuild it")
        idx = cls(meta["dim"], meta["backbone"], approx_threshold=meta.get("approx_threshold", APPROX_THRESHOLD),
                  nprobe=meta.get("nprobe", 16), **kw)
        idx._index = faiss().read_index(str(folder / "index.faiss"))
        if idx.kind == "ivf":
            idx._index.nprobe = idx.nprobe
        idx.keys = json.loads((folder / "keys.json").read_text())
        idx._row = {k: i for i, k in enumerate(idx.keys)}
        if len(idx.keys) != idx._index.ntotal:
            raise ValueError(f"index in {folder} is inconsistent: {idx._index.ntotal} vectors, {len(idx.keys)} keys")
        return idx

    @classmethod
    def load_or_build(cls, folder, embeddings, keys, backbone: str, **kw) -> "EmbeddingIndex":
        """What the service calls: load the index if it matches the backbone, add new images
        incrementally, otherwise rebuild from scratch; saves when anything changed."""
        emb = np.asarray(embeddings)
        folder = Path(folder)
        try:
            idx = cls.load(folder, backbone=backbone, dim=emb.shape[1], **kw)
            changed = idx.add(emb, keys) > 0
        except (FileNotFoundError, BackboneMismatch):
            idx, changed = cls.build(emb, keys, backbone, **kw), True
        if changed:
            idx.save(folder)
        return idx
