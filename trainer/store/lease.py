"""A lease in Redis: one holder at a time for a key (SET NX with a TTL), kept alive by a heartbeat
thread while the holder works, released on exit only by its holder. A killed holder's lease
expires after `ttl` s and someone else takes it. Used by the refresh lock (ml_backend.queue) and
the embedding chunk claims (trainer.models.embedding_jobs)."""
from __future__ import annotations

import threading
import time
import uuid
from contextlib import contextmanager


@contextmanager
def lease(redis, key: str, ttl: int, wait_s: float = 0.0, poll_s: float = 0.2):
    """Yields True while this process holds `key`, False if another still holds it after trying
    for `wait_s` s (0: one try). `ttl` in s; the heartbeat renews it every ttl/3 s."""
    token = uuid.uuid4().hex
    deadline = time.time() + wait_s
    while not redis.set(key, token, nx=True, ex=ttl):
        if time.time() >= deadline:
            yield False
            return
        time.sleep(poll_s)
    stop = threading.Event()

    def heartbeat():
        while not stop.wait(ttl / 3):
            if (redis.get(key) or b"").decode() == token:
                redis.expire(key, ttl)

    threading.Thread(target=heartbeat, daemon=True).start()
    try:
        yield True
    finally:
        stop.set()
        if (redis.get(key) or b"").decode() == token:
            redis.delete(key)
