"""The embedding-space id: which cached embeddings are comparable (torch-free, imports in ms).

Embeddings are cached per space (`Workspace.embeddings(<id>)`); two embeddings may be compared,
or one head applied to both, only when their ids are equal. The id is built here and nowhere
else (the model config, the report, the refresh worker all call `space_id`):

    <backbone>-<image size>px[-ch<i_j_k>][-<reading tag>][-ms][-ft<fine-tune stamp>]

* ``-ch0_2_1``: the image channels feeding R, G, B (`channels`), when not the default mapping;
* reading tag: the non-default reading settings (`trainer.io.settings.Preprocessing.tag`: Z plane,
  time point, normalisation; '' for the defaults, so ids of older models do not change);
* ``-ms``: the "multiscale" embedding (`trainer.models.features`);
* ``-ft<stamp>``: a backbone fine-tuned by a deep refresh (the refresh worker's spaces only).

Old model folders keep their id: a config.json without ``preprocessing`` (or with the default
settings) has no reading tag, one without ``features`` is the "final" embedding.
"""
from __future__ import annotations

from typing import Mapping, Sequence

FEATURES = ("final", "multiscale")
DEFAULT_FEATURES = "multiscale"  # new models and projects; configs without the field: "final"


def space_tag(features: str | None) -> str:
    """Suffix of an embedding-space id for the embedding `features` ('' for "final")."""
    return "-ms" if features == "multiscale" else ""


def space_id(backbone: str, image_size: int, channels: Sequence[int] | None = None, reading_tag: str = "",
             features: str | None = "final", finetuned_from: str | None = None) -> str:
    """The embedding-space id (module doc), e.g. ``tf_efficientnet_lite0-224px-nb12-ms``."""
    return (f"{backbone}-{int(image_size)}px"
            + (f"-ch{'_'.join(map(str, channels))}" if channels else "")
            + (f"-{reading_tag}" if reading_tag else "")
            + space_tag(features)
            + (f"-ft{finetuned_from}" if finetuned_from else ""))


def reading_tag(cfg: Mapping) -> str:
    """The reading tag of a model config or project model dict (its ``preprocessing`` and
    ``channels``); '' without preprocessing or with the defaults."""
    if not cfg.get("preprocessing"):
        return ""
    from trainer.io.settings import as_preprocessing  # numpy + Pillow only

    return as_preprocessing(dict(cfg["preprocessing"], channels=cfg.get("channels"))).tag()


def space_id_of(cfg: Mapping, finetuned_from: str | None = None, default_features: str = "final") -> str:
    """`space_id` of a config dict: a model's config.json (`default_features` "final", what
    configs without the field used) or a project's ``model`` settings (pass DEFAULT_FEATURES)."""
    return space_id(cfg["backbone"], cfg["image_size"], cfg.get("channels"), reading_tag(cfg),
                    cfg.get("features", default_features), finetuned_from)
