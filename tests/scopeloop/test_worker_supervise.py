"""Issue 22: a killed worker stayed dead and `status` still counted it as listening for minutes.
`scopeloop worker --supervise` starts a new one; `status` tells live workers from dead ones by
their heartbeat; the worker's scheduler process ends with its worker."""
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from rq import Worker

from ml_backend.queue import QUEUE_NAME, RefreshQueue
from scopeloop.worker import supervise


def test_supervisor_restarts_a_killed_worker_and_stops_on_a_clean_exit(tmp_path):
    runs = tmp_path / "runs"
    # first run: killed with SIGKILL (as kill -9 does); second run: exits cleanly (a --burst worker done)
    code = (f"import os, pathlib, signal; p = pathlib.Path({str(runs)!r}); n = len(p.read_text()) if p.exists() "
            "else 0; p.write_text('x' * (n + 1)); n or os.kill(os.getpid(), signal.SIGKILL)")
    child = [sys.executable, "-c", code]
    lines = []
    assert supervise(child, log=lines.append, backoff_s=(0.1, 0.2), max_restarts=3) == 0
    assert runs.read_text() == "xx"
    assert any("killed by signal 9" in line and "starting a new one" in line for line in lines)


def test_supervisor_gives_up_after_max_restarts(tmp_path):
    lines = []
    assert supervise([sys.executable, "-c", "raise SystemExit(3)"], log=lines.append, backoff_s=(0.05, 0.05),
                     max_restarts=2) == 3
    assert sum("starting a new one" in line for line in lines) == 2


def test_sigterm_to_the_supervisor_stops_the_child_too(tmp_path):
    pidfile = tmp_path / "child.pid"
    code = ("import sys, time; from scopeloop.worker import supervise; "
            f"sys.exit(supervise([sys.executable, '-c', \"import os, time, pathlib; pathlib.Path({str(pidfile)!r}).write_text(str(os.getpid())); time.sleep(60)\"]))")
    sup = subprocess.Popen([sys.executable, "-c", code], cwd=os.getcwd())
    for _ in range(200):
        if pidfile.exists() and pidfile.read_text():
            break
        time.sleep(0.05)
    child_pid = int(pidfile.read_text())
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(timeout=30) == 0
    time.sleep(0.2)
    stat = Path(f"/proc/{child_pid}/stat")
    assert not stat.exists() or stat.read_text().split()[2] == "Z"  # gone (or a zombie of a dead parent)


def test_status_counts_a_worker_without_heartbeat_as_dead(redis_conn):
    q = RefreshQueue(redis_conn)
    live = Worker([QUEUE_NAME], connection=redis_conn, name="live-worker", worker_ttl=60)
    killed = Worker([QUEUE_NAME], connection=redis_conn, name="killed-worker", worker_ttl=60)
    for w in (live, killed):
        w.register_birth()
    try:
        quick = {o["role"]: o for o in q.overview()}["quick"]
        assert (quick["workers"], quick["dead"]) == (2, 0)
        # kill -9: no more heartbeats, its record stays in Redis until the key expires
        old = (datetime.now(timezone.utc) - timedelta(seconds=75)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        redis_conn.hset(killed.key, "last_heartbeat", old)
        redis_conn.expire(killed.key, 120 - 75)
        quick = {o["role"]: o for o in q.overview()}["quick"]
        assert (quick["workers"], quick["dead"]) == (1, 1)
    finally:
        for w in (live, killed):
            w.register_death()
