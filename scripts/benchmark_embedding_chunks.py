"""Chunked embedding throughput: the refresh alone vs the refresh plus RQ workers taking chunks.

    nice -n 10 flock /tmp/scopeloop-heavy.lock .venv/bin/python scripts/benchmark_embedding_chunks.py \
        --images 2048 --image-size 128 --chunk 256 --configs 1x2,2x1,2x2 --resume

Images: the dev set (tests/data/bccd_wbc, 351 crops) linked `--images` times under distinct names
(real JPEG decoding, no generated data). A private embedded Redis; helper workers are `rq`
workers in their own processes (as `scopeloop worker` runs them: one forked job per chunk, which
builds its network from `trainer.models.embedding_jobs.backbone_embedder`). Each configuration starts
from an empty chunk folder. `threads` is torch's per process: on a 2-core machine one process
with 2 threads and two processes with 1 thread each use the same cores. Prints a markdown table
and JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORKER = """
import sys, torch
torch.set_num_threads(int(sys.argv[3]))
import trainer.models.embedding_jobs, trainer.models.backbone, trainer.models.inference  # loaded once, shared by forked jobs
from redis import Redis
from rq import Worker
Worker([sys.argv[2]], connection=Redis.from_url(sys.argv[1]), name=sys.argv[4]).work(logging_level="WARNING")
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--features", default="multiscale")
    ap.add_argument("--configs", default="1x2,2x1",
                    help="processes x torch threads each, comma-separated (the first process is the refresh itself)")
    ap.add_argument("--resume", action="store_true", help="also: crash after half the chunks, time the rerun")
    args = ap.parse_args()

    import torch
    from rq import Queue, Worker

    from scopeloop.services import EmbeddedRedis
    from trainer.io.folders import list_images
    from trainer.models.embedding_jobs import ChunkedEmbedder, backbone_embedder

    src = list_images(Path(__file__).resolve().parents[1] / "tests" / "data" / "bccd_wbc")  # the dev crops in the clone
    tmp = Path(tempfile.mkdtemp(prefix="bench-chunks-"))
    imgs = tmp / "images"
    imgs.mkdir()
    paths = []
    for i in range(args.images):
        p = imgs / f"{i:07d}{src[i % len(src)].suffix}"
        p.symlink_to(src[i % len(src)])
        paths.append(p)
    redis = EmbeddedRedis(tmp / "redis")
    kw = {"backbone": "tf_efficientnet_lite0", "weights": "imagenet", "features": args.features,
          "image_size": args.image_size, "device": "cpu"}
    rows = []
    try:
        for n, cfg in enumerate(args.configs.split(",")):
            procs, threads = (int(x) for x in cfg.split("x"))
            qname = f"bench-{n}"
            q = Queue(qname, connection=redis._conn)
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            helpers = [subprocess.Popen([sys.executable, "-c", WORKER, redis.url, qname, str(threads), f"h{n}-{i}"],
                                        env=env, cwd=ROOT) for i in range(procs - 1)]
            try:
                deadline = time.time() + 120
                while len(Worker.all(queue=q)) < procs - 1 and time.time() < deadline:
                    time.sleep(0.2)
                torch.set_num_threads(threads)
                embed = backbone_embedder(**kw)
                embed(paths[:8])  # warm-up (network built, first batch) outside the timing
                ce = ChunkedEmbedder(tmp / f"chunks-{n}", embed, queue=q if procs > 1 else None, factory_kwargs=kw,
                                     chunk_size=args.chunk, poll_s=0.1, log=lambda *_: None)
                t = time.perf_counter()
                res = ce(paths)
                dt = time.perf_counter() - t
            finally:
                for h in helpers:
                    h.terminate()
                for h in helpers:
                    h.wait(30)
            assert len(res.rows) == len(paths), (len(res.rows), len(paths))
            rows.append({"config": f"{procs} process(es) x {threads} thread(s)", "images": len(paths),
                         "seconds": round(dt, 1), "images_per_s": round(len(paths) / dt, 1),
                         "chunks_here": ce.stats["computed_here"], "chunks_by_workers": ce.stats["by_others"]})
            print(json.dumps(rows[-1]), flush=True)
        if args.resume:  # a crash after half the chunks, then the rerun (1 process, all threads)
            torch.set_num_threads(int(args.configs.split(",")[0].split("x")[1]))
            embed = backbone_embedder(**kw)
            done = {"n": 0}

            def crashing(p):
                if done["n"] == args.images // args.chunk // 2:
                    raise RuntimeError("killed")
                done["n"] += 1
                return embed(p)

            folder = tmp / "chunks-resume"
            t = time.perf_counter()
            try:
                ChunkedEmbedder(folder, crashing, chunk_size=args.chunk, log=lambda *_: None)(paths)
            except RuntimeError:
                pass
            t_crash = time.perf_counter() - t
            ce = ChunkedEmbedder(folder, embed, chunk_size=args.chunk, log=lambda *_: None)
            t = time.perf_counter()
            res = ce(paths)
            dt = time.perf_counter() - t
            assert len(res.rows) == len(paths)
            rows.append({"config": f"rerun after a crash at chunk {done['n'] + 1} ({t_crash:.1f} s of work before it)",
                         "images": len(paths), "seconds": round(dt, 1), "images_per_s": round(len(paths) / dt, 1),
                         "chunks_here": ce.stats["computed_here"], "chunks_by_workers": 0,
                         "chunks_found": ce.stats["found"]})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        redis.stop()
    print(f"\n{args.images} images, {args.image_size} px, {args.features} embedding (tf_efficientnet_lite0), "
          f"chunks of {args.chunk}, {os.cpu_count()} CPU(s)\n")
    print("| configuration | seconds | images/s | chunks by the refresh | chunks by workers |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['seconds']} | {r['images_per_s']} | {r['chunks_here']} | {r['chunks_by_workers']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
