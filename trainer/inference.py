"""Batch inference: embeddings (pre-logits) and class probabilities for many images.

Decoding runs in DataLoader worker processes while the model runs in the main one, so reading
images does not stall the network (see scripts/benchmark_throughput.py). Unreadable images are
skipped and reported. Embeddings are cached per project and embedding space (backbone id), so
each image is embedded once per backbone.
"""
from __future__ import annotations

import csv
import json
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from trainer.data import ImageDataset, collate_skipping
from trainer.images import SkipReport


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def loader_workers() -> int:
    """Decoder processes: one on a 2-core laptop (the model needs the other), more on nodes."""
    env = os.environ.get("SCOPELOOP_LOADER_WORKERS", "").strip()
    if env:
        return int(env)
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if n < 2 else min(8, max(1, n // 2))


def _lower_priority(_worker_id: int) -> None:
    """DataLoader worker_init_fn on CPU: decoders at nice 10, so they fill the gaps the model's
    OpenMP threads leave instead of preempting them (a preempted OpenMP thread stalls the whole
    forward pass at its next barrier)."""
    try:
        os.nice(10)
    except OSError:
        pass


def autocast(device: torch.device, enabled: bool | None = None):
    """Mixed precision on CUDA (bf16/fp16 autocast); plain fp32 on CPU."""
    if enabled is None:
        enabled = device.type == "cuda"
    return torch.autocast(device_type="cuda", dtype=torch.float16) if enabled and device.type == "cuda" else nullcontext()


@dataclass
class InferenceResult:
    embeddings: np.ndarray  # (n_ok, D) float32
    probs: np.ndarray | None  # (n_ok, C) float32, None for a bare backbone
    rows: np.ndarray  # indices into the input list of the images that were read
    skipped: SkipReport = field(default_factory=SkipReport)


@torch.no_grad()
def run_model(net, paths: Sequence, size: int, mean, std, channels=None, batch_size: int = 64,
              device: torch.device | None = None, amp: bool | None = None, progress: bool = False,
              desc: str = "inference", num_workers: int | None = None) -> InferenceResult:
    """net: a `Classifier` (embeddings + probabilities) or a bare backbone (embeddings only)."""
    from tqdm.auto import tqdm

    device = device or default_device()
    net = net.to(device).eval().to(memory_format=torch.channels_last)
    ds = ImageDataset(paths, None, size, mean, std, channels)
    workers = loader_workers() if num_workers is None else num_workers
    dl = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_skipping,
                    pin_memory=device.type == "cuda", persistent_workers=False,
                    prefetch_factor=4 if workers else None,
                    worker_init_fn=_lower_priority if workers and device.type == "cpu" else None)
    has_head = hasattr(net, "head")
    embs, probs, rows, report = [], [], [], SkipReport()
    with tqdm(total=len(ds), desc=desc, unit="img", disable=not progress) as bar:
        for x, _, r, failed in dl:
            for row, reason in failed:
                report.add(paths[row], reason)
            if x is not None:
                x = x.to(device, non_blocking=True)
                with autocast(device, amp):
                    e = net.embed(x) if has_head else net(x)
                    if has_head:
                        probs.append(torch.softmax(net.head(e).float(), 1).cpu().numpy())
                embs.append(e.float().cpu().numpy())
                rows.append(r.numpy())
            bar.update(len(r) + len(failed))
    d = getattr(net.backbone if has_head else net, "num_features", 0)
    return InferenceResult(
        np.concatenate(embs) if embs else np.zeros((0, d), np.float32),
        (np.concatenate(probs) if probs else np.zeros((0, len(net.head.bias)), np.float32)) if has_head else None,
        np.concatenate(rows) if rows else np.zeros(0, np.int64),
        report,
    )


def embed_paths(paths: Sequence, backbone: str = "tf_efficientnet_lite0", image_size: int = 224,
                weights: str = "imagenet", batch_size: int = 64, channels=None, progress: bool = False,
                features: str = "final"):
    """(embeddings of the readable images, their rows in `paths`, SkipReport) for a backbone;
    `features` names the embedding (trainer.features)."""
    from trainer.backbone import create_backbone

    net, pre, _ = create_backbone(backbone, weights, features)
    res = run_model(net, paths, image_size, pre.mean, pre.std, channels, batch_size, progress=progress, desc="embedding")
    return res.embeddings, res.rows, res.skipped


class EmbeddingCache:
    """Embeddings of a project's images in one embedding space, computed once, stored on disk.

    <root>/embeddings.npy (N, D) float32 and <root>/keys.json (row -> image key). Adding images
    embeds only the new keys; a different backbone id is a different folder.
    """

    def __init__(self, root):
        self.root = Path(root)

    def load(self) -> tuple[list[str], np.ndarray | None]:
        kp, ep = self.root / "keys.json", self.root / "embeddings.npy"
        if not (kp.is_file() and ep.is_file()):
            return [], None
        return json.loads(kp.read_text()), np.load(ep)

    def update(self, keys: Sequence[str], paths: Sequence, embed_fn) -> tuple[list[str], np.ndarray, SkipReport]:
        """Make sure every key is embedded. embed_fn(paths) -> InferenceResult. Returns all."""
        known, emb = self.load()
        have = set(known)
        todo = [(k, p) for k, p in zip(keys, paths) if k not in have]
        report = SkipReport()
        if todo:
            res = embed_fn([p for _, p in todo])
            report = res.skipped
            new_keys = [todo[r][0] for r in res.rows]
            if len(new_keys):
                known = known + new_keys
                emb = res.embeddings if emb is None else np.concatenate([emb, res.embeddings])
                self._save(known, emb)
        return known, (emb if emb is not None else np.zeros((0, 0), np.float32)), report

    def _save(self, keys, emb) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        np.save(self.root / "embeddings.tmp.npy", emb.astype(np.float32))
        (self.root / "keys.tmp.json").write_text(json.dumps(list(keys)))
        os.replace(self.root / "embeddings.tmp.npy", self.root / "embeddings.npy")
        os.replace(self.root / "keys.tmp.json", self.root / "keys.json")


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
    from trainer.registry import ModelRegistry

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

    With `ood` and a model folder holding `ood.npz` (see trainer.ood), the CSV also says which
    images are out of distribution (far from every training image in embedding space: another
    microscope, stain, debris); with `plot`, `<out>.counts.png` shows predicted class counts.
    With `quality`, the `quality` column holds each image's verdict (trainer.quality: ok, blank,
    out_of_focus, saturated, too_dark, duplicate, unusual) and `quality_reason` the deciding score.
    """
    from trainer.images import expand_planes, image_key, list_images
    from trainer.model import ScopeModel
    from trainer.ood import OODReference

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
        from trainer.quality import assess

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
        from trainer.report import plot_prediction_counts

        plot_path = str(plot_prediction_counts(pred, cfg.classes, low, is_ood, out_csv.with_suffix(".counts.png"),
                                               title=f"Predicted cell types: {Path(input_dir).name}"))
    return {"predicted": len(keys), "skipped": res.skipped, "counts": counts, "csv": str(out_csv),
            "low_confidence": int(low.sum()),
            "out_of_distribution": None if is_ood is None else int(is_ood.sum()), "plot": plot_path,
            "quality": qc_counts}
