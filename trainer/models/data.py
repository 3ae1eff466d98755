"""Datasets, microscopy augmentation and validation splits.

Augmentation is chosen for cells, which have no "up": 90-degree rotations and flips are free;
scale/zoom within +-15 % and small brightness/contrast jitter mimic staining and focus drift
between slides. Nothing changes colour hue: in stained smears the colour is the signal.
A file that fails to decode mid-epoch is reported and dropped from the batch, never fatal.
"""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, get_worker_info

from trainer.io.errors import ImageReadError
from trainer.io.read import load_for_model


def augment(x: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """x: (3, H, W) in [0, 1] -> augmented copy, same shape."""
    x = torch.rot90(x, rng.randrange(4), dims=(1, 2))
    if rng.random() < 0.5:
        x = torch.flip(x, dims=(2,))
    zoom = rng.uniform(0.85, 1.15)
    size = x.shape[-1]
    if abs(zoom - 1.0) > 0.02:
        new = max(8, int(round(size * zoom)))
        x = F.interpolate(x[None], size=(new, new), mode="bilinear", align_corners=False)[0]
        if new > size:  # zoom in: random crop back to size
            i, j = rng.randrange(new - size + 1), rng.randrange(new - size + 1)
            x = x[:, i:i + size, j:j + size]
        else:  # zoom out: reflect-pad back to size
            p = size - new
            left, top = rng.randrange(p + 1), rng.randrange(p + 1)
            x = F.pad(x[None], (left, p - left, top, p - top), mode="replicate")[0]
    gain = rng.uniform(0.9, 1.1)
    offset = rng.uniform(-0.05, 0.05)
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.9, 1.1) + mean  # contrast
    return (x * gain + offset).clamp(0.0, 1.0)


class ImageDataset(Dataset):
    """(tensor normalised for the backbone, label index, row) or (None, label, row, reason).

    `channels`: channel indices, or the model's whole reading setting (`ModelConfig.reader`, a
    `trainer.io.settings.Preprocessing` or its dict: stack, time point, normalisation, channels), so
    training, inference and previews read every file the same way.
    """

    def __init__(self, paths: Sequence, labels: Sequence[int] | None, size: int, mean, std,
                 channels=None, train: bool = False, seed: int = 0):
        self.paths = list(paths)
        self.labels = list(labels) if labels is not None else [-1] * len(self.paths)
        self.size, self.channels, self.train, self.seed = size, channels, train, seed
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        try:
            arr = load_for_model(self.paths[i], self.size, self.channels)
        except ImageReadError as exc:
            return None, self.labels[i], i, exc.reason
        x = torch.from_numpy(np.ascontiguousarray(arr))  # (H, W, 3)
        if self.train:  # per-sample, per-epoch seed: reproducible whatever the worker count
            x = augment(x.permute(2, 0, 1), random.Random(hash((self.seed, self.epoch, i)))).permute(1, 2, 0)
        # normalised in HWC and returned as a (3, H, W) view: collate_skipping stacks HWC memory
        # straight into a channels_last batch (one copy instead of three)
        x = (x - self.mean.view(1, 1, 3)) / self.std.view(1, 1, 3)
        return x.permute(2, 0, 1), self.labels[i], i, ""


def collate_skipping(batch):
    """Stack the decodable samples; pass the failures on so the caller can report them."""
    good = [b for b in batch if b[0] is not None]
    failed = [(b[2], b[3]) for b in batch if b[0] is None]
    if good:
        hwc = [b[0].permute(1, 2, 0) for b in good]
        out = None
        if get_worker_info() is not None:  # like default_collate: build the batch in shared memory
            storage = hwc[0]._typed_storage()._new_shared(len(hwc) * hwc[0].numel(), device=hwc[0].device)
            out = hwc[0].new(storage).resize_(len(hwc), *hwc[0].shape)
        x = torch.stack(hwc, out=out).permute(0, 3, 1, 2)  # (N, 3, H, W), channels_last memory
        y = torch.tensor([b[1] for b in good], dtype=torch.long)
        rows = torch.tensor([b[2] for b in good], dtype=torch.long)
    else:
        x, y, rows = None, torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return x, y, rows, failed


def stratified_split(labels: Sequence, val_fraction: float = 0.2, seed: int = 0,
                     groups: Sequence | None = None) -> tuple[list[int], list[int]]:
    """Row indices (train, val), each class represented in val in proportion.

    A class with a single image stays in train (it cannot be both learned and checked).
    With `groups` (e.g. the slide or source image of each crop) whole groups go to one side, so
    crops of the same field never leak between train and validation.
    """
    rng = random.Random(seed)
    if groups is None:
        groups = list(range(len(labels)))
    by_group: dict = defaultdict(list)
    for row, g in enumerate(groups):
        by_group[g].append(row)
    by_class: dict = defaultdict(list)
    for g, rows in by_group.items():
        majority = max(set(labels[r] for r in rows), key=lambda c: sum(labels[r] == c for r in rows))
        by_class[majority].append(g)
    val: list[int] = []
    for cls in sorted(by_class, key=str):
        gs = sorted(by_class[cls], key=str)
        rng.shuffle(gs)
        n_rows = sum(len(by_group[g]) for g in gs)
        if len(gs) < 2:
            continue
        target = max(1, round(n_rows * val_fraction))
        taken = 0
        for g in gs[:-1]:  # always leave at least one group of the class in train
            if taken >= target:
                break
            val.extend(by_group[g])
            taken += len(by_group[g])
    val_set = set(val)
    train = [r for r in range(len(labels)) if r not in val_set]
    return train, sorted(val)


def class_weights(labels: Sequence[int], n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights (mean 1 over present classes): rare cell types count as much."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max((counts > 0).sum(), 1), 0.0)
    return torch.tensor(w, dtype=torch.float32)
