"""Embedding a large pool in chunks that several workers compute in parallel, resumably.

At 100,000 images one process embeds for about an hour on a 2-core CPU (tf_efficientnet_lite0,
multiscale: ~35 images/s) and minutes on a GPU. `ChunkedEmbedder` splits the images still to
embed into chunks of `chunk_size` and

* writes each finished chunk to its own file, ``<chunk_dir>/<chunk id>.npz`` (paths, embeddings,
  rows that were read, skipped images): a crash (worker killed, node preempted) loses at most
  the chunks in progress; the next run finds the finished files and computes only the rest;
* queues one RQ job per chunk (`embed_chunk_job`) when given a queue (scopeloop puts them on the
  GPU queue), so other workers take chunks while the caller computes chunks itself: it never
  waits on a queue nobody serves, and with no other worker it is one plain pass;
* has every chunk claimed by exactly one process at a time (Redis SET NX with a TTL kept alive
  by a heartbeat): a killed worker's claim expires after `CLAIM_TTL` s and someone else takes it.

The result (an `InferenceResult` in the order of the input paths) is what one `run_model` pass
gives; with `chunk_size` a multiple of the batch size (64) the batches are the same, so the
embeddings are identical (tests/trainer/test_embedding_jobs.py). `EmbeddingCache.update` stores
it; then `cleanup()` removes the chunk files.

A chunk job builds its own network from an embedder *factory*: an importable
``"module:function"`` name and keyword arguments, so the job needs no pickled model; the
default, `backbone_embedder`, builds the project's backbone (timm name, weights file, features,
reading settings) on the worker's device (SCOPELOOP_DEVICE, else CUDA when present).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from trainer.io.errors import SkipReport
from trainer.models.inference import InferenceResult
from trainer.store.atomic import atomic_path, write_json_atomic
from trainer.store.lease import lease

CHUNK_SIZE = int(os.environ.get("SCOPELOOP_EMBED_CHUNK", "2048"))  # images per chunk (multiple of 64)
CLAIM_TTL = int(os.environ.get("SCOPELOOP_EMBED_CLAIM_TTL", "120"))  # s; renewed every TTL/3 while computing
JOB_FUNC = "trainer.models.embedding_jobs.embed_chunk_job"
DEFAULT_FACTORY = "trainer.models.embedding_jobs:backbone_embedder"
PROGRESS = "progress.json"  # in the chunk folder while a pass is under way


def chunk_id(paths: Sequence[str]) -> str:
    """Stable name of a chunk: a hash of its image paths (same images -> same chunk)."""
    return hashlib.sha1("\n".join(paths).encode()).hexdigest()[:16]


def resolve(name: str) -> Callable:
    """``"package.module:function"`` -> the function (ValueError naming the form if malformed)."""
    mod, sep, fn = name.partition(":")
    if not sep or not mod or not fn:
        raise ValueError(f"embedder factory '{name}': expected 'package.module:function'")
    return getattr(importlib.import_module(mod), fn)


# ---------------------------------------------------------------- chunk files
def write_chunk(path: Path, paths: Sequence[str], res: InferenceResult) -> None:
    """One finished chunk, atomically (temp file + rename): a half-written chunk never counts."""
    with atomic_path(path) as tmp:
        np.savez(tmp, paths=np.asarray(list(paths), dtype=str), embeddings=np.asarray(res.embeddings, np.float32),
                 rows=np.asarray(res.rows, np.int64), skipped=np.asarray(json.dumps(res.skipped.skipped)))


def read_chunk(path: Path) -> tuple[list[str], InferenceResult]:
    """(the chunk's image paths, its InferenceResult with rows into those paths)."""
    with np.load(path, allow_pickle=False) as z:
        skipped = SkipReport(json.loads(str(z["skipped"])))
        return [str(p) for p in z["paths"]], InferenceResult(z["embeddings"], None, z["rows"], skipped)


# ---------------------------------------------------------------- claims
@contextmanager
def claim(redis, key: str, ttl: int = CLAIM_TTL):
    """Yields True if this process now holds `key` (a `trainer.store.lease.lease`, one try), False
    if another process holds it. `redis=None`: always True."""
    if redis is None:
        yield True
        return
    with lease(redis, key, ttl) as held:
        yield held


def _claim_key(chunk_dir: Path, cid: str) -> str:
    return f"scopeloop:embed:{hashlib.sha1(str(chunk_dir).encode()).hexdigest()[:12]}:{cid}"


def compute_chunk(chunk_dir, paths: Sequence[str], embed: Callable, redis=None, ttl: int = CLAIM_TTL) -> str:
    """Embed one chunk unless it is done or claimed; returns "done", "claimed" or "computed".
    `embed(paths) -> InferenceResult`. The chunk folder must exist (its removal cancels the work)."""
    chunk_dir = Path(chunk_dir)
    cid = chunk_id(paths)
    out = chunk_dir / f"{cid}.npz"
    if out.is_file():
        return "done"
    with claim(redis, _claim_key(chunk_dir, cid), ttl) as mine:
        if not mine:
            return "claimed"
        if out.is_file() or not chunk_dir.is_dir():  # finished (or no longer wanted) meanwhile
            return "done"
        write_chunk(out, paths, embed(list(paths)))
        return "computed"


# ---------------------------------------------------------------- the RQ job
def embed_chunk_job(factory: str, factory_kwargs: dict, chunk_dir: str, paths: list[str], ttl: int = CLAIM_TTL) -> str:
    """RQ job: embed one chunk with the embedder `resolve(factory)(**factory_kwargs)`.

    Does nothing when the chunk is finished, claimed by another process, or no longer wanted
    (its folder was removed after the pass finished). Returns what happened."""
    from rq import get_current_job

    job = get_current_job()
    if not Path(chunk_dir).is_dir():
        return "not needed"
    return compute_chunk(chunk_dir, paths, _LazyEmbed(factory, factory_kwargs),
                         job.connection if job is not None else None, ttl)


class _LazyEmbed:
    """Builds the embedder on first use only (a chunk found done costs no network)."""

    def __init__(self, factory: str, kwargs: dict):
        self.factory, self.kwargs, self.fn = factory, kwargs, None

    def __call__(self, paths):
        if self.fn is None:
            self.fn = resolve(self.factory)(**self.kwargs)
        return self.fn(paths)


def backbone_embedder(backbone: str, weights: str, features: str, image_size: int, model_cfg: dict | None = None,
                      device: str | None = None, batch_size: int = 64) -> Callable:
    """The default factory: embed(paths) -> InferenceResult with the backbone `backbone` (timm
    name) loaded from `weights` ("imagenet" or a file), giving the `features` embedding of images
    read as `model_cfg` says (channels, stack, normalisation), on `device` (default:
    SCOPELOOP_DEVICE, else CUDA when present)."""
    import torch

    from trainer.io.settings import reader_of
    from trainer.models.backbone import create_backbone
    from trainer.models.inference import default_device, run_model

    net, pre, _ = create_backbone(backbone, weights, features)
    reading = reader_of(model_cfg or {})  # the project's reading settings, as the refresh reads
    dev = device or os.environ.get("SCOPELOOP_DEVICE") or None
    dev = torch.device(dev) if dev else default_device()

    def embed(paths):
        return run_model(net, paths, image_size, pre.mean, pre.std, reading, batch_size=batch_size, device=dev,
                         desc="embedding chunk")

    return embed


def embedding_progress(chunk_dir) -> dict | None:
    """A pass under way (or cut short) in `chunk_dir`: ``{"images": n in the pass, "done": n in
    finished chunks, "chunks": finished chunk files, "started": epoch s}``; None if none."""
    chunk_dir = Path(chunk_dir)
    try:
        info = json.loads((chunk_dir / PROGRESS).read_text())
    except (OSError, ValueError):
        return None
    done = files = 0
    for f in chunk_dir.glob("*.npz"):
        if f.name.startswith("."):
            continue
        try:
            with np.load(f, allow_pickle=False) as z:
                done += len(z["paths"])
            files += 1
        except Exception:
            continue
    return {"images": int(info.get("images", 0)), "done": done, "chunks": files, "started": info.get("started")}


# ---------------------------------------------------------------- the caller's side
class ChunkedEmbedder:
    """`embed_fn` for `EmbeddingCache.update`: embeds paths in resumable, shareable chunks.

    chunk_dir: where chunk files live (one folder per embedding space and pool).
    embed: this process's own embed(paths) -> InferenceResult (it computes chunks too).
    queue: an rq.Queue for chunk jobs other workers take (None: compute everything here).
    factory, factory_kwargs: how a chunk job builds its embedder (`backbone_embedder` kwargs).
    chunk_size: images per chunk; `poll_s`: wait between looks at chunks others compute.
    Calling it returns an `InferenceResult` over the given paths (rows index them).
    """

    def __init__(self, chunk_dir, embed: Callable, queue=None, factory: str = DEFAULT_FACTORY,
                 factory_kwargs: dict | None = None, chunk_size: int = CHUNK_SIZE, ttl: int = CLAIM_TTL,
                 poll_s: float = 0.5, log=print, job_timeout: int = 6 * 3600):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1 (SCOPELOOP_EMBED_CHUNK), got {chunk_size}")
        self.chunk_dir, self.embed, self.queue = Path(chunk_dir), embed, queue
        self.factory, self.factory_kwargs = factory, dict(factory_kwargs or {})
        self.chunk_size, self.ttl, self.poll_s, self.log, self.job_timeout = chunk_size, ttl, poll_s, log, job_timeout
        # chunks: to compute this call; found: finished before it (earlier run); computed_here /
        # by_others: who computed this call's chunks; queued: chunk jobs offered to other workers
        self.stats = {"chunks": 0, "found": 0, "computed_here": 0, "by_others": 0, "queued": 0}

    @property
    def redis(self):
        return self.queue.connection if self.queue is not None else None

    def _finished(self) -> dict[str, Path]:
        """path -> chunk file, over every finished chunk in the folder (from any earlier run)."""
        out = {}
        for f in sorted(self.chunk_dir.glob("*.npz")):
            if f.name.startswith("."):
                continue
            try:
                with np.load(f, allow_pickle=False) as z:
                    names = [str(p) for p in z["paths"]]
            except Exception:  # unreadable leftover: ignore, its images are computed again
                continue
            for p in names:
                out.setdefault(p, f)
        return out

    def plan(self, paths: Sequence[str]) -> tuple[list[list[str]], dict[str, Path]]:
        """(chunks still to compute, finished path -> file): finished chunks are never redone."""
        finished = self._finished() if self.chunk_dir.is_dir() else {}
        todo = [p for p in paths if p not in finished]
        return [todo[i:i + self.chunk_size] for i in range(0, len(todo), self.chunk_size)], finished

    def __call__(self, paths: Sequence) -> InferenceResult:
        paths = [str(p) for p in paths]
        self.chunk_dir.mkdir(parents=True, exist_ok=True)
        chunks, finished = self.plan(paths)
        self.stats.update(chunks=len(chunks), found=len({finished[p] for p in paths if p in finished}))
        if chunks:  # progress for `scopeloop status` (embedding_progress)
            write_json_atomic(self.chunk_dir / PROGRESS,
                              {"images": len(paths), "chunk_size": self.chunk_size, "started": time.time()})
            self.log(f"embedding {sum(map(len, chunks))} images in {len(chunks)} chunk(s) of up to {self.chunk_size}"
                     + (f" ({self.stats['found']} chunk(s) already done)" if self.stats["found"] else "")
                     + (" shared with other workers" if self.queue is not None and len(chunks) > 1 else ""))
        job_ids = self._enqueue(chunks[1:]) if self.queue is not None else []  # the first one: here, at once
        try:
            pending = list(chunks)
            while pending:
                progressed = False
                for c in list(pending):
                    state = compute_chunk(self.chunk_dir, c, self.embed, self.redis, self.ttl)
                    if state == "claimed":
                        continue
                    pending.remove(c)
                    progressed = True
                    self.stats["computed_here" if state == "computed" else "by_others"] += 1
                if pending and not progressed:
                    time.sleep(self.poll_s)
        finally:
            self._cancel(job_ids)
        return self._assemble(paths)

    def _enqueue(self, chunks: list[list[str]]) -> list[str]:
        ids = []
        for c in chunks:
            jid = f"embed-{hashlib.sha1(str(self.chunk_dir).encode()).hexdigest()[:8]}-{chunk_id(c)}"
            self.queue.enqueue(JOB_FUNC, self.factory, self.factory_kwargs, str(self.chunk_dir), c, self.ttl,
                               job_id=jid, job_timeout=self.job_timeout, result_ttl=3600, failure_ttl=24 * 3600,
                               description=f"embed {len(c)} images into {self.chunk_dir}")
            ids.append(jid)
        self.stats["queued"] = len(ids)
        return ids

    def _cancel(self, job_ids: list[str]) -> None:
        """Chunk jobs nobody started (all done here): off the queue, so no worker wakes for nothing."""
        for jid in job_ids:
            try:
                self.queue.remove(jid)
            except Exception:
                pass

    def _assemble(self, paths: list[str]) -> InferenceResult:
        """Every finished chunk's rows for `paths`, in the order of `paths` (each image once)."""
        where = self._finished()
        pos = {p: i for i, p in enumerate(paths)}
        embs, rows, report, dim, seen = [], [], SkipReport(), 0, set()
        for f in sorted({where[p] for p in paths if p in where}):
            names, res = read_chunk(f)
            if res.embeddings.ndim == 2:
                dim = res.embeddings.shape[1]
            keep = [j for j, r in enumerate(res.rows) if names[r] in pos and names[r] not in seen]
            seen.update(names[res.rows[j]] for j in keep)
            embs.append(res.embeddings[keep])
            rows.append(np.asarray([pos[names[res.rows[j]]] for j in keep], np.int64))
            report.skipped.extend(res.skipped.skipped)
        if not embs:
            return InferenceResult(np.zeros((0, dim), np.float32), None, np.zeros(0, np.int64), report)
        e, r = np.concatenate(embs), np.concatenate(rows)
        order = np.argsort(r, kind="stable")
        return InferenceResult(e[order], None, r[order], report)

    def cleanup(self) -> None:
        """Remove the chunk files (after the cache stored the result); also cancels stray jobs."""
        import shutil

        shutil.rmtree(self.chunk_dir, ignore_errors=True)


def embedder_settings(model_cfg: dict, weights_file=None, default_features: str = "multiscale") -> dict:
    """What builds a project's embedder: `backbone_embedder`'s keyword arguments (backbone, weights,
    features, image_size, model_cfg with the reading settings). The refresh and the chunk workers
    both build from it, so one embedding cache never mixes two embedders."""
    return {"backbone": model_cfg["backbone"],
            "weights": str(weights_file) if weights_file else model_cfg.get("weights", "imagenet"),
            "features": model_cfg.get("features", default_features), "image_size": int(model_cfg["image_size"]),
            "model_cfg": {k: v for k, v in model_cfg.items() if isinstance(v, (str, int, float, list, dict, type(None)))}}


def for_project(cache_root, embed: Callable, model_cfg: dict, weights_file=None, queue=None, log=print,
                default_features: str = "multiscale") -> ChunkedEmbedder:
    """The ChunkedEmbedder of a project's embedding space: chunks in ``<cache_root>/chunks``,
    chunk jobs build the same backbone (`model_cfg`: backbone, weights, image_size, features,
    reading settings; `weights_file`: a fine-tuned backbone replacing the weights)."""
    kwargs = embedder_settings(model_cfg, weights_file, default_features)
    return ChunkedEmbedder(Path(cache_root) / "chunks", embed, queue=queue, factory_kwargs=kwargs, log=log,
                           chunk_size=CHUNK_SIZE)
