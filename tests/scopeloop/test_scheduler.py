from datetime import datetime

from rq import Queue

from ml_backend.queue import GPU_QUEUE_NAME, QUEUE_NAME, RefreshQueue
from scopeloop.scheduler import Scheduler


def test_nightly_deep_refresh_fires_once_per_day_with_shifted_clock(redis_conn):
    q = RefreshQueue(redis_conn)
    redis_conn.sadd("scopeloop:projects", "/p/n")
    clock = {"now": datetime(2026, 11, 22, 1, 0).timestamp()}
    s = Scheduler(q, nightly_at="02:00", clock=lambda: clock["now"], log=lambda *_: None)
    assert s.tick() == []  # first sight at 01:00: yesterday's slot is not caught up
    assert s.tick() == []  # 01:00: not yet
    clock["now"] = datetime(2026, 11, 22, 2, 1).timestamp()
    fired = s.tick()
    assert len(fired) == 1 and fired[0].startswith("refresh-deep-")
    job = Queue(GPU_QUEUE_NAME, connection=redis_conn).fetch_job(fired[0])  # deep: the GPU workers' queue
    assert Queue(QUEUE_NAME, connection=redis_conn).get_job_ids() == []
    assert job.args[1] == "deep" and "nightly" in job.args[2]
    redis_conn.delete(q.key("/p/n", "pending", "deep"))
    clock["now"] = datetime(2026, 11, 22, 23, 0).timestamp()
    assert s.tick() == []  # same day: not again, even with nothing pending
    clock["now"] = datetime(2026, 11, 23, 2, 30).timestamp()
    assert len(s.tick()) == 1  # next night

# Lost webhooks noticed from Label Studio's annotation count: tests/test_end_to_end.py
# (test_worker_resumes_after_redis_restart_and_no_label_is_lost) runs it against the real server.
