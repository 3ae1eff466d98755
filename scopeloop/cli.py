"""The `scopeloop` command: one subcommand per user task, each with --help.

Handlers stay thin: they parse, call a component, and print what a biologist needs. Known
user errors (a bad file, a missing folder, no weights offline) print one clear line and exit
with status 2; a traceback is a bug.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from pathlib import Path


TRAIN_OUT = "scopeloop-models"   # where `scopeloop train` keeps its registry by default


class UserError(Exception):
    """A problem the user can fix; printed without a traceback."""


def _channels(text: str | None):
    if not text:
        return None
    try:
        return [int(c) for c in text.split(",")]
    except ValueError:
        raise UserError(f"--channels '{text}': give 1 to 3 channel numbers separated by commas, e.g. 0,2,1") from None


def _groups(args, paths, root: Path):
    """Group of each image, for a leakage-free split: from a CSV column or a file-name pattern."""
    if args.group_pattern:
        from trainer.io.groups import group_of

        rx = re.compile(args.group_pattern)
        return [group_of(p, rx, unmatched="own-name") for p in paths]
    if args.groups_csv:
        with open(args.groups_csv, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or "path" not in rows[0] or args.group_column not in rows[0]:
            raise UserError(f"{args.groups_csv}: needs columns 'path' and '{args.group_column}'")
        by_path = {r["path"]: r[args.group_column] for r in rows}
        return [by_path.get(p.relative_to(root).as_posix(), p.name) for p in paths]
    return None


def cmd_train(args) -> int:
    from trainer.io.folders import scan_imagefolder
    from trainer.models.training import TrainConfig, save_version, train
    from trainer.models.training_qc import qc_summary
    from trainer.store.registry import ModelRegistry

    root = Path(args.data)
    if not root.is_dir():
        raise UserError(f"--data '{root}' is not a folder; give an ImageFolder directory (<data>/<class>/<image>)")
    items, classes = scan_imagefolder(root)
    if not items:
        raise UserError(f"no images found under '{root}/<class>/'")
    paths = [p for p, _ in items]
    from trainer.io.project_reading import reading_settings

    prep = reading_settings(paths, stack=args.stack, plane=args.plane, timepoint=args.timepoint,
                            normalisation=args.normalisation, bit_depth=args.bit_depth,
                            channels=_channels(args.channels))
    config = TrainConfig(backbone=args.backbone, weights=args.weights, mode=args.mode, image_size=args.image_size,
                         channels=_channels(args.channels), epochs=args.epochs, batch_size=args.batch_size,
                         seed=args.seed, val_fraction=args.val_fraction, device=args.device or None,
                         preprocessing=None if prep.is_default else prep.to_dict())
    print(f"training ({args.mode}) on {len(paths)} images, {len(classes)} classes: {', '.join(classes)}")
    print(f"reading: {prep.describe()}")
    result = train(paths, [lbl for _, lbl in items], classes, config, groups=_groups(args, paths, root), progress=True)
    print(f"weights: {result.model.config.weights_source}")
    registry = ModelRegistry(Path(args.out) / "registry")
    version = save_version(result, config, registry, source=str(root.resolve()))
    print(qc_summary(result.metrics))
    if len(result.skipped):
        print(result.skipped.summary())
    folder = registry.path(version)
    print(f"model version {version} saved and now current: {folder}")
    print(f"QC plots: {folder / 'loss_curves.png'}, {folder / 'confusion_matrix.png'}")
    return 0


def _predict_model(args) -> Path:
    """--model, else what the README's `predict` line finds as printed (issue 22): the registry
    `scopeloop train` writes (./scopeloop-models) if there is one, else the registry of the project
    in SCOPELOOP_HOME (the only one, or --project: the demo's model after `scopeloop demo`)."""
    if args.model:
        return Path(args.model)
    if Path(TRAIN_OUT).exists():
        return Path(TRAIN_OUT)
    from scopeloop.settings import load_settings

    try:
        return load_settings().existing_project(getattr(args, "project", None)) / "registry"
    except FileNotFoundError as exc:
        raise UserError(f"no model to predict with: no ./{TRAIN_OUT} (what `scopeloop train` writes) and {exc}. "
                        "Name one with --model (a registry, an exported model or a version folder)") from None


def cmd_predict(args) -> int:
    from trainer.reports.batch_predict import predict_folder, resolve_model_dir

    if not Path(args.input).is_dir():
        raise UserError(f"--input '{args.input}' is not a folder of images")
    model_dir = resolve_model_dir(_predict_model(args), args.version)
    if getattr(args, "cells", None) or getattr(args, "cells_masks", None) or getattr(args, "cells_points", None):
        from scopeloop.cells_command import run_predict

        return run_predict(args, model_dir)  # fields of view: one row per cell
    coverage = getattr(args, "coverage", 0.9)
    if not 0 < coverage < 1:
        raise UserError(f"--coverage {coverage}: give a level strictly between 0 and 1, e.g. 0.9")
    try:
        summary = predict_folder(model_dir, args.input, args.out, batch_size=args.batch_size,
                                 low_confidence=args.low_confidence, coverage=coverage,
                                 group_pattern=getattr(args, "group_pattern", None))
    except re.error as exc:
        raise UserError(f"--group-pattern: not a valid regular expression ({exc})") from None
    print(f"model: {model_dir}")
    print(f"{summary['predicted']} images predicted -> {summary['csv']}")
    if summary.get("ood_advice"):  # a new microscope or stain: no confident classes (issue 25)
        print(summary["ood_advice"])
    else:
        for c, n in summary["counts"].items():
            print(f"  {c:<20} {n}")
    if summary.get("publishable_note"):
        print(summary["publishable_note"])
    if summary.get("novel_type") is not None:
        print(f"{summary['novel_type']} images look like none of the trained types: counted as 'unseen type' "
              "(novel_type column)")
    if summary.get("coverage") is not None:
        print(f"prediction sets at {summary['coverage']:.0%} coverage: prediction_set column")
    if summary.get("proportions"):
        print(f"proportions per group with 95% intervals: {summary['proportions']}"
              + ("" if summary.get("proportions_corrected") else " (plain shares: this model version stores no confusion)"))
    if summary.get("proportions_plot"):
        print(f"proportions plot: {summary['proportions_plot']}")
    print(f"{summary['low_confidence']} low-confidence predictions (below {args.low_confidence:.2f}, flagged in the CSV)")
    if summary.get("out_of_distribution") is not None:
        print(f"{summary['out_of_distribution']} images unlike anything the model was trained on (out_of_distribution column)")
    if summary.get("quality"):
        flagged = {v: n for v, n in summary["quality"].items() if v != "ok" and n}
        print(f"image quality: {sum(flagged.values())} of {summary['predicted']} images flagged"
              + (" (" + ", ".join(f"{n} {v}" for v, n in flagged.items()) + ")" if flagged else "")
              + ": quality column; check them before trusting the counts")
    if summary.get("plot"):
        print(f"summary plot: {summary['plot']}")
    if len(summary["skipped"]):
        print(summary["skipped"].summary())
    return 0


def require_faiss() -> None:
    """FAISS (the sampler's search library) comes with an extra; a plain install lacks it."""
    try:
        from sampler._faiss import faiss

        faiss()
    except ImportError:
        raise UserError("the sampler needs FAISS, which comes with an extra: pip install 'scopeloop[cpu]' "
                        "(or 'scopeloop[gpu]' on a CUDA machine), or run bash scripts/setup.sh") from None


def _workspace(args):
    from scopeloop.settings import load_settings
    from trainer.store.workspace import Workspace

    settings = load_settings()
    return settings, Workspace(settings.existing_project(args.project))


def cmd_worker(args) -> int:
    from scopeloop.settings import load_settings
    from scopeloop.worker import QUEUES_ENV, worker_queues

    require_faiss()
    if getattr(args, "supervise", False):
        from scopeloop.worker import supervise

        child = [sys.executable, "-m", "scopeloop.cli", "worker"] + (["--burst"] if args.burst else []) + \
            (["--no-scheduler"] if args.no_scheduler else []) + (["--queues", args.queues] if args.queues else [])
        return supervise(child)
    settings = load_settings()
    queues = worker_queues(args.queues or os.environ.get(QUEUES_ENV), device=settings.device)
    from scopeloop.worker import run_worker

    print(f"worker listening on {settings.redis_url or 'redis://127.0.0.1:6379/0'}, queues {', '.join(queues)}"
          + ("" if any(q.endswith("-gpu") for q in queues) else
             " (no GPU: deep refreshes and embedding chunks are left to GPU workers; --queues all takes them too)")
          + " (Ctrl-C to stop)")
    run_worker(settings, burst=args.burst, scheduler=not args.no_scheduler, queues=queues)
    return 0


def cmd_refresh(args) -> int:
    from ml_backend.queue import RefreshQueue, connect_redis

    require_faiss()
    settings, ws = _workspace(args)
    kind = "deep" if args.deep else "quick"
    if args.now:
        from scopeloop.refresh import Refresher

        refresher = Refresher(ws, settings.label_studio_client(),
                              device=settings.device or None)
        out = refresher.run(kind)
        out.update(refresher.prune())
        print(json.dumps(out, indent=1, default=str))
        return 0
    q = RefreshQueue(connect_redis(settings.redis_url))
    jid = q.request(str(ws.root), kind, "requested with scopeloop refresh")
    print(f"{kind} refresh queued: {jid}" if jid else f"a {kind} refresh is already pending for this project")
    if kind == "deep" and not {o["role"]: o for o in q.overview()}["gpu"]["workers"]:
        print("no worker takes deep refreshes now (queue scopeloop-gpu): it waits for a GPU worker "
              "(sbatch scripts/slurm_worker.sh), or run a CPU worker with `scopeloop worker --queues all`")
    return 0


def cmd_status(args) -> int:
    from ml_backend.queue import RefreshQueue, connect_redis

    settings, ws = _workspace(args)
    from scopeloop.security import exposures

    for line in exposures(settings.home):  # other users could read labels or tokens (scopeloop doctor)
        print(line, file=sys.stderr)
    p, st, reg = ws.project, ws.status, ws.registry
    from ml_backend.labelstudio.sync import agreement_line, labels_by_key, unusable_keys

    labels, unusable = labels_by_key(ws.labels), unusable_keys(ws.labels)
    n_images = st.get("last_quick", {}).get("images") or p.get("n_tasks")
    done = len(labels) + len(unusable)
    print(f"project {ws.root.name}  (Label Studio project {p.get('ls_project_id')}, {settings.label_studio_url})")
    print(f"  images: {n_images or '?'}   labeled: {len(labels)}   answered unusable: {len(unusable)}   "
          f"unlabeled: {(n_images - done) if n_images else '?'}")
    if any(t.get("consensus") for t in ws.labels.get("tasks", {}).values()):
        print(f"  {agreement_line(ws.labels, p.get('classes') or [], p.get('reviewers') or [])}")
    cur = reg.current()
    if cur:
        from trainer.stats.estimate import from_metrics, headline

        log, kept = reg.version_log(), set(reg.versions())
        held = sum(1 for r in log if not r.get("promoted"))
        pruned = sum(1 for r in log if r["version"] not in kept)
        print(f"  current model: {cur}; {len(kept)} version(s) kept"
              + (f"; {held} held back by the quality gate" if held else "")
              + (f", {pruned} old held-back one(s) pruned" if pruned else ""))
        print(f"  quality: {headline(from_metrics(reg.read_json(cur, 'metrics.json')))}")
    else:
        print("  current model: none yet (label a few images of at least 2 classes)")
    print(f"  serving in Label Studio: {st.get('ls_model_version', '-')}")
    for kind in ("quick", "deep"):
        last = st.get(f"last_{kind}")
        if last:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["finished"]))
            print(f"  last {kind} refresh: {when}, {last.get('labels')} labels, {last.get('gate', last.get('note', ''))}, "
                  f"{last.get('seconds', {}).get('total')} s")
    from trainer.models.embedding_jobs import embedding_progress

    for chunks in sorted(ws.root.glob("embeddings/*/chunks")):
        prog = embedding_progress(chunks)
        if prog:
            since = time.strftime("%Y-%m-%d %H:%M", time.localtime(prog["started"])) if prog.get("started") else "?"
            print(f"  embedding under way ({chunks.parent.name}): {prog['done']:,} of {prog['images']:,} images in "
                  f"{prog['chunks']} finished chunk(s), since {since} (a crash keeps finished chunks)")
    if st.get("last_error"):
        e = st["last_error"]
        print(f"  last failure ({e['kind']}, {time.strftime('%Y-%m-%d %H:%M', time.localtime(e['time']))}): {e['error']}")
    try:
        rq = RefreshQueue(connect_redis(settings.redis_url, timeout=2))
        jobs = rq.jobs(str(ws.root))
        for state in ("running", "queued", "failed"):
            for j in jobs[state]:
                print(f"  job {state}: {j['id']} ({j['queue']})" + (f" -- {j['error']}" if j.get("error") else ""))
        if not any(jobs.values()):
            print("  jobs: none queued or running")
        print_queues(rq.overview())
    except Exception as exc:
        print(f"  jobs: Redis not reachable ({type(exc).__name__}); labels are safe in Label Studio")
    return 0


def print_queues(overview: list[dict], show: int = 5) -> None:
    """Per queue (all projects): waiting and running jobs, workers listening."""
    print("queues (all projects):")
    for q in overview:
        print(f"  {q['queue']} ({q['purpose']}): {len(q['waiting'])} waiting, {len(q['running'])} running; "
              f"{q['workers']} worker(s) listening, {q['busy']} busy"
              + (f"; {q['dead']} dead (no heartbeat: killed? `scopeloop worker --supervise` restarts them)"
                 if q.get("dead") else ""))
        for state in ("running", "waiting"):
            ids = q[state]
            for jid in ids[:show]:
                print(f"    {state}: {jid}")
            if len(ids) > show:
                print(f"    ... and {len(ids) - show} more {state}")
        if q["role"] == "gpu" and q["waiting"] and not q["workers"]:
            print("    no worker takes this queue: start a GPU worker (sbatch scripts/slurm_worker.sh), "
                  "or a CPU one with `scopeloop worker --queues all`")


def _class_list(text: str | None):
    if not text:
        return None
    p = Path(text)
    items = p.read_text().splitlines() if p.is_file() else text.split(",")
    classes = [c.strip() for c in items if c.strip()]
    if len(classes) < 2:
        raise UserError(f"--classes '{text}': give at least two cell types, comma-separated or one per line in a file")
    return classes


def _cells_option(args):
    from scopeloop.cells_project import cli_settings

    return cli_settings(args)


def cmd_init(args) -> int:
    from scopeloop import projects
    from scopeloop.settings import load_settings

    settings = load_settings()
    if not settings.label_studio_api_key:
        raise UserError("LABEL_STUDIO_API_KEY is not set: copy the token from Label Studio (Account & Settings) into it")
    model = {"image_size": args.image_size, "backbone": args.backbone}
    if args.channels:
        model["channels"] = _channels(args.channels)
    reading = {"stack": args.stack, "plane": args.plane, "timepoint": args.timepoint,
               "normalisation": args.normalisation, "bit_depth": args.bit_depth}
    ws, report = projects.init(settings, args.project, args.images, _class_list(args.classes), labels=args.labels,
                               backend_url=None if args.no_backend else settings.backend_url, model=model,
                               reading=reading, cells=_cells_option(args))
    print(report.summary())
    from trainer.io.settings import reader_of

    print(f"reading: {reader_of(ws.project.get('model') or {}).describe()}")
    print(f"project '{ws.root.name}': {settings.label_studio_url}/projects/{report.project_id}/data")
    print(f"work directory: {ws.root}")
    return 0


def cmd_qc(args) -> int:
    from trainer.quality.settings import QCSettings
    from trainer.reports.batch_qc import qc_folder

    if not Path(args.images).is_dir():
        raise UserError(f"--images '{args.images}' is not a folder of images")
    if args.settings and not Path(args.settings).is_file():
        raise UserError(f"--settings '{args.settings}' not found; give a JSON file of thresholds (see trainer/quality/)")
    settings = QCSettings.load(args.settings) if args.settings else QCSettings()
    report = qc_folder(args.images, args.out, settings, embed=not args.no_embed, backbone=args.backbone, progress=True)
    print(report.summary())
    if args.no_embed:
        print("near duplicates and unusual images not judged (--no-embed); identical pixels still are")
    print(f"verdicts and scores per image -> {args.out}")
    if len(report.skipped):
        print(report.skipped.summary())
    return 0


def cmd_demo(args) -> int:
    from scopeloop.demo import run_demo
    from scopeloop.settings import Settings

    require_faiss()
    # not load_settings(): the demo starts its own services; settings.env describes the last run's
    run_demo(Settings(), images=args.images, classes=_class_list(args.classes), port=args.port,
             backend_port=args.backend_port, name=args.project, sample=args.sample)
    return 0


def cmd_backend(args) -> int:
    from ml_backend.app import create_app
    from scopeloop.settings import load_settings

    from ml_backend.security import AUTH_OFF_WARNING, auth_disabled

    app = create_app(load_settings())
    if auth_disabled():
        print(f"WARNING: {AUTH_OFF_WARNING}", file=sys.stderr)
    if args.host in ("127.0.0.1", "localhost", "::1"):
        print(f"ML backend on http://{args.host}:{args.port} (this machine only; --host 0.0.0.0 to accept other machines)")
    else:
        print(f"note: the ML backend listens on {args.host}:{args.port}, reachable from other machines; it "
              "requires its token (docs/security.md), a firewall keeps the port to your Label Studio", file=sys.stderr)
    app.run(host=args.host, port=args.port, threaded=True)
    return 0


def _add_project_arg(p, help="project name (default: the only project; with several, say which)") -> None:
    p.add_argument("--project", default=None, help=help)


def build_parser() -> argparse.ArgumentParser:
    from scopeloop.cells_command import add_cell_args

    p = argparse.ArgumentParser(prog="scopeloop", description="Active-learning annotation for microscopy image classification.")
    p.add_argument("--version", action="version", version="scopeloop 0.1.0")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train a classifier on an ImageFolder directory and print its QC",
                       description="Train a cell-type classifier on <data>/<class>/<image> and save it as a new model version.")
    t.add_argument("--data", required=True, help="ImageFolder directory: one sub-folder per class")
    t.add_argument("--out", default=TRAIN_OUT, help="where the model registry is kept (default: %(default)s)")
    t.add_argument("--mode", choices=["head", "full"], default="head",
                   help="head: train only a linear head on frozen embeddings (fast, CPU); full: fine-tune the backbone (GPU recommended)")
    t.add_argument("--backbone", default="tf_efficientnet_lite0", help="timm model name (default: %(default)s, weights ship with scopeloop)")
    t.add_argument("--weights", default="imagenet", help="'imagenet' (offline), a local weights file, or 'none' for random init")
    t.add_argument("--image-size", type=int, default=224, help="input size in pixels (default: %(default)s)")
    t.add_argument("--channels", help="which image channels feed R,G,B, e.g. 0,2,1 (default: documented mapping)")
    t.add_argument("--stack", choices=["mip", "plane"], default="mip",
                   help="what a Z-stack becomes: maximum-intensity projection (default) or one plane (--plane)")
    t.add_argument("--plane", type=int, default=None, help="Z plane for --stack plane (default: the middle one)")
    t.add_argument("--timepoint", type=int, default=0, help="time point read from a time series (default: 0, the first)")
    t.add_argument("--normalisation", choices=["per-image", "per-dataset", "bit-depth"], default="per-image",
                   help="intensity mapping: per-image percentile stretch (default), one fixed range per channel from "
                        "a sample of the images (absolute brightness kept), or a fixed /(2^bits-1)")
    t.add_argument("--bit-depth", type=int, default=None, help="camera bits for --normalisation bit-depth (default: found from the images)")
    t.add_argument("--epochs", type=int, default=15, help="max epochs for --mode full (early stopping keeps the best)")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--val-fraction", type=float, default=0.2, help="share of images held out for validation")
    t.add_argument("--group-pattern", help="regex on the file name whose match is the image's group (e.g. 'BloodImage_\\d+'): groups never straddle train/validation")
    t.add_argument("--groups-csv", help="CSV with columns path,<group column> giving each image's group")
    t.add_argument("--group-column", default="group", help="group column name in --groups-csv")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    t.set_defaults(func=cmd_train)

    pr = sub.add_parser("predict", help="predict the cell type of every image in a folder (CSV)",
                        description="Apply a trained model to a folder of images; writes CSV + NPZ (embeddings, probabilities).")
    pr.add_argument("--input", required=True, help="folder of images (searched recursively)")
    pr.add_argument("--out", required=True, help="CSV file to write")
    pr.add_argument("--model", default=None, help=f"registry root, exported model or version folder (default: ./{TRAIN_OUT} "
                    "if there, else the model of the project in SCOPELOOP_HOME: the only one, or --project)")
    _add_project_arg(pr)
    pr.add_argument("--version", help="model version (default: current)")
    pr.add_argument("--batch-size", type=int, default=64)
    pr.add_argument("--low-confidence", type=float, default=0.5, help="flag predictions below this confidence (default: %(default)s)")
    pr.add_argument("--coverage", type=float, default=0.9,
                    help="coverage of the prediction sets (prediction_set column), e.g. 0.95 (default: %(default)s)")
    add_cell_args(pr, predict=True)
    pr.set_defaults(func=cmd_predict)

    w = sub.add_parser("worker", help="run a worker that retrains models as labels come in",
                       description="RQ worker for refresh jobs (Redis from REDIS_URL). Uses CUDA when present.")
    w.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    w.add_argument("--supervise", action="store_true",
                   help="run the worker as a child process and start a new one whenever it dies (kill -9, out of memory)")
    w.add_argument("--no-scheduler", action="store_true", help="do not run nightly/recovery checks in this worker")
    w.add_argument("--queues", default=None,
                   help="which jobs to take: comma-separated quick (quick refreshes), gpu (deep refreshes, embedding "
                        "chunks), low (housekeeping), or 'all'; default 'auto' (env SCOPELOOP_WORKER_QUEUES): "
                        "quick,low plus gpu when CUDA is available. A CPU-only worker takes deep refreshes only with "
                        "gpu in this list")
    w.set_defaults(func=cmd_worker)

    r = sub.add_parser("refresh", help="retrain the project's model now (quick, or --deep fine-tune)",
                       description="Queue a refresh for a worker, or run it in this process with --now.")
    _add_project_arg(r)
    r.add_argument("--deep", action="store_true", help="fine-tune the backbone (GPU recommended) instead of the quick head")
    r.add_argument("--now", action="store_true", help="run here instead of queueing for a worker")
    r.set_defaults(func=cmd_refresh)

    st = sub.add_parser("status", help="labels, current model, jobs and last refreshes of a project",
                        description="Per project: labeled/unlabeled counts, current model and metrics, jobs, last refresh times.")
    _add_project_arg(st)
    st.set_defaults(func=cmd_status)

    i = sub.add_parser("init", help="create or update the Label Studio project for a folder of images",
                       description="One task per image (PNG previews for TIFF/16-bit), ML backend connected, suggested order set up. "
                                   "Re-running adds only new images. Needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY.")
    i.add_argument("--images", required=True, help="folder of images (searched recursively)")
    i.add_argument("--classes", help="cell types, comma-separated or a file with one per line (default with --labels imagefolder: the folder names)")
    i.add_argument("--labels", help="existing labels to import: a CSV file with columns file,label, or the word 'imagefolder'")
    _add_project_arg(i, help="project name (default: the folder's project, or a name made from the folder's name)")
    i.add_argument("--backbone", default="tf_efficientnet_lite0")
    i.add_argument("--image-size", type=int, default=224)
    i.add_argument("--channels", help="image channels feeding R,G,B, e.g. 0,2,1")
    i.add_argument("--stack", choices=["mip", "plane", "planes", "best-focus"], default=None,
                   help="what a Z-stack becomes: maximum-intensity projection (default for fluorescence), "
                        "the best-focus plane (default for brightfield stacks), one plane (--plane), "
                        "or each plane its own task (keys <file>#z<k>)")
    i.add_argument("--plane", type=int, default=None, help="Z plane for --stack plane (default: the middle one)")
    i.add_argument("--timepoint", type=int, default=None, help="time point read from a time series (default: 0, the first)")
    i.add_argument("--normalisation", choices=["per-image", "per-dataset", "bit-depth", "both"], default=None,
                   help="intensity mapping: per-image percentile stretch (default); per-dataset: one fixed range per "
                        "channel from a sample of the images, computed once here (absolute brightness kept); "
                        "bit-depth: a fixed /(2^bits-1); both: per-image in R and B, per-dataset in G "
                        "(single-channel images). Re-running init keeps the project's settings unless given")
    i.add_argument("--bit-depth", type=int, default=None, help="camera bits for --normalisation bit-depth (default: found from the images)")
    i.add_argument("--no-backend", action="store_true", help="do not connect the ML backend (SCOPELOOP_BACKEND_URL)")
    add_cell_args(i)
    i.set_defaults(func=cmd_init)

    qc = sub.add_parser("qc", help="image quality verdicts for a folder: blank, out of focus, saturated, too dark, duplicate, unusual",
                        description="Score every image (documented in trainer/quality/) and give one verdict naming the deciding "
                                    "score; focus is learned from the folder's own sharpest images. Writes a CSV; moves nothing.")
    qc.add_argument("--images", required=True, help="folder of images (searched recursively)")
    qc.add_argument("--out", required=True, help="CSV file to write (one row per image)")
    qc.add_argument("--settings", help="JSON file of per-project thresholds, e.g. {\"blank\": 0.006, \"out_of_focus\": 2.5}")
    qc.add_argument("--no-embed", action="store_true", help="skip embeddings (faster; near duplicates and unusual not judged)")
    qc.add_argument("--backbone", default="tf_efficientnet_lite0", help="embedding model for near duplicates (default: %(default)s)")
    qc.set_defaults(func=cmd_qc)

    d = sub.add_parser("demo", help="start Label Studio, the ML backend and a worker on sample images (one command)",
                       description="Everything on this machine: embedded Redis, Label Studio, ML backend, worker; "
                                   "a project on the bundled sample (or --images/--classes), pre-annotated and ordered.")
    d.add_argument("--images", help="your own image folder (default: the bundled white blood cell sample)")
    d.add_argument("--classes", help="cell types, comma-separated (default: the image folder's sub-folder names)")
    _add_project_arg(d, help="project name (default: 'demo' for the sample, else made from the folder's name)")
    d.add_argument("--sample", choices=["wbc", "fov"], default="wbc",
                   help="bundled sample without --images: wbc (white-cell crops, default) or fov (fields of view of "
                        "blood smears: every cell found and labeled in its neighbourhood)")
    d.add_argument("--port", type=int, default=8080, help="Label Studio port (default: %(default)s)")
    d.add_argument("--backend-port", type=int, default=9090, help="ML backend port (default: %(default)s)")
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser("backend", help="run the ML backend HTTP service Label Studio calls",
                       description="Flask service: /health, /setup, /predict, /webhook (production: gunicorn scopeloop.wsgi:app).")
    b.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 = all interfaces)")
    b.add_argument("--port", type=int, default=9090)
    b.set_defaults(func=cmd_backend)

    doc = sub.add_parser("doctor", help="check that other users of this machine cannot read projects, labels or tokens",
                         description="Warn about a project folder, state file or Label Studio database that other users "
                                     "can read, and say whether the ML backend requires its token (docs/security.md).")
    doc.set_defaults(func=cmd_doctor)

    from scopeloop.cells_command import add_parser as add_cells_parser
    from scopeloop.export_commands import add_cli as add_export_cli
    from scopeloop.rollback import add_cli as add_versions_cli

    add_cells_parser(sub)
    add_export_cli(sub)
    add_versions_cli(sub)
    return p


HOME_FREE_COMMANDS = ("train", "predict", "qc", "cells")   # commands that never touch SCOPELOOP_HOME


def _private_files(command: str) -> None:
    """Owner-only files for everything this process writes (SCOPELOOP_UMASK), and a home left
    open to other users by an older scopeloop tightened, with one line (scopeloop.security)."""
    from scopeloop.security import apply_umask, tighten_home

    apply_umask()
    if command not in HOME_FREE_COMMANDS:
        tighten_home(Path(os.environ.get("SCOPELOOP_HOME", ".scopeloop")).resolve(),
                     log=lambda line: print(line, file=sys.stderr))


def cmd_doctor(args) -> int:
    from ml_backend.security import auth_disabled, token_path
    from scopeloop.security import exposures
    from scopeloop.settings import load_settings

    settings = load_settings()
    problems = exposures(settings.home)
    if auth_disabled():
        problems.append("warning: SCOPELOOP_BACKEND_AUTH=off: the ML backend answers anyone who reaches its port")
    for line in problems:
        print(line)
    if not problems:
        token = "SCOPELOOP_BACKEND_TOKEN" if os.environ.get("SCOPELOOP_BACKEND_TOKEN") else token_path(settings.home)
        print(f"ok: {settings.home} and the Label Studio databases found are private; the ML backend requires "
              f"its token ({token})")
    return 1 if problems else 0


def _service_errors():
    from ml_backend.labelstudio.client import LabelStudioError
    from scopeloop.services import ServiceError

    return (LabelStudioError, ServiceError)


def _weights_errors() -> tuple:
    """WeightsUnavailableError if its module is loaded (only then can one be raised): importing it
    up front loaded torch, timm and torchvision, ~5 s of every command's start (issue 22: restart)."""
    backbone = sys.modules.get("trainer.models.backbone")
    return (backbone.WeightsUnavailableError,) if backbone is not None else ()


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from trainer.io.errors import ImageReadError
    from trainer.store.atomic import DiskFullError
    from trainer.store.registry import RegistryError

    try:
        _private_files(args.command)
        return int(args.func(args) or 0)
    except (UserError, ImageReadError, RegistryError, FileNotFoundError, ValueError,
            DiskFullError, *_weights_errors(), *_service_errors()) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `scopeloop status | head`: the reader left early; no traceback
        try:  # later writes (the interpreter's flush at exit) go nowhere (Python docs, "Note on SIGPIPE")
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is no file descriptor (captured)
            pass
        return 1


if __name__ == "__main__":
    sys.exit(main())
