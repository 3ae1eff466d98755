"""Benchmark: push predictions for N tasks to Label Studio and switch the model version.

    .venv/bin/python scripts/benchmark_push_predictions.py --tasks 10000

Starts its own Label Studio (data dir .scopeloop/bench-ls, reused: ~7 s restart) unless
--url/--token point at a running one. Creates a fresh project with N tasks, pushes version
A, then version B (the steady state: B replaces A), and checks that "next task" is B's top
pick. Prints one JSON line with the timings.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from label_config import build_config  # noqa: E402
from ml_backend.labelstudio.client import LabelStudioClient, PredictionRow  # noqa: E402
from ml_backend.labelstudio.server import LabelStudioServer, free_port  # noqa: E402

CLASSES = ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]


def run(client: LabelStudioClient, n: int) -> dict:
    rng = random.Random(0)
    pid = client.create_project(f"bench-push-{int(time.time())}", build_config(CLASSES))
    t = time.perf_counter()
    ids = client.import_tasks(pid, [{"image": f"/data/local-files/?d=bench/{i}.png",
                                     "key": f"bench/{i}.png"} for i in range(n)])
    out = {"tasks": n, "import_tasks_s": round(time.perf_counter() - t, 2)}
    for version in ("A", "B"):
        order = ids[:]
        rng.shuffle(order)
        rows = [PredictionRow(tid, rng.choice(CLASSES), rng.random(), prio)
                for prio, tid in enumerate(order)]
        rep = client.push_predictions(pid, rows, version)
        out[version] = {"import_s": round(rep.import_s, 2), "switch_s": round(rep.switch_s, 3),
                        "push_and_switch_s": round(rep.import_s + rep.switch_s, 2),
                        "prune_s": round(rep.prune_s, 2), "pruned": rep.pruned}
    t = time.perf_counter()
    out["next_is_top_pick"] = client.next_task(pid)["id"] == order[0]
    out["next_task_s"] = round(time.perf_counter() - t, 3)
    out["model_versions"] = client.model_versions(pid)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=10000)
    ap.add_argument("--url")
    ap.add_argument("--token")
    args = ap.parse_args()
    if args.url:
        print(json.dumps(run(LabelStudioClient(args.url, args.token), args.tasks)))
        return
    server = LabelStudioServer(data_dir=ROOT / ".scopeloop" / "bench-ls",
                               document_root=ROOT / ".scopeloop", port=free_port())
    with server:
        print(json.dumps(run(LabelStudioClient(server.url, server.token), args.tasks)))


if __name__ == "__main__":
    main()
