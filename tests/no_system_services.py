"""pytest plugin: `-p tests.no_system_services` makes the test process behave as on a fresh machine.

Every TCP connection to port 6379 (Redis) or 5432 (PostgreSQL), on any host, is refused, as on a
machine where neither server runs. Used by tests/test_fresh_machine.py; CI (.ci/run) goes further
and runs the whole suite in a network namespace with loopback only.
"""
from __future__ import annotations

import errno
import socket

BLOCKED_PORTS = {6379, 5432}
_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex


def _blocked(address) -> bool:
    return isinstance(address, tuple) and len(address) >= 2 and address[1] in BLOCKED_PORTS


def _refusing_connect(self, address):
    if _blocked(address):
        raise ConnectionRefusedError(errno.ECONNREFUSED, f"port {address[1]} blocked by tests.no_system_services")
    return _connect(self, address)


def _refusing_connect_ex(self, address):
    return errno.ECONNREFUSED if _blocked(address) else _connect_ex(self, address)


socket.socket.connect = _refusing_connect
socket.socket.connect_ex = _refusing_connect_ex
