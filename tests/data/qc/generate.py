"""Regenerate the small QC test set (deterministic): python tests/data/qc/generate.py

Brightfield-like 8-bit RGB fields, 160 x 160 px: light background, stained cells with granules
(sharp detail at 1-3 px), camera noise. File name = the verdict trainer.quality must give:
  ok_NN.png            16 sharp fields
  blank_01.png         background and noise only
  out_of_focus_01.png  ok_00 blurred (Gaussian sigma 4 px), noise added back
  saturated_01.png     ok_01 with gain 2 (the background clips white)
  too_dark_01.png      ok_02 with gain 0.03
  zz_duplicate_of_ok_03.tif  ok_03's pixels, saved as TIFF (identical pixels, other file)
"""
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy.ndimage import gaussian_filter

HERE = Path(__file__).resolve().parent
SIZE = 160
BG = np.array([228.0, 214.0, 200.0])


def field(rng) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    img = np.ones((SIZE, SIZE, 3), np.float32) * BG
    for _ in range(rng.integers(3, 6)):
        cy, cx, r = rng.uniform(20, SIZE - 20), rng.uniform(20, SIZE - 20), rng.uniform(12, 26)
        cell = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
        img[cell] = img[cell] * np.array([0.75, 0.55, 0.8])
        nuc = ((yy - cy - rng.uniform(-4, 4)) ** 2 + (xx - cx - rng.uniform(-4, 4)) ** 2) < (0.5 * r) ** 2
        img[nuc] = img[nuc] * np.array([0.5, 0.35, 0.75])
        for _ in range(int(r * 3)):  # granules: the fine detail defocus removes
            gy, gx = cy + rng.uniform(-r, r), cx + rng.uniform(-r, r)
            g = ((yy - gy) ** 2 + (xx - gx) ** 2) < rng.uniform(1.0, 3.0)
            img[g & cell] *= 0.6
    return img


def noisy(img, rng, sigma=2.0) -> np.ndarray:
    return np.clip(np.round(img + rng.normal(0, sigma, img.shape)), 0, 255).astype(np.uint8)


def main():
    rng = np.random.default_rng(14)
    for p in HERE.glob("*.png"):
        p.unlink()
    for p in HERE.glob("*.tif"):
        p.unlink()
    clean = [field(rng) for _ in range(16)]
    ok = [noisy(c, rng) for c in clean]
    for i, a in enumerate(ok):
        Image.fromarray(a).save(HERE / f"ok_{i:02d}.png")
    bg = np.ones((SIZE, SIZE, 3), np.float32) * BG
    Image.fromarray(noisy(bg, rng)).save(HERE / "blank_01.png")
    blur = gaussian_filter(clean[0], (4, 4, 0))
    Image.fromarray(noisy(blur, rng)).save(HERE / "out_of_focus_01.png")
    Image.fromarray(np.clip(ok[1].astype(np.float32) * 2, 0, 255).astype(np.uint8)).save(HERE / "saturated_01.png")
    Image.fromarray(np.round(ok[2].astype(np.float32) * 0.03).astype(np.uint8)).save(HERE / "too_dark_01.png")
    tifffile.imwrite(HERE / "zz_duplicate_of_ok_03.tif", ok[3])


if __name__ == "__main__":
    main()
