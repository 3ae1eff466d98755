"""The classifier: a timm backbone (pre-logits embeddings) plus a linear head.

Kept as two parts on purpose: the quick refresh trains only the head on cached embeddings
(seconds on CPU), the deep refresh fine-tunes both. A saved model is a folder:
  config.json      backbone name, weights spec, image size, channels, normalisation, classes
  head.pt          the linear head
  backbone.pt      only when the backbone was fine-tuned (else the shipped weights are used)
so a model folder is self-contained and loads on another machine without the project.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from trainer.models.backbone import DEFAULT_BACKBONE, create_backbone
from trainer.store.space import space_id_of


@dataclass
class ModelConfig:
    classes: list[str]
    backbone: str = DEFAULT_BACKBONE
    weights: str = "imagenet"
    image_size: int = 224
    channels: list[int] | None = None
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    weights_source: str = ""
    # how files become planes and intensities (trainer.io.settings.Preprocessing.to_dict(): stack,
    # plane, timepoint, normalisation, ranges, bit_depth); None = the defaults (MIP, per-image)
    preprocessing: dict | None = None
    # the embedding (trainer.models.features.FEATURES); configs written before it existed used "final"
    features: str = "final"
    # fields of view: how cells were found and cropped for this model (trainer.cells.project
    # settings_record: crop_scale, background, diameter, border, ...); None = images of single cells.
    # `scopeloop predict --cells` crops new fields by the same rule.
    cells: dict | None = None

    @property
    def reader(self):
        """The `trainer.io.settings.Preprocessing` (channels + preprocessing) every read of this model uses."""
        from trainer.io.settings import as_preprocessing

        return as_preprocessing(dict(self.preprocessing or {}, channels=self.channels))

    @property
    def backbone_id(self) -> str:
        """Names the embedding space (`trainer.store.space`): embeddings from different ids are not comparable."""
        return space_id_of(asdict(self))


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, n_classes: int, dropout: float = 0.2):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.num_features, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x)))


@dataclass
class ScopeModel:
    """A trained model ready to use: the network, its config, and where the backbone came from."""

    config: ModelConfig
    net: Classifier
    backbone_finetuned: bool = False

    @property
    def classes(self) -> list[str]:
        return self.config.classes

    @classmethod
    def new(cls, config: ModelConfig) -> "ScopeModel":
        backbone, pre, source = create_backbone(config.backbone, config.weights, config.features)
        config.mean, config.std, config.weights_source = list(pre.mean), list(pre.std), source
        return cls(config, Classifier(backbone, len(config.classes)))

    def save(self, folder) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(asdict(self.config), indent=1))
        (folder / "label_map.json").write_text(json.dumps({i: c for i, c in enumerate(self.classes)}, indent=1))
        torch.save(self.net.head.state_dict(), folder / "head.pt")
        if self.backbone_finetuned:
            torch.save(self.net.backbone.state_dict(), folder / "backbone.pt")

    @classmethod
    def load(cls, folder) -> "ScopeModel":
        folder = Path(folder)
        cfg_path = folder / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"'{folder}' is not a scopeloop model folder (no config.json)")
        config = ModelConfig(**json.loads(cfg_path.read_text()))
        finetuned = (folder / "backbone.pt").is_file()
        weights = str(folder / "backbone.pt") if finetuned else config.weights
        backbone, _, _ = create_backbone(config.backbone, weights, config.features)
        net = Classifier(backbone, len(config.classes))
        net.head.load_state_dict(torch.load(folder / "head.pt", map_location="cpu", weights_only=True))
        return cls(config, net.eval(), finetuned)
