"""The model export: a self-contained model folder (weights, config, OOD reference, model card, TorchScript) usable outside the project."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

from trainer.reports.export_dataset import _table
from trainer.reports.export_paths import MARKER, key_problem, prepare_out


class _Packaged:
    """Built lazily (torch import): input [0, 1] RGB (B, 3, S, S) -> class probabilities."""

    @staticmethod
    def build(net, mean, std):
        import torch

        class Packaged(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net
                self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
                self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

            def forward(self, x):
                return torch.softmax(self.net((x - self.mean) / self.std), dim=1)

        return Packaged().eval()


def export_torchscript(model, path, tol: float = 1e-4) -> float:
    """Trace the classifier (with normalisation and softmax) on CPU; verify it reproduces the
    Python model on other inputs and batch sizes. Returns the largest difference seen."""
    import torch

    size = model.config.image_size
    net = model.net.cpu().eval().to(memory_format=torch.contiguous_format)
    wrapped = _Packaged.build(net, model.config.mean, model.config.std)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.x deprecates jit; libtorch still loads it
        traced = torch.jit.trace(wrapped, torch.rand(2, 3, size, size, generator=g), check_trace=False)
        traced.save(str(path))
        loaded = torch.jit.load(str(path))
        worst = 0.0
        for b in (1, 3):
            x = torch.rand(b, 3, size, size, generator=g)
            worst = max(worst, float((loaded(x) - wrapped(x)).abs().max()))
    if worst > tol:
        raise RuntimeError(f"TorchScript export differs from the model by {worst:.2e} (> {tol}); not usable")
    return worst


def export_model(model_dir, out, workspace=None, overwrite: bool = False, torchscript: bool = True) -> dict:
    """A self-contained model folder: loadable by `scopeloop predict --model <out>` anywhere."""
    import torch

    from trainer.models.model import ScopeModel
    from trainer.stats.ood import OODReference

    model_dir = Path(model_dir)
    model = ScopeModel.load(model_dir)
    out = prepare_out(out, overwrite, "model", protect=[model_dir])
    for p in sorted(model_dir.iterdir()):
        if p.is_file() and p.name != MARKER:
            shutil.copy2(p, out / p.name)
    if not (out / "backbone.pt").is_file():  # frozen backbone: ship its weights too
        torch.save(model.net.backbone.state_dict(), out / "backbone.pt")
    ood = OODReference.load(out)
    if ood is None and workspace is not None:
        ood = _reference_from_workspace(model, workspace)
        if ood is not None:
            ood.save(out)
    cfg = model.config
    (out / "preprocessing.json").write_text(json.dumps({
        "image_size": cfg.image_size, "channels": cfg.channels, "mean": cfg.mean, "std": cfg.std,
        "reading": cfg.reader.to_dict(),  # stack, plane, timepoint, normalisation, ranges, bit_depth
        "steps": [f"read (trainer.io): {cfg.reader.describe()}",
                  "channels -> RGB: 1 channel copied to R,G,B; 2 channels -> R,G,0; >3 -> first three or `channels`",
                  "pad to a square (reflect), resize bilinear to image_size",
                  "(x - mean) / std per channel (done inside model.torchscript.pt, which takes [0, 1] input)"],
    }, indent=1))
    ts_diff = export_torchscript(model, out / "model.torchscript.pt") if torchscript else None
    (out / "MODEL_CARD.md").write_text(model_card(out, model, ood, ts_diff))
    info = {"kind": "model", "complete": True, "source": str(model_dir), "classes": cfg.classes,
            "torchscript_max_diff": ts_diff, "ood_reference": ood is not None, "out": str(out)}
    (out / MARKER).write_text(json.dumps(info, indent=1))
    return info


def _reference_from_workspace(model, workspace):
    """OOD reference from the project's labeled images (cached embeddings when they fit)."""
    from trainer.models.ood_reference import reference_for_model

    tasks = [t for t in workspace.labels.get("tasks", {}).values() if t.get("label") in model.classes]
    keys = sorted({t["key"] for t in tasks if key_problem(t.get("key")) is None})
    label_of = {t["key"]: t["label"] for t in tasks}
    if len(keys) < 2:
        return None
    ckeys, emb = workspace.embeddings(model.config.backbone_id).load()
    row = {k: i for i, k in enumerate(ckeys)}
    if emb is not None and not model.backbone_finetuned and all(k in row for k in keys):
        return reference_for_model(model, keys, [label_of[k] for k in keys], emb[[row[k] for k in keys]])
    root = Path(workspace.images_root)
    keys = [k for k in keys if (root / k).is_file()]
    return reference_for_model(model, [root / k for k in keys], [label_of[k] for k in keys]) if len(keys) > 1 else None


def _num(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def model_card(folder: Path, model, ood, ts_diff) -> str:
    """MODEL_CARD.md: what the model is, what it was trained on, how good it is, where it fails."""
    def load(name):
        p = folder / name
        return json.loads(p.read_text()) if p.is_file() else {}

    cfg, metrics, hist, prov = model.config, load("metrics.json"), load("history.json"), load("provenance.json")
    from trainer.stats.estimate import from_metrics, headline

    counts = metrics.get("counts", {})
    tr, va = counts.get("train", {}), counts.get("validation", counts.get("evaluated", {}))
    est = from_metrics(metrics)  # the same estimator as status and the report
    per = (est or {}).get("per_class", {})

    def cells(c):
        r = per.get(c)
        if not r or not r["evaluated"]:
            return ["no evaluated images", "", ""]
        if not est.get("enough"):  # no per-class score from too few labels
            return ["not estimated yet", "", ""]
        return [f"{r['precision']:.2f}", f"{r['recall']:.2f} ({r['recall_low']:.2f}-{r['recall_high']:.2f})", f"{r['f1']:.2f}"]

    rows = [[c, tr.get(c, "?"), va.get(c, "?"), *cells(c)] for c in cfg.classes]
    epochs = hist.get("epochs", [])
    kept = next((e for e in epochs if e.get("epoch") == hist.get("best_epoch")), epochs[-1] if epochs else {})
    tc = prov.get("train_config", {})
    scores = headline(est)
    rare = [c for c in cfg.classes if (tr.get(c, 0) or 0) + (va.get(c, 0) or 0) < 10]
    parts = [
        f"# Model card: {', '.join(cfg.classes)} classifier",
        f"Backbone `{cfg.backbone}` ({cfg.weights_source or cfg.weights}), input {cfg.image_size} px"
        f"{', channels ' + str(cfg.channels) if cfg.channels else ''}; trained {prov.get('created', '?')} in "
        f"mode `{tc.get('mode', '?')}` on {prov.get('device', '?')} ({prov.get('seconds', '?')} s)"
        + (f"; data from `{prov['source']}`." if prov.get("source") else "."),
        "## Data (labeled images per class)",
        _table(["class", "train", "validation" if "validation" in counts else "evaluated (out-of-fold)",
                "precision", "recall (95% interval)", "F1"], rows),
        f"Quality: {scores}. Skipped unreadable images: {counts.get('skipped_images', 0)}.",
        "## Training history",
        f"{len(epochs)} rounds/epochs; kept {hist.get('best_epoch')}: training loss {_num(kept.get('train_loss'))}, "
        f"validation loss {_num(kept.get('val_loss'))}. See loss_curves.png and confusion_matrix.png.",
        "## Use",
        "- Python with scopeloop: `scopeloop predict --model <this folder> --input <images> --out predictions.csv`\n"
        "- without scopeloop: `torch.jit.load('model.torchscript.pt')(x)` with x float (B, 3, S, S) RGB in [0, 1] "
        "prepared as in preprocessing.json; returns class probabilities in label_map.json order"
        + (f" (verified to match the Python model within {ts_diff:.1e})" if ts_diff is not None else ""),
        "## Limits",
        "- It always answers with one of the classes above; cell types it never saw get one of these names.\n"
        "- Trained on one image source: another microscope, stain, magnification or camera can silently "
        "lower accuracy. " + ("`scopeloop predict` flags images far from every training image (`out_of_distribution`, "
                              f"threshold = {ood.quantile:.0%} quantile of training images' own distances); check them."
                              if ood is not None else "No out-of-distribution reference is stored with this model.") + "\n"
        "- Predictions with confidence below 0.5 are flagged `low_confidence`: review them.\n"
        + (f"- Few labeled images (<10) for: {', '.join(rare)}: their scores are uncertain.\n" if rare else "")
        + "- Quality is measured on images from the same labeling project (not an independent test set); "
        "a cross-validated estimate judges each image by a model that did not train on it.",
    ]
    return "\n\n".join(parts) + "\n"
