"""Coalesced refresh requests on RQ: never a pile of jobs per project.

Per project (its work directory), in Redis:
  scopeloop:p:<id>:gen            incremented by every label event (webhook, poll, CLI)
  scopeloop:p:<id>:done:<kind>    the `gen` the last successful refresh of that kind covered
  scopeloop:p:<id>:pending:<kind> job id of the one queued refresh (SET NX: a burst of 200
                                  annotations finds it taken and adds nothing)
  scopeloop:p:<id>:lock           held (with a TTL kept alive by a heartbeat) while a refresh
                                  trains and publishes: two workers never publish at once
Queues (what a worker takes is chosen per worker, `scopeloop worker --queues`):
  scopeloop       quick refreshes (seconds on a CPU): every worker listens here
  scopeloop-gpu   deep refreshes (fine-tuning) and embedding chunks: GPU workers listen here;
                  a worker without CUDA only when told to (`--queues quick,gpu,low`)
  scopeloop-low   housekeeping (pruning Label Studio's old predictions) when nothing else waits
A refresh job keeps its `pending` key until it holds the lock, so at any time there is at most
one running and one pending refresh per project and kind. If a worker dies (SIGKILL), its lock
expires and `gen > done` tells the watchdog (`recover`) to queue the refresh again.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

from redis import Redis
from rq import Queue, Retry
from rq.job import Job

from trainer.store.lease import lease

QUEUE_NAME = "scopeloop"          # quick refreshes: any worker
GPU_QUEUE_NAME = "scopeloop-gpu"  # deep refreshes and embedding chunks: GPU workers (CPU ones if told to)
LOW_QUEUE_NAME = "scopeloop-low"  # housekeeping a worker does only when no refresh waits
# the short names `scopeloop worker --queues` takes, and what each queue carries (for `status`)
QUEUE_ROLES = {"quick": (QUEUE_NAME, "quick refreshes, any worker"),
               "gpu": (GPU_QUEUE_NAME, "deep refreshes and embedding chunks, GPU workers"),
               "low": (LOW_QUEUE_NAME, "housekeeping, when nothing else waits")}
JOB_FUNC = "scopeloop.refresh.refresh_job"
PRUNE_FUNC = "scopeloop.refresh.prune_job"
KINDS = ("quick", "deep")
WORK_S = {"quick": 15 * 60, "deep": 6 * 3600}   # what one refresh may take once it holds the lock
LOCK_WAIT_S = {"quick": 3600, "deep": 3600}      # how long a refresh waits for the project's lock
# RQ's job timeout covers the wait AND the work: RQ's default 180 s would kill trainings, and a
# timeout shorter than the lock wait killed quick refreshes queued behind a deep one (issue 22)
TIMEOUTS = {k: LOCK_WAIT_S[k] + WORK_S[k] for k in KINDS}
LOCK_TTL = int(os.environ.get("SCOPELOOP_LOCK_TTL", "60"))  # a killed worker's lock frees itself after this


DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


WORKER_TTL = int(os.environ.get("SCOPELOOP_WORKER_TTL", "60"))  # scopeloop workers heartbeat every ttl-15 s when idle
BUSY_BEAT_S = 90  # a busy worker beats every 30 s (RQ's job_monitoring_interval): 3 missed = dead


def worker_alive(redis: Redis, worker) -> bool:
    """Whether an RQ worker still heartbeats. A killed worker (kill -9) leaves its record in Redis
    until its key expires (worker_ttl + 60 s: 8 minutes for RQ's default; for a busy one, its
    job's timeout), counted as listening all that time; alive means its last heartbeat is not
    older than the interval it promised: 30 s while busy, worker_ttl - 15 s while idle, that
    worker_ttl read from the key's TTL (set to worker_ttl + 60 at every idle heartbeat), so
    workers started with any worker_ttl are judged by their own."""
    from datetime import datetime, timezone

    beat = getattr(worker, "last_heartbeat", None)
    if beat is None:
        return True  # no heartbeat recorded yet: just born
    if beat.tzinfo is None:
        beat = beat.replace(tzinfo=timezone.utc)
    since = (datetime.now(timezone.utc) - beat).total_seconds()
    if worker.get_state() == "busy":  # beats every job_monitoring_interval (30 s) while a job runs
        return since <= BUSY_BEAT_S
    left = redis.ttl(worker.key)
    if left is None or left < 0:
        return since <= WORKER_TTL
    return since <= max(left + since - 60, 15)  # left + since - 60: the worker_ttl it was started with


def connect_redis(url: str | None = None, timeout: float = 5.0) -> Redis:
    """A Redis client with short socket timeouts: a down Redis must fail fast, not hang."""
    return Redis.from_url(url or DEFAULT_REDIS_URL, socket_timeout=timeout, socket_connect_timeout=timeout)


def project_id(workspace_root: str) -> str:
    """Short stable id of a project (its work directory) for Redis keys."""
    return hashlib.sha1(str(workspace_root).encode()).hexdigest()[:12]


@dataclass
class RefreshQueue:
    """Refresh requests of every project. `queue_name` carries quick refreshes, `gpu_queue_name`
    (default: `queue_name` + "-gpu") deep ones, `low_queue_name` (`queue_name` + "-low") pruning;
    tests override `queue_name` to stay apart."""

    redis: Redis
    queue_name: str = QUEUE_NAME
    gpu_queue_name: str | None = None
    low_queue_name: str | None = None

    def __post_init__(self):
        default = self.queue_name == QUEUE_NAME
        if self.gpu_queue_name is None:
            self.gpu_queue_name = GPU_QUEUE_NAME if default else f"{self.queue_name}-gpu"
        if self.low_queue_name is None:
            self.low_queue_name = LOW_QUEUE_NAME if default else f"{self.queue_name}-low"

    def key(self, root: str, *parts: str) -> str:
        return ":".join(["scopeloop", "p", project_id(root), *parts])

    @property
    def queue(self) -> Queue:
        """The quick-refresh queue (every worker listens on it)."""
        return Queue(self.queue_name, connection=self.redis)

    def queue_for(self, kind: str) -> Queue:
        """Where a refresh of `kind` goes: deep ones to the GPU queue, quick ones to any worker."""
        return Queue(self.gpu_queue_name if kind == "deep" else self.queue_name, connection=self.redis)

    # --------------------------------------------------------------- requests
    def note_labels(self, root: str, n: int = 1) -> int:
        """Record that labels changed; returns the new generation."""
        self.redis.sadd("scopeloop:projects", str(root))
        return int(self.redis.incrby(self.key(root, "gen"), n))

    def request(self, root: str, kind: str = "quick", reason: str = "") -> str | None:
        """Queue one refresh unless one of this kind is already pending; returns the new job id."""
        if kind not in KINDS:
            raise ValueError(f"unknown refresh kind '{kind}': use one of {KINDS}")
        root = str(root)
        self.redis.sadd("scopeloop:projects", root)
        job_id = f"refresh-{kind}-{project_id(root)}-{uuid.uuid4().hex[:8]}"
        if not self.redis.set(self.key(root, "pending", kind), job_id, nx=True, ex=TIMEOUTS[kind] * 2):
            return None
        self.queue_for(kind).enqueue(JOB_FUNC, root, kind, reason, job_id=job_id, job_timeout=TIMEOUTS[kind],
                           retry=Retry(max=3, interval=[10, 30, 90]), result_ttl=7 * 24 * 3600,
                           failure_ttl=7 * 24 * 3600, description=f"{kind} refresh of {root} ({reason})")
        return job_id

    def request_prune(self, root: str) -> str | None:
        """Queue (once) the deletion of superseded predictions, on the low-priority queue."""
        root = str(root)
        job_id = f"prune-{project_id(root)}-{uuid.uuid4().hex[:8]}"
        if not self.redis.set(self.key(root, "pending", "prune"), job_id, nx=True, ex=3600):
            return None
        Queue(self.low_queue_name, connection=self.redis).enqueue(
            PRUNE_FUNC, root, job_id=job_id, job_timeout=3600, result_ttl=24 * 3600,
            description=f"prune old predictions of {root}")
        return job_id

    def on_label_event(self, root: str, reason: str = "label", every: int = 1) -> str | None:
        """A webhook's whole job: count the change, queue a quick refresh every `every` changes."""
        gen = self.note_labels(root)
        done = int(self.redis.get(self.key(root, "done", "quick")) or 0)
        if gen - done >= every:
            return self.request(root, "quick", reason)
        return None

    # --------------------------------------------------------------- job side
    def generation(self, root: str) -> int:
        return int(self.redis.get(self.key(root, "gen")) or 0)

    def mark_done(self, root: str, kind: str, gen: int) -> None:
        self.redis.delete(self.key(root, "started", kind))
        key = self.key(root, "done", kind)
        cur = int(self.redis.get(key) or 0)
        if gen > cur:
            self.redis.set(key, gen)

    def release_pending(self, root: str, kind: str, job_id: str) -> None:
        """Called once the job holds the lock: new label events may now queue the next one."""
        key = self.key(root, "pending", kind)
        if (self.redis.get(key) or b"").decode() == job_id:
            self.redis.delete(key)

    @contextmanager
    def lock(self, root: str, wait_s: float = LOCK_WAIT_S["quick"], poll_s: float = 0.2):
        """Exclusive right to train+publish for one project; the TTL is renewed while held."""
        with lease(self.redis, self.key(root, "lock"), LOCK_TTL, wait_s, poll_s) as held:
            if not held:
                raise TimeoutError(f"another worker holds the refresh lock of {root} for over {wait_s:.0f} s")
            yield

    # --------------------------------------------------------------- watching
    def projects(self) -> list[str]:
        return sorted(p.decode() for p in self.redis.smembers("scopeloop:projects"))

    def register(self, roots) -> None:
        """Make projects known to the watchdog (after a Redis restart the set is empty)."""
        roots = [str(r) for r in roots]
        if roots:
            self.redis.sadd("scopeloop:projects", *roots)

    def mark_started(self, root: str, kind: str) -> None:
        """A refresh of this kind began; cleared by `mark_done`. Left set by a killed worker."""
        self.redis.set(self.key(root, "started", kind), "1")

    def recover(self) -> list[str]:
        """Queue again what a killed worker left undone: a quick refresh for labels no refresh
        has covered, a deep refresh that started and never finished; only when nothing of that
        kind is queued and no worker holds the project's lock. Returns the job ids queued."""
        queued = []
        for root in self.projects():
            if self.redis.exists(self.key(root, "lock")):
                continue
            behind = self.generation(root) > int(self.redis.get(self.key(root, "done", "quick")) or 0)
            todo = {"quick": behind, "deep": bool(self.redis.exists(self.key(root, "started", "deep")))}
            for kind, needed in todo.items():
                if needed and not self.redis.exists(self.key(root, "pending", kind)):
                    jid = self.request(root, kind, f"recovery: {kind} refresh not completed")
                    if jid:
                        queued.append(jid)
        return queued

    def jobs(self, root: str) -> dict:
        """Queued / running / failed refresh jobs of a project, for `scopeloop status`."""
        pid = project_id(root)
        out = {"queued": [], "running": [], "failed": []}
        for q in (self.queue, self.queue_for("deep")):
            for name, ids in (("queued", q.get_job_ids()), ("running", q.started_job_registry.get_job_ids()),
                              ("failed", q.failed_job_registry.get_job_ids())):
                for jid in ids:
                    if pid in jid:
                        job = Job.fetch(jid, connection=self.redis) if name == "failed" else None
                        out[name].append({"id": jid, "queue": q.name,
                                          "error": (job.latest_result().exc_string.strip().splitlines()[-1]
                                                    if job and job.latest_result() else None)})
        return out

    def overview(self) -> list[dict]:
        """Per queue, what waits and what runs (every project), and how many workers listen.

        Returns one dict per queue (quick, gpu, low): ``{"role", "queue", "purpose", "waiting":
        [job ids, oldest first], "running": [job ids], "workers": n listening, "busy": n}``.
        A deep refresh that waits with ``workers == 0`` on the gpu queue needs a GPU worker
        (or a CPU worker started with ``--queues quick,gpu,low``)."""
        from rq import Worker

        names = {"quick": self.queue_name, "gpu": self.gpu_queue_name, "low": self.low_queue_name}
        workers = Worker.all(connection=self.redis)
        alive = {w.name: worker_alive(self.redis, w) for w in workers}
        out = []
        for role, name in names.items():
            q = Queue(name, connection=self.redis)
            listening = [w for w in workers if name in w.queue_names()]
            live = [w for w in listening if alive[w.name]]
            out.append({"role": role, "queue": name, "purpose": QUEUE_ROLES[role][1],
                        "waiting": q.get_job_ids(), "running": q.started_job_registry.get_job_ids(),
                        "workers": len(live), "busy": sum(1 for w in live if w.get_state() == "busy"),
                        "dead": len(listening) - len(live)})
        return out
