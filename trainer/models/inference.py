"""Running a network over image files: batches, loader workers, AMP; embeddings and the rows that could be read."""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from trainer.io.errors import SkipReport
from trainer.models.data import ImageDataset, collate_skipping


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
    `features` names the embedding (trainer.models.features)."""
    from trainer.models.backbone import create_backbone

    net, pre, _ = create_backbone(backbone, weights, features)
    res = run_model(net, paths, image_size, pre.mean, pre.std, channels, batch_size, progress=progress, desc="embedding")
    return res.embeddings, res.rows, res.skipped
