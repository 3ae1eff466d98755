"""Coalescing, locks and recovery of refresh requests on a real Redis."""
import threading
import time

import pytest
from rq import Queue

from ml_backend.queue import QUEUE_NAME, RefreshQueue


def _queued(redis):
    return Queue(QUEUE_NAME, connection=redis).get_job_ids()


def test_burst_of_200_label_events_queues_one_refresh(redis_conn):
    q = RefreshQueue(redis_conn)
    t0 = time.perf_counter()
    ids = [q.on_label_event("/p/one", "ANNOTATION_CREATED") for _ in range(200)]
    per_event = (time.perf_counter() - t0) / 200
    assert len([i for i in ids if i]) == 1 and len(_queued(redis_conn)) == 1
    assert per_event < 0.05
    assert q.generation("/p/one") == 200
    # another project is independent
    assert q.on_label_event("/p/two") and len(_queued(redis_conn)) == 2


def test_one_running_plus_one_pending_at_most(redis_conn):
    q = RefreshQueue(redis_conn)
    first = q.request("/p/x")
    with q.lock("/p/x"):  # the first job starts: holds the lock, gives up its pending slot
        q.release_pending("/p/x", "quick", first)
        second = [q.on_label_event("/p/x") for _ in range(50)]
        assert len([i for i in second if i]) == 1  # exactly one new pending refresh
        assert q.request("/p/x") is None


def test_lock_excludes_a_second_holder(redis_conn):
    q = RefreshQueue(redis_conn)
    order = []

    def other():
        with q.lock("/p/l", wait_s=10):
            order.append("second")

    with q.lock("/p/l"):
        t = threading.Thread(target=other)
        t.start()
        time.sleep(0.5)
        order.append("first-done")
    t.join()
    assert order == ["first-done", "second"]
    with q.lock("/p/l"), pytest.raises(TimeoutError, match="holds the refresh lock"):
        with q.lock("/p/l", wait_s=0.3):
            pass


def test_recover_requeues_labels_no_refresh_covered(redis_conn):
    q = RefreshQueue(redis_conn)
    q.on_label_event("/p/r")
    job_id = _queued(redis_conn)[0]
    # the worker running it was SIGKILLed after taking the job: pending released, lock expired
    Queue(QUEUE_NAME, connection=redis_conn).remove(job_id)
    q.release_pending("/p/r", "quick", job_id)
    assert q.recover() and len(_queued(redis_conn)) == 1
    assert q.recover() == []  # already pending: nothing more
    q.mark_done("/p/r", "quick", q.generation("/p/r"))
    redis_conn.delete(q.key("/p/r", "pending", "quick"))
    assert q.recover() == []  # covered: nothing to do


def test_job_timeout_covers_the_lock_wait_and_the_work(redis_conn, monkeypatch):
    """Issue 22: a quick refresh waiting for a deep refresh's lock died of RQ's job timeout (900 s)
    long before its lock wait (3,600 s) ended. The timeout now covers the wait and the work, and
    the refresh job waits exactly the queue's lock wait for its kind."""
    import inspect

    from rq.job import Job

    from ml_backend.queue import LOCK_WAIT_S, WORK_S
    from scopeloop.refresh import refresh_job

    q = RefreshQueue(redis_conn)
    for kind in ("quick", "deep"):
        job = Job.fetch(q.request(f"/p/{kind}", kind), connection=redis_conn)
        assert job.timeout >= LOCK_WAIT_S[kind] + WORK_S[kind] > LOCK_WAIT_S[kind]
    assert "wait_s=LOCK_WAIT_S[kind]" in inspect.getsource(refresh_job)
