"""Real images for trainer tests: the BCCD dev set and generated microscopy TIFFs."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.dev_data import BCCD as _DEV_DATA  # noqa: E402

BCCD = _DEV_DATA


@pytest.fixture(scope="session")
def bccd() -> Path:
    if not BCCD.is_dir():
        pytest.fail(f"dev data set missing at {BCCD}")
    return BCCD


def blob_image(rng, kind: int, size=64, channels=1, dtype=np.uint16, channel_first=False):
    """A dim fluorescence-like cell: class 0 round, class 1 elongated, class 2 two nuclei."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    c = size / 2 + rng.uniform(-4, 4, size=2)
    if kind == 0:
        r = ((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / (size / 5) ** 2
    elif kind == 1:
        r = ((yy - c[0]) / (size / 3)) ** 2 + ((xx - c[1]) / (size / 9)) ** 2
    else:
        r = np.minimum(((yy - c[0] + 8) ** 2 + (xx - c[1]) ** 2), ((yy - c[0] - 8) ** 2 + (xx - c[1]) ** 2)) / (size / 9) ** 2
    base = np.exp(-r) * 300 + 100 + rng.normal(0, 8, (size, size))  # ~100..400 of 65535: dim camera
    planes = [base * (1 + 0.3 * k) for k in range(channels)]
    arr = np.stack(planes, 0 if channel_first else -1) if channels > 1 else planes[0]
    return np.clip(arr, 0, None).astype(dtype)


@pytest.fixture(scope="session")
def tiff_folder(tmp_path_factory) -> Path:
    """ImageFolder of 16-bit 5-channel channel-first TIFFs, 3 classes x 12 images."""
    root = tmp_path_factory.mktemp("tiffs")
    rng = np.random.default_rng(0)
    for kind, name in enumerate(["round", "elongated", "binucleate"]):
        (root / name).mkdir()
        for i in range(12):
            tifffile.imwrite(root / name / f"cell_{i:02d}.tif", blob_image(rng, kind, channels=5, channel_first=True))
    return root


@pytest.fixture
def small_bccd(tmp_path, bccd) -> Path:
    """A copy of a few BCCD images per class (fast training), plus room to add bad files."""
    root = tmp_path / "small"
    for cls in ["Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]:
        (root / cls).mkdir(parents=True)
        for p in sorted((bccd / cls).iterdir())[:10]:
            shutil.copy(p, root / cls / p.name)
    return root
