"""`scopeloop worker`: an RQ worker for refresh jobs, on a laptop, a GPU node or in compose.

Each job runs in a forked work-horse process (RQ's default), so a crash or an out-of-memory
kill during training takes down that job only; the registry never shows a half-written
version and the scheduler re-queues the refresh. With --scheduler the worker also runs the
time-driven refreshes (nightly deep refresh, recovery, lost-webhook checks) in a thread.

The scheduler runs in its own (spawned) process, not a thread: RQ forks a work horse per job,
and forking while another thread holds a lock (an import, logging, a socket) can deadlock the
child. The parent imports the refresh code once (torch, timm, faiss: ~1.5 s) so each forked job
starts with it loaded; it runs no torch operation itself, so no thread pool exists at fork time.
"""
from __future__ import annotations

import logging
import multiprocessing
import os

from rq import Worker

from ml_backend.queue import LOW_QUEUE_NAME, QUEUE_NAME, connect_redis
from scopeloop.settings import Settings


def _scheduler_main(settings: Settings, tick_s: float) -> None:
    from ml_backend.labelstudio import LabelStudioClient
    from ml_backend.queue import RefreshQueue
    from scopeloop.scheduler import Scheduler

    sched = Scheduler(RefreshQueue(connect_redis(settings.redis_url, timeout=30)), home=settings.home,
                      client_factory=lambda: LabelStudioClient(settings.label_studio_url,
                                                               settings.label_studio_api_key, timeout=10))
    sched.run_forever(every_s=tick_s)


def run_worker(settings: Settings, burst: bool = False, scheduler: bool = True,
               tick_s: float = float(os.environ.get("SCOPELOOP_SCHEDULER_TICK", "30")),
               name: str | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import ml_backend.labelstudio  # noqa: F401  (preloaded for the forked jobs, see above)
    import sampler  # noqa: F401
    import scopeloop.refresh  # noqa: F401
    import trainer.head  # noqa: F401
    import trainer.model  # noqa: F401

    redis = connect_redis(settings.redis_url, timeout=30)
    redis.ping()
    proc = None
    if scheduler:
        proc = multiprocessing.get_context("spawn").Process(target=_scheduler_main, args=(settings, tick_s),
                                                            name="scopeloop-scheduler", daemon=True)
        proc.start()
    worker = Worker([QUEUE_NAME, LOW_QUEUE_NAME], connection=redis, name=name)  # in priority order
    try:
        worker.work(burst=burst, with_scheduler=True, logging_level="INFO")
    finally:
        if proc is not None:
            proc.terminate()
