"""`scopeloop versions` (the model versions with their quality) and `scopeloop rollback [VERSION]`
(serve an earlier version again, and tell Label Studio).

A rollback switches `registry/current` atomically (`ModelRegistry.rollback`), then pushes the
version's predictions to Label Studio the way a refresh pushes a new version
(`scopeloop.refresh.Refresher.push`): the prediction cache of that version when it is kept
(`predictions/<version>.npz`, with its sampler order), else its head on the project's cached
embeddings. Images labeled since leave the pushed order. The next refresh trains a candidate
on every label again and gates it against the version now served."""
from __future__ import annotations

import sys
import time

import numpy as np

from trainer.store.workspace import Workspace


def version_rows(ws: Workspace) -> list[dict]:
    """One row per kept version, newest first: labels, when, served or held back, its quality line."""
    from trainer.stats.estimate import from_metrics, headline

    reg = ws.registry
    cur = reg.current()
    log = {r.get("version"): r for r in reg.version_log()}
    served = {h.get("version") for h in reg.history()}
    rows = []
    for v in sorted(reg.versions(), reverse=True):
        rec = log.get(v, {})
        when = rec.get("time") or (reg.versions_dir / v).stat().st_mtime
        rows.append({"version": v, "current": v == cur, "served": v in served, "labels": rec.get("labels"),
                     "time": when, "problem": reg.problem(v),
                     "quality": headline(from_metrics(reg.read_json(v, "metrics.json")))})
    return rows


def print_versions(ws: Workspace) -> None:
    rows = version_rows(ws)
    if not rows:
        print(f"project {ws.root.name}: no model version yet (label a few images of at least 2 classes)")
        return
    print(f"project {ws.root.name}: {len(rows)} model version(s) kept, newest first (* = current)")
    for r in rows:
        state = "current" if r["current"] else "served before" if r["served"] else "held back"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["time"]))
        labels = f"{r['labels']} labels" if r["labels"] is not None else "labels ?"
        print(f"{'*' if r['current'] else ' '} {r['version']}  {when}  {state:13s} {labels:>12s}  {r['quality']}"
              + (f"  [cannot be served: {r['problem']}]" if r["problem"] else ""))


def _version_predictions(ws: Workspace, version: str):
    """(keys, probs, rank or None) of `version`: its prediction cache, else its head on the cached
    embeddings of its space; None when neither exists."""
    data = ws.load_predictions(version)
    if data is not None:
        rank = data.get("rank")
        return [str(k) for k in data["keys"]], np.asarray(data["probs"], np.float32), rank
    from scopeloop.loop.versions import current_head

    head, space = current_head(ws)  # `version` is current by now
    if head is None or not space:
        return None
    keys, emb = ws.embeddings(space).load()
    if emb is None:
        return None
    return list(keys), head.predict_proba(emb), None


def push_version(ws: Workspace, client, version: str, log=print) -> dict:
    """Push `version`'s predictions to Label Studio as the version it serves (see module doc)."""
    from ml_backend.labelstudio.sync import labels_by_key, unusable_keys
    from sampler.uncertainty import top2_gap
    from scopeloop.loop.push_sizing import head_size, labeling_rate, refresh_interval
    from scopeloop.refresh import Refresher

    got = _version_predictions(ws, version)
    if got is None:
        raise RuntimeError(f"model version {version} has no kept predictions and no cached embeddings to "
                           "predict from: Label Studio still shows the previous suggestions; run "
                           "`scopeloop refresh --now` to push them")
    keys, probs, rank = got
    done = set(labels_by_key(ws.labels)) | unusable_keys(ws.labels)
    unl = np.array([i for i, k in enumerate(keys) if k not in done], dtype=np.int64)
    if rank is not None and len(rank) == len(keys):
        ranked = unl[np.asarray(rank)[unl] >= 0]
        ranked = ranked[np.argsort(np.asarray(rank)[ranked], kind="stable")]
        rest = np.setdiff1d(unl, ranked)
        rest = rest[np.argsort(top2_gap(probs[rest]), kind="stable")]
        order = np.concatenate([ranked, rest])
    else:
        order = unl[np.argsort(top2_gap(probs[unl]), kind="stable")] if len(unl) else unl
    refresher = Refresher(ws, client, log=log)
    task_ids = refresher.task_ids(ws.project["ls_project_id"])
    sizing = head_size(len(order), labeling_rate(ws.labels), refresh_interval(ws.root / "refresh_history.jsonl"))
    return refresher.push(keys, task_ids, probs, order, order[:sizing["head"]], version)


def rollback(ws: Workspace, client, version: str | None = None, log=print) -> dict:
    """Serve `version` (default: the newest earlier version once served) and push it to Label
    Studio (`client` None: the switch only). Returns {"from", "to", "pushed": ... or None}."""
    reg = ws.registry
    before = reg.current()
    after = reg.rollback(version)
    log(f"model {after} is current again (was {before})")
    pushed = None
    if client is not None and ws.project.get("ls_project_id"):
        pushed = push_version(ws, client, after, log=log)
        log(f"Label Studio now shows model {after}'s suggestions ({pushed['pushed']} pushed as {pushed['ls_model_version']})")
    return {"from": before, "to": after, "pushed": pushed}


# ------------------------------------------------------------------ the commands

def _workspace(args) -> tuple:
    from scopeloop.settings import load_settings

    settings = load_settings()
    return settings, Workspace(settings.existing_project(args.project))


def cmd_versions(args) -> int:
    _, ws = _workspace(args)
    print_versions(ws)
    return 0


def cmd_rollback(args) -> int:
    """Under the project's refresh lock when Redis answers (a refresh then cannot publish in between)."""
    from contextlib import nullcontext

    from ml_backend.queue import RefreshQueue, connect_redis

    settings, ws = _workspace(args)
    client = None if args.offline else settings.label_studio_client()
    try:
        q = RefreshQueue(connect_redis(settings.redis_url, timeout=2))
        q.redis.ping()
        guard = q.lock(str(ws.root), wait_s=args.wait)
    except Exception as exc:  # noqa: BLE001 - no Redis: no worker can be refreshing through it either
        print(f"note: Redis not reachable ({type(exc).__name__}): rolling back without the refresh lock")
        guard = nullcontext()
    try:
        with guard:
            rollback(ws, client, args.version)
    except TimeoutError as exc:
        print(f"error: {exc}; try again when it is done (or --wait longer)", file=sys.stderr)
        return 2
    if client is None:
        print("Label Studio not told (--offline): its suggestions change at the next refresh")
    return 0


def add_cli(sub) -> None:
    v = sub.add_parser("versions", help="the project's model versions with their quality",
                       description="Every kept model version, newest first: when, how many labels, served or held "
                                   "back by the quality gate, its quality estimate; * marks the current one.")
    v.add_argument("--project", help="project name (default: the only project; with several, say which)")
    v.set_defaults(func=cmd_versions)
    r = sub.add_parser("rollback", help="serve an earlier model version again and tell Label Studio",
                       description="Switch the current model atomically to VERSION (default: the newest earlier "
                                   "version that was once served) and push its suggestions to Label Studio.")
    r.add_argument("version", nargs="?", help="version number, e.g. 003 (see `scopeloop versions`)")
    r.add_argument("--project", help="project name (default: the only project; with several, say which)")
    r.add_argument("--offline", action="store_true", help="switch only; Label Studio learns at the next refresh")
    r.add_argument("--wait", type=float, default=120.0, help="seconds to wait for a running refresh (default: %(default)s)")
    r.set_defaults(func=cmd_rollback)
