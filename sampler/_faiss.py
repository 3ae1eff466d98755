"""Lazy faiss import (after `sampler/__init__` has set OPENBLAS_CORETYPE) and GPU detection."""
from __future__ import annotations

_mod = None


def faiss():
    global _mod
    if _mod is None:
        import faiss as _f  # noqa: PLC0415 - deliberately lazy, see sampler/__init__.py

        _mod = _f
    return _mod


def gpu_available() -> bool:
    """True when a faiss-gpu build is installed and sees at least one GPU."""
    f = faiss()
    try:
        return hasattr(f, "StandardGpuResources") and f.get_num_gpus() > 0
    except Exception:  # pragma: no cover - depends on the wheel
        return False


def max_sim(queries, refs):
    """Max inner product of each query row with any ref row (faiss flat search, bounded memory).

    Both float32 C-contiguous. Returns (sims float32 (nq,), argmax int64 (nq,)); -inf / -1 when
    there are no refs.
    """
    import numpy as np

    nq = len(queries)
    if len(refs) == 0 or nq == 0:
        return np.full(nq, -np.inf, np.float32), np.full(nq, -1, np.int64)
    f = faiss()
    index = f.IndexFlatIP(refs.shape[1])
    index.add(np.ascontiguousarray(refs, dtype=np.float32))
    d, i = index.search(np.ascontiguousarray(queries, dtype=np.float32), 1)
    return d[:, 0], i[:, 0]
