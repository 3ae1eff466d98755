"""The deep refresh's fixed rules: the validation share by key hash, and the self-supervised epochs and label count that decide between the adapted space and a fine-tune."""
from __future__ import annotations

import hashlib

import numpy as np

VAL_SHARE = 5  # deep refresh: one image in five (by key hash) validates the fine-tune
# the deep refresh on a GPU: self-supervised epochs over the pool (trainer.models.ssl), and the label
# count from which a supervised fine-tune follows it (below it, the adapted space alone; see
# Refresher.deep_finetune and docs/benchmarks.md "Self-supervised adaptation")
SSL_EPOCHS_GPU = 40
FINETUNE_AFTER_SSL_MIN_LABELS = 1000


def is_validation(key: str) -> bool:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % VAL_SHARE == 0


def fixed_split(keys: list[str], labels: list[int]) -> tuple[list[int], list[int]]:
    """Rows (train, val): val by key hash, but never a class's only training examples."""
    val = [i for i, k in enumerate(keys) if is_validation(k)]
    counts = np.bincount(labels) if labels else np.zeros(0, int)
    val = [i for i in val if counts[labels[i]] >= 3]
    vs = set(val)
    return [i for i in range(len(keys)) if i not in vs], val
