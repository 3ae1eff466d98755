"""Label Studio client fixtures on top of the session `label_studio` server."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.dev_data import BCCD as _DEV_DATA  # noqa: E402

BCCD = _DEV_DATA
BCCD_CLASSES = ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]


@pytest.fixture(scope="session")
def ls_client(label_studio):
    from ml_backend.labelstudio.client import LabelStudioClient
    return LabelStudioClient(label_studio.url, label_studio.token)


@pytest.fixture
def project_title() -> str:
    """Unique per test: the LS data dir is reused between runs."""
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def bccd() -> Path:
    if not BCCD.is_dir():
        pytest.fail(f"dev data set missing at {BCCD}")
    return BCCD
