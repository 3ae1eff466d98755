"""What the report shows about single images: thumbnails, Grad-CAM overlays (Selvaraju et al., ICCV 2017), labels the model contradicts."""
from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path

import numpy as np


def backbone_id(cfg: dict) -> str:
    """`ModelConfig.backbone_id` from a config.json dict, without importing timm (seconds)."""
    from trainer.store.space import space_id_of

    return space_id_of(cfg)


def contradicted(logp: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Rows whose out-of-fold prediction is not their label, strongest contradiction first
    (log-odds of the predicted class over the label); rows that could not be judged are left out."""
    ok = ~np.isnan(logp[:, 0])
    pred = np.nan_to_num(logp, nan=-np.inf).argmax(1)
    wrong = np.flatnonzero(ok & (pred != y))
    return wrong[np.argsort(-(logp[wrong, pred[wrong]] - logp[wrong, y[wrong]]), kind="stable")]


def _thumb(path, size: int = 112, reader=None) -> str:
    """JPEG data URI of the thumbnail as the model sees it (`reader`: the model's reading
    settings, `ModelConfig.reader`); '' if unreadable."""
    from PIL import Image

    from trainer.io.errors import ImageReadError
    from trainer.io.read import load_for_model

    try:
        arr = load_for_model(path, size, reader)
    except ImageReadError:
        return ""
    buf = io.BytesIO()
    Image.fromarray((arr * 255 + 0.5).astype(np.uint8)).save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


class _Cam:
    """Grad-CAM overlays (Selvaraju et al., ICCV 2017) for thumbnails, as notebook 02 draws them:
    the backbone's last convolutional maps weighted by the gradient of the predicted class.
    Warm colours = the regions that drove the decision. Computed within a time budget; an image
    (or a model) it cannot explain gets the plain thumbnail."""

    def __init__(self, model_dir, budget_s: float | None = None):
        import os

        budget_s = float(os.environ.get("SCOPELOOP_REPORT_CAM_S", "10")) if budget_s is None else budget_s
        self.model = None
        try:  # thumbnails read as this model reads (stack, time point, normalisation, channels)
            from trainer.io.settings import reader_of

            self.reader = reader_of(json.loads((Path(model_dir) / "config.json").read_text()))
        except Exception:  # noqa: BLE001 - no readable config: the defaults
            self.reader = None
        try:
            from trainer.models.model import ScopeModel

            self.model = ScopeModel.load(model_dir)
        except Exception:  # no loadable model here (weights missing offline, ...): plain thumbnails
            self.model = None
        self.deadline = time.time() + budget_s

    def thumb(self, path, size: int = 112) -> str:
        if self.model is None or time.time() > self.deadline:
            return _thumb(path, size, self.reader)
        try:
            return self._overlay(path, size)
        except Exception:
            return _thumb(path, size, self.reader)

    def _overlay(self, path, size: int) -> str:
        import matplotlib
        import torch
        import torch.nn.functional as F
        from PIL import Image

        img, cam, _, _ = grad_cam(self.model, path)
        cam = F.interpolate(torch.from_numpy(cam)[None, None], size=(size, size), mode="bilinear",
                            align_corners=False)[0, 0].numpy()
        base = np.asarray(Image.fromarray((img * 255 + 0.5).astype(np.uint8)).resize((size, size)), np.float32) / 255
        heat = matplotlib.colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
        out = 0.6 * base + 0.4 * heat
        buf = io.BytesIO()
        Image.fromarray((out * 255 + 0.5).astype(np.uint8)).save(buf, format="JPEG", quality=85)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def grad_cam(model, path, size: int | None = None):
    """Grad-CAM (Selvaraju et al., ICCV 2017) of a `trainer.models.model.ScopeModel` for one image file.

    Returns (image (s, s, 3) float in [0, 1], heat map (s, s) in [0, 1], predicted class index,
    its probability), s = `size` or max(image size, 160) (at least a 5 x 5 map). The maps are the
    last convolution's output on the image as it is: the multiscale embedding also runs the
    transposed image, whose maps would be transposed too.
    """
    import torch
    import torch.nn.functional as F

    from trainer.io.read import load_for_model

    cfg, net = model.config, model.net.eval()
    s = size or max(cfg.image_size, 160)
    img = load_for_model(path, s, getattr(cfg, "reader", None) or cfg.channels)
    x = (torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1) - torch.tensor(cfg.mean).view(3, 1, 1)) \
        / torch.tensor(cfg.std).view(3, 1, 1)
    seen = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out))
             for m in net.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.enable_grad():
            x = x[None].float().requires_grad_(True)
            logits = net.head(net.backbone(x))
            feats = seen[len(hooks) - 1]  # the last convolution of the first pass (the image as is)
            k = int(logits.argmax())
            grad, = torch.autograd.grad(logits[0, k], feats)
    finally:
        for h in hooks:
            h.remove()
    cam = F.relu((grad.mean((2, 3), keepdim=True) * feats.detach()).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=(s, s), mode="bilinear", align_corners=False)[0, 0].detach().numpy()
    return img, cam / (cam.max() + 1e-8), k, float(torch.softmax(logits.detach(), 1)[0, k])


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
