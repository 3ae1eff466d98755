"""One holder at a time for a Redis key, kept alive while held, freed for the next holder."""
from trainer.store.lease import lease


def test_second_holder_waits_then_gives_up_and_the_first_keeps_it_alive(redis_conn):
    r = redis_conn
    key = "scopeloop:test:lease"
    with lease(r, key, ttl=1) as first:
        assert first
        with lease(r, key, ttl=1, wait_s=1.5, poll_s=0.1) as second:
            assert not second  # the heartbeat renewed the 1 s TTL past the wait
    assert r.get(key) is None  # released by its holder
    with lease(r, key, ttl=1) as again:
        assert again
