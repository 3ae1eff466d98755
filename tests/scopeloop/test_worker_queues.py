"""Queue routing with real RQ workers on the tests' embedded Redis.

Deep refreshes go to the GPU queue: a CPU-only worker never takes one (unless told to with
--queues), a GPU-queue worker does; quick refreshes go to any worker; two projects refresh at
the same time on two workers, one project never twice at once; `scopeloop status` lists what
waits and runs per queue. The refresh itself is replaced by a stub that records when it ran
(the real `refresh_job` around it takes the lock and marks the work done); workers are forked
processes running `rq.Worker` on the queues `scopeloop.worker.worker_queues` chooses.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time

import numpy as np
import pytest
from redis import Redis
from rq import Queue
from rq.job import Job

from ml_backend.queue import GPU_QUEUE_NAME, LOW_QUEUE_NAME, QUEUE_NAME, RefreshQueue
from scopeloop.worker import worker_queues

EVENTS = "test:refresh-events"


class StubRefresher:
    """Stands in for scopeloop.refresh.Refresher inside the real refresh_job: sleeps, records."""

    sleep_s = 1.5

    def __init__(self, ws, client, device=None, log=print):
        self.ws = ws

    def run(self, kind="quick"):
        from rq import get_current_job

        job = get_current_job()
        start = time.time()
        time.sleep(self.sleep_s)
        job.connection.rpush(EVENTS, json.dumps({"root": str(self.ws.root), "kind": kind, "start": start,
                                                 "end": time.time(), "job": job.id, "worker": job.worker_name}))
        return {"kind": kind, "labels": 0, "images": 0}

    def prune(self):
        return {"pruned": 0, "prune_seconds": 0.0}


def _work(url: str, queues: list[str], name: str, burst: bool) -> None:
    from rq import Worker

    Worker(queues, connection=Redis.from_url(url), name=name).work(burst=burst, logging_level="WARNING")


def _start(url, queues, name, burst=True) -> multiprocessing.Process:
    p = multiprocessing.get_context("fork").Process(target=_work, args=(url, queues, name, burst), daemon=True)
    p.start()
    return p


def _events(redis) -> list[dict]:
    return [json.loads(e) for e in redis.lrange(EVENTS, 0, -1)]


@pytest.fixture
def setup(redis_db_url, monkeypatch, tmp_path):
    import torch  # noqa: F401  (refresh_job imports these: loaded once here, not in every forked job)

    import ml_backend.labelstudio.client  # noqa: F401
    import scopeloop.refresh

    monkeypatch.setattr(scopeloop.refresh, "Refresher", StubRefresher)
    monkeypatch.setenv("SCOPELOOP_DEEP_MIN_NEW", "0")
    url = redis_db_url(12)
    redis = Redis.from_url(url)
    return url, redis, RefreshQueue(redis), tmp_path


def test_queue_choice_per_worker():
    assert worker_queues("auto", gpu=False) == [QUEUE_NAME, LOW_QUEUE_NAME]
    assert worker_queues(None, device="cpu") == [QUEUE_NAME, LOW_QUEUE_NAME]  # SCOPELOOP_DEVICE=cpu: no probe
    assert worker_queues("auto", gpu=True) == [QUEUE_NAME, GPU_QUEUE_NAME, LOW_QUEUE_NAME]
    assert worker_queues(None, device="cuda:0") == [QUEUE_NAME, GPU_QUEUE_NAME, LOW_QUEUE_NAME]
    assert worker_queues("all", gpu=False) == [QUEUE_NAME, GPU_QUEUE_NAME, LOW_QUEUE_NAME]  # told to
    assert worker_queues("gpu, quick", gpu=False) == [QUEUE_NAME, GPU_QUEUE_NAME]  # priority order kept
    with pytest.raises(ValueError, match="unknown queue deep.*quick, gpu, low"):
        worker_queues("quick,deep")


def test_deep_refresh_waits_for_a_gpu_queue_worker(setup):
    url, redis, q, tmp = setup
    a, b = str(tmp / "a"), str(tmp / "b")
    deep = q.request(a, "deep", "test")
    quick = q.request(b, "quick", "test")
    assert Queue(GPU_QUEUE_NAME, connection=redis).get_job_ids() == [deep]
    assert Queue(QUEUE_NAME, connection=redis).get_job_ids() == [quick]

    cpu = _start(url, worker_queues("auto", gpu=False), "cpu-only")
    cpu.join(60)
    assert cpu.exitcode == 0
    # the CPU worker emptied its queues: the quick refresh ran there, the deep one still waits
    assert Job.fetch(quick, connection=redis).get_status() == "finished"
    assert Job.fetch(deep, connection=redis).get_status() == "queued"
    assert [(e["kind"], e["worker"]) for e in _events(redis)] == [("quick", "cpu-only")]
    gpu_q = {o["role"]: o for o in q.overview()}["gpu"]
    assert gpu_q["waiting"] == [deep] and gpu_q["workers"] == 0

    cpu2 = _start(url, worker_queues("quick,low"), "cpu-again")  # still not taken by a CPU-only worker
    cpu2.join(60)
    assert Job.fetch(deep, connection=redis).get_status() == "queued"

    gpu = _start(url, worker_queues("auto", gpu=True), "gpu-node")
    gpu.join(60)
    assert gpu.exitcode == 0
    assert Job.fetch(deep, connection=redis).get_status() == "finished"
    ev = _events(redis)
    assert [(e["kind"], e["worker"]) for e in ev] == [("quick", "cpu-only"), ("deep", "gpu-node")]
    assert q.generation(a) == int(redis.get(q.key(a, "done", "deep")) or 0)  # refresh_job marked it done


def test_two_projects_refresh_at_once_on_two_workers_one_project_never_twice(setup):
    url, redis, q, tmp = setup
    a, b = str(tmp / "a"), str(tmp / "b")
    q.request(a, "quick", "test")
    q.request(b, "quick", "test")
    q.request(a, "deep", "test")  # same project as the first: must wait for its lock
    queues = worker_queues("all")
    workers = [_start(url, queues, f"w{i}") for i in range(2)]
    for w in workers:
        w.join(90)
    ev = {(e["root"], e["kind"]): e for e in _events(redis)}
    assert set(ev) == {(a, "quick"), (b, "quick"), (a, "deep")}
    qa, qb, da = ev[(a, "quick")], ev[(b, "quick")], ev[(a, "deep")]
    assert qa["worker"] != qb["worker"]
    assert qa["start"] < qb["end"] and qb["start"] < qa["end"]  # two projects overlapped in time
    assert da["start"] >= qa["end"] - 0.05 or qa["start"] >= da["end"] - 0.05  # one project: one at a time


def test_status_shows_waiting_and_running_per_queue(setup, monkeypatch, capsys):
    url, redis, q, tmp = setup
    from scopeloop.cli import main

    home = tmp / "home"
    root = home / "projects" / "p"
    root.mkdir(parents=True)
    (root / "project.json").write_text(json.dumps({"classes": ["A", "B"], "ls_project_id": 1, "n_tasks": 10}))
    (root / "labels.json").write_text(json.dumps({"cursor": None, "tasks": {  # 2 labels, 1 "unusable image" answer
        "1": {"key": "a.png", "label": "A"}, "2": {"key": "b.png", "label": "B"},
        "3": {"key": "c.png", "label": "Unusable image"}, "4": {"key": "d.png", "label": None}}}))
    monkeypatch.setenv("SCOPELOOP_HOME", str(home))
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setattr(StubRefresher, "sleep_s", 8.0)
    from trainer.models.embedding_jobs import ChunkedEmbedder, InferenceResult, SkipReport

    def dies_after_one(paths, n=[0]):
        n[0] += 1
        if n[0] > 1:
            raise RuntimeError("killed")
        return InferenceResult(np.zeros((len(paths), 2), np.float32), None, np.arange(len(paths)), SkipReport())

    with pytest.raises(RuntimeError):  # a pass cut short: 2 of 5 images in one finished chunk
        ChunkedEmbedder(root / "embeddings" / "space-x" / "chunks", dies_after_one, chunk_size=2,
                        log=lambda *_: None)([f"/i/{i}.png" for i in range(5)])
    quick = q.request(str(root), "quick", "test")
    deep = q.request(str(tmp / "other"), "deep", "test")
    w = _start(url, worker_queues("auto", gpu=False), "cpu-status", burst=False)
    try:
        deadline = time.time() + 60
        while True:  # until the worker has taken the quick refresh and says it is busy
            over = {o["role"]: o for o in q.overview()}
            if (over["quick"]["running"] and over["quick"]["busy"]) or time.time() > deadline:
                break
            time.sleep(0.2)
        assert over["quick"]["running"] == [quick] and over["quick"]["waiting"] == []
        assert over["quick"]["workers"] == 1 and over["quick"]["busy"] == 1
        assert over["gpu"]["waiting"] == [deep] and over["gpu"]["running"] == [] and over["gpu"]["workers"] == 0
        assert main(["status"]) == 0
        out = capsys.readouterr().out
        assert "images: 10   labeled: 2   answered unusable: 1   unlabeled: 7" in out  # "unusable" is no label
        assert f"job running: {quick} ({QUEUE_NAME})" in out
        assert f"{QUEUE_NAME} (quick refreshes, any worker): 0 waiting, 1 running; 1 worker(s) listening, 1 busy" in out
        assert f"{GPU_QUEUE_NAME} (deep refreshes and embedding chunks, GPU workers): 1 waiting, 0 running" in out
        assert f"waiting: {deep}" in out and "no worker takes this queue" in out
        assert "embedding under way (space-x): 2 of 5 images in 1 finished chunk(s)" in out
    finally:
        os.kill(w.pid, signal.SIGTERM)  # warm shutdown: the running stub finishes, then the worker exits
        w.join(30)
        if w.is_alive():
            w.kill()


def test_worker_with_an_unknown_queue_says_which_names_exist(capsys):
    from scopeloop.cli import main

    assert main(["worker", "--queues", "quick,deep"]) == 2
    err = capsys.readouterr().err
    assert "unknown queue deep" in err and "quick, gpu, low" in err and "Traceback" not in err


def test_refresh_deep_says_when_no_worker_takes_it(setup, monkeypatch, capsys):
    url, redis, q, tmp = setup
    from scopeloop.cli import main

    home = tmp / "home"
    (home / "projects" / "p").mkdir(parents=True)
    (home / "projects" / "p" / "project.json").write_text(json.dumps({"classes": ["A", "B"], "ls_project_id": 1}))
    monkeypatch.setenv("SCOPELOOP_HOME", str(home))
    monkeypatch.setenv("REDIS_URL", url)
    assert main(["refresh", "--deep"]) == 0
    out = capsys.readouterr().out
    assert "deep refresh queued" in out and "no worker takes deep refreshes now" in out
    assert Queue(GPU_QUEUE_NAME, connection=redis).count == 1


def test_worker_parent_preloads_the_refresh_code_without_starting_threads():
    # each refresh job is a fork of the worker: what the parent imported, no job imports again
    # (torch._dynamo alone is ~1.6 s of a job's first fit); no thread may exist at fork time
    import subprocess
    import sys

    code = ("import sys, threading; from scopeloop.worker import preload_refresh_code; preload_refresh_code(); "
            "mods = ('torch._dynamo', 'matplotlib.pyplot', 'scopeloop.refresh', 'sampler', 'trainer.models.head'); "
            "print(all(m in sys.modules for m in mods), threading.active_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "1"]
