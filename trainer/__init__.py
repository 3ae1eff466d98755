"""scopeloop trainer: image I/O, backbones, training, QC, registry, inference, jobs."""
from trainer.compat import ensure_torchvision as _ensure_torchvision

_ensure_torchvision()
