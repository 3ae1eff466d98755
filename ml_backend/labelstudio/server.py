"""Start and stop a local Label Studio (pip package) as a subprocess.

Used by the demo and by the session-scoped pytest fixture. Everything is passed through
environment variables so the start is non-interactive (measured on LS 1.23.2):

* Label Studio reads each setting X as ``LABEL_STUDIO_X``, then ``HEARTEX_X``, then bare ``X``;
  a stray ``USERNAME`` / ``PASSWORD`` in the caller's environment would silently become the
  admin account, so those are scrubbed.
* The legacy API token only takes effect when the organization is first created, i.e. on the
  first start with an empty data dir. Reusing a data dir keeps the token it was created with.
* SSRF protection stays ON (``SSRF_PROTECTION_ENABLED``, ``ML_BLOCK_LOCAL_IP`` left at true):
  Label Studio must not fetch loopback or private addresses for a user (a task URL, a webhook).
  Only the ML backend's own address is let through: with ``allow_hosts`` (the backend's IP)
  ``USE_DEFAULT_BANNED_SUBNETS=false`` and ``USER_ADDITIONAL_BANNED_SUBNETS`` = LS 1.23.2's
  default banned list with exactly those addresses cut out (``banned_subnets``). LS has no
  allow-list setting; this is the one that exists (core.utils.io.validate_ip). The demo runs
  its backend on a loopback address of its own (127.0.0.2, see `backend_loopback_host`), so
  127.0.0.1, where Label Studio, Redis and other users' services listen, stays refused.
* The process runs with umask 077 (``umask``): its database and files are owner-only.
"""
from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

# Variables LS would pick up as a bare fallback for its own settings.
_SCRUB = ("USERNAME", "PASSWORD", "USER_TOKEN", "HOST", "PORT", "BASE_DATA_DIR",
          "DJANGO_DB", "DATABASE_URL", "POSTGRE_HOST", "POSTGRE_NAME")


# Label Studio 1.23.2's default banned subnets (core.utils.io.validate_ip), checked against its
# source by tests/ml_backend/labelstudio/test_server.py
DEFAULT_BANNED_SUBNETS = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "233.252.0.0/24", "240.0.0.0/4",
    "255.255.255.255/32", "::/128", "::1/128", "::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96",
    "64:ff9b:1::/48", "100::/64", "2001:0000::/32", "2001:20::/28", "2001:db8::/32", "2002::/16",
    "fc00::/7", "fe80::/10", "ff00::/8",
)
BACKEND_LOOPBACK = "127.0.0.2"   # the demo's ML backend: a loopback address nothing else uses


def banned_subnets(allow: tuple[str, ...] | list[str] = ()) -> list[str]:
    """LS's default banned subnets with the addresses in `allow` (single IPs) cut out."""
    nets = [ipaddress.ip_network(n) for n in DEFAULT_BANNED_SUBNETS]
    for a in allow:
        ip = ipaddress.ip_network(ipaddress.ip_address(a))
        out = []
        for n in nets:
            if n.version == ip.version and ip.subnet_of(n):
                out.extend(n.address_exclude(ip))
            else:
                out.append(n)
        nets = out
    return [str(n) for n in nets]


def ssrf_env(allow_hosts: tuple[str, ...] | list[str] = ()) -> dict[str, str]:
    """Label Studio's SSRF settings: protection on; only `allow_hosts` (IP addresses) exempt."""
    env = {"SSRF_PROTECTION_ENABLED": "true", "ML_BLOCK_LOCAL_IP": "true"}
    if allow_hosts:
        env.update({"USE_DEFAULT_BANNED_SUBNETS": "false",
                    "USER_ADDITIONAL_BANNED_SUBNETS": ",".join(banned_subnets(allow_hosts))})
    return env


def backend_loopback_host() -> str:
    """BACKEND_LOOPBACK when this machine can bind it (Linux: all of 127/8 is loopback), else
    127.0.0.1 (macOS without an lo0 alias; then loopback URLs of 127.0.0.1 are let through)."""
    try:
        with socket.socket() as s:
            s.bind((BACKEND_LOOPBACK, 0))
        return BACKEND_LOOPBACK
    except OSError:
        return "127.0.0.1"


class LabelStudioServerError(RuntimeError):
    """Label Studio could not be started (port busy, crash, timeout); the message says why."""


def stop_process_group(proc: subprocess.Popen | None, sig=signal.SIGTERM, timeout: float = 15.0) -> None:
    """Signal a child started with start_new_session=True and all its children; SIGKILL the
    group if it lingers, so nothing is left behind: members still there once the leader has
    exited (an RQ work horse, a scheduler, a supervised worker) are waited for up to `timeout`
    too, then killed (issue 22: Ctrl-C of the demo left 2-3 processes behind)."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass
    kill_group_remnants(proc.pid, sig, timeout)


def kill_group_remnants(pgid: int, sig=signal.SIGTERM, timeout: float = 15.0) -> None:
    """Signal what is left of process group `pgid` (its leader gone), wait up to `timeout` s,
    then SIGKILL it. Nothing to do when the group is empty."""
    deadline = time.monotonic() + timeout
    try:
        if not group_alive(pgid):
            return
        os.killpg(pgid, sig)
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if not group_alive(pgid):
                return
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    """Whether process group `pgid` has a member that is not a zombie (zombies whose parent
    never reaps them, e.g. in a container without an init, count as gone)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":   # state, ppid, pgrp, ...
            return True
    return False


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (small race window, fine for tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@dataclass
class LabelStudioServer:
    """A Label Studio process bound to 127.0.0.1:port with its own data dir.

    ``document_root`` is what local-files storage may serve (LOCAL_FILES_DOCUMENT_ROOT): image
    folders and preview folders must live under it.
    """

    data_dir: Path
    document_root: Path
    port: int = 8080
    username: str = "admin@scopeloop.local"
    password: str = "scopeloop-admin"
    token: str = "scopeloop-dev-token"
    start_timeout: float = 240.0
    allow_hosts: tuple[str, ...] = ()   # IPs exempt from SSRF protection: the ML backend's (see module doc)
    umask: int = 0o077
    proc: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return Path(self.data_dir) / "label-studio.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in _SCRUB and not k.startswith(("LABEL_STUDIO_", "HEARTEX_"))}
        if len(self.token) <= 5:
            raise ValueError("Label Studio needs a legacy API token longer than 5 characters")
        env.update({
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
            "LABEL_STUDIO_USERNAME": self.username,
            "LABEL_STUDIO_PASSWORD": self.password,
            "LABEL_STUDIO_USER_TOKEN": self.token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "LOCAL_FILES_SERVING_ENABLED": "true",
            "LOCAL_FILES_DOCUMENT_ROOT": str(self.document_root),
            **ssrf_env(self.allow_hosts),
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
            # LS 1.23.2 feature flag: a predictions import recounts only the tasks it touched; the
            # default path recounts (and rewrites) every task of the project, so pushing 300
            # predictions to a 100,000-task project would cost a pass over all of them
            "fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short": "true",
        })
        return env

    def command(self) -> list[str]:
        # `python -m label_studio.server` == the `label-studio` console script, without relying
        # on PATH pointing into the right virtual environment.
        return [sys.executable, "-m", "label_studio.server", "start", "--no-browser",
                "--host", self.url, "--internal-host", "127.0.0.1", "--port", str(self.port)]

    def healthy(self) -> bool:
        try:
            r = requests.get(f"{self.url}/health", timeout=2)
            return r.ok and r.json().get("status") == "UP"
        except (requests.RequestException, ValueError):
            return False

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def start(self) -> "LabelStudioServer":
        """Start and block until /health answers UP (first start ~50 s: migrations)."""
        if port_in_use(self.port):
            raise LabelStudioServerError(
                f"port {self.port} on 127.0.0.1 is already in use; stop what listens there "
                f"(e.g. an older Label Studio: `lsof -i :{self.port}`) or choose another port")
        if not Path(self.data_dir).exists():   # made here: owner-only (its database holds the tokens)
            Path(self.data_dir).mkdir(parents=True, mode=0o700)
        Path(self.document_root).mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666 & ~self.umask)
        log = os.fdopen(fd, "ab")
        self.proc = subprocess.Popen(self.command(), env=self.env(), stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True,  # own group: stop() kills children
                                     umask=self.umask)
        log.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LabelStudioServerError(
                    f"Label Studio exited with code {self.proc.returncode} during start; "
                    f"log {self.log_path}:\n{self.log_tail()}")
            if self.healthy():
                return self
            time.sleep(0.5)
        self.stop()
        raise LabelStudioServerError(
            f"Label Studio did not answer {self.url}/health within {self.start_timeout:.0f} s; "
            f"log {self.log_path}:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        stop_process_group(self.proc, timeout=timeout)
        self.proc = None

    def __enter__(self) -> "LabelStudioServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
