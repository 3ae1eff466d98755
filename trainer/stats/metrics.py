"""Classification metrics from a confusion matrix (macro-F1, balanced accuracy, per-class precision/recall/F1)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return cm


def scores_from_confusions(cms: np.ndarray) -> dict[str, np.ndarray]:
    """cms (B, C, C) counts (rows: true class) -> accuracy, balanced accuracy, macro-F1, each (B,).

    Macro averages run over the classes present in each matrix's true labels; a matrix with no
    count gives NaN. The one definition of these scores: `classification_metrics` and the
    estimator's bootstrap both use it."""
    cms = np.asarray(cms, dtype=float)
    tp = np.diagonal(cms, axis1=1, axis2=2)
    support, predicted = cms.sum(2), cms.sum(1)
    present = support > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, tp / np.where(present, support, 1), np.nan)
        f1 = np.where(present, 2 * tp / np.maximum(support + predicted, 1e-12), np.nan)
        total = support.sum(1)
        return {"accuracy": tp.sum(1) / np.maximum(total, 1e-12),
                "balanced_accuracy": np.nanmean(recall, 1), "macro_f1": np.nanmean(f1, 1)}


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> dict:
    """accuracy, balanced accuracy, macro-F1 (over classes present in y_true), per-class P/R/F1."""
    n = len(classes)
    cm = confusion_matrix(y_true, y_pred, n)
    tp = np.diag(cm).astype(float)
    support = cm.sum(1).astype(float)
    predicted = cm.sum(0).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(n), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=(precision + recall) > 0)
    total = support.sum()
    s = {k: float(v[0]) for k, v in scores_from_confusions(cm[None]).items()} if total else \
        dict.fromkeys(("accuracy", "balanced_accuracy", "macro_f1"), 0.0)
    return {
        "n": int(total),
        "accuracy": s["accuracy"],
        "balanced_accuracy": s["balanced_accuracy"],
        "macro_f1": s["macro_f1"],
        "per_class": {
            c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
        "classes": list(classes),
    }
