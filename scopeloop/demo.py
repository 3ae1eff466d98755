"""`scopeloop demo`: everything on one machine, from a fresh clone, with one command.

Starts (or reuses) an embedded Redis (or REDIS_URL), Label Studio (admin user and API token
generated once and kept in <home>/demo.json), the ML backend and a worker; creates the project
on the bundled sample images (or --images/--classes); queues the first refresh so tasks come
pre-annotated and ordered; prints the URL, login and what to do next. Ctrl-C stops everything.
Running it again resumes the same project and labels (Label Studio's data dir is kept).
"""
from __future__ import annotations

import json
import secrets
import signal
import time
from pathlib import Path

from scopeloop.services import EmbeddedRedis, ServiceError, require_free_port, start_backend, start_worker
from scopeloop.settings import Settings

SAMPLE = Path(__file__).parent / "sample_data" / "wbc"


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
    from trainer.images import image_key, scan_imagefolder

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


def _common_root(*paths: Path) -> Path:
    import os

    return Path(os.path.commonpath([str(p.resolve()) for p in paths]))


def run_demo(settings: Settings, images: Path | None = None, classes: list[str] | None = None,
             port: int = 8080, backend_port: int = 9090, name: str = "demo", wait: bool = True,
             log=print) -> dict:
    from ml_backend.ls_server import LabelStudioServer, LabelStudioServerError
    from ml_backend.queue import RefreshQueue, connect_redis
    from scopeloop import projects

    bundled = images is None
    images = Path(images or SAMPLE).resolve()
    labels = None
    if classes is None:
        classes = sorted(d.name for d in images.iterdir() if d.is_dir())
        if not classes:
            raise ServiceError(f"no --classes given and '{images}' has no class sub-folders to take them from")
    home = settings.home
    creds = _credentials(home)
    if bundled:  # like a lab's partly labeled data: two images per class come labeled
        labels = _starter_labels(images, home)
    require_free_port(port, "Label Studio", "--port")
    require_free_port(backend_port, "the ML backend", "--backend-port")
    started = []

    def stop_all():
        for svc in reversed(started):
            try:
                svc.stop()
            except Exception:
                pass

    try:
        redis = None
        if not settings.redis_url:
            log("starting embedded Redis ...")
            redis = EmbeddedRedis(home / "redis")
            started.append(redis)
            settings.redis_url = redis.url
        connect_redis(settings.redis_url).ping()
        log(f"starting Label Studio on http://127.0.0.1:{port} (first start: about a minute) ...")
        ls = LabelStudioServer(data_dir=home / "label-studio", document_root=_common_root(images, home),
                               port=port, username=creds["username"], password=creds["password"], token=creds["token"])
        try:
            ls.start()
        except LabelStudioServerError as exc:
            raise ServiceError(str(exc)) from None
        started.append(ls)
        settings.label_studio_url, settings.label_studio_api_key = ls.url, creds["token"]
        settings.backend_url = f"http://127.0.0.1:{backend_port}"
        import os

        os.environ["LOCAL_FILES_DOCUMENT_ROOT"] = str(ls.document_root)
        log("starting the ML backend and a worker ...")
        started.append(start_backend(settings, backend_port, home / "logs"))
        started.append(start_worker(settings, home / "logs"))
        from scopeloop.settings import write_settings_file

        write_settings_file(settings)
        log(f"creating the project from {images} ...")
        ws, report = projects.init(settings, name, images, classes, labels=labels, backend_url=settings.backend_url,
                                   model={"image_size": 128})
        log(report.summary())
        q = RefreshQueue(connect_redis(settings.redis_url))
        q.request(str(ws.root), "quick", "demo start: pre-annotate and order")
        log("pre-annotating and ordering the images (first time: embedding them, about a minute) ...")
        deadline = time.time() + 600
        before = ws.status.get("pushes", 0)
        while time.time() < deadline and ws.status.get("pushes", 0) == before:
            if not started[-1].alive():
                raise ServiceError(f"the worker stopped; log {started[-1].log_path}:\n{started[-1].log_tail()}")
            time.sleep(1)
        pid = ws.project["ls_project_id"]
        info = {"url": f"{ls.url}/projects/{pid}/data", "username": creds["username"], "password": creds["password"],
                "token": creds["token"], "project_id": pid, "workspace": str(ws.root)}
        log("\n".join([
            "",
            "scopeloop demo is ready.",
            f"  open      {info['url']}",
            f"  log in    {creds['username']} / {creds['password']}",
            f"  API token {creds['token']}",
            "  then      click 'Label All Tasks': images come in the order that teaches the model most,",
            "            with the model's guess pre-selected and its confidence shown (as soon as two",
            "            classes have labels). Each label you submit retrains the model within seconds.",
            f"  progress  SCOPELOOP_HOME={home} .venv/bin/scopeloop status --project demo",
            "  stop      Ctrl-C (run the same command again to continue where you left off)",
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
