"""`scopeloop worker`: an RQ worker for refresh jobs, on a laptop, a GPU node or in compose.

Each job runs in a forked work-horse process (RQ's default), so a crash or an out-of-memory
kill during training takes down that job only; the registry never shows a half-written
version and the scheduler re-queues the refresh. With --scheduler the worker also runs the
time-driven refreshes (nightly deep refresh, recovery, lost-webhook checks) in a thread.

The scheduler runs in its own (spawned) process, not a thread: RQ forks a work horse per job,
and forking while another thread holds a lock (an import, logging, a socket) can deadlock the
child. The parent imports the refresh code once (torch, timm, faiss: ~1.5 s) so each forked job
starts with it loaded; it runs no torch operation itself, so no thread pool exists at fork time.

Which queues (ml_backend.queue): every worker takes quick refreshes; deep refreshes and
embedding chunks (the GPU queue) only a worker that sees a CUDA GPU, or one told to with
`--queues quick,gpu,low` (or SCOPELOOP_WORKER_QUEUES). The GPU is probed in a child process:
initialising CUDA in this (forking) parent would break CUDA in every job.

Liveness (issue 22): workers heartbeat every SCOPELOOP_WORKER_TTL - 15 s when idle (RQ's default
405 s kept a killed worker "listening" for 8 minutes); `status` counts a worker whose heartbeat
is overdue as dead (`ml_backend.queue.worker_alive`). `scopeloop worker --supervise` runs the
worker as a child process and starts a new one when it dies (kill -9, out of memory), with a
growing pause when it keeps dying at once; Ctrl-C/SIGTERM stop the child and the supervisor.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import subprocess
import sys

from rq import Worker

from ml_backend.queue import QUEUE_ROLES, WORKER_TTL, connect_redis
from scopeloop.settings import Settings

QUEUES_ENV = "SCOPELOOP_WORKER_QUEUES"


def has_gpu(device: str | None = None) -> bool:
    """Whether this worker counts as a GPU worker: SCOPELOOP_DEVICE (`device`) "cpu" -> no,
    "cuda..." -> yes; unset -> whether torch sees CUDA, asked in a child process (a CUDA
    context in the worker's parent would not survive the fork of each job)."""
    device = (device or "").strip().lower()
    if device:
        return device.startswith("cuda")
    try:
        out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.stdout.strip().endswith("True")


def worker_queues(spec: str | None = None, gpu: bool | None = None, device: str | None = None) -> list[str]:
    """RQ queue names a worker listens on, in priority order.

    spec: comma-separated short names out of quick, gpu, low (e.g. "quick,gpu,low"), "all", or
    None/"auto": quick and low, plus gpu when this machine has a GPU (`gpu`, else `has_gpu`).
    Quick refreshes come first (annotators wait on them, they take seconds), then the GPU
    queue, then housekeeping. Raises ValueError naming the unknown name and the valid ones."""
    spec = (spec or "auto").strip().lower()
    if spec == "all":
        roles = ["quick", "gpu", "low"]
    elif spec == "auto":
        roles = ["quick", "gpu", "low"] if (has_gpu(device) if gpu is None else gpu) else ["quick", "low"]
    else:
        roles = [r.strip() for r in spec.split(",") if r.strip()]
        bad = [r for r in roles if r not in QUEUE_ROLES]
        if bad or not roles:
            raise ValueError(f"--queues / {QUEUES_ENV}: unknown queue {', '.join(bad) or '(none given)'}; "
                             f"use a comma-separated list of {', '.join(QUEUE_ROLES)}, or 'all' or 'auto'")
        roles = [r for r in QUEUE_ROLES if r in roles]  # the priority order, whatever the input order
    return [QUEUE_ROLES[r][0] for r in roles]


def _exit_with_parent(parent_pid: int, every_s: float = 2.0) -> None:
    """End this process when its parent is gone (a worker killed with kill -9 left its scheduler
    running, orphaned, through restarts of the demo)."""
    import threading
    import time

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(every_s)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _scheduler_main(settings: Settings, tick_s: float, parent_pid: int | None = None) -> None:
    from ml_backend.queue import RefreshQueue
    from scopeloop.scheduler import Scheduler

    if parent_pid is not None:
        _exit_with_parent(parent_pid)

    sched = Scheduler(RefreshQueue(connect_redis(settings.redis_url, timeout=30)), home=settings.home,
                      client_factory=lambda: settings.label_studio_client(timeout=10))
    sched.run_forever(every_s=tick_s)


def preload_refresh_code() -> None:
    """Import, once in the parent, what every forked refresh job needs (module docstring): no
    torch operation runs here, so no thread pool exists at fork time."""
    import matplotlib
    import torch._dynamo  # noqa: F401  (a job's first optimizer step imports it: ~1.6 s of every quick refresh)

    import ml_backend.labelstudio.client  # noqa: F401
    import sampler  # noqa: F401
    import scopeloop.refresh  # noqa: F401
    import trainer.models.head  # noqa: F401
    import trainer.models.model  # noqa: F401

    matplotlib.use("Agg")  # what trainer.models.training_qc uses for a version's QC plots (~0.8 s to import)
    import matplotlib.pyplot  # noqa: F401


def run_worker(settings: Settings, burst: bool = False, scheduler: bool = True,
               tick_s: float = float(os.environ.get("SCOPELOOP_SCHEDULER_TICK", "30")),
               name: str | None = None, queues: list[str] | None = None) -> None:
    """Run an RQ worker until stopped (or, with `burst`, until its queues are empty).
    `queues`: RQ queue names in priority order (default: `worker_queues()` from
    SCOPELOOP_WORKER_QUEUES / the GPU probe)."""
    if queues is None:
        queues = worker_queues(os.environ.get(QUEUES_ENV), device=settings.device)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    preload_refresh_code()
    redis = connect_redis(settings.redis_url, timeout=30)
    redis.ping()
    proc = None
    if scheduler:
        proc = multiprocessing.get_context("spawn").Process(target=_scheduler_main, args=(settings, tick_s, os.getpid()),
                                                            name="scopeloop-scheduler", daemon=True)
        proc.start()
    worker = Worker(queues, connection=redis, name=name, worker_ttl=WORKER_TTL)  # in priority order
    try:
        worker.work(burst=burst, with_scheduler=True, logging_level="INFO")
    finally:
        if proc is not None:
            proc.terminate()


def supervise(child_argv: list[str], log=print, backoff_s: tuple[float, float] = (1.0, 60.0),
              healthy_s: float = 60.0, max_restarts: int | None = None) -> int:
    """Run `child_argv` (a `scopeloop worker` command) and start it again whenever it dies.

    A child that exits 0 (a --burst worker done, a clean stop) ends the supervision with 0. A
    child killed by a signal or failing is restarted after a pause that doubles from
    backoff_s[0] to backoff_s[1] while it keeps dying within `healthy_s`, and starts again from
    backoff_s[0] after a run that lasted longer. SIGINT/SIGTERM to the supervisor are passed on
    to the child, which is waited for: nothing outlives the supervisor. `max_restarts`: stop
    after that many (tests). Returns the last child's exit status."""
    import signal
    import time

    stopping = {"sig": None}
    child = {"p": None}

    def forward(signum, frame):
        stopping["sig"] = signum
        p = child["p"]
        if p is not None and p.poll() is None:
            p.send_signal(signum)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    pause, restarts, rc = backoff_s[0], 0, 0
    try:
        while True:
            started = time.monotonic()
            child["p"] = p = subprocess.Popen(child_argv)
            log(f"supervisor: worker started (pid {p.pid})")
            while True:
                try:
                    rc = p.wait()
                    break
                except KeyboardInterrupt:  # a second Ctrl-C while waiting: keep waiting for the child
                    continue
            if stopping["sig"] is not None or rc == 0:
                return 0 if stopping["sig"] is not None else rc
            how = f"killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
            if max_restarts is not None and restarts >= max_restarts:
                log(f"supervisor: worker {how}; not restarted ({restarts} restarts)")
                return rc
            pause = backoff_s[0] if time.monotonic() - started > healthy_s else pause
            log(f"supervisor: worker {how}; starting a new one in {pause:.0f} s")
            deadline = time.monotonic() + pause
            while time.monotonic() < deadline and stopping["sig"] is None:
                time.sleep(0.1)
            if stopping["sig"] is not None:
                return 0
            restarts += 1
            pause = min(pause * 2, backoff_s[1])
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        p = child["p"]
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
