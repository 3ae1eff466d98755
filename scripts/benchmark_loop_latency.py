"""Annotation -> next task latency of the whole loop, on real services.

Starts Label Studio, Redis (REDIS_URL or an embedded one), the ML backend and one worker; builds
a project of N images (links to the dev set's crops, so N can be 10,000); waits for the first
refresh (embedding every image once); then plays an annotator: open the next task, label it,
and time how long until Label Studio serves an order computed with that label (the project's
live model version comes from a refresh that covered it). Reports p50/p95/max and where the
time goes (sync / embed / train / rank+push, from the worker's refresh history).

    .venv/bin/python scripts/benchmark_loop_latency.py --images 10000 --labels 30
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_pool(src: Path, dst: Path, n: int) -> None:
    """n images as hard links (else copies) of the dev set's crops, class folders kept (labels = folder)."""
    from trainer.io.folders import scan_imagefolder

    items, _ = scan_imagefolder(src)
    if dst.is_dir() and sum(1 for _ in dst.rglob("*.jpg")) == n:
        return
    for i in range(n):
        p, c = items[i % len(items)]
        (dst / c).mkdir(parents=True, exist_ok=True)
        link = dst / c / f"{i:06d}_{p.name}"
        if not link.exists():  # a hard link (init refuses symlinks that leave the image folder), else a copy
            try:
                os.link(p, link)
            except OSError:
                shutil.copy2(p, link)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--labels", type=int, default=30, help="annotations to time")
    ap.add_argument("--pace", type=float, default=3.0, help="seconds an annotator spends per image, at least")
    ap.add_argument("--image-size", type=int, default=64, help="embedding size (the loop itself does not depend on it)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "bccd_wbc"))
    ap.add_argument("--work", default=str(ROOT / ".scopeloop" / "bench-loop"))
    ap.add_argument("--out", default=str(ROOT / "test-artifacts" / "loop_latency.json"))
    args = ap.parse_args()

    from ml_backend.labelstudio.client import LabelStudioClient
    from ml_backend.labelstudio.server import LabelStudioServer, free_port
    from ml_backend.queue import RefreshQueue, connect_redis
    from scopeloop import projects
    from scopeloop.services import EmbeddedRedis, start_backend, start_worker
    from scopeloop.settings import Settings

    work = Path(args.work)
    pool = work / f"pool-{args.images}"
    build_pool(Path(args.data), pool, args.images)
    os.environ["LOCAL_FILES_DOCUMENT_ROOT"] = "/"
    redis_srv = None if os.environ.get("REDIS_URL") else EmbeddedRedis(work / "redis")
    # the backend runs on 127.0.0.1: the one address let through Label Studio's SSRF protection
    ls = LabelStudioServer(data_dir=work / "ls", document_root=Path("/"), port=free_port(), allow_hosts=("127.0.0.1",)).start()
    settings = Settings(home=work / "home", redis_url=os.environ.get("REDIS_URL") or redis_srv.url,
                        label_studio_url=ls.url, label_studio_api_key=ls.token)
    backend_port = free_port()
    settings.backend_url = f"http://127.0.0.1:{backend_port}"
    children = [start_backend(settings, backend_port, work / "logs"),
                start_worker(settings, work / "logs", SCOPELOOP_DEEP_MIN_NEW="0")]
    try:
        t0 = time.time()
        classes = sorted(d.name for d in pool.iterdir() if d.is_dir())
        ws, report = projects.init(settings, f"latency-{uuid.uuid4().hex[:6]}", pool, classes,
                                   backend_url=settings.backend_url, model={"image_size": args.image_size})
        print(f"project: {report.created} tasks in {time.time() - t0:.1f} s")
        client = LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key)
        pid = ws.project["ls_project_id"]
        q = RefreshQueue(connect_redis(settings.redis_url))
        t0 = time.time()
        q.request(str(ws.root), "quick", "benchmark warm-up")
        while ws.status.get("pushes", 0) < 1:
            time.sleep(0.5)
        print(f"warm-up (embed {args.images} images once, cold-start order): {time.time() - t0:.1f} s")
        latencies = []
        for i in range(args.labels):
            start = time.time()
            task = client.next_task(pid)
            key = task["data"]["key"]
            client.create_annotation(task["id"], key.split("/")[0])
            saved = time.time()
            while True:
                last = ws.status.get("last_quick", {})
                live = client.get_project(pid).get("model_version")
                if last.get("labels", 0) >= i + 1 and live == ws.status.get("ls_model_version"):
                    break
                time.sleep(0.1)
            latencies.append(time.time() - saved)
            print(f"label {i + 1:3d}: next task reflects it after {latencies[-1]:.2f} s")
            time.sleep(max(0.0, args.pace - (time.time() - start)))
        hist = [json.loads(line) for line in (ws.root / "refresh_history.jsonl").read_text().splitlines()]
        parts = {k: float(np.median([h["seconds"][k] for h in hist[1:]])) for k in hist[-1]["seconds"]}
        lat = np.asarray(latencies)
        result = {"images": args.images, "labels": args.labels, "pace_s": args.pace,
                  "p50_s": round(float(np.percentile(lat, 50)), 2), "p95_s": round(float(np.percentile(lat, 95)), 2),
                  "max_s": round(float(lat.max()), 2), "refresh_median_seconds": parts,
                  "latencies": [round(x, 2) for x in latencies]}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(json.dumps({k: v for k, v in result.items() if k != "latencies"}, indent=1))
    finally:
        for c in children:
            c.stop()
        ls.stop()
        if redis_srv:
            redis_srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
