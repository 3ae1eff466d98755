"""Time-driven refreshes, running inside `scopeloop worker --scheduler` (or cron/SLURM).

Every tick (30 s by default):
* recovery: a project with labels no refresh has covered and nothing queued or running (a
  worker was killed, Redis was restarted) gets its quick refresh queued again;
* lost webhooks: Label Studio's annotation count is compared with the last label snapshot,
  and a difference queues a refresh (Label Studio never retries a failed webhook);
* nightly: each time the clock passes SCOPELOOP_NIGHTLY_AT (local time, default 02:00), a deep
  refresh per project. A slot already past when a project is first seen is not caught up (a
  scheduler started at 10:00 does not fine-tune at once). A Redis SET NX per project and slot
  makes it fire once even with several schedulers. The clock is injectable: tests shift it.
"""
from __future__ import annotations

import os
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

from ml_backend.queue import RefreshQueue
from trainer.store.workspace import project_dirs


def nightly_time(now: float, at: str) -> float:
    """Epoch seconds of today's nightly slot (local time)."""
    hh, mm = (int(x) for x in at.split(":"))
    d = datetime.fromtimestamp(now)
    return d.replace(hour=hh, minute=mm, second=0, microsecond=0).timestamp()


class Scheduler:
    def __init__(self, queue: RefreshQueue, nightly_at: str | None = None, clock: Callable[[], float] = time.time,
                 client_factory: Callable | None = None, log=print, home: Path | None = None):
        self.queue, self.clock, self.client_factory, self.log, self.home = queue, clock, client_factory, log, home
        self.nightly_at = nightly_at or os.environ.get("SCOPELOOP_NIGHTLY_AT", "02:00")

    def tick(self) -> list[str]:
        now = self.clock()
        if self.home is not None:  # projects on disk, even if Redis lost its memory
            self.queue.register(project_dirs(self.home))
        queued = self.queue.recover()
        for root in self.queue.projects():
            jid = self._nightly(root, now)
            if jid:
                queued.append(jid)
            if self.client_factory is not None:
                jid = self._check_missed_labels(root)
                if jid:
                    queued.append(jid)
        for jid in queued:
            self.log(f"scheduler queued {jid}")
        return queued

    def _nightly(self, root: str, now: float) -> str | None:
        if self.nightly_at.lower() in ("off", "none", ""):  # e.g. the lab uses cron instead
            return None
        slot = nightly_time(now, self.nightly_at)
        if now < slot:
            slot = (datetime.fromtimestamp(slot) - timedelta(days=1)).timestamp()
        seen_key = self.queue.key(root, "nightly_seen")
        last = self.queue.redis.get(seen_key)
        if last is None:  # first sight of this project: the most recent slot counts as handled
            self.queue.redis.set(seen_key, slot)
            return None
        if slot <= float(last):
            return None
        self.queue.redis.set(seen_key, slot)
        day = datetime.fromtimestamp(slot).strftime("%Y-%m-%d")
        if self.queue.redis.set(self.queue.key(root, "nightly", day), "1", nx=True, ex=3 * 86400):
            return self.queue.request(root, "deep", f"nightly refresh {day}")
        return None

    def _check_missed_labels(self, root: str) -> str | None:
        from ml_backend.labelstudio.sync import annotation_count
        from trainer.store.workspace import Workspace

        ws = Workspace(Path(root))
        pid = ws.project.get("ls_project_id")
        if pid is None:
            return None
        try:
            info = self.client_factory().get_project(pid)
        except Exception as exc:  # Label Studio briefly down: try again next tick
            self.log(f"scheduler: cannot reach Label Studio for {root}: {exc}")
            return None
        in_ls = int(info.get("total_annotations_number") or 0)
        seen = annotation_count(ws.labels)
        if in_ls != seen:
            self.queue.note_labels(root)
            return self.queue.request(root, "quick", f"Label Studio has {in_ls} annotations, last sync saw {seen}")
        return None

    def run_forever(self, every_s: float = 30.0, stop=None) -> None:
        while stop is None or not stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # never let the scheduler thread die
                self.log(f"scheduler tick failed: {type(exc).__name__}: {exc}")
            if stop is not None:
                stop.wait(every_s)
            else:
                time.sleep(every_s)
