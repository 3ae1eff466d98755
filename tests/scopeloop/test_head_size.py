"""How many tasks a refresh pushes to Label Studio: labeling rate x refresh interval (issue 16)."""
import json

from scopeloop.loop.push_sizing import PAUSE_S, PUSH_MIN_INTERVAL_S, head_size, labeling_rate, refresh_interval


def _snapshot(times):
    return {"tasks": {str(i): {"annotations": [{"created_at": t}]} for i, t in enumerate(times)}}


def test_labeling_rate_counts_working_time_only():
    # one label every 12 s (300 an hour), a night off, then a bulk import (same second)
    day1 = [f"2026-11-30T10:{m:02d}:{s:02d}Z" for m in range(0, 5) for s in range(0, 60, 12)]
    night = ["2026-12-01T09:00:00Z"] * 50
    assert labeling_rate(_snapshot(day1 + night)) == 300.0
    assert labeling_rate(_snapshot(day1[:2])) == 0.0          # too few labels to tell
    assert labeling_rate({}) == 0.0


def test_refresh_interval_from_history(tmp_path):
    h = tmp_path / "refresh_history.jsonl"
    assert refresh_interval(h) == PUSH_MIN_INTERVAL_S            # no history yet
    rows = [{"finished": 1000.0 + 60 * i, "seconds": {"total": 5.0}} for i in range(10)]
    rows.append({"finished": rows[-1]["finished"] + 1800, "seconds": {"total": 1500.0}})  # a deep refresh
    rows.append({"finished": rows[-1]["finished"] + PAUSE_S + 1, "seconds": {"total": 4.0}})  # after a night
    h.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    assert refresh_interval(h) == max(PUSH_MIN_INTERVAL_S, 1800.0)


def test_head_size_floor_cap_and_pool():
    assert head_size(100_000, 0.0, 600, floor=300, cap=3000, margin=2)["head"] == 300
    assert head_size(100_000, 600.0, 3600, floor=300, cap=3000, margin=2)["head"] == 1200
    assert head_size(100_000, 5000.0, 3600, floor=300, cap=3000, margin=2)["head"] == 3000
    assert head_size(120, 600.0, 3600, floor=300, cap=3000, margin=2)["head"] == 120
    out = head_size(100_000, 600.0, 3600, floor=300, cap=3000, margin=2)
    assert out["reach"] == 1200 and out["rate_per_hour"] == 600.0
