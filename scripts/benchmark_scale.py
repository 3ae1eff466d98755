"""Benchmark: scopeloop at 10,000 - 100,000 images against a real Label Studio (issue 16).

    .venv/bin/python scripts/benchmark_scale.py --images 10000 --postgres
    .venv/bin/python scripts/benchmark_scale.py --images 100000 --postgres --refreshes 20

What runs for real: a fresh Label Studio 1.23.2 (its own data dir; with --postgres against a new
database on the PostgreSQL at 127.0.0.1:5432, trust auth, created with `createdb`), an embedded
Redis, the ML backend process, `scopeloop init` (image listing, quality pass, task import), the
first order (cold-start sampler on every image), quick refreshes after labels (label sync,
head fit, quality gate, sampler, bounded push, prune) and deep refreshes (the nightly kind: full
label sync, task list, bounded push, prune), `/next` after every refresh, and tasks outside the
pushed head opened directly (Label Studio asks the backend's /predict).

What is skipped, and said so in the output: the images are generated tiny PNGs (16 x 16) and
their embeddings are synthetic (clustered, `--dim` wide) and written into the embedding cache,
so no network embeds them (CPU embedding throughput is in docs/benchmarks.md); the deep
refresh's backbone fine-tune and re-embedding (GPU work) are replaced by a no-op. Refreshes run
in this process, as a worker runs them, so the queue's own latency (< 1 s) is not included.

"label -> next task" is the time from an annotation's creation to Label Studio serving the new
order's first pick (refresh + /next; the prune of the superseded version runs after it, as the
service's low-priority prune job does, and is timed on its own). "LS-side seconds" is the time spent in Label
Studio calls of a refresh: label sync, predictions import + version switch, and the prune.
Prints one JSON object (also written to --out) and a markdown table row.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from ml_backend.labelstudio.server import LabelStudioServer, free_port  # noqa: E402

CLASSES = ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]
PG = {"host": "127.0.0.1", "port": "5432", "user": "postgres"}


class PostgresLabelStudio(LabelStudioServer):
    """Label Studio against a PostgreSQL database (the lab server's setup)."""

    database: str = ""

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update({"DJANGO_DB": "default", "POSTGRE_NAME": self.database, "POSTGRE_USER": PG["user"],
                    "POSTGRE_PASSWORD": "", "POSTGRE_HOST": PG["host"], "POSTGRE_PORT": PG["port"]})
        return env


def postgres_reachable(timeout: float = 2.0) -> str | None:
    """None when PostgreSQL answers at 127.0.0.1:5432 with `psql`, else why not."""
    if shutil.which("psql") is None:
        return "no `psql` client on PATH"
    try:
        r = subprocess.run(["psql", "-h", PG["host"], "-p", PG["port"], "-U", PG["user"], "-tAc", "select 1"],
                           capture_output=True, text=True, timeout=timeout + 3,
                           env=dict(os.environ, PGCONNECT_TIMEOUT=str(int(timeout))))
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"psql failed: {type(e).__name__}"
    return None if r.returncode == 0 else f"no PostgreSQL at {PG['host']}:{PG['port']}: {r.stderr.strip()[:200]}"


def psql(sql: str, db: str = "postgres") -> str:
    r = subprocess.run(["psql", "-h", PG["host"], "-p", PG["port"], "-U", PG["user"], "-d", db, "-tAc", sql],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"psql {sql!r}: {r.stderr.strip()[:300]}")
    return r.stdout.strip()


def make_pool(root: Path, n: int, dim: int, seed: int = 0):
    """n tiny textured PNGs in class folders; clustered synthetic embeddings (rows = keys)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    keys, truth = [], {}
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 200, (len(CLASSES), 16, 16, 3))
    for i in range(n):
        c = CLASSES[i % len(CLASSES)]
        key = f"{c}/cell_{i:07d}.png"
        px = np.clip(base[i % len(CLASSES)] + rng.integers(0, 56, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(px).save(root / key, compress_level=1)
        keys.append(key)
        truth[key] = c
    centers = rng.normal(0, 1, (len(CLASSES), dim)).astype(np.float32)
    emb = centers[np.arange(n) % len(CLASSES)] * 0.6 + rng.normal(0, 1, (n, dim)).astype(np.float32)
    return keys, truth, emb.astype(np.float32)


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident memory of a process (and nothing else), MB; None if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def tree_hwm_mb(pid: int) -> float:
    """Sum of peak RSS over a process and its children (Label Studio runs a few)."""
    total = vm_hwm_mb(pid) or 0.0
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    return round(total + sum(tree_hwm_mb(int(k)) for k in kids), 1)


def pct(values, q) -> float | None:
    return round(float(np.percentile(values, q)), 2) if len(values) else None


def run(args) -> dict:
    from ml_backend.labelstudio.client import LabelStudioClient
    from scopeloop import projects
    from scopeloop.loop import push_sizing
    from scopeloop.refresh import Refresher
    from scopeloop.services import EmbeddedRedis, start_backend
    from scopeloop.settings import Settings

    t_all = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="scopeloop-scale-", dir=args.workdir))
    out: dict = {"images": args.images, "database": "postgresql" if args.postgres else "sqlite", "dim": args.dim,
                 "skipped": ["network embedding (synthetic clustered embeddings written to the cache)",
                             "deep refresh backbone fine-tune and re-embedding (no-op; GPU work)",
                             "browser previews (the generated PNGs are shown as they are)"],
                 "command": "scripts/benchmark_scale.py " + " ".join(sys.argv[1:])}
    children = []
    ls = redis = None
    saved_env = os.environ.get("LOCAL_FILES_DOCUMENT_ROOT")
    try:
        t = time.perf_counter()
        images = work / "images"
        keys, truth, emb = make_pool(images, args.images, args.dim)
        out["make_images_s"] = round(time.perf_counter() - t, 1)

        if args.postgres:
            why = postgres_reachable()
            if why:
                raise SystemExit(f"--postgres: {why}")
            db = f"scopeloop_scale_{uuid.uuid4().hex[:8]}"
            psql(f"create database {db}")
            out["postgres_database"] = db
            # this machine's PostgreSQL may run without autovacuum: then dead row versions are never reused
            out["postgres_autovacuum"] = psql("show autovacuum")
            ls = PostgresLabelStudio(data_dir=work / "ls", document_root=Path("/"), port=free_port())
            ls.database = db
        else:
            ls = LabelStudioServer(data_dir=work / "ls", document_root=Path("/"), port=free_port(), allow_hosts=("127.0.0.1",))
        t = time.perf_counter()
        ls.start()
        out["ls_start_s"] = round(time.perf_counter() - t, 1)

        def db_size_mb() -> float:
            if args.postgres:
                return round(int(psql(f"select pg_database_size('{out['postgres_database']}')")) / 2**20, 1)
            return round(sum(p.stat().st_size for p in (work / "ls").glob("label_studio.sqlite3*")) / 2**20, 1)

        redis = EmbeddedRedis(work / "redis")
        os.environ["LOCAL_FILES_DOCUMENT_ROOT"] = "/"  # what this Label Studio runs with (init reads it)
        port = free_port()
        settings = Settings(home=work / "home", redis_url=redis.url, label_studio_url=ls.url,
                            label_studio_api_key=ls.token, backend_url=f"http://127.0.0.1:{port}")
        backend = start_backend(settings, port, work / "logs")
        children.append(backend)
        client = LabelStudioClient(ls.url, ls.token)

        t = time.perf_counter()
        ws, report = projects.init(settings, "scale", images, CLASSES, backend_url=settings.backend_url,
                                   model={"image_size": 32})
        out["init_s"] = round(time.perf_counter() - t, 1)
        out["tasks_created"] = report.created
        pid = ws.project["ls_project_id"]
        r = Refresher(ws, client, log=lambda *_: None)
        ws.embeddings(r.space()[0])._save(keys, emb)  # precomputed: nothing to embed
        r.deep_finetune = lambda labels, pool_keys=None: None  # GPU work: skipped (this refresher only)
        task_of = r.task_ids(pid)  # the map init wrote from its import (no listing)
        out["db_mb_after_init"] = db_size_mb()

        t = time.perf_counter()
        first = r.run("quick")  # cold start: no labels, the sampler orders every image
        r.prune()
        out["first_order_s"] = round(time.perf_counter() - t, 1)
        out["first_order_pushed"] = first["pushed"]
        out["first_order_parts_s"] = dict(first["seconds"], prune=round(out["first_order_s"] - first["seconds"]["total"], 2))
        print(json.dumps({k: out.get(k) for k in ("make_images_s", "ls_start_s", "init_s", "db_mb_after_init",
                                                  "first_order_s", "first_order_pushed", "first_order_parts_s")}),
              file=sys.stderr, flush=True)
        for c in CLASSES:  # starter labels
            for k in [k for k in keys if truth[k] == c][:2]:
                client.create_annotation(task_of[k], c)

        rows, order_ok, order_n = [], 0, 0
        sizes = [db_size_mb()]
        for i in range(args.refreshes):
            kind = "deep" if args.deep_every and (i + 1) % args.deep_every == 0 else "quick"
            nxt = client.next_task(pid)
            t_label = time.perf_counter()
            client.create_annotation(nxt["id"], truth[nxt["data"]["key"]])
            o = r.run(kind)
            nxt = client.next_task(pid)  # the new order is served once pushed; the prune comes after
            latency = time.perf_counter() - t_label
            t_pruned = time.perf_counter()
            p = r.prune()  # in the service: a low-priority job run when no refresh is waiting
            t_prune = time.perf_counter() - t_pruned
            if args.postgres and args.vacuum_every and (i + 1) % args.vacuum_every == 0:
                t_vac = time.perf_counter()  # what autovacuum does on a server that has it on
                psql("vacuum (analyze) task, prediction", db=out["postgres_database"])
                out.setdefault("vacuum_s", []).append(round(time.perf_counter() - t_vac, 2))
            cache = ws.load_predictions(ws.status["serving_version"])
            if cache is not None:
                ranks = np.asarray(cache["rank"])
                top = str(cache["keys"][int(np.flatnonzero(ranks == ranks[ranks >= 0].min())[0])])
                order_n += 1
                order_ok += int(nxt["data"]["key"] == top)
            sizes.append(db_size_mb())
            rows.append({"kind": kind, "labels": o["labels"], "pushed": o["pushed"], "head": o["push"],
                         "latency_s": round(latency, 2), "refresh_s": o["seconds"]["total"],
                         "sync_s": o["seconds"]["sync"], "push_s": o["push_seconds"],
                         "rank_push_s": o["seconds"]["rank_push"], "rank_s": o["seconds"].get("rank"),
                         "embed_s": o["seconds"]["embed"], "train_s": o["seconds"]["train"],
                         "qc_written": o.get("qc_written"),
                         "pruned": p["pruned"], "prune_s": round(t_prune, 2),
                         "ls_side_s": round(o["seconds"]["sync"] + o["push_seconds"] + t_prune, 2),
                         "predictions_in_ls": sum(client.model_versions(pid).values()), "db_mb": sizes[-1]})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        quick = [x for x in rows if x["kind"] == "quick"]
        deep = [x for x in rows if x["kind"] == "deep"]
        out["refreshes"] = rows
        out["quick_latency_p50_s"] = pct([x["latency_s"] for x in quick], 50)
        out["quick_latency_p95_s"] = pct([x["latency_s"] for x in quick], 95)
        out["ls_side_quick_max_s"] = max((x["ls_side_s"] for x in quick), default=None)
        out["ls_side_deep_max_s"] = max((x["ls_side_s"] for x in deep), default=None)
        out["predictions_in_ls_max"] = max(x["predictions_in_ls"] for x in rows) if rows else None
        out["db_mb"] = {"after_first_order": sizes[0], "after_last_refresh": sizes[-1],
                        "growth_per_refresh": round((sizes[-1] - sizes[0]) / max(len(rows), 1), 2)}
        out["next_is_top_pick"] = f"{order_ok}/{order_n}"

        # the order through consecutive /next calls with labels in between (refresh every K labels)
        if args.order_check:
            ok, n, t = 0, 0, time.perf_counter()
            labeled = set()
            expected: list[str] = []
            for i in range(args.order_check):
                if i % args.order_refresh_every == 0:
                    r.run("quick")
                    r.prune()
                    cache = ws.load_predictions(ws.status["serving_version"])
                    ranks = np.asarray(cache["rank"])
                    sel = np.flatnonzero(ranks >= 0)
                    expected = [str(cache["keys"][j]) for j in sel[np.argsort(ranks[sel])]]
                    labeled = set()
                nxt = client.next_task(pid)
                want = next(k for k in expected if k not in labeled)
                n += 1
                ok += int(nxt["data"]["key"] == want)
                labeled.add(nxt["data"]["key"])
                client.create_annotation(nxt["id"], truth[nxt["data"]["key"]])
            out["order_check"] = {"next_calls": n, "served_in_sampler_order": ok,
                                  "refresh_every_labels": args.order_refresh_every,
                                  "seconds": round(time.perf_counter() - t, 1)}

        # tasks outside the pushed head, opened directly: pre-annotated by the backend's /predict
        cache = ws.load_predictions(ws.status["serving_version"])
        ranks = np.asarray(cache["rank"])
        head = rows[-1]["pushed"] if rows else first["pushed"]
        far = [str(cache["keys"][j]) for j in np.flatnonzero(ranks >= head + 100)[:args.open_outside]]
        times, got = [], 0
        for k in far:
            t = time.perf_counter()
            task = client._http("GET", f"/api/tasks/{task_of[k]}?project={pid}", "open task")
            times.append(time.perf_counter() - t)
            got += bool(task.get("predictions"))
        out["open_outside_head"] = {"opened": len(far), "with_prediction": got,
                                    "p50_s": pct(times, 50), "p95_s": pct(times, 95)}
        out["peak_rss_mb"] = {"refresh_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                              "ml_backend": vm_hwm_mb(backend.proc.pid) if getattr(backend, "proc", None) else None,
                              "label_studio": tree_hwm_mb(ls.proc.pid) if ls.proc else None}
        out["push_settings"] = {"floor": push_sizing.PUSH_FLOOR, "cap": push_sizing.PUSH_CAP, "margin": push_sizing.PUSH_MARGIN}
        if args.postgres:  # where the database's size is (issue 16: flat across refreshes?)
            out["db_tables_mb"] = {
                name: round(int(size) / 2**20, 1) for name, size in
                (line.split("|") for line in psql(
                    "select relname, pg_total_relation_size(relid) from pg_catalog.pg_statio_user_tables "
                    "order by 2 desc limit 10", db=out["postgres_database"]).splitlines() if "|" in line)}
            # row versions: updated / of them in place (HOT) / dead now, per table (what autovacuum reclaims)
            out["db_tables_rows"] = {
                name: {"updated": int(u), "hot": int(h), "dead": int(dd), "live": int(lv)} for name, u, h, dd, lv in
                (line.split("|") for line in psql(
                    "select relname, n_tup_upd, n_tup_hot_upd, n_dead_tup, n_live_tup from pg_stat_user_tables "
                    "where relname in ('task', 'prediction') order by 1", db=out["postgres_database"]).splitlines()
                 if line.count("|") == 4)}
        out["total_s"] = round(time.perf_counter() - t_all, 1)
        return out
    finally:
        for c in children:
            c.stop()
        if ls is not None:
            ls.stop()
        if redis is not None:
            redis.stop()
        if saved_env is None:
            os.environ.pop("LOCAL_FILES_DOCUMENT_ROOT", None)
        else:
            os.environ["LOCAL_FILES_DOCUMENT_ROOT"] = saved_env
        if args.postgres and out.get("postgres_database") and not args.keep:
            try:
                psql(f"drop database if exists {out['postgres_database']}")
            except Exception as e:  # reported, never fatal
                print(f"could not drop {out['postgres_database']}: {e}", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def run_sampler_only(args) -> dict:
    """What fits at 1,000,000 images on 2 CPUs without Label Studio: synthetic clustered
    embeddings (n x dim float32), the refresh's ranking on them (sampler cold start, then with a
    head's probabilities, and the uncertainty order of the rest), the persistent FAISS index
    (sampler.index: IVF above 200,000) and, with --qc-scores, the quality pass's neighbour search."""
    import sampler
    from sampler.index import EmbeddingIndex
    from trainer.models.head import fit_head

    out: dict = {"images": args.images, "dim": args.dim, "mode": "sampler-only",
                 "skipped": ["Label Studio, init, push and prune (see the full mode)", "images (embeddings only)"],
                 "command": "scripts/benchmark_scale.py " + " ".join(sys.argv[1:])}
    t_all = time.perf_counter()
    rng = np.random.default_rng(0)
    n, d = args.images, args.dim
    t = time.perf_counter()
    centers = rng.normal(0, 1, (len(CLASSES), d)).astype(np.float32)
    emb = np.empty((n, d), np.float32)
    for s0 in range(0, n, 50_000):  # in chunks: no float64 copy of the whole matrix
        s1 = min(n, s0 + 50_000)
        emb[s0:s1] = centers[np.arange(s0, s1) % len(CLASSES)] * 0.6 + rng.standard_normal((s1 - s0, d), np.float32)
    keys = [f"{CLASSES[i % len(CLASSES)]}/cell_{i:07d}.png" for i in range(n)]
    out["make_embeddings_s"] = round(time.perf_counter() - t, 1)
    labeled = np.zeros(n, bool)

    def timed(name, fn):
        t0 = time.perf_counter()
        res = fn()
        out[name] = round(time.perf_counter() - t0, 1)
        print(json.dumps({name: out[name]}), file=sys.stderr, flush=True)
        return res

    from scopeloop.refresh import RANK_BUDGET

    picks = timed("sampler_cold_start_s", lambda: sampler.select(emb, None, labeled, RANK_BUDGET, strategy="hybrid",
                                                                 keys=keys, class_names=CLASSES))
    lab = [p.row for p in picks][:20]
    labeled[lab] = True
    y = np.arange(len(lab)) % len(CLASSES)
    head = timed("head_fit_s", lambda: fit_head(emb[lab], y, len(CLASSES), seed=0))
    probs = timed("predict_all_s", lambda: head.predict_proba(emb))
    picks = timed("sampler_with_model_s", lambda: sampler.select(emb, probs, labeled, RANK_BUDGET, strategy="hybrid",
                                                                 keys=keys, class_names=CLASSES))

    def rest_order():
        chosen = np.zeros(n, bool)
        chosen[[p.row for p in picks]] = True
        rest = np.flatnonzero(~labeled & ~chosen)
        pr = np.sort(probs[rest], 1)
        return rest[np.argsort(pr[:, -1] - pr[:, -2], kind="stable")]

    timed("order_rest_s", rest_order)
    idx = timed("index_build_s", lambda: EmbeddingIndex.build(emb, keys, backbone="synthetic"))
    out["index_kind"] = idx.kind
    q = emb[rng.choice(n, 1000, replace=False)]
    timed("index_search_1000x10_s", lambda: idx.search(q, 10))
    del idx
    if args.qc_scores:
        from trainer.quality.embedding_scores import embedding_scores

        es = timed("qc_embedding_scores_s", lambda: embedding_scores(emb, keys))
        out["qc_index"] = es["index"]
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["total_s"] = round(time.perf_counter() - t_all, 1)
    return out


def markdown_row(o: dict) -> str:
    return (f"| {o['images']:,} | {o['database']} | {o['init_s']} | {o['first_order_s']} | "
            f"{o['quick_latency_p50_s']} / {o['quick_latency_p95_s']} | {o['ls_side_quick_max_s']} | "
            f"{o['ls_side_deep_max_s']} | {o['predictions_in_ls_max']} | {o['db_mb']['after_first_order']} -> "
            f"{o['db_mb']['after_last_refresh']} ({o['db_mb']['growth_per_refresh']:+}/refresh) | "
            f"{o['next_is_top_pick']} | {o['peak_rss_mb']['refresh_process']} / {o['peak_rss_mb']['ml_backend']} / "
            f"{o['peak_rss_mb']['label_studio']} |")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--postgres", action="store_true", help="Label Studio on a new database at 127.0.0.1:5432")
    ap.add_argument("--refreshes", type=int, default=20, help="refreshes after the first order (each after one label)")
    ap.add_argument("--deep-every", type=int, default=5, help="every k-th refresh is a deep (nightly) one; 0: none")
    ap.add_argument("--dim", type=int, default=1280, help="synthetic embedding width")
    ap.add_argument("--order-check", type=int, default=0, help="consecutive /next calls with labels in between")
    ap.add_argument("--order-refresh-every", type=int, default=100, help="a quick refresh every k labels of the order check")
    ap.add_argument("--open-outside", type=int, default=20, help="tasks outside the head opened directly")
    ap.add_argument("--workdir", default=None, help="where the temporary folder goes (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder and database")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--vacuum-every", type=int, default=0,
                    help="--postgres: VACUUM the task and prediction tables after every k-th refresh (what "
                         "autovacuum does; use where the server runs with autovacuum off); 0: never")
    ap.add_argument("--sampler-only", action="store_true",
                    help="no Label Studio: ranking, FAISS index (and --qc-scores) on synthetic embeddings (1,000,000)")
    ap.add_argument("--qc-scores", action="store_true", help="with --sampler-only: the quality pass's neighbour search")
    return ap.parse_args(argv)


def main() -> None:
    import signal

    # a timeout's SIGTERM still stops Label Studio, the backend and drops the database (finally)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parse_args()
    if args.sampler_only:
        o = run_sampler_only(args)
        text = json.dumps(o, indent=1)
        print(text)
        if args.out:
            Path(args.out).write_text(text)
        return
    o = run(args)
    text = json.dumps(o, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    print("\n| images | database | init s | first order s | quick label->next p50 / p95 s | LS-side s per quick "
          "refresh (max) | LS-side s per deep refresh (max) | predictions in LS (max) | LS database MB | "
          "/next = sampler's top pick | peak RSS MB refresh / backend / LS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(markdown_row(o))


if __name__ == "__main__":
    main()
