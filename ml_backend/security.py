"""What keeps the ML backend safe on a machine other people use (issue 23; docs/security.md).

* The backend's token: generated once per home, kept in ``<SCOPELOOP_HOME>/backend_token``
  (0600), read by the backend and by ``scopeloop init``/``demo``, which hand it to Label Studio
  when they connect the backend (its "Basic Auth" ML backend setting, user ``scopeloop``, and an
  ``Authorization: Token`` header on the ML webhook). ``SCOPELOOP_BACKEND_TOKEN`` wins over the
  file (compose, or a backend and an ``init`` on different homes).
* ``SCOPELOOP_BACKEND_AUTH=off``: the only way to run the backend without auth (it warns).
* Log lines: control characters escaped, length bounded (a task id with a newline cannot forge
  log lines, a 10^6-character id cannot write a 10^6-character line).
* Image paths: whether a file's real location (symlinks resolved) lies inside an image root.
"""
from __future__ import annotations

import logging
import os
import re
import secrets
from pathlib import Path

TOKEN_FILE = "backend_token"
BASIC_USER = "scopeloop"          # the Basic Auth user Label Studio is given (password: the token)
AUTH_ENV = "SCOPELOOP_BACKEND_AUTH"
TOKEN_ENV = "SCOPELOOP_BACKEND_TOKEN"
LOG_LINE_MAX = 2000               # characters of one log message (before the traceback, if any)
AUTH_OFF_WARNING = ("the ML backend runs WITHOUT authentication (SCOPELOOP_BACKEND_AUTH=off): anyone who "
                    "reaches its port can request predictions and start refreshes")


def auth_disabled() -> bool:
    """Whether auth was explicitly turned off (SCOPELOOP_BACKEND_AUTH=off/0/false/no)."""
    return os.environ.get(AUTH_ENV, "").strip().lower() in ("off", "0", "false", "no", "none")


def token_path(home) -> Path:
    return Path(home) / TOKEN_FILE


def backend_token(home, create: bool = True) -> str:
    """The backend token: SCOPELOOP_BACKEND_TOKEN, else ``<home>/backend_token`` (created once,
    0600, with a random token when missing and `create`); "" when auth is off or none exists."""
    if auth_disabled():
        return ""
    explicit = os.environ.get(TOKEN_ENV, "").strip()
    if explicit:
        return explicit
    path = token_path(home)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        if not create:
            return ""
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:  # O_EXCL: a backend and an init starting together agree on one token
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


# ------------------------------------------------------------------ logs

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def safe_text(text, limit: int = LOG_LINE_MAX) -> str:
    """`text` on one line: control characters as escapes (\\n, \\x1b, ...), at most `limit`
    characters plus a note of the original length."""
    text = str(text)
    cut = len(text) > limit
    out = _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text[:limit])
    return out + (f"... ({len(text)} characters)" if cut else "")


class SafeLogFilter(logging.Filter):
    """A handler filter that makes every record's message one bounded line (the record is
    changed in place, so every later handler sees the safe text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "_scopeloop_safe", False):
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001 - a bad format string: log what there is
                message = f"{record.msg!r} % {record.args!r}"
            record.msg, record.args = safe_text(message), ()
            record._scopeloop_safe = True
        return True


def install_log_filter(logger: logging.Logger | None = None) -> None:
    """Put a SafeLogFilter on every handler of `logger` (default: the root logger); idempotent."""
    for h in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, SafeLogFilter) for f in h.filters):
            h.addFilter(SafeLogFilter())


# ------------------------------------------------------------------ image paths

def inside(path, root) -> bool:
    """Whether `path`'s real location (every symlink resolved) lies inside `root`'s."""
    try:
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))
    except (OSError, ValueError):
        return False
