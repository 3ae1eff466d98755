"""Training a cell-type classifier from labeled images, with QC, into the model registry.

Two modes, one result format:
* `head`: the backbone stays as pretrained; images are embedded once and a linear head is fit
  on the embeddings (seconds to a minute on CPU). The quick refresh uses the same recipe.
* `full`: fine-tune backbone and head with microscopy augmentation. It starts from the linear
  head fit first (a "linear probe, then fine-tune" start is more stable than a random head),
  uses a lower learning rate for the backbone, class-weighted loss, AMP on CUDA, and keeps
  the epoch with the best validation macro-F1 (early stopping).
Either way the validation split is stratified (group-aware with groups), and every model is
written with its QC (metrics.json, history.json, plots) and provenance.
"""
from __future__ import annotations

import copy
import json
import logging
import platform
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from trainer.io.errors import SkipReport
from trainer.models.data import ImageDataset, class_weights, collate_skipping, stratified_split
from trainer.models.features import DEFAULT_FEATURES
from trainer.models.head import fit_head
from trainer.models.inference import autocast, default_device, loader_workers, run_model
from trainer.models.model import ModelConfig, ScopeModel
from trainer.models.training_qc import write_qc
from trainer.stats.metrics import classification_metrics
from trainer.store.registry import ModelRegistry

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    backbone: str = "tf_efficientnet_lite0"
    weights: str = "imagenet"
    mode: str = "head"  # "head" | "full"
    image_size: int = 224
    channels: list[int] | None = None
    # how stacks and intensities are read (trainer.io.settings.Preprocessing without `channels`):
    # {"stack": "mip"|"plane", "plane", "timepoint", "normalisation", "ranges", "bit_depth"}
    preprocessing: dict | None = None
    features: str = DEFAULT_FEATURES  # the embedding (trainer.models.features)
    epochs: int = 15
    batch_size: int = 32
    lr_head: float = 1e-3
    lr_backbone: float = 2e-4
    patience: int = 4
    val_fraction: float = 0.2
    seed: int = 0
    device: str | None = None  # None: CUDA when present


@dataclass
class TrainResult:
    model: ScopeModel
    metrics: dict
    history: list[dict]
    best_epoch: int | None
    train_rows: list[int]
    val_rows: list[int]
    skipped: SkipReport = field(default_factory=SkipReport)
    seconds: float = 0.0
    device: str = "cpu"
    ood: object = None  # trainer.stats.ood.OODReference: what "unlike the training images" means
    publishable: object = None  # trainer.stats.publishable.VersionStats: unseen types, prediction sets (issue 25)


def _counts_text(classes, counts: dict) -> str:
    return ", ".join(f"{c} {counts.get(c, 0)}" for c in classes)


def _prep_dict(config: TrainConfig) -> dict | None:
    """The preprocessing settings of `config`, validated, as saved in the model config."""
    if not config.preprocessing:
        return None
    from trainer.io.settings import as_preprocessing

    return as_preprocessing(dict(config.preprocessing, channels=config.channels)).to_dict()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(paths: Sequence, labels: Sequence[str], classes: Sequence[str], config: TrainConfig,
          groups: Sequence | None = None, split: tuple[list[int], list[int]] | None = None,
          progress: bool = False) -> TrainResult:
    """Train on images `paths` with class names `labels`; validation rows from `split` or drawn here."""
    t0 = time.time()
    seed_everything(config.seed)
    classes = list(classes)
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise ValueError(f"labels {unknown} are not in the class list {classes}")
    listed = {c: int(sum(1 for lbl in labels if lbl == c)) for c in classes}
    if sum(1 for n in listed.values() if n) < 2:
        raise ValueError("training needs labeled images of at least 2 classes; images per class: "
                         + _counts_text(classes, listed))
    y_all = np.array([classes.index(lbl) for lbl in labels], dtype=np.int64)
    train_rows, val_rows = split or stratified_split(y_all.tolist(), config.val_fraction, config.seed, groups)
    device = torch.device(config.device) if config.device else default_device()
    model = ScopeModel.new(ModelConfig(classes, config.backbone, config.weights, config.image_size, config.channels,
                                       preprocessing=_prep_dict(config), features=config.features))
    cfg = model.config
    reader = cfg.reader

    # 1. embed every image once with the pretrained backbone; fit the linear head
    res = run_model(model.net.backbone, paths, cfg.image_size, cfg.mean, cfg.std, reader,
                    device=device, progress=progress, desc="embedding")
    # 2. classes are checked on what was READ: a class none of whose images decoded is dropped
    #    (the model never claims a score for it); fewer than two readable classes: refused
    readable = {c: 0 for c in classes}
    for r in res.rows.tolist():
        readable[labels[r]] += 1
    kept = [c for c in classes if readable[c]]
    dropped = {c: {"listed": listed[c], "readable": 0} for c in classes if not readable[c]}
    if len(kept) < 2:
        reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in res.skipped.skipped[:5])
        raise ValueError("training needs readable images of at least 2 classes; readable of listed images "
                         "per class: " + ", ".join(f"{c} {readable[c]} of {listed[c]}" for c in classes)
                         + (f". Unreadable, e.g. {reasons}" if reasons else ""))
    if dropped:
        msg = ("class(es) DROPPED from this model, no readable image: "
               + ", ".join(f"{c} ({d['listed']} listed, 0 readable)" for c, d in dropped.items())
               + "; the model cannot predict them. Fix or add their images and train again.")
        log.warning(msg)
        warnings.warn(msg, stacklevel=2)
        remap = np.array([kept.index(c) if c in kept else -1 for c in classes], dtype=np.int64)
        y_all = remap[y_all]
        classes = kept
        cfg.classes = kept
    ok = set(res.rows.tolist())
    pos = {r: i for i, r in enumerate(res.rows.tolist())}
    tr = [r for r in train_rows if r in ok]
    va = [r for r in val_rows if r in ok]
    head = fit_head(res.embeddings[[pos[r] for r in tr]], y_all[tr], len(classes), seed=config.seed,
                    X_val=res.embeddings[[pos[r] for r in va]] if va else None, y_val=y_all[va] if va else None)
    model.net.head = head.to_linear()
    history, best_epoch = head.history, head.best_epoch
    if config.mode == "full":
        history, best_epoch = _finetune(model, paths, y_all, tr, va, config, device, res.skipped, progress)
        model.backbone_finetuned = True
        val_res = run_model(model.net, [paths[r] for r in va], cfg.image_size, cfg.mean, cfg.std, reader, device=device)
        val_pred = val_res.probs.argmax(1) if len(va) else np.zeros(0, int)
        val_true = y_all[[va[i] for i in val_res.rows]] if len(va) else np.zeros(0, int)
    elif config.mode == "head":
        val_pred = head.predict_proba(res.embeddings[[pos[r] for r in va]]).argmax(1) if va else np.zeros(0, int)
        val_true = y_all[va]
    else:
        raise ValueError(f"unknown training mode '{config.mode}': use 'head' or 'full'")
    metrics = {
        "validation": classification_metrics(val_true, val_pred, classes) if len(va) else {"n": 0},
        "counts": {
            "train": {c: int((y_all[tr] == i).sum()) for i, c in enumerate(classes)},
            "validation": {c: int((y_all[va] == i).sum()) for i, c in enumerate(classes)},
            "skipped_images": len(res.skipped),
        },
        "preprocessing": reader.describe(),
    }
    if dropped:
        metrics["dropped_classes"] = dropped
    from trainer.models.ood_reference import reference_for_model

    ood = reference_for_model(model, [paths[r] for r in tr], y_all[tr], embeddings=res.embeddings[[pos[r] for r in tr]])
    publishable = None
    if config.mode == "head":  # the fine-tuned backbone's space differs from these embeddings
        publishable = publishable_stats(res.embeddings[[pos[r] for r in tr]], y_all[tr], classes, config.seed,
                                        None if groups is None else [groups[r] for r in tr])
    return TrainResult(model, metrics, history, best_epoch,
                       tr, va, res.skipped, time.time() - t0, str(device), ood, publishable)


def publishable_stats(X, y, classes, seed: int = 0, groups=None):
    """Issue 25: the novelty model (ViM, the quick head's recipe), the conformal calibration and
    the out-of-fold confusion with the flagged-as-unseen column, from the training embeddings:
    one out-of-fold pass of the head (trainer.models.cross_validation, group-aware folds) whose
    fold heads the novelty model reuses. None (logged) when it cannot be made."""
    from trainer.models.cross_validation import out_of_fold_proba
    from trainer.stats.estimate import FOLDS, assign_folds
    from trainer.stats.publishable import HeadRecorder, build

    try:
        y = np.asarray(y, dtype=int)
        folds = assign_folds(y, FOLDS, None if groups is None else np.asarray(groups), seed)
        fit = HeadRecorder(lambda Xf, yf, n, seed=seed: fit_head(Xf, yf, n, seed=seed))
        oof = out_of_fold_proba(X, y, len(classes), folds, fit=fit, seed=seed)
        return build(X, y, classes, oof, fit=fit, folds=folds)
    except Exception as exc:  # noqa: BLE001 - the model is saved without them, and says so
        log.warning("novelty model / prediction sets not made: %s: %s", type(exc).__name__, exc)
        return None


def _finetune(model: ScopeModel, paths, y_all, tr, va, config: TrainConfig, device, report: SkipReport, progress: bool):
    """Fine-tune backbone + head; keep the best epoch by validation macro-F1 (then val loss)."""
    from tqdm.auto import tqdm

    cfg = model.config
    net = model.net.to(device).to(memory_format=torch.channels_last)
    n_classes = len(cfg.classes)
    ds = ImageDataset([paths[r] for r in tr], y_all[tr].tolist(), cfg.image_size, cfg.mean, cfg.std, cfg.reader,
                      train=True, seed=config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    workers = loader_workers()
    dl = DataLoader(ds, batch_size=config.batch_size, shuffle=True, generator=gen, num_workers=workers,
                    collate_fn=collate_skipping, drop_last=len(ds) > config.batch_size,
                    pin_memory=device.type == "cuda")
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(y_all[tr].tolist(), n_classes).to(device))
    opt = torch.optim.AdamW([
        {"params": net.backbone.parameters(), "lr": config.lr_backbone},
        {"params": net.head.parameters(), "lr": config.lr_head},
    ], weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, config.epochs))
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history, best_state, best_key, stale, best_epoch = [], None, None, 0, None
    for epoch in range(1, config.epochs + 1):
        ds.epoch = epoch
        net.train()
        for m in net.modules():  # small batches of few cells: keep ImageNet BatchNorm statistics
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        total, n = 0.0, 0
        for x, y, _, failed in tqdm(dl, desc=f"epoch {epoch}", disable=not progress, leave=False):
            for row, reason in failed:
                if epoch == 1:
                    report.add(ds.paths[row], reason)
            if x is None:
                continue
            x, y = x.to(device, non_blocking=True), y.to(device)
            opt.zero_grad(set_to_none=True)
            with autocast(device, use_amp):
                loss = loss_fn(net(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            total += float(loss.detach()) * len(y)
            n += len(y)
        sched.step()
        entry = {"epoch": epoch, "train_loss": total / max(n, 1), "val_loss": None, "val_macro_f1": None}
        if va:
            vr = run_model(net, [paths[r] for r in va], cfg.image_size, cfg.mean, cfg.std, cfg.reader, device=device)
            yt = y_all[[va[i] for i in vr.rows]]
            entry["val_loss"] = float(nn.functional.nll_loss(torch.log(torch.from_numpy(vr.probs).clamp_min(1e-8)), torch.from_numpy(yt)))
            entry["val_macro_f1"] = classification_metrics(yt, vr.probs.argmax(1), cfg.classes)["macro_f1"]
            key = (entry["val_macro_f1"], -entry["val_loss"])
        else:
            key = (0.0, -entry["train_loss"])
        history.append(entry)
        if best_key is None or key > best_key:
            best_key, best_state, best_epoch, stale = key, copy.deepcopy(net.state_dict()), epoch, 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    net.load_state_dict(best_state)
    model.net = net.cpu().eval().to(memory_format=torch.contiguous_format)
    return history, best_epoch


def provenance(result: TrainResult, config: TrainConfig, source: str = "") -> dict:
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": source,
        "train_config": asdict(config),
        "weights_source": result.model.config.weights_source,
        "device": result.device,
        "seconds": round(result.seconds, 2),
        "counts": result.metrics.get("counts", {}),
        "skipped": result.skipped.skipped,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def save_version(result: TrainResult, config: TrainConfig, registry: ModelRegistry, source: str = "",
                 make_current: bool = True, extra: dict | None = None) -> str:
    """Write model + QC + provenance into a staging folder and publish it atomically."""
    with registry.staging() as tmp:
        result.model.save(tmp)
        metrics = dict(result.metrics, **(extra or {}))
        write_qc(tmp, metrics, result.history, result.best_epoch)
        (tmp / "provenance.json").write_text(json.dumps(provenance(result, config, source), indent=1))
        if result.ood is not None:
            result.ood.save(tmp)
        if result.publishable is not None:
            result.publishable.save(tmp)
        return registry.publish(tmp, make_current=make_current)
