"""How much of the new order each refresh pushes to Label Studio: the head annotators reach before the next push (labels per hour x hours to the next push x a margin, between a floor and a cap)."""
from __future__ import annotations

import json
import os

import numpy as np

# Label Studio's work per refresh is bounded by what annotators reach, not by the pool. It
# deletes predictions one row at a time (~17 ms each on SQLite; 100,000 on PostgreSQL took over
# 25 minutes, docs/benchmarks.md) and imports 100,000 in ~3 minutes, so EVERY refresh (quick,
# deep, nightly) pushes only the head of the new order: labels per hour (measured on the label
# snapshot) x hours until the next push replaces it (measured on refresh_history.jsonl) x a
# margin, between a floor and a cap (`head_size`). Only pushed predictions are ever pruned. The
# full prediction table stays in the work directory (predictions/<version>.npz, the export); a
# task outside the head is pre-annotated when opened: Label Studio asks the backend's /predict,
# which serves it from that table (ml_backend.labelstudio.client.LabelStudioClient.setup_ordering).
PUSH_FLOOR = int(os.environ.get("SCOPELOOP_PUSH_FLOOR", "300"))      # tasks, at least
PUSH_CAP = int(os.environ.get("SCOPELOOP_PUSH_CAP", "3000"))         # tasks, at most
PUSH_MARGIN = float(os.environ.get("SCOPELOOP_PUSH_MARGIN", "2"))    # x (rate x interval)
PUSH_MIN_INTERVAL_S = float(os.environ.get("SCOPELOOP_PUSH_MIN_INTERVAL_S", "600"))
RATE_WINDOW = 200        # most recent annotations the labeling rate is measured on
PAUSE_S = 4 * 3600       # a longer gap between refreshes (or labels) is a pause, not labeling time
MIN_LABEL_GAP_S = 1.0    # annotations closer than this were imported in bulk, not labeled by hand


def _epoch(value) -> float | None:
    """An annotation time as Label Studio writes it (ISO 8601, maybe with Z) -> epoch seconds."""
    from datetime import datetime, timezone

    if not value:
        return None
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def labeling_rate(snapshot: dict, window: int = RATE_WINDOW) -> float:
    """Labels per hour while annotators work, from the label snapshot (ml_backend.sync).

    The `window` most recent annotations (all annotators together) are sorted by creation time;
    the rate is the number of gaps between them over their summed length, counting only gaps
    between MIN_LABEL_GAP_S (closer: imported in bulk) and PAUSE_S (longer: nobody was labeling).
    0.0 with fewer than two such gaps."""
    times = sorted(t for task in (snapshot or {}).get("tasks", {}).values()
                   for a in task.get("annotations") or [] if (t := _epoch(a.get("created_at"))) is not None)
    gaps = [g for g in np.diff(times[-window:]) if MIN_LABEL_GAP_S <= g <= PAUSE_S]
    return 3600.0 * len(gaps) / float(sum(gaps)) if len(gaps) >= 2 else 0.0


def refresh_interval(history_path, entries: int = 50) -> float:
    """Seconds until the next push replaces this one, from the project's refresh_history.jsonl:
    the longest of the last `entries` gaps between refreshes that ended (gaps over PAUSE_S are
    pauses) and of their durations (annotators label the previous head while a deep refresh
    runs), at least PUSH_MIN_INTERVAL_S. A missing or unreadable history gives that minimum."""
    lines: list[str] = []
    try:
        with open(history_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * 1024))  # the tail is enough: the file only grows
            lines = f.read().decode("utf-8", "replace").splitlines()[-entries:]
    except OSError:
        pass
    done, longest = [], 0.0
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("finished"), (int, float)):
            done.append(float(rec["finished"]))
            longest = max(longest, float((rec.get("seconds") or {}).get("total") or 0.0))
    gaps = [g for g in np.diff(sorted(done)) if g <= PAUSE_S]
    return max([PUSH_MIN_INTERVAL_S, longest, *gaps])


def head_size(unlabeled: int, rate_per_hour: float, interval_s: float, *, floor: int | None = None,
              cap: int | None = None, margin: float | None = None) -> dict:
    """How many tasks of the new order a refresh pushes to Label Studio: what annotators reach
    before the next push, ceil(rate x interval x margin), between `floor` and `cap` (defaults:
    SCOPELOOP_PUSH_FLOOR / _CAP / _MARGIN), never more than the `unlabeled` tasks there are.

    Returns {"head": int, "rate_per_hour", "interval_s", "reach", "floor", "cap"} (recorded
    with the refresh outcome)."""
    floor = PUSH_FLOOR if floor is None else floor
    cap = PUSH_CAP if cap is None else cap
    margin = PUSH_MARGIN if margin is None else margin
    reach = int(np.ceil(max(rate_per_hour, 0.0) * max(interval_s, 0.0) / 3600.0 * margin))
    head = max(0, min(unlabeled, max(floor, min(cap, reach))))
    return {"head": head, "rate_per_hour": round(rate_per_hour, 1), "interval_s": round(interval_s, 1),
            "reach": reach, "floor": floor, "cap": cap}


def push_number(ls_version: str) -> int | None:
    """scopeloop-v003-00012 -> 12 (None for a version name that is not one of our pushes)."""
    tail = ls_version.rsplit("-", 1)[-1]
    return int(tail) if ls_version.startswith("scopeloop-v") and tail.isdigit() else None
