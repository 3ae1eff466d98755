"""Time `scopeloop demo`: the first start on a fresh SCOPELOOP_HOME, Ctrl-C, and a restart on the same
home (issue 22, point 7). Each run starts the demo as a child, timestamps every line it prints, waits
for "is ready", sends SIGINT and times the stop. The phases are read off the timestamped lines.

    .venv/bin/python scripts/benchmark_first_hour.py /tmp/bench_home            # first start + restart
    .venv/bin/python scripts/benchmark_first_hour.py /tmp/bench_home restart2   # one more restart
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml_backend.labelstudio.server import free_port  # noqa: E402

CLEARED = ("REDIS_URL", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "SCOPELOOP_BACKEND_URL", "LOCAL_FILES_DOCUMENT_ROOT")


def run_once(home: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(SCOPELOOP_HOME=home, PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "scopeloop.cli", "demo", "--port", str(free_port()),
                          "--backend-port", str(free_port())], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[tuple[float, str]] = []

    def read():
        for line in p.stdout:
            lines.append((round(time.monotonic() - t0, 1), line.rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while not any("is ready" in line for _, line in lines) and p.poll() is None:
        time.sleep(0.2)
    ready = time.monotonic() - t0
    t1 = time.monotonic()
    os.kill(p.pid, signal.SIGINT)
    p.wait(120)
    stop = time.monotonic() - t1
    reader.join(5)
    return {"ready_s": round(ready, 1), "stop_s": round(stop, 1),
            "lines": [f"{t:7.1f}s {line}" for t, line in lines if line.strip()][:30]}


def main() -> int:
    home = sys.argv[1]
    for run in sys.argv[2:] or ["first", "restart"]:
        print(run, json.dumps(run_once(home), indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
