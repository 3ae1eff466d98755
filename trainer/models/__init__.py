"""Models: backbones with offline weights, features, the quick head, training, inference, SSL.

The one subpackage that imports torch/timm. Importing it first runs
`compat.ensure_torchvision()`: torchvision CUDA wheels on CPU torch miss `torchvision::nms`;
the shim registers a CPU kernel, and does nothing when torchvision's `_C` loads.
"""
from trainer.models.compat import ensure_torchvision as _ensure_torchvision

_ensure_torchvision()
