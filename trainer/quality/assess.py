"""The QC pass: every image gets its scores and one verdict (`assess`), written as CSV."""
from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from trainer.io.decode import read_raw
from trainer.io.errors import ImageReadError, SkipReport
from trainer.quality.embedding_scores import embedding_scores
from trainer.quality.focus import FocusModel, _noise_floor, fit_focus_model
from trainer.quality.pixels import (
    PixelStats,
    _robust_max,
    float_scale,
    full_scale,
    grey_plane,
    image_structure,
    measure,
    pixel_match,
    structure,
)
from trainer.quality.settings import VERDICTS, QCSettings


@dataclass
class QCResult:
    key: str
    verdict: str
    reason: str  # the deciding score, e.g. "structure 0.0012 < 0.004"
    decided_by: str  # the deciding score's name ('' for ok)
    brightness: float
    saturated_share: float
    structure: float
    defocus_px: float
    defocus_sd: float
    laplacian_focus: float
    laplacian_defocus_px: float
    duplicate_of: str = ""
    duplicate_similarity: float = float("nan")
    pixel_match: float = float("nan")
    unusual_z: float = float("nan")

    def row(self) -> dict:
        d = asdict(self)
        return {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in d.items()}


CSV_FIELDS = [f.name for f in fields(QCResult)]


@dataclass
class QCReport:
    results: list
    skipped: SkipReport
    settings: QCSettings
    full_scale: float
    bit_depth: object
    focus: FocusModel | None
    seconds: dict

    def counts(self) -> dict:
        c = {v: 0 for v in VERDICTS}
        for r in self.results:
            c[r.verdict] += 1
        return c

    def by_key(self) -> dict:
        return {r.key: r for r in self.results}

    def summary(self) -> str:
        n = len(self.results)
        lines = [f"{n} images checked (full scale {self.full_scale:g}, bit depth {self.bit_depth}; "
                 f"focus model: {self._focus_line()})"]
        for v, c in self.counts().items():
            lines.append(f"  {v:<13} {c:>6}  ({100.0 * c / max(n, 1):.1f} %)")
        return "\n".join(lines)

    def _focus_line(self) -> str:
        if self.focus is None:
            return "none (too few structured images), focus not judged"
        return (f"{self.settings.focus_method}, learned from {self.focus.n_images} sharpest images, "
                f"{self.focus.n_patches} synthetic patches")


def _decide(r: QCResult, s: QCSettings, exact: bool) -> None:
    checks = [
        ("too_dark", "brightness", r.brightness, r.brightness < s.too_dark, "<", s.too_dark),
        ("saturated", "saturated_share", r.saturated_share, r.saturated_share >= s.saturated, ">=", s.saturated),
        ("blank", "structure", r.structure, r.structure < s.blank, "<", s.blank),
    ]
    dpx = r.laplacian_defocus_px if s.focus_method == "laplacian" else r.defocus_px
    dname = "laplacian_defocus_px" if s.focus_method == "laplacian" else "defocus_px"
    checks.append(("out_of_focus", dname, dpx, bool(np.isfinite(dpx) and dpx >= s.out_of_focus), ">=", s.out_of_focus))
    if r.duplicate_of:
        thr = 1.0 if exact else s.duplicate
        name = "identical pixels" if exact else "pixel_match"
        checks.append(("duplicate", name, r.pixel_match, True, ">=", thr))
    uz = r.unusual_z
    checks.append(("unusual", "unusual_z", uz, bool(np.isfinite(uz) and uz >= s.unusual), ">=", s.unusual))
    for verdict, name, val, hit, op, thr in checks:
        if hit:
            r.verdict, r.decided_by = verdict, name
            if verdict == "duplicate":
                r.reason = f"{name} with {r.duplicate_of}" + ("" if exact else f" ({val:.3f} {op} {thr:g}, "
                                                                             f"embedding {r.duplicate_similarity:.3f})")
            else:
                r.reason = f"{name} {val:.4g} {op} {thr:g}"
            return
    r.verdict, r.decided_by, r.reason = "ok", "", ""


def assess(paths: Sequence, keys: Sequence[str] | None = None, embeddings: np.ndarray | None = None,
           embedding_keys: Sequence[str] | None = None, settings: QCSettings | None = None,
           progress: Callable[[int, int], None] | None = None, seed: int = 0,
           stats_cache: dict | None = None) -> QCReport:
    """Quality verdict for every readable image of a pool.

    paths: image files; keys: their identities (default: the paths as strings);
    embeddings: optional (N, D) rows for `embedding_keys` (default: `keys`) - without them
    near-duplicates and `unusual` are not judged (exact duplicates still are).
    Unreadable files are skipped and listed in `QCReport.skipped`, never raised.
    stats_cache: {key: PixelStats}; keys found there are not read again, new ones are added.
    """
    settings = settings or QCSettings()
    keys = [str(p) for p in paths] if keys is None else [str(k) for k in keys]
    if len(keys) != len(paths):
        raise ValueError(f"{len(keys)} keys for {len(paths)} paths")
    t0 = time.perf_counter()
    skipped = SkipReport()
    stats: list[PixelStats] = []
    ok_keys, ok_paths = [], []
    t_read = 0.0
    for i, (p, k) in enumerate(zip(paths, keys)):
        if stats_cache is not None and k in stats_cache:
            stats.append(stats_cache[k])
            ok_keys.append(k)
            ok_paths.append(p)
            continue
        try:
            tr = time.perf_counter()
            raw = read_raw(p)
            t_read += time.perf_counter() - tr
            st = measure(raw)
        except (ImageReadError, ValueError) as exc:
            skipped.add(p, getattr(exc, "reason", str(exc)))
            continue
        stats.append(st)
        ok_keys.append(k)
        ok_paths.append(p)
        if stats_cache is not None:
            stats_cache[k] = st
        if progress:
            progress(i + 1, len(paths))
    t_measure = time.perf_counter() - t0 - t_read
    fs, bits = full_scale(stats, settings.bit_depth)
    fl_scale = float_scale(stats)
    results = []
    per_patch = []
    for k, st in zip(ok_keys, stats):
        # 8-bit files are 8-bit whatever else the pool holds (a mixed pool: the rest by inference);
        # a float file has no bit depth: 1.0 for normalised pools, else its own range
        fs_i, bits_i = (255.0, 8) if st.dtype == "uint8" and not settings.bit_depth else (fs, bits)
        if st.dtype.startswith("float"):
            fs_i, bits_i = (fl_scale or _robust_max(st)), "float"
        if bits_i == "float":
            sat = st.top_share.get("float", 0.0)
        else:
            sat = st.top_share.get(bits_i, 0.0) if isinstance(bits_i, int) else 0.0
        sp = structure(st.energies, st.noise, fs_i)
        per_patch.append(sp)
        bright = st.content / fs_i if fs_i > 0 else 0.0  # the field's content: one bright nucleus counts
        results.append(QCResult(k, "ok", "", "", bright, float(sat), image_structure(sp),
                                float("nan"), float("nan"), st.laplacian_focus, float("nan")))
    # ---- focus: learn from the sharpest usable images, then predict every image
    t1 = time.perf_counter()
    usable = [i for i, r in enumerate(results)
              if r.brightness >= settings.too_dark and r.saturated_share < settings.saturated
              and r.structure >= settings.blank]
    focus = None
    if len(usable) >= 2:
        usable.sort(key=lambda i: -stats[i].laplacian_focus)
        n_sharp = int(min(40, max(2, math.ceil(len(usable) / 4))))
        sharp = usable[:n_sharp]
        greys = [grey_plane(read_raw(ok_paths[i]))[0] for i in sharp]
        focus = fit_focus_model(greys, [stats[i].noise * stats[i].scale for i in sharp], stats[sharp[0]].dtype, fs,
                                settings.blank, [ok_keys[i] for i in sharp], seed=seed)
    if focus is not None:
        pred = focus.predict(stats, [sp >= settings.blank for sp in per_patch], _noise_floor(stats[0].dtype, fs))
        for r, (mu, sd), st in zip(results, pred, stats):
            r.defocus_px, r.defocus_sd = float(mu), float(sd)
            r.laplacian_defocus_px = focus.laplacian_defocus(st.laplacian_focus)
    t_focus = time.perf_counter() - t1
    # ---- duplicates: identical pixels first, then near-identical embeddings
    t2 = time.perf_counter()
    order = sorted(range(len(results)), key=lambda i: results[i].key)
    first_by_hash: dict = {}
    exact = set()
    for i in order:
        h = stats[i].sha1
        if h in first_by_hash:
            results[i].duplicate_of, results[i].duplicate_similarity = results[first_by_hash[h]].key, 1.0
            exact.add(i)
        else:
            first_by_hash[h] = i
    if embeddings is not None:
        ekeys = [str(k) for k in (embedding_keys if embedding_keys is not None else keys)]
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or len(emb) != len(ekeys):
            raise ValueError(f"embeddings: expected one row per key ({len(ekeys)}), got shape {emb.shape}")
        erow = {k: j for j, k in enumerate(ekeys)}
        have = [i for i in range(len(results)) if results[i].key in erow]
        if len(have) >= 2:
            sub = emb[[erow[results[i].key] for i in have]]
            es = embedding_scores(sub, [results[i].key for i in have])
            rank = {i: o for o, i in enumerate(order)}
            for j, i in enumerate(have):
                results[i].unusual_z = float(es["unusual_z"][j])
                if i in exact:
                    continue
                best = None
                for nn, sim in zip(es["rows"][j], es["sims"][j]):
                    if nn < 0 or not sim >= settings.duplicate_candidate:
                        continue
                    other = have[int(nn)]
                    if rank[other] > rank[i]:
                        continue  # the pair is reported on the later image
                    m = pixel_match(stats[other].thumb, stats[i].thumb)
                    if m >= settings.duplicate and (best is None or m > best[1]):
                        best = (other, m, float(sim))
                if best is not None:
                    other = best[0]
                    results[i].duplicate_of = results[other].key
                    results[i].pixel_match, results[i].duplicate_similarity = best[1], best[2]
    t_dup = time.perf_counter() - t2
    for i, r in enumerate(results):
        _decide(r, settings, i in exact)
    seconds = {"read": round(t_read, 3), "measure": round(t_measure, 3), "focus_fit_predict": round(t_focus, 3),
               "embedding_scores": round(t_dup, 3), "total": round(time.perf_counter() - t0, 3)}
    return QCReport(results, skipped, settings, fs, bits, focus, seconds)


def write_csv(results: Sequence[QCResult], path) -> Path:
    """One row per image: key, verdict, the deciding score, and every score (module doc)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in results:
            w.writerow(r.row())
    tmp.replace(path)
    return path
