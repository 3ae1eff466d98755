"""scopeloop sampler: which images should a biologist label next.

`import sampler` pins OpenBLAS's kernel choice *before* faiss is ever imported: the OpenBLAS
bundled in faiss-cpu falls back to generic kernels on these CPUs (9x slower), and the
variable is only read when the library loads. faiss itself is imported lazily
(`sampler._faiss.faiss()`).
"""
from __future__ import annotations

import os


def _openblas_coretype() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    if "avx512f" in flags:
                        return "SKYLAKEX"
                    if "avx2" in flags:
                        return "HASWELL"
                    return None
    except OSError:
        return None
    return None


_core = _openblas_coretype()
if _core:
    os.environ.setdefault("OPENBLAS_CORETYPE", _core)

from .select import STRATEGIES, Pick, select  # noqa: E402

__all__ = ["STRATEGIES", "Pick", "select"]
