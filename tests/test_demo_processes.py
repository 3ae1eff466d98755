"""Issue 22, point 3: the demo's killed worker stayed dead, and Ctrl-C of the demo left processes
behind (an orphaned scheduler survived two demo restarts).

One real `scopeloop demo` on the bundled sample, in a subprocess with its own SCOPELOOP_HOME and
free ports: its worker is killed with SIGKILL (as kill -9 does) and a new one must be running
within 60 s; then the demo gets SIGINT (Ctrl-C) and must exit leaving no process behind: no
descendant of it and no process carrying its SCOPELOOP_HOME (the embedded redis-server, which
daemonizes, included).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from ml_backend.labelstudio.server import free_port

pytestmark = [pytest.mark.slow, pytest.mark.labelstudio]


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _workers(root: psutil.Process) -> list[psutil.Process]:
    """The demo's live `scopeloop worker` processes: children of the supervisor (not RQ's work
    horses, forks of a worker with the same command line)."""
    out = []
    for p in root.children(recursive=True):
        try:
            cmd, parent = p.cmdline(), p.parent()
            supervised = parent is not None and "--supervise" in parent.cmdline()
        except psutil.Error:
            continue
        if "scopeloop.cli" in cmd and "worker" in cmd and supervised and _alive(p):
            out.append(p)
    return out


def _with_home(home: str) -> list[psutil.Process]:
    """Live processes whose environment names SCOPELOOP_HOME=home."""
    found = []
    for p in psutil.process_iter():
        if p.pid == os.getpid():
            continue
        try:
            if p.environ().get("SCOPELOOP_HOME") == home and _alive(p):
                found.append(p)
        except psutil.Error:
            continue
    return found


def test_demo_restarts_a_killed_worker_and_ctrl_c_leaves_no_process(tmp_path):
    home = str(tmp_path / "home")
    env = {k: v for k, v in os.environ.items() if k not in (
        "REDIS_URL", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "SCOPELOOP_BACKEND_URL", "LOCAL_FILES_DOCUMENT_ROOT")}
    env.update(SCOPELOOP_HOME=home, PYTHONUNBUFFERED="1")
    demo = subprocess.Popen([sys.executable, "-m", "scopeloop.cli", "demo", "--port", str(free_port()),
                             "--backend-port", str(free_port())], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: [lines.append(line) for line in demo.stdout], daemon=True)
    reader.start()
    seen: dict[int, psutil.Process] = {}
    root = psutil.Process(demo.pid)

    def remember():
        for p in root.children(recursive=True):
            seen.setdefault(p.pid, p)

    try:
        deadline = time.monotonic() + 900
        while not any("scopeloop demo is ready" in line for line in lines):
            assert demo.poll() is None, "demo exited:\n" + "".join(lines[-40:])
            assert time.monotonic() < deadline, "demo not ready in 900 s:\n" + "".join(lines[-40:])
            time.sleep(1)
        remember()
        workers = _workers(root)
        assert len(workers) == 1, [w.cmdline() for w in workers]
        old = workers[0]
        old.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not [w for w in _workers(root) if w.pid != old.pid]:
            assert time.monotonic() < deadline, "no worker back within 60 s:\n" + \
                (tmp_path / "home" / "logs" / "worker.log").read_text(errors="replace")[-3000:]
            time.sleep(1)
        time.sleep(5)   # the new worker's scheduler and the old one's leftovers settle
        remember()
        assert "killed by signal 9" in (tmp_path / "home" / "logs" / "worker.log").read_text(errors="replace")
        assert _with_home(home), "the probe finds no demo process at all: it would prove nothing"
    finally:
        remember()
        os.kill(demo.pid, signal.SIGINT)   # Ctrl-C reaches the demo (its children run in sessions of their own)
        try:
            demo.wait(timeout=120)
        except subprocess.TimeoutExpired:
            demo.kill()
            raise
    reader.join(timeout=5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (_with_home(home) or [p for p in seen.values() if _alive(p)]):
        time.sleep(0.5)
    left = {}
    for p in _with_home(home) + [p for p in seen.values() if _alive(p)]:
        try:
            left[p.pid] = " ".join(p.cmdline()[:6])
        except psutil.Error:
            pass
    for pid in left:   # clean up before failing
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert not left, f"left behind after Ctrl-C: {left}\n" + "".join(lines[-20:])
    assert demo.returncode == 0, "".join(lines[-20:])
