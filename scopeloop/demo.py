"""`scopeloop demo`: everything on one machine, from a fresh clone, with one command.

Starts (or reuses) an embedded Redis (or REDIS_URL), Label Studio (admin user and API token
generated once and kept in <home>/demo.json), the ML backend and a supervised worker (started
again when it dies: kill -9, out of memory); creates the project
on the bundled sample images (project "demo") or on --images/--classes (a project per image
folder, named from the folder unless --project); queues the first refresh so tasks come
pre-annotated and ordered; prints the URL, login and what to do next. Ctrl-C stops everything,
the embedded Redis included. Running it again resumes the same projects and labels (Label
Studio's data dir is kept); every project's images stay reachable because Label Studio's
local-files root is always `<home>/files`, where scopeloop links each project's folder.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path

from scopeloop.services import EmbeddedRedis, ServiceError, require_free_port, start_backend, start_worker
from scopeloop.settings import Settings

SAMPLE = Path(__file__).parent / "sample_data" / "wbc"
# `--sample fov`: 8 fields of view of blood smears; one task per cell found, shown in context (issue 24)
FOV_SAMPLE = Path(__file__).parent / "sample_data" / "fov"
FOV_CLASSES = ["Red cell", "Platelet", "Neutrophil", "Eosinophil", "Lymphocyte", "Monocyte"]


def _credentials(home: Path) -> dict:
    path = home / "demo.json"
    if path.is_file():
        return json.loads(path.read_text())
    creds = {"username": "admin@scopeloop.local", "password": secrets.token_urlsafe(9),
             "token": secrets.token_hex(20)}
    home.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(creds, indent=1))
    path.chmod(0o600)
    return creds


def _starter_labels(images: Path, home: Path, per_class: int = 2) -> Path:
    from trainer.io.folders import image_key, scan_imagefolder

    items, _ = scan_imagefolder(images)
    rows, seen = ["file,label"], {}
    for path, cls in items:
        if seen.get(cls, 0) < per_class:
            seen[cls] = seen.get(cls, 0) + 1
            rows.append(f"{image_key(path, images)},{cls}")
    out = home / "starter_labels.csv"
    home.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(rows) + "\n")
    return out


def scopeloop_command() -> str:
    """How to run `scopeloop` from any folder: the console script next to this Python, if any."""
    exe = Path(sys.executable).parent / "scopeloop"
    if exe.is_file():
        return str(exe)
    return shutil.which("scopeloop") or f"{sys.executable} -m scopeloop.cli"


def run_demo(settings: Settings, images: Path | None = None, classes: list[str] | None = None,
             port: int = 8080, backend_port: int = 9090, name: str | None = None, wait: bool = True,
             log=print, sample: str = "wbc") -> dict:
    """Start everything and create / resume the project; see the module docstring.

    `name`: project name (default "demo" for the bundled sample, else from the folder's name).
    With `wait=False` returns at once with `info["stop"]` to stop the services.
    `sample`: the bundled sample without --images: "wbc" (single-cell crops) or "fov" (fields of
    view: the cells are found and each is a task, shown in its neighbourhood; project "demo-fov").
    """
    from ml_backend.labelstudio.server import LabelStudioServer, LabelStudioServerError
    from ml_backend.queue import RefreshQueue, connect_redis
    from scopeloop import projects

    bundled = images is None
    fov = bundled and sample == "fov"
    images = Path(images or (FOV_SAMPLE if fov else SAMPLE)).expanduser().resolve()
    if not images.is_dir():
        raise ServiceError(f"--images '{images}' is not a folder; give the folder that holds your images")
    if bundled and not name:
        name = "demo-fov" if fov else "demo"
    if fov and classes is None:
        classes = list(FOV_CLASSES)
    labels = None
    if classes is None:
        classes = sorted(d.name for d in images.iterdir() if d.is_dir() and not d.name.startswith("."))
        if len(classes) < 2:
            raise ServiceError(f"no --classes given and '{images}' has fewer than two class sub-folders to take "
                               "them from; give the cell types with --classes \"A,B,C\"")
    home = settings.home
    from ml_backend.labelstudio.server import backend_loopback_host
    from scopeloop.security import tighten_home

    home.mkdir(parents=True, exist_ok=True, mode=0o700)   # owner-only (docs/security.md)
    tighten_home(home, log=log)
    creds = _credentials(home)
    # the backend gets a loopback address of its own: Label Studio's SSRF protection stays on and
    # lets through that one address only (ml_backend.labelstudio.server)
    backend_host = backend_loopback_host()
    if bundled and not fov:  # like a lab's partly labeled data: two images per class come labeled
        labels = _starter_labels(images, home)
    require_free_port(port, "Label Studio", "--port")
    require_free_port(backend_port, "the ML backend", "--backend-port", backend_host)
    started = []

    def stop_all():
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C must not cut the stop short
        except ValueError:
            pass  # not the main thread
        try:
            for svc in reversed(started):
                try:
                    svc.stop()
                except Exception as exc:
                    log(f"warning: stopping {type(svc).__name__}: {type(exc).__name__}: {exc}")
            started.clear()
        finally:
            try:
                signal.signal(signal.SIGINT, signal.default_int_handler)
            except ValueError:
                pass

    try:
        if not settings.redis_url:
            log("starting embedded Redis ...")
            redis = EmbeddedRedis(home / "redis")
            started.append(redis)
            settings.redis_url = redis.url
        connect_redis(settings.redis_url).ping()
        ls_dir = home / "label-studio"
        first = not (ls_dir / "label_studio.sqlite3").exists()
        log(f"starting Label Studio on http://127.0.0.1:{port}" + (" (first start: about a minute)" if first else "")
            + " ...")
        files = projects.links_root(settings)
        ls = LabelStudioServer(data_dir=ls_dir, document_root=files, allow_hosts=(backend_host,),
                               port=port, username=creds["username"], password=creds["password"], token=creds["token"])
        started.append(ls)   # before start(): Ctrl-C during the start stops it too
        try:
            ls.start()
        except LabelStudioServerError as exc:
            raise ServiceError(str(exc)) from None
        settings.label_studio_url, settings.label_studio_api_key = ls.url, creds["token"]
        settings.backend_url = f"http://{backend_host}:{backend_port}"
        os.environ["LOCAL_FILES_DOCUMENT_ROOT"] = str(files)
        log("starting the ML backend and a worker ...")
        started.append(start_backend(settings, backend_port, home / "logs", host=backend_host))
        started.append(start_worker(settings, home / "logs", supervise=True))   # a killed worker comes back
        from scopeloop.settings import write_settings_file

        write_settings_file(settings)
        log(f"creating the project from {images} ...")
        ws, report = projects.init(settings, name, images, classes, labels=labels, backend_url=settings.backend_url,
                                   model={"image_size": 128}, cells={"mode": "auto"} if fov else None)
        name = ws.root.name
        log(report.summary())
        q = RefreshQueue(connect_redis(settings.redis_url))
        before = ws.status.get("pushes", 0)   # read before the request: a quick refresh may end first
        q.request(str(ws.root), "quick", "demo start: pre-annotate and order")
        # a restart with no new task: Label Studio still holds the last run's suggestions and order,
        # so the refresh runs in the background instead of being waited for (issue 22: restart < 20 s)
        resumed = before > 0 and not getattr(report, "created", 0)
        embedded = any((ws.root / "embeddings").glob("*/keys.json"))
        log("Label Studio shows the last run's suggestions and order; the model refreshes in the background"
            if resumed else
            "pre-annotating and ordering the images" + ("" if embedded else " (first time: embedding them, about a minute)")
            + " ...")
        deadline = time.time() + 600
        while not resumed and time.time() < deadline and ws.status.get("pushes", 0) == before:
            if not started[-1].alive():
                raise ServiceError(f"the worker stopped; log {started[-1].log_path}:\n{started[-1].log_tail()}")
            time.sleep(1)
        pid = ws.project["ls_project_id"]
        info = {"url": f"{ls.url}/projects/{pid}/data", "username": creds["username"], "password": creds["password"],
                "token": creds["token"], "project_id": pid, "project": name, "workspace": str(ws.root)}
        cmd = f"SCOPELOOP_HOME={home} {scopeloop_command()}"
        import shlex

        again = shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["demo"] else "demo"
        info["commands"] = {"status": f"{cmd} status --project {name}",
                            "init": f"{cmd} init --images <folder> --classes \"A,B,C\""}
        log("\n".join([
            "",
            f"scopeloop demo is ready (project '{name}').",
            f"  open      {info['url']}",
            f"  log in    {creds['username']} / {creds['password']}",
            f"  API token {creds['token']}",
            "  then      click 'Label All Tasks': images come in the order that teaches the model most; above",
            "            each image the model's suggestion (class, confidence, why it was picked) as soon as",
            "            two classes have labels. Each label you submit retrains the model within seconds.",
            f"  progress  {info['commands']['status']}",
            f"  your own  {info['commands']['init']}   (another folder, its own project)",
            f"  stop      Ctrl-C; `{cmd} {again}` continues where you left off",
        ]))
        if not wait:
            info["stop"] = stop_all
            return info
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        log("\nstopping ...")
        stop_all()
        return {}
    except BaseException:
        stop_all()
        raise
