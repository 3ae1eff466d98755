"""QC in the loop: a project's verdicts (cached per image), and the suggested order with flagged images last."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from trainer.quality.assess import assess, write_csv
from trainer.quality.settings import SETTINGS_FILE, QCSettings
from trainer.store.atomic import atomic_path, write_text_atomic

QC_DIR = "qc"


def project_settings(workdir) -> QCSettings:
    """The project's thresholds: <workdir>/qc_settings.json (any subset of QCSettings' fields)."""
    return QCSettings.load(Path(workdir) / SETTINGS_FILE)


def load_verdicts(workdir) -> dict:
    """{key: {"verdict", "reason"}} from the last quality pass of a project ({} before the first)."""
    p = Path(workdir) / QC_DIR / "verdicts.json"
    if not p.is_file():
        return {}
    return json.loads(p.read_text()).get("verdicts", {})


def project_qc(workdir, images_root, keys: Sequence[str], embeddings: np.ndarray | None = None,
               log: Callable[[str], None] = print, store: bool = True) -> dict:
    """Verdicts of a project's images, kept in <workdir>/qc/ and re-judged only when the set of
    images, the settings or the embeddings changed: stats.pkl (per-image measurements: each image
    is read once, new images only), verdicts.json ({key: {verdict, reason}} + counts, and whether
    embeddings judged them), qc.csv (every score). `embeddings` rows match `keys` (the project's
    embedding cache). `store=False` returns verdicts without replacing verdicts.json / qc.csv
    (measurements are still cached): `init` judging new images of a project whose last pass had
    embeddings, which a pixel-only pass must not overwrite."""
    import pickle

    d = Path(workdir) / QC_DIR
    settings = project_settings(workdir)
    keys = [str(k) for k in keys]
    sig = hashlib.sha1(("\n".join(sorted(keys)) + json.dumps(asdict(settings), sort_keys=True)
                        + _embedding_tag(embeddings)).encode()).hexdigest()
    vfile = d / "verdicts.json"
    if vfile.is_file():
        old = json.loads(vfile.read_text())
        if old.get("signature") == sig:
            return old.get("verdicts", {})
    d.mkdir(parents=True, exist_ok=True)
    sfile = d / "stats.pkl"
    cache = {}
    if sfile.is_file():
        try:
            with open(sfile, "rb") as f:
                cache = pickle.load(f)
        except Exception:  # a damaged cache is rebuilt, never fatal
            cache = {}
    n_before = len(cache)
    root = Path(images_root)
    report = assess([root / k for k in keys], keys, embeddings, keys if embeddings is not None else None,
                    settings, stats_cache=cache)
    if len(cache) != n_before or not sfile.is_file():  # ~10 KB an image: rewritten only when it grew
        with atomic_path(sfile) as tmp, open(tmp, "wb") as f:
            pickle.dump(cache, f, protocol=pickle.HIGHEST_PROTOCOL)
    verdicts = {r.key: {"verdict": r.verdict, "reason": r.reason} for r in report.results}
    if not store:
        return verdicts
    write_csv(report.results, d / "qc.csv")
    data = {"signature": sig, "counts": report.counts(), "images": len(report.results),
            "bit_depth": report.bit_depth, "focus": report._focus_line(), "seconds": report.seconds,
            "embeddings": embeddings is not None, "verdicts": verdicts}
    write_text_atomic(vfile, json.dumps(data))
    flagged = {v: c for v, c in report.counts().items() if v != "ok" and c}
    log(f"image quality: {len(cache) - n_before} new image(s) measured, {sum(flagged.values())} of "
        f"{len(report.results)} flagged {flagged if flagged else ''}".rstrip())
    return verdicts


def _embedding_tag(embeddings) -> str:
    """Which embeddings judged the pool: none (at `init`, before the first embedding) or a cheap
    fingerprint of them, so near duplicates and `unusual` are judged again once embeddings exist
    and whenever the embedding space changes (a deep refresh)."""
    if embeddings is None:
        return "|no-embeddings"
    e = np.asarray(embeddings)
    if e.ndim != 2 or not len(e):
        return f"|emb{e.shape}"
    step = max(1, len(e) // 64)
    return f"|emb{e.shape}:" + hashlib.sha1(np.ascontiguousarray(e[::step, :16], dtype=np.float32).tobytes()).hexdigest()


def order_flagged_last(order: np.ndarray, keys: Sequence[str], verdicts: dict, flagged: str = "end") -> np.ndarray:
    """The suggested order with flagged images after every ok one ("end", their order kept) or
    left out ("exclude"). Images without a verdict (unreadable, not yet judged) count as ok."""
    order = np.asarray(order, dtype=np.int64)
    bad = np.array([verdicts.get(keys[r], {}).get("verdict", "ok") != "ok" for r in order], dtype=bool)
    if not bad.any():
        return order
    if flagged == "exclude":
        return order[~bad]
    return np.concatenate([order[~bad], order[bad]])


def rank_with_qc(workdir, images_root, order: np.ndarray, keys: Sequence[str], embeddings=None,
                 log: Callable[[str], None] = print) -> np.ndarray:
    """What the refresh calls after ranking: flagged images leave the head of the order.
    A failing quality pass is logged and leaves the order as it was (it never blocks a refresh)."""
    try:
        verdicts = project_qc(workdir, images_root, keys, embeddings, log=log)
        return order_flagged_last(order, keys, verdicts, project_settings(workdir).flagged)
    except Exception as exc:  # noqa: BLE001 - QC is advisory in the loop
        log(f"image quality control skipped this time: {type(exc).__name__}: {exc}")
        return np.asarray(order, dtype=np.int64)
