"""Self-supervised adaptation of the backbone to the lab's own images (no labels needed).

Starting from the shipped ImageNet weights, the backbone learns from the project's unlabeled
pool that two augmented views of the same cell belong together and views of different cells
do not: SimCLR's contrastive objective (Chen et al. 2020, "A simple framework for contrastive
learning of visual representations"), with the loss and projection head from `lightly`
(`pip install "scopeloop[ssl]"`). Augmentations are the ones that keep a cell a cell: 90-degree
rotations and flips (no canonical orientation), crops that keep most of the cell, intensity
jitter (stain and exposure vary), mild blur (focus varies). Colour hue is not jittered: in
stained and fluorescence images the colour is the signal.

Runs on CPU (slowly: tests and small pools) and on CUDA with mixed precision and channels_last
(the nightly job). The result is a backbone file: a new embedding space, which the refresh
publishes only when the gate finds it no worse (cross-validated, see scopeloop.refresh).
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainer.models.data import ImageDataset
from trainer.models.inference import autocast, default_device, loader_workers


class MissingExtraError(RuntimeError):
    """An optional dependency is not installed; the message names the pip command."""


def _lightly():
    try:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead
    except ImportError:
        raise MissingExtraError("self-supervised adaptation needs the 'ssl' extra: "
                                "pip install \"scopeloop[ssl]\" (installs lightly)") from None
    return NTXentLoss, SimCLRProjectionHead


@dataclass
class SSLConfig:
    epochs: int = 40              # measured on a GPU (docs/benchmarks.md): 40 epochs beat 15
    batch_size: int = 256         # images per step at most (2 views each); a small pool uses
                                  # n/8 (at least 32) so that an epoch still has ~8 steps
    lr: float = 1e-4              # AdamW, backbone and projection head
    weight_decay: float = 1e-5
    temperature: float = 0.2      # NT-Xent temperature
    crop_scale: float = 0.6       # random crops keep at least this share of the image side
    max_images: int | None = None  # a random subset of the pool per epoch (None: all)
    seed: int = 0
    device: str | None = None     # None: CUDA when present
    amp: bool | None = None       # None: on CUDA


def augment_view(x: torch.Tensor, rng: random.Random, crop_scale: float) -> torch.Tensor:
    """One random view of a normalised image (3, H, W): rotation/flip, crop that keeps the cell,
    brightness/contrast jitter, occasional blur. Output has the input's shape."""
    x = torch.rot90(x, rng.randrange(4), (1, 2))
    if rng.random() < 0.5:
        x = torch.flip(x, (2,))
    _, h, w = x.shape
    s = rng.uniform(crop_scale, 1.0)
    ch, cw = max(8, int(h * s)), max(8, int(w * s))
    top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
    x = nn.functional.interpolate(x[None, :, top:top + ch, left:left + cw], size=(h, w), mode="bilinear",
                                  align_corners=False)[0]
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.7, 1.3) + mean + rng.uniform(-0.2, 0.2)
    if rng.random() < 0.3:
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :]) / 16.0
        x = nn.functional.conv2d(x[:, None], k[None, None], padding=1)[:, 0]
    return x


class _TwoViews(Dataset):
    def __init__(self, base: ImageDataset, crop_scale: float, seed: int):
        self.base, self.crop_scale, self.seed = base, crop_scale, seed
        self.epoch = 0

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, _, row, err = self.base[i]
        if x is None:
            return None
        rng = random.Random(hash((self.seed, self.epoch, i)))
        return augment_view(x, rng, self.crop_scale), augment_view(x, rng, self.crop_scale)


def _collate(batch):
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    return torch.stack([a for a, _ in batch]), torch.stack([b for _, b in batch])


@dataclass
class SSLResult:
    backbone: nn.Module
    history: list            # per epoch: {"epoch", "loss", "images", "seconds"}
    images_per_second: float  # views processed per second (2 per image), the throughput figure


def adapt(backbone: nn.Module, paths: Sequence, image_size: int, mean, std, reader=None,
          config: SSLConfig | None = None, log=print, on_epoch=None) -> SSLResult:
    """Contrastive self-supervised training of `backbone` (any module with `num_features`,
    e.g. `trainer.models.backbone.create_backbone(...)[0]`) on the images at `paths`.
    `on_epoch(entry, backbone)`, if given, is called after each epoch (checkpoints, progress).

    Unreadable images are skipped. Returns the trained backbone (same object) with the loss
    per epoch; raises MissingExtraError without `lightly`, ValueError with fewer than 2 images.
    """
    cfg = config or SSLConfig()
    NTXentLoss, SimCLRProjectionHead = _lightly()
    if len(paths) < 2:
        raise ValueError(f"self-supervised adaptation needs at least 2 images, got {len(paths)}")
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device) if cfg.device else default_device()
    head = SimCLRProjectionHead(backbone.num_features, 512, 128)
    net = nn.Sequential(backbone, head).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = NTXentLoss(temperature=cfg.temperature)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.amp is not False)
    rng = np.random.default_rng(cfg.seed)
    n_epoch = min(len(paths), cfg.max_images or len(paths))
    batch = max(2, min(cfg.batch_size, max(32, n_epoch // 8)))
    history, seen, t_all = [], 0, time.time()
    for epoch in range(1, cfg.epochs + 1):
        use = list(paths)
        if cfg.max_images and len(use) > cfg.max_images:
            use = [use[i] for i in rng.choice(len(use), cfg.max_images, replace=False)]
        ds = _TwoViews(ImageDataset(use, None, image_size, mean, std, reader), cfg.crop_scale, cfg.seed)
        ds.epoch = epoch
        workers = loader_workers()
        dl = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=_collate,
                        drop_last=len(ds) > batch, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.seed + epoch))
        net.train()
        t0, total, n = time.time(), 0.0, 0
        for batch in dl:
            if batch is None or len(batch[0]) < 2:
                continue
            a, b = (v.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last) for v in batch)
            with autocast(device, cfg.amp):
                loss = loss_fn(net(a).float(), net(b).float())
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"self-supervised loss became {float(loss)} at epoch {epoch}")
            total += float(loss.detach()) * len(a)
            n += len(a)
        seen += n
        history.append({"epoch": epoch, "loss": total / max(n, 1), "images": n, "seconds": round(time.time() - t0, 2)})
        log(f"self-supervised epoch {epoch}/{cfg.epochs}: NT-Xent loss {history[-1]['loss']:.3f} on {n} images")
        if on_epoch is not None:
            on_epoch(history[-1], backbone)
    backbone.eval()
    return SSLResult(backbone, history, 2 * seen / max(time.time() - t_all, 1e-9))


def save_backbone(backbone: nn.Module, folder: Path, stamp: str | None = None) -> Path:
    """Write the adapted backbone's weights atomically; the file name defines the new space."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    path = folder / f"backbone-ssl-{stamp}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(backbone.state_dict(), tmp)
    tmp.replace(path)
    return path
