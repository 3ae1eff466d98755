"""A trained model's QC files: loss curves, confusion matrix plot, metrics.json, and the one-line summary."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curves(history: list[dict], path, best_epoch: int | None = None) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="training loss")
    if any(h.get("val_loss") is not None for h in history):
        ax.plot(epochs, [h.get("val_loss") for h in history], "s-", label="validation loss")
    if best_epoch is not None:
        ax.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"kept: epoch {best_epoch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("Learning: loss per epoch (lower is better)")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_confusion(cm, classes: Sequence[str], path, title: str = "Validation: true vs predicted") -> Path:
    plt = _pyplot()
    cm = np.asarray(cm)
    rows = cm.sum(1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    size = 2.5 + 0.6 * len(classes)
    fig, ax = plt.subplots(figsize=(size, size * 0.85), dpi=110)
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (annotator)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def write_qc(folder, metrics: dict, history: list[dict], best_epoch: int | None) -> None:
    """metrics.json + history.json + loss_curves.png + confusion_matrix.png into `folder`."""
    folder = Path(folder)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (folder / "history.json").write_text(json.dumps({"epochs": history, "best_epoch": best_epoch}, indent=1))
    if history:
        plot_loss_curves(history, folder / "loss_curves.png", best_epoch)
    val = metrics.get("validation")
    if val and val.get("n"):
        plot_confusion(val["confusion_matrix"], val["classes"], folder / "confusion_matrix.png")


def qc_summary(metrics: dict) -> str:
    """A few lines a biologist reads: the quality estimate (trainer.stats.estimate: interval and n, or
    "not enough labels yet"), then the weakest classes first."""
    dropped = metrics.get("dropped_classes") or {}
    warn = ("WARNING: class(es) dropped from this model, no readable image: "
            + ", ".join(f"{c} ({d.get('listed', 0)} listed, 0 readable)" for c, d in dropped.items())) if dropped else ""
    from trainer.stats.estimate import from_metrics, headline

    est = from_metrics(metrics)
    lines = [warn] if warn else []
    if est is None:
        return "\n".join(lines + ["no validation images (too few labels per class): quality not estimated yet"])
    lines.append(f"quality: {headline(est)}")
    lines.append("per class (weakest first):" if est["enough"] else "per class (labeled / evaluated images):")
    per = sorted(est["per_class"].items(), key=lambda kv: (kv[1]["f1"] is None, kv[1]["f1"] or 0.0))
    for c, m in per:
        if not m["evaluated"] or not est["enough"]:
            what = "no labeled images yet" if not m["labeled"] else (
                "no evaluated images" if not m["evaluated"] else "scores not shown until there are enough labels")
            lines.append(f"  {c:<20} {what}  (labeled {m['labeled']}, evaluated {m['evaluated']})")
        else:
            lines.append(f"  {c:<20} F1 {m['f1']:.2f}  precision {m['precision']:.2f}  recall {m['recall']:.2f} "
                         f"({m['recall_low']:.2f}-{m['recall_high']:.2f})  (n={m['evaluated']})")
    return "\n".join(lines)
