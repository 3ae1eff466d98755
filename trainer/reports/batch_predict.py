"""`scopeloop predict`: a model applied to a folder of new images, to a CSV with flags and a counts plot."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from trainer.models.inference import run_model


def write_predictions_csv(path, files: Sequence[str], probs: np.ndarray, classes: Sequence[str], extra: dict | None = None) -> None:
    """file, predicted class, confidence, one probability column per class (+ extra columns)."""
    extra = extra or {}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "predicted_class", "confidence", *extra.keys(), *[f"p_{c}" for c in classes]])
        for i, name in enumerate(files):
            p = probs[i]
            k = int(np.argmax(p))
            w.writerow([name, classes[k], f"{p[k]:.4f}", *[v[i] for v in extra.values()], *[f"{v:.4f}" for v in p]])


def resolve_model_dir(model, version: str | None = None) -> Path:
    """A model folder from: a version folder, an exported model, or a registry root (+ version)."""
    from trainer.store.registry import ModelRegistry

    p = Path(model)
    if (p / "config.json").is_file() and version is None:
        return p
    for root in (p, p / "registry"):
        if (root / "versions").is_dir():
            reg = ModelRegistry(root)
            v = version or reg.current()
            if v is None:
                raise FileNotFoundError(f"no current model in '{root}': train one first (scopeloop train)")
            return reg.path(v)
    raise FileNotFoundError(
        f"'{model}' is neither a model folder (with config.json) nor a model registry (with versions/)"
    )


def predict_folder(model_dir, input_dir, out_csv, batch_size: int = 64, progress: bool = True,
                   low_confidence: float = 0.5, ood: bool = True, plot: bool = True, quality: bool = True,
                   coverage: float = 0.9, group_pattern: str | None = None, proportions: bool = True) -> dict:
    """Predict every image under `input_dir`: CSV + `<out>.npz` (keys, embeddings, probs).

    With `ood` and a model folder holding `ood.npz` (see trainer.stats.ood), the CSV also says which
    images are out of distribution (far from every training image in embedding space: another
    microscope, stain, debris); with `plot`, `<out>.counts.png` shows predicted class counts.
    With `quality`, the `quality` column holds each image's verdict (trainer.quality: ok, blank,
    out_of_focus, saturated, too_dark, duplicate, unusual) and `quality_reason` the deciding score.
    """
    from trainer.io.folders import image_key, list_images
    from trainer.io.planes import expand_planes
    from trainer.models.model import ScopeModel
    from trainer.stats.ood import OODReference

    model = ScopeModel.load(model_dir)
    cfg = model.config
    paths = expand_planes(list_images(input_dir), cfg.reader)  # stack "planes": one row per Z plane (<file>#z<k>)
    if not paths:
        raise FileNotFoundError(f"no images (png/jpg/tif) found under '{input_dir}'")
    res = run_model(model.net, paths, cfg.image_size, cfg.mean, cfg.std, cfg.reader, batch_size,
                    progress=progress, desc="predicting")
    keys = [image_key(paths[r], input_dir) for r in res.rows]
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    conf = res.probs.max(1) if len(keys) else np.zeros(0)
    low = conf < low_confidence
    extra = {"low_confidence": ["yes" if c else "no" for c in low]}
    pub = publishable_columns(model_dir, res.probs, res.embeddings, cfg.classes, coverage)
    extra.update(pub["columns"])
    ref = OODReference.load(model_dir) if ood else None
    is_ood = None
    if ref is not None:
        dist, is_ood = ref.flags(res.embeddings)
        extra["out_of_distribution"] = ["yes" if f else "no" for f in is_ood]
        extra["ood_distance"] = [f"{d:.4f}" for d in dist]
    qc_counts = None
    if quality and len(keys):
        from trainer.quality.assess import assess

        qc = assess([paths[r] for r in res.rows], keys, res.embeddings, keys)
        by = qc.by_key()
        extra["quality"] = [by[k].verdict if k in by else "unreadable" for k in keys]
        extra["quality_reason"] = [by[k].reason if k in by else "" for k in keys]
        qc_counts = qc.counts()
    write_predictions_csv(out_csv, keys, res.probs, cfg.classes, extra)
    np.savez_compressed(out_csv.with_suffix(".npz"), keys=np.array(keys), embeddings=res.embeddings,
                        probs=res.probs, classes=np.array(cfg.classes), novelty_score=pub["score"],
                        novel_type=pub["novel"] if pub["novel"] is not None else np.zeros(len(keys), bool))
    if len(res.skipped):
        res.skipped.write_json(out_csv.with_suffix(".skipped.json"))
    pred = pub["category"]  # flagged images count as "unseen type" (index C), not as a class
    names = list(cfg.classes) + ([UNSEEN] if pub["novel"] is not None else [])
    counts = {c: int((pred == i).sum()) for i, c in enumerate(names)} if len(keys) else {}
    plot_path = None
    if plot and len(keys):
        from trainer.reports.plots import plot_prediction_counts

        plot_path = str(plot_prediction_counts(pred, names, low, is_ood, out_csv.with_suffix(".counts.png"),
                                               title=f"Predicted cell types: {Path(input_dir).name}"))
    prop = {"proportions": None, "proportions_plot": None}
    if proportions and len(keys):
        prop = write_proportions(out_csv, keys, pred, pub["stats"], cfg.classes, group_pattern, plot=plot,
                                 title=f"Cell-type proportions: {Path(input_dir).name} (95% intervals)")
    advice = None
    if is_ood is not None and len(keys) and is_ood.mean() > 0.5:
        advice = ood_advice(input_dir, int(is_ood.sum()), len(keys))
    return {"predicted": len(keys), "skipped": res.skipped, "counts": counts, "csv": str(out_csv),
            "low_confidence": int(low.sum()),
            "out_of_distribution": None if is_ood is None else int(is_ood.sum()), "plot": plot_path,
            "quality": qc_counts, "novel_type": None if pub["novel"] is None else int(pub["novel"].sum()),
            "coverage": coverage if pub["stats"] is not None and pub["stats"].calibrator is not None else None,
            "publishable_note": pub["note"], "ood_advice": advice, **prop}


UNSEEN = "unseen type"
LABEL_BUDGET = 50  # images to label from a folder that is out of distribution (the sampler's first picks)


def ood_advice(input_dir, n_ood: int, n: int) -> str:
    """The one line `predict` prints when most of a folder is unlike the training images."""
    k = min(n, LABEL_BUDGET)
    return (f"{n_ood} of {n} images are unlike anything the model was trained on (another microscope, stain or "
            f"preparation?): the classes above are not to be trusted. Add the folder to the project "
            f"(scopeloop init --images {input_dir} ...) and label the {k} images the sampler picks first, then predict again.")


def publishable_columns(model_dir, probs, embeddings, classes, coverage: float = 0.9) -> dict:
    """Issue 25's per-image columns: `novel_type` (true/false), `novelty_score` (higher = less like
    every trained type), `prediction_set` (class names joined by "|", at `coverage`), from the
    version's stored statistics (trainer.stats.publishable). A version saved before them gets
    empty novel_type/novelty_score, its top class as the set, and a `note` saying so."""
    from trainer.stats.publishable import MISSING, VersionStats

    stats = VersionStats.load(model_dir)
    if stats is not None and list(stats.classes) != list(classes):
        stats = None
    n = len(probs)
    if stats is None:
        top = np.asarray(probs).argmax(1) if n else np.zeros(0, int)
        return {"stats": None, "novel": None, "score": np.full(n, np.nan, np.float32), "category": top,
                "note": MISSING, "columns": {"novel_type": [""] * n, "novelty_score": [""] * n,
                                            "prediction_set": [classes[k] for k in top]}}
    out = stats.apply(probs, embeddings, coverage) if n else {"novel": np.zeros(0, bool), "score": np.zeros(0),
                                                             "sets": [], "category": np.zeros(0, int)}
    novel = out["novel"]
    note = None
    if stats.novelty is None:
        note = "this model version has no novelty model (too few labels?): no unseen-type flags"
    if stats.calibrator is None:
        note = (note + "; " if note else "") + "no prediction-set calibration: sets are the top class"
    cols = {"novel_type": ["true" if f else "false" for f in novel] if novel is not None else [""] * n,
            "novelty_score": [f"{v:.5g}" for v in out["score"]] if novel is not None else [""] * n,
            "prediction_set": stats.set_names(out["sets"])}
    return {"stats": stats, "novel": novel, "score": np.asarray(out["score"], np.float32),
            "category": out["category"], "note": note, "columns": cols}


def write_proportions(out_csv, keys, category, stats, classes, group_pattern: str | None = None, plot: bool = True,
                      title: str | None = None) -> dict:
    """`<out>.proportions.csv` (group,class,count,proportion,lower,upper; group "all" = every image,
    then each group of `group_pattern` (trainer.io.groups.group_of on the file name, unmatched
    images their own group by key); a row "unseen type") and `<out>.proportions.png`.
    Corrected for the model's cross-validated confusion with 95% intervals
    (trainer.stats.proportions) when the version stores it; otherwise plain shares of the
    predictions with empty intervals (older versions)."""
    import csv as _csv
    import re

    from trainer.io.groups import group_of
    from trainer.stats.proportions import ALL, COLUMNS, proportions_table, write_csv

    out_csv = Path(out_csv)
    path = out_csv.with_suffix(".proportions.csv")
    groups = None
    if group_pattern:
        rx = re.compile(group_pattern)
        groups = [group_of(k, rx, unmatched="own-key") for k in keys]
    cal = stats.calibration() if stats is not None else None
    category = np.asarray(category, int)
    if cal is not None:
        rows = proportions_table(category, cal, classes, groups=groups)
        write_csv(rows, path)
    else:  # plain classify-and-count: no interval without the model's confusion
        names = list(classes) + [UNSEEN]
        parts = [(ALL, np.ones(len(category), bool))]
        if groups is not None:
            g = np.asarray(groups)
            parts += [(name, g == name) for name in sorted(set(groups))]
        rows = []
        for name, sel in parts:
            c = np.bincount(category[sel], minlength=len(names))
            for t, cls in enumerate(names):
                rows.append({"group": name, "class": cls, "count": int(c[t]),
                             "proportion": float(c[t] / max(sel.sum(), 1)), "lower": "", "upper": ""})
        with path.open("w", newline="") as f:
            w = _csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows([{**r, "proportion": f"{r['proportion']:.4f}"} for r in rows])
    png = None
    if plot and cal is not None and rows:
        from trainer.reports.plots import plot_proportions

        png = str(plot_proportions(rows, out_csv.with_suffix(".proportions.png"), **({"title": title} if title else {})))
    return {"proportions": str(path), "proportions_plot": png, "proportions_corrected": cal is not None}
