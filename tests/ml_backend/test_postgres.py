"""The lab-server path: Label Studio on PostgreSQL, init, refreshes and the loop on it (issue 16).

Opt-in: it needs a PostgreSQL server it did not start, so it runs only with
SCOPELOOP_TEST_POSTGRES=1 (PostgreSQL at 127.0.0.1:5432, user postgres, trust auth; the test
creates its own database and drops it). Without the variable, or with no PostgreSQL answering,
it is skipped with the reason; the default test command never needs PostgreSQL.

It runs scripts/benchmark_scale.py small: 600 generated images, a Label Studio started against a
fresh database (migrations ~1 min), `scopeloop init`, the first order, quick and deep refreshes
with labels in between, the prune, /next after each refresh, and tasks outside the pushed head
opened directly (pre-annotated by the backend's /predict).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.labelstudio]
OPT_IN = "SCOPELOOP_TEST_POSTGRES"


def _bench():
    path = Path(__file__).resolve().parents[2] / "scripts" / "benchmark_scale.py"
    spec = importlib.util.spec_from_file_location("benchmark_scale", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_loop_on_postgresql(tmp_path):
    if os.environ.get(OPT_IN, "").strip().lower() not in ("1", "true", "yes", "on"):
        pytest.skip(f"opt-in: set {OPT_IN}=1 to run Label Studio on the PostgreSQL at 127.0.0.1:5432 "
                    "(trust auth; the test creates and drops its own database)")
    bench = _bench()
    why = bench.postgres_reachable()
    if why:
        pytest.skip(f"{OPT_IN} is set but PostgreSQL is not reachable: {why}")
    head = 200
    from scopeloop.loop import push_sizing

    saved = push_sizing.PUSH_FLOOR
    push_sizing.PUSH_FLOOR = head
    try:
        out = bench.run(bench.parse_args(["--images", "600", "--postgres", "--refreshes", "4", "--deep-every", "2",
                                          "--dim", "32", "--open-outside", "3", "--workdir", str(tmp_path)]))
    finally:
        push_sizing.PUSH_FLOOR = saved
    assert out["database"] == "postgresql" and out["tasks_created"] == 600
    assert all(r["pushed"] == head for r in out["refreshes"]), out["refreshes"]
    # the new head and the previous one at most, until the prune: never the pool
    assert out["predictions_in_ls_max"] <= head + 3
    assert out["next_is_top_pick"] == "4/4"
    assert out["open_outside_head"] == dict(out["open_outside_head"], opened=3, with_prediction=3)
