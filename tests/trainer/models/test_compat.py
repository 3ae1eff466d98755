import torch

import trainer  # noqa: F401  (installs the shim when needed)
from trainer.models.compat import ensure_torchvision


def test_timm_and_torchvision_import_and_nms_runs():
    import timm
    import torchvision  # noqa: F401

    assert timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).num_features == 1280
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    keep = torch.ops.torchvision.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2]


def test_shim_is_idempotent():
    assert ensure_torchvision() == "done"
