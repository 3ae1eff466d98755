"""Plots a biologist reads (PNG bytes or files): prediction counts, class balance, per-class scores, the learning curve."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def plot_prediction_counts(pred: np.ndarray, classes: Sequence[str], low=None, ood=None, path=None,
                           title: str = "Predicted cell types") -> Path | bytes:
    """Horizontal bars per predicted class, split into confident / low-confidence / out-of-distribution."""
    plt = _plt()
    n = len(classes)
    low = np.zeros(len(pred), bool) if low is None else np.asarray(low, bool)
    ood = np.zeros(len(pred), bool) if ood is None else np.asarray(ood, bool)
    parts = [("confident", ~low & ~ood, "#3b7dd8"), ("low confidence", low & ~ood, "#f2a541"),
             ("out of distribution", ood, "#b8b8b8")]
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.45 * n))
    left = np.zeros(n)
    for name, mask, color in parts:
        vals = np.bincount(np.asarray(pred)[mask], minlength=n)[:n]
        if vals.any() or name == "confident":
            ax.barh(range(n), vals, left=left, color=color, label=name)
        left += vals
    for i, v in enumerate(left):
        ax.text(v, i, f" {int(v)}", va="center")
    ax.set_yticks(range(n), classes)
    ax.invert_yaxis()
    ax.set_xlabel("number of images")
    ax.set_title(f"{title} ({len(pred)} images)")
    ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xlim(0, max(1, left.max()) * 1.15)
    fig.tight_layout()
    data = _png(fig)
    if path is None:
        return data
    Path(path).write_bytes(data)
    return Path(path)


def _bar_balance(classes, labeled: dict, predicted: dict | None) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.5 * len(classes)))
    y = np.arange(len(classes))
    h = 0.4 if predicted else 0.7
    ax.barh(y - (h / 2 if predicted else 0), [labeled.get(c, 0) for c in classes], h, color="#3b7dd8", label="labeled")
    if predicted:
        ax.barh(y + h / 2, [predicted.get(c, 0) for c in classes], h, color="#c5d8f2", label="unlabeled, predicted")
    for i, c in enumerate(classes):
        ax.text(labeled.get(c, 0), i - (h / 2 if predicted else 0), f" {labeled.get(c, 0)}", va="center")
    ax.set_yticks(y, classes)
    ax.invert_yaxis()
    ax.set_xlabel("number of images")
    ax.set_title("Class balance")
    ax.set_xlim(0, max([1, *labeled.values(), *(predicted or {}).values()]) * 1.12)
    ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return _png(fig)


def _bar_per_class(per_class: dict) -> bytes:
    plt = _plt()
    classes = list(per_class)
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.6 * len(classes)))
    y = np.arange(len(classes))
    for j, (m, color) in enumerate([("precision", "#6aa84f"), ("recall", "#3b7dd8"), ("f1", "#444444")]):
        ax.barh(y + (j - 1) * 0.27, [per_class[c][m] for c in classes], 0.27, color=color, label=m.replace("f1", "F1"))
    ax.set_yticks(y, [f"{c} (n={per_class[c]['support']})" for c in classes])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("score (1 = perfect)")
    ax.set_title("Per class, each image judged by a model that did not train on it")
    ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return _png(fig)


def _learning_curve(points: list[dict]) -> bytes:
    """Cross-validated macro-F1 (95% interval band) of every version against its number of labels;
    promoted versions filled blue, held-back ones hollow red, versions with too few labels as grey
    ticks at the bottom (no score is drawn for them)."""
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    est = [p for p in points if p["enough"]]
    prom = [p for p in est if p["promoted"]]
    if prom:
        x = [p["n_labels"] for p in prom]
        ax.fill_between(x, [p["low"] for p in prom], [p["high"] for p in prom], color="#3b7dd8", alpha=0.18, lw=0,
                        label="95% interval (served versions)")
        ax.errorbar(x, [p["value"] for p in prom], yerr=[[p["value"] - p["low"] for p in prom],
                    [p["high"] - p["value"] for p in prom]], fmt="o-", color="#3b7dd8", capsize=3, label="served (promoted)")
    held = [p for p in est if not p["promoted"]]
    if held:
        ax.errorbar([p["n_labels"] for p in held], [p["value"] for p in held],
                    yerr=[[p["value"] - p["low"] for p in held], [p["high"] - p["value"] for p in held]],
                    fmt="o", mfc="white", color="#c0392b", capsize=3, label="held back (95% interval)")
    few = [p for p in points if not p["enough"]]
    if few:
        ax.plot([p["n_labels"] for p in few], [0.02] * len(few), "|", color="#888888", ms=14, mew=2,
                label="not enough labels yet to estimate")
    ax.set_ylim(0, 1.02)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
    ax.set_xlabel("number of labeled images the version was trained on")
    ax.set_ylabel("macro-F1 (cross-validated)")
    ax.set_title("Learning curve: one point per model version")
    ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def plot_proportions(rows: Sequence[dict], path=None, title: str = "Cell-type proportions per group (95% intervals)") -> Path | bytes:
    """Issue 25: one panel of bars per group (`trainer.stats.proportions.proportions_table` rows:
    group, class, proportion, lower, upper), each class's corrected share with its 95% interval
    as an error bar; "unseen type" in grey. Written to `path` (PNG) or returned as PNG bytes."""
    plt = _plt()
    groups = list(dict.fromkeys(r["group"] for r in rows))
    classes = list(dict.fromkeys(r["class"] for r in rows))
    by = {(r["group"], r["class"]): r for r in rows}
    n = {g: sum(int(by[(g, c)]["count"]) for c in classes if (g, c) in by) for g in groups}
    width = 0.8 / max(len(groups), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(classes) * max(1, min(len(groups), 4))), 4.0))
    x = np.arange(len(classes))
    cmap = plt.get_cmap("tab10")
    for i, g in enumerate(groups):
        p = np.array([float(by[(g, c)]["proportion"]) if (g, c) in by else 0.0 for c in classes])
        lo = np.array([float(by[(g, c)]["lower"]) if (g, c) in by else 0.0 for c in classes])
        hi = np.array([float(by[(g, c)]["upper"]) if (g, c) in by else 0.0 for c in classes])
        colors = ["#9a9a9a" if c == "unseen type" else cmap(i % 10) for c in classes]
        ax.bar(x + (i - (len(groups) - 1) / 2) * width, p, width * 0.95, color=colors,
               yerr=np.vstack([np.maximum(p - lo, 0), np.maximum(hi - p, 0)]), capsize=3,
               label=f"{g} (n={n[g]})", edgecolor=cmap(i % 10), linewidth=0.8)
    ax.set_xticks(x, classes, rotation=30 if len(classes) > 4 else 0, ha="right" if len(classes) > 4 else "center")
    ax.set_ylabel("proportion (corrected for the model's errors)")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    if len(groups) > 1:
        ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    if path is None:
        return _png(fig)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def plot_matrix(cm, classes: Sequence[str], title: str, xlabel: str, ylabel: str) -> bytes:
    """A confusion-style heatmap as PNG bytes: colour = share of the row, each cell's count
    written in it (one decimal where counts are fractional, e.g. Krippendorff's coincidences)."""
    plt = _plt()
    cm = np.asarray(cm, dtype=float)
    rows = cm.sum(1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    whole = np.allclose(cm, np.round(cm))
    size = 2.5 + 0.6 * len(classes)
    fig, ax = plt.subplots(figsize=(size, size * 0.85), dpi=110)
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{cm[i, j]:.0f}" if whole else f"{cm[i, j]:.1f}", ha="center", va="center",
                    color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return _png(fig)
