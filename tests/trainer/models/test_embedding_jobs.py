"""Chunked, resumable embedding (trainer.models.embedding_jobs): a crash loses only the chunks in
progress, chunks are shared with real RQ workers, results equal one plain pass."""
from __future__ import annotations

import hashlib
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest
from redis import Redis
from rq import Queue

from trainer.io.errors import SkipReport
from trainer.models.embedding_jobs import ChunkedEmbedder, backbone_embedder, compute_chunk, read_chunk
from trainer.models.inference import InferenceResult
from trainer.store.embeddings import EmbeddingCache

SAMPLE = Path(__file__).resolve().parents[3] / "scopeloop" / "sample_data" / "wbc"
D = 8


def fake_embed(paths) -> InferenceResult:
    """Deterministic stand-in for a network: a vector from the path's hash; "bad" paths unreadable."""
    rows = [i for i, p in enumerate(paths) if "bad" not in str(p)]
    rep = SkipReport()
    for i, p in enumerate(paths):
        if "bad" in str(p):
            rep.add(p, "cannot decode")
    emb = np.stack([np.frombuffer(hashlib.sha256(str(paths[i]).encode()).digest()[:D * 4], np.uint32)
                    .astype(np.float32) / 2 ** 32 for i in rows]) if rows else np.zeros((0, D), np.float32)
    return InferenceResult(emb, None, np.asarray(rows, np.int64), rep)


class Counting:
    def __init__(self, fail_on_call: int | None = None):
        self.calls, self.images, self.fail_on_call = 0, 0, fail_on_call

    def __call__(self, paths):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise RuntimeError("worker killed")
        self.images += len(paths)
        return fake_embed(paths)


def slow_fake_factory(delay: float = 0.4):
    """A chunk job's embedder factory (importable by RQ workers): fake_embed after a pause."""
    def embed(paths):
        time.sleep(delay)
        return fake_embed(paths)
    return embed


PATHS = [f"/img/{i:03d}.png" for i in range(20)] + ["/img/bad_1.png"] + [f"/img/{i:03d}.png" for i in range(20, 25)]


def _same(a: InferenceResult, b: InferenceResult):
    assert np.array_equal(a.rows, b.rows)
    assert np.array_equal(a.embeddings, b.embeddings)
    assert [s["path"] for s in a.skipped.skipped] == [s["path"] for s in b.skipped.skipped]


def test_crash_after_some_chunks_rerun_computes_only_the_missing_ones(tmp_path):
    one_pass = fake_embed(PATHS)
    crashing = Counting(fail_on_call=3)  # the third chunk dies mid-way
    with pytest.raises(RuntimeError, match="worker killed"):
        ChunkedEmbedder(tmp_path / "chunks", crashing, chunk_size=4, log=lambda *_: None)(PATHS)
    assert len(list((tmp_path / "chunks").glob("*.npz"))) == 2  # two finished chunks survive
    from trainer.models.embedding_jobs import embedding_progress

    prog = embedding_progress(tmp_path / "chunks")  # what `scopeloop status` shows
    assert prog["images"] == len(PATHS) and prog["done"] == 8 and prog["chunks"] == 2

    again = Counting()
    ce = ChunkedEmbedder(tmp_path / "chunks", again, chunk_size=4, log=lambda *_: None)
    out = ce(PATHS)
    assert again.images == len(PATHS) - 8  # only the 18 images not in the 2 finished chunks
    assert again.calls == 5 and ce.stats["found"] == 2 and ce.stats["computed_here"] == 5
    _same(out, one_pass)

    third = Counting()  # everything done: nothing computed
    _same(ChunkedEmbedder(tmp_path / "chunks", third, chunk_size=4, log=lambda *_: None)(PATHS), one_pass)
    assert third.calls == 0


def test_cache_update_through_chunks_equals_one_pass(tmp_path):
    keys = [p.rsplit("/", 1)[1] for p in PATHS]
    ref_keys, ref, _ = EmbeddingCache(tmp_path / "plain").update(keys, PATHS, fake_embed)
    ce = ChunkedEmbedder(tmp_path / "chunked" / "chunks", Counting(), chunk_size=5, log=lambda *_: None)
    got_keys, got, skipped = EmbeddingCache(tmp_path / "chunked").update(keys, PATHS, ce)
    ce.cleanup()
    assert got_keys == ref_keys and np.array_equal(got, ref) and len(skipped) == 1
    assert not (tmp_path / "chunked" / "chunks").exists()


def _work(url, queue, name):
    from rq import Worker

    Worker([queue], connection=Redis.from_url(url), name=name).work(burst=False, logging_level="WARNING")


def test_chunks_are_shared_with_rq_workers(tmp_path, redis_db_url):
    url = redis_db_url(11)
    redis = Redis.from_url(url)
    q = Queue("test-embed-gpu", connection=redis)
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_work, args=(url, q.name, f"gpu{i}"), daemon=True) for i in range(2)]
    for w in workers:
        w.start()
    try:
        here = Counting()
        slow_here = lambda paths: (time.sleep(0.4), here(paths))[1]  # noqa: E731  same pace as the workers
        ce = ChunkedEmbedder(tmp_path / "chunks", slow_here, queue=q, chunk_size=3, log=lambda *_: None,
                             factory="tests.trainer.models.test_embedding_jobs:slow_fake_factory", factory_kwargs={"delay": 0.4},
                             poll_s=0.05)
        deadline = time.time() + 30  # let both workers register before offering chunks
        from rq import Worker

        while time.time() < deadline and len(Worker.all(queue=q)) < 2:
            time.sleep(0.1)
        out = ce(PATHS)
        _same(out, fake_embed(PATHS))
        n_chunks = -(-len(PATHS) // 3)
        assert ce.stats["computed_here"] + ce.stats["by_others"] == n_chunks
        assert ce.stats["by_others"] >= 1, ce.stats  # the workers took chunks
        assert here.images < len(PATHS)
        assert q.count == 0  # nothing left queued for workers to wake up for
    finally:
        for w in workers:
            w.kill()
            w.join(10)


def test_claimed_chunk_is_left_to_its_holder(tmp_path, redis_conn):
    from trainer.models.embedding_jobs import _claim_key, chunk_id, claim

    (tmp_path / "c").mkdir()
    chunk = ["/img/a.png", "/img/b.png"]
    with claim(redis_conn, _claim_key(tmp_path / "c", chunk_id(chunk)), ttl=5) as mine:
        assert mine
        assert compute_chunk(tmp_path / "c", chunk, fake_embed, redis_conn) == "claimed"
    assert compute_chunk(tmp_path / "c", chunk, fake_embed, redis_conn) == "computed"
    assert compute_chunk(tmp_path / "c", chunk, fake_embed, redis_conn) == "done"


def test_real_backbone_chunks_equal_one_pass(tmp_path):
    """The job-side embedder (`backbone_embedder`) in chunks of one batch gives the same
    embeddings as one run over all images."""
    paths = sorted(SAMPLE.rglob("*.jpg"))[:12]
    embed = backbone_embedder("tf_efficientnet_lite0", "imagenet", "multiscale", 64, {}, device="cpu", batch_size=4)
    one = embed(paths)
    ce = ChunkedEmbedder(tmp_path / "chunks", embed, chunk_size=4, log=lambda *_: None)
    out = ce(paths)
    assert ce.stats["computed_here"] == 3
    assert np.array_equal(out.rows, one.rows)
    np.testing.assert_array_equal(out.embeddings, one.embeddings)
    names, res = read_chunk(sorted((tmp_path / "chunks").glob("*.npz"))[0])
    assert len(names) == 4 and res.embeddings.shape == (4, one.embeddings.shape[1])


def test_refresher_embed_all_resumes_after_a_crash(tmp_path, monkeypatch):
    """Refresher.embed_all (the refresh's embedding step) in chunks: a crash after 2 of 6 chunks,
    then a rerun embeds only the 4 missing chunks, and the cache equals a one-pass embedding."""
    import trainer.models.embedding_jobs as ej
    import trainer.models.inference as inf
    from scopeloop.refresh import Refresher
    from tests.dev_data import BCCD
    from trainer.io.folders import image_key, scan_imagefolder
    from trainer.store.workspace import Workspace

    items, classes = scan_imagefolder(BCCD)
    keys = sorted(image_key(p, BCCD) for p, _ in items)
    model = {"backbone": "tf_efficientnet_lite0", "weights": "imagenet", "image_size": 64, "channels": None}

    def refresher(name):
        ws = Workspace(tmp_path / name)
        ws.update_project(images_root=str(BCCD), classes=classes, ls_project_id=1, model=model)
        return Refresher(ws, client=None, log=lambda *_: None), ws

    real = inf.run_model
    calls = []

    def counted(net, paths, *a, **kw):
        calls.append(len(paths))
        if fail_at and len(calls) == fail_at:
            raise RuntimeError("worker killed")
        return real(net, paths, *a, **kw)

    monkeypatch.setattr(inf, "run_model", counted)
    fail_at = None
    monkeypatch.setattr(ej, "CHUNK_SIZE", 100_000)
    ref_keys, ref = refresher("one-pass")[0].embed_all(keys)
    assert calls == [len(keys)]

    monkeypatch.setattr(ej, "CHUNK_SIZE", 64)  # = the batch size: same batches as one pass
    r, ws = refresher("chunked")
    calls.clear()
    fail_at = 3
    with pytest.raises(RuntimeError, match="worker killed"):
        r.embed_all(keys)
    space = r.space()[0]
    assert len(list((ws.root / "embeddings" / space / "chunks").glob("*.npz"))) == 2
    calls.clear()
    fail_at = None
    got_keys, got = refresher("chunked")[0].embed_all(keys)
    assert sum(calls) == len(keys) - 128 and len(calls) == 4  # only the missing chunks
    assert got_keys == ref_keys
    np.testing.assert_array_equal(got, ref)
    assert not (ws.root / "embeddings" / space / "chunks").exists()  # cleaned once cached


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def test_worker_killed_mid_chunk_its_claim_expires_and_the_chunk_is_done_here(tmp_path, redis_db_url):
    import os
    import signal

    from trainer.models.embedding_jobs import JOB_FUNC, _claim_key, chunk_id

    url = redis_db_url(10)
    redis = Redis.from_url(url)
    q = Queue("test-embed-kill", connection=redis)
    chunk_dir = tmp_path / "chunks"
    chunk_dir.mkdir()
    first = PATHS[:4]
    q.enqueue(JOB_FUNC, "tests.trainer.models.test_embedding_jobs:slow_fake_factory", {"delay": 60}, str(chunk_dir), first, 2)
    w = multiprocessing.get_context("fork").Process(target=_work, args=(url, q.name, "doomed"), daemon=True)
    w.start()
    key = _claim_key(chunk_dir, chunk_id(first))
    deadline = time.time() + 60
    while not redis.exists(key) and time.time() < deadline:
        time.sleep(0.05)
    assert redis.exists(key), "the worker never claimed its chunk"
    for pid in [w.pid, *_children(w.pid)]:  # worker and work horse (RQ puts it in its own group) die
        os.kill(pid, signal.SIGKILL)
    w.join(10)
    here = Counting()
    t = time.time()
    out = ChunkedEmbedder(chunk_dir, here, queue=q, chunk_size=4, ttl=2, poll_s=0.1, log=lambda *_: None)(PATHS)
    _same(out, fake_embed(PATHS))
    assert here.images == len(PATHS)  # every chunk, the dead worker's included, computed here
    assert time.time() - t < 30


def test_chunk_jobs_embed_like_the_refresh(tmp_path):
    """What a worker's chunk job builds from the refresh's factory arguments embeds exactly like
    the refresh's own network (same backbone, features, size and reading settings)."""
    from scopeloop.refresh import Refresher
    from trainer.models.embedding_jobs import DEFAULT_FACTORY, for_project, resolve
    from trainer.store.workspace import Workspace

    ws = Workspace(tmp_path / "p")
    ws.update_project(images_root=str(SAMPLE), classes=["a", "b"], ls_project_id=1,
                      model={"backbone": "tf_efficientnet_lite0", "weights": "imagenet", "image_size": 64,
                             "channels": [1, 1, 1], "preprocessing": {"normalisation": "bit-depth"}})
    r = Refresher(ws, client=None, log=lambda *_: None)
    paths = sorted(SAMPLE.rglob("*.jpg"))[:6]
    keys, emb = r.embed_all([p.relative_to(SAMPLE).as_posix() for p in paths])
    kwargs = for_project(tmp_path / "x", None, r.model_cfg).factory_kwargs
    job_side = resolve(DEFAULT_FACTORY)(**dict(kwargs, device="cpu"))([SAMPLE / k for k in keys])
    np.testing.assert_array_equal(job_side.embeddings, emb)
