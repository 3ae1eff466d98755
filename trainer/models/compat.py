"""Make torchvision importable on CPU-only torch.

torchvision 0.28.0 exists on PyPI only as a CUDA build. With the CPU build of torch 2.13 its
compiled extension cannot load, and `import torchvision` (hence `import timm`) fails with
"operator torchvision::nms does not exist". We try the real library first; only if it cannot
load do we declare the `nms`/`qnms` schemas and register a plain-torch CPU kernel. Where the
extension loads (CUDA torch on a GPU node) this does nothing.
"""
from __future__ import annotations

import importlib.util
import os

_done = False


def _nms_cpu(boxes, scores, iou_threshold: float):
    import torch

    order = scores.argsort(descending=True)
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    keep = []
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        xx1 = torch.maximum(x1[i], x1)
        yy1 = torch.maximum(y1[i], y1)
        xx2 = torch.minimum(x2[i], x2)
        yy2 = torch.minimum(y2[i], y2)
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        iou = inter / (areas[i] + areas - inter)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


def ensure_torchvision() -> str:
    """Return "native" when torchvision's own ops load, "shim" when the CPU kernel was added."""
    global _done
    import torch

    if _done:
        return "done"
    _done = True
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return "absent"
    pkg_dir = list(spec.submodule_search_locations)[0]
    candidates = [f for f in os.listdir(pkg_dir) if f.startswith("_C") and f.endswith((".so", ".pyd"))]
    for name in candidates:
        try:
            torch.ops.load_library(os.path.join(pkg_dir, name))
            return "native"
        except (OSError, RuntimeError):
            pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    impl = torch.library.Library("torchvision", "IMPL", "CPU")
    impl.impl("nms", _nms_cpu)
    impl.impl("qnms", _nms_cpu)
    # keep the Library objects alive: registrations vanish when they are collected
    ensure_torchvision._libs = (lib, impl)
    return "shim"
