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
                   low_confidence: float = 0.5, ood: bool = True, plot: bool = True, quality: bool = True) -> dict:
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
                        probs=res.probs, classes=np.array(cfg.classes))
    if len(res.skipped):
        res.skipped.write_json(out_csv.with_suffix(".skipped.json"))
    pred = res.probs.argmax(1) if len(keys) else np.zeros(0, int)
    counts = {c: int((pred == i).sum()) for i, c in enumerate(cfg.classes)} if len(keys) else {}
    plot_path = None
    if plot and len(keys):
        from trainer.reports.plots import plot_prediction_counts

        plot_path = str(plot_prediction_counts(pred, cfg.classes, low, is_ood, out_csv.with_suffix(".counts.png"),
                                               title=f"Predicted cell types: {Path(input_dir).name}"))
    return {"predicted": len(keys), "skipped": res.skipped, "counts": counts, "csv": str(out_csv),
            "low_confidence": int(low.sum()),
            "out_of_distribution": None if is_ood is None else int(is_ood.sum()), "plot": plot_path,
            "quality": qc_counts}
