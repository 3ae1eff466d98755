"""What the model sees of an image: the embedding that the quick head, the sampler and OOD use.

Two embeddings, named by `FEATURES`:

* ``"final"``: the backbone's pre-logits vector (global average pool of the last feature map):
  the usual transfer-learning probe, and what scopeloop used before (kept for old models).
* ``"multiscale"`` (default for new models): the pooled outputs of the last two stages of the
  network next to the pre-logits vector, each block L2-normalised and scaled by the square root
  of its width (every feature ~unit size, so no block dominates a cosine or a standardisation),
  averaged over two orientations of the image (as is, and transposed).

Why: ImageNet's last layer encodes ImageNet's object categories; one and two stages earlier the
network still describes texture and shape (granules, nucleus lobes), which is what separates
cell types. Cells have no canonical orientation, so the embedding should not depend on one;
averaging two orientations (not eight) keeps the cost per image at 2x the single pass.
Measured on bccd_wbc and pbc_blood (docs/benchmarks.md, "Learning engine"): the linear head's
full-label macro-F1 rises from 0.57 to 0.64 and from 0.87 to 0.90; fewer labels reach a given
score. (Intermediate-layer features transfer better to domain-shifted data: e.g. Evci et al.
2022, "Head2Toe: utilizing intermediate representations for better transfer learning".)

Works for timm networks that keep their stages in ``.blocks`` (EfficientNet, MobileNetV3 and
relatives); `supports(model)` says whether a network does (others use "final").
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trainer.store.space import DEFAULT_FEATURES, FEATURES, space_tag  # noqa: F401 - re-exported (the id lives in trainer.store.space)


def orientations(x: torch.Tensor) -> list[torch.Tensor]:
    """The two views averaged by "multiscale": the image (N, C, H, W) and its transpose."""
    return [x, x.transpose(2, 3)]


class MultiScaleEmbedder(nn.Module):
    """A timm backbone whose embedding is the "multiscale" one (module docstring).

    ``forward(x)``: x (N, 3, H, W) normalised images -> (N, num_features) float embeddings.
    The wrapped network stays at ``.model``; its state dict keys are the plain timm keys
    prefixed with ``model.`` (`trainer.models.backbone` strips the prefix when loading).
    In training mode a single orientation is used (the training augmentations flip and rotate).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if not supports(model):
            raise ValueError(f"{type(model).__name__} has no stages in .blocks: use features='final'")
        self.model = model
        with torch.no_grad():
            was = model.training
            model.eval()
            dims = [t.shape[1] for t in self._pooled(torch.zeros(1, 3, 64, 64))]
            model.train(was)
        self.block_dims = dims
        self.num_features = int(sum(dims))
        self.pretrained_cfg = getattr(model, "pretrained_cfg", {})

    def _pooled(self, x: torch.Tensor) -> list[torch.Tensor]:
        m = self.model
        h = m.bn1(m.conv_stem(x))
        out = []
        n = len(m.blocks)
        for i, blk in enumerate(m.blocks):
            h = blk(h)
            if i >= n - 2:
                out.append(h.mean((2, 3)))
        h = m.bn2(m.conv_head(h)) if hasattr(m, "conv_head") else h
        out.append(h.mean((2, 3)))
        return out

    def parts(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per orientation, the pooled blocks before normalisation (benchmarks cache these)."""
        views = orientations(x) if not self.training else [x]
        return [self._pooled(v.contiguous(memory_format=torch.channels_last)) for v in views]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return combine(self.parts(x))


def combine(parts):
    """Per-view lists of pooled blocks (torch tensors or numpy arrays, each (N, D_block)) ->
    the "multiscale" embedding (N, sum D_block): blocks unit-scaled, views averaged."""
    def unit(b):
        if isinstance(b, torch.Tensor):
            b = b.float()
            return b / b.norm(dim=1, keepdim=True).clamp_min(1e-6) * b.shape[1] ** 0.5
        return b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-6) * np.sqrt(b.shape[1])

    cat = torch.cat if isinstance(parts[0][0], torch.Tensor) else np.concatenate
    views = [cat([unit(b) for b in blocks], 1) for blocks in parts]
    return sum(views) / len(views)


def supports(model: nn.Module) -> bool:
    """Whether "multiscale" works for this network (stages in ``.blocks``)."""
    return hasattr(model, "blocks") and len(model.blocks) >= 2 and hasattr(model, "conv_stem")


def wrap(model: nn.Module, features: str) -> nn.Module:
    """The backbone that produces the named embedding (`FEATURES`); ValueError for an unknown
    name or a network "multiscale" does not support."""
    if features not in FEATURES:
        raise ValueError(f"unknown features '{features}': choose one of {', '.join(FEATURES)}")
    if features == "final":
        return model
    return MultiScaleEmbedder(model)
