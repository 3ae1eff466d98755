"""The out-of-distribution reference of a trained model: its training images' embeddings (sampled), made with the model's own backbone."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from trainer.stats.ood import OODReference, build_reference, sample_rows


def reference_for_model(model, paths: Sequence, labels: Sequence | None = None, embeddings=None,
                        max_refs: int = 2000, seed: int = 0, batch_size: int = 64) -> OODReference:
    """The reference for a `ScopeModel` trained on `paths`.

    `embeddings` (rows matching `paths`) are used as they are when the backbone was not
    fine-tuned (they are then the model's own embedding space, e.g. the project's embedding
    cache); otherwise a sample of the images is embedded with the model's backbone.
    """
    if embeddings is not None and not model.backbone_finetuned:
        return build_reference(embeddings, labels, max_refs, seed=seed)
    from trainer.models.inference import run_model

    rows = sample_rows(labels, len(paths), max_refs, seed)
    cfg = model.config
    res = run_model(model.net.backbone, [paths[r] for r in rows], cfg.image_size, cfg.mean, cfg.std,
                    cfg.reader, batch_size, desc="OOD reference")
    lab = None if labels is None else np.asarray(labels)[rows][res.rows]
    return build_reference(res.embeddings, lab, max_refs, seed=seed)
