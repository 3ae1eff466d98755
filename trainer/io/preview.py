"""Browser previews: a contrast-stretched 8-bit PNG of any readable image."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from trainer.io.read import read_image


def save_preview(src, dst_png, max_side: int = 512, channels=None) -> Path:
    """Contrast-stretched 8-bit PNG for the browser (TIFF and 16-bit cannot be shown as is),
    read exactly as the model reads it (`channels`: indices or the model's `Preprocessing`)."""
    img = read_image(src, channels)
    im = Image.fromarray((img * 255.0 + 0.5).astype(np.uint8))
    im.thumbnail((max_side, max_side), Image.BILINEAR)
    dst = Path(dst_png)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    im.save(tmp, format="PNG")
    tmp.replace(dst)
    return dst
