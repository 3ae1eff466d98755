"""The quick recipe: a linear head (multinomial logistic regression) on frozen embeddings.

This is what runs after every few labels: thousands of embeddings fit in well under a second
on CPU. Features are standardised for the optimiser, then the standardisation is folded back
into the weights, so the result is a plain `nn.Linear` that sits on the backbone unchanged.
Class-balanced loss weights keep rare cell types from being ignored. Full-batch L-BFGS is
deterministic: the same labels give the same head.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from trainer.models.data import class_weights


@dataclass
class LinearHead:
    weight: np.ndarray  # (C, D)
    bias: np.ndarray  # (C,)
    history: list = field(default_factory=list)  # per round: train / validation loss
    best_epoch: int | None = None
    pseudo_labeled: int = 0  # pool images added as pseudo-labels (self-training), 0 without

    def logits(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=np.float32) @ self.weight.T + self.bias

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        z = self.logits(X)
        z -= z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    def to_linear(self) -> nn.Linear:
        lin = nn.Linear(self.weight.shape[1], self.weight.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(self.weight))
            lin.bias.copy_(torch.from_numpy(self.bias))
        return lin

    @classmethod
    def from_linear(cls, lin: nn.Linear) -> "LinearHead":
        return cls(lin.weight.detach().cpu().numpy().astype(np.float32), lin.bias.detach().cpu().numpy().astype(np.float32))


def fit_head(X: np.ndarray, y, n_classes: int, seed: int = 0, class_weight: str | None = "balanced",
             l2: float = 1e-3, X_val=None, y_val=None, rounds: int = 20, iters_per_round: int = 10,
             patience: int = 4, X_unlabeled: np.ndarray | None = None) -> LinearHead:
    """Fit softmax regression with L2 on (X, y); classes absent from y get a very negative bias.

    X (N, D) float embeddings, y (N,) class indices in [0, n_classes). Optimised in rounds of a
    few L-BFGS iterations; with a validation set the round with the lowest validation loss is
    kept (early stopping) and `head.history` records both losses.

    With `X_unlabeled` (M, D), the pool's unlabeled embeddings: one round of self-training
    (`pseudo_labels`): the head is refit on the labels plus the pool images it is most sure of,
    class-balanced, and `head.pseudo_labeled` says how many were added.
    """
    head = _fit(X, y, n_classes, seed, class_weight, l2, X_val, y_val, rounds, iters_per_round, patience)
    if X_unlabeled is None or len(X_unlabeled) == 0:
        return head
    rows, py = pseudo_labels(head.predict_proba(X_unlabeled), np.asarray(y), n_classes)
    if len(rows):
        Xu = np.asarray(X_unlabeled, dtype=np.float32)[rows]
        head = _fit(np.concatenate([np.asarray(X, np.float32), Xu]), np.concatenate([np.asarray(y), py]), n_classes,
                    seed, class_weight, l2, X_val, y_val, rounds, iters_per_round, patience)
    head.pseudo_labeled = int(len(rows))
    return head


PSEUDO_PER_LABEL = 2      # at most this many pseudo-labels per real label of the class
PSEUDO_MIN_PROB = 0.9     # and only images the head gives at least this probability


def pseudo_labels(probs: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows of `probs`, their predicted class) to add as pseudo-labels: per class, the most
    confident images predicted as that class with p >= PSEUDO_MIN_PROB, at most
    PSEUDO_PER_LABEL x its number of real labels (class balance follows the labels, so a
    dominant class cannot swamp the rest). Self-training in the FixMatch spirit (Sohn et al.
    2020) reduced to one confident round on frozen embeddings."""
    counts = np.bincount(np.asarray(y, int), minlength=n_classes)
    pred = probs.argmax(1)
    rows, cls = [], []
    for c in range(n_classes):
        cand = np.flatnonzero((pred == c) & (probs[:, c] >= PSEUDO_MIN_PROB))
        cand = cand[np.argsort(-probs[cand, c], kind="stable")][: PSEUDO_PER_LABEL * int(counts[c])]
        rows.append(cand)
        cls.append(np.full(len(cand), c))
    return np.concatenate(rows).astype(np.int64), np.concatenate(cls).astype(np.int64)


@contextmanager
def single_thread():
    """Torch on one thread meanwhile. The quick head's L-BFGS fits are tiny (a few hundred rows):
    on a busy 2-core machine a second thread made them ~5x slower (0.3-0.5 s vs 0.04-0.1 s a fit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fit(X, y, n_classes, seed, class_weight, l2, X_val, y_val, rounds, iters_per_round, patience) -> LinearHead:
    with single_thread():
        return _fit_lbfgs(X, y, n_classes, seed, class_weight, l2, X_val, y_val, rounds, iters_per_round, patience)


def _fit_lbfgs(X, y, n_classes, seed, class_weight, l2, X_val, y_val, rounds, iters_per_round, patience) -> LinearHead:
    torch.manual_seed(seed)
    X = torch.as_tensor(np.asarray(X, dtype=np.float32))
    y = torch.as_tensor(np.asarray(y, dtype=np.int64))
    mu = X.mean(0)
    sd = X.std(0, unbiased=False)
    sd = sd.clamp_min(max(1e-6, 0.1 * float(sd.median())))  # near-constant features must not get huge weights
    Z = (X - mu) / sd
    has_val = X_val is not None and len(X_val) > 0
    if has_val:
        Zv = (torch.as_tensor(np.asarray(X_val, dtype=np.float32)) - mu) / sd
        yv = torch.as_tensor(np.asarray(y_val, dtype=np.int64))
    W = torch.zeros(n_classes, X.shape[1], requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    weights = class_weights(y.tolist(), n_classes) if class_weight == "balanced" else torch.ones(n_classes)
    present = torch.bincount(y, minlength=n_classes) > 0
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=iters_per_round, history_size=20, line_search_fn="strong_wolfe")

    def logits_of(Zx):
        return (Zx @ W.T + b).masked_fill(~present, -1e4)

    def closure():
        opt.zero_grad()
        loss = loss_fn(logits_of(Z), y) + l2 * (W * W).sum()
        loss.backward()
        return loss

    history, best, best_val, stale = [], None, float("inf"), 0
    for r in range(1, rounds + 1):
        train_loss = float(opt.step(closure).detach())
        entry = {"epoch": r, "train_loss": train_loss, "val_loss": None}
        with torch.no_grad():
            if has_val:
                entry["val_loss"] = float(nn.functional.cross_entropy(logits_of(Zv), yv))
            score = entry["val_loss"] if has_val else train_loss
            history.append(entry)
            if score < best_val - 1e-5:
                best_val, stale, best = score, 0, (W.detach().clone(), b.detach().clone(), r)
            else:
                stale += 1
        if stale >= patience:
            break
    Wb, bb, best_round = best if best is not None else (W.detach(), b.detach(), len(history))
    Wf = Wb / sd  # fold standardisation back: (x - mu)/sd @ W.T + b
    bf = bb - (mu / sd) @ Wb.T
    bf = torch.where(present, bf, torch.full_like(bf, -1e4))
    head = LinearHead(Wf.numpy().astype(np.float32), bf.numpy().astype(np.float32))
    head.history, head.best_epoch = history, best_round
    return head
