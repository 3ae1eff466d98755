"""`scopeloop worker`: an RQ worker for refresh jobs, on a laptop, a GPU node or in compose.

Each job runs in a forked work-horse process (RQ's default), so a crash or an out-of-memory
kill during training takes down that job only; the registry never shows a half-written
version and the scheduler re-queues the refresh. With --scheduler the worker also runs the
time-driven refreshes (nightly deep refresh, recovery, lost-webhook checks) in a thread.
"""
from __future__ import annotations

import logging
import os
import threading

from rq import Worker

from ml_backend.queue import QUEUE_NAME, RefreshQueue, connect_redis
from scopeloop.scheduler import Scheduler
from scopeloop.settings import Settings


def run_worker(settings: Settings, burst: bool = False, scheduler: bool = True,
               tick_s: float = float(os.environ.get("SCOPELOOP_SCHEDULER_TICK", "30")),
               name: str | None = None) -> None:
    import torch

    torch.set_flush_denormal(True)  # long-lived processes drift slower without it (ENVIRONMENT.md)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    redis = connect_redis(settings.redis_url, timeout=30)
    redis.ping()
    stop = threading.Event()
    if scheduler:
        from ml_backend.labelstudio import LabelStudioClient

        sched = Scheduler(RefreshQueue(redis), home=settings.home, client_factory=lambda: LabelStudioClient(
            settings.label_studio_url, settings.label_studio_api_key, timeout=10))
        threading.Thread(target=sched.run_forever, kwargs={"every_s": tick_s, "stop": stop}, daemon=True).start()
    worker = Worker([QUEUE_NAME], connection=redis, name=name)
    try:
        worker.work(burst=burst, with_scheduler=True, logging_level="INFO")
    finally:
        stop.set()
