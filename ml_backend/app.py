"""The ML backend Label Studio 1.23 calls: `/health`, `/setup`, `/predict`, `/webhook`.

Same response shapes as Label Studio's own ML backends (label-studio-ml), on Flask 3. What
LS sends and expects (measured on 1.23.2; see docs/architecture.md):

* `GET /health` (1 s timeout, before every /setup) -> `{"status": "UP", "model_class": ...}`.
  Always open (no auth), never touches Redis or the disk.
* `POST /setup` (3 s) `{"project": "<id>.<ts>", "schema": <config XML>, ...}` ->
  `{"model_version": v}` where v is the version of the predictions live in LS
  (`status.json` `ls_model_version`) or "untrained". Never anything else: LS re-predicts
  every task whose prediction version differs. An UNKNOWN project still gets 200 and
  "untrained" (plus a `warning`): `scopeloop init` connects the backend before its
  project.json records the LS project id, and a 4xx here would make that connect fail. A
  config whose choices do not fit the model is a `warning` here too (the connection works;
  /predict then withholds predictions and says why).
* `POST /predict` (100 s) `{"tasks": [...], "project": "<id>.<ts>", "label_config": XML, ...}`
  -> `{"results": [one item per task, in order], "model_version": v}`; see
  `ml_backend.predictor`. Unknown project -> 404 JSON error.
* `POST /webhook` (1 s, inside the annotator's save request, never retried): counts the
  change and queues a coalesced refresh through `RefreshQueue`, then answers. Redis down ->
  still 200 within ~0.5 s with `"queued": false` and a note (labels are safe in LS; the
  poller reconciles), a warning in the log, and Redis is not retried for a few seconds.
    ANNOTATION_CREATED / ANNOTATIONS_CREATED / ANNOTATION_UPDATED / ANNOTATIONS_DELETED /
    TASKS_DELETED -> label event (quick refresh every SCOPELOOP_REFRESH_EVERY changes)
    START_TRAINING -> deep refresh;  TASKS_CREATED -> quick refresh (embed + predict new images)
    anything else -> 200 "ignored" (LS's ML webhook is created with send_for_all_actions).

Auth (on by default, also on loopback; /health stays open; docs/security.md):
  the token: SCOPELOOP_BACKEND_TOKEN (or Settings.backend_token), else the one generated once
      in <SCOPELOOP_HOME>/backend_token (0600, ml_backend.security). Accepted as
      `Authorization: Token x` / `Bearer x`, or HTTP basic auth user "scopeloop" + the token:
      what `scopeloop init`/`demo` give Label Studio's ML backend setting "Basic Auth"; the ML
      webhook LS creates gets an `Authorization: Token` header from them too (LS 1.23
      `create_ml_webhook` sets none).
  SCOPELOOP_BACKEND_USER + SCOPELOOP_BACKEND_PASSWORD  also accepted as HTTP basic auth
  SCOPELOOP_BACKEND_WEBHOOK_AUTH=0                      leave /webhook open (warned about)
  SCOPELOOP_BACKEND_AUTH=off                            no auth at all (warned about)
Other environment: SCOPELOOP_REFRESH_EVERY (default 1), SCOPELOOP_PREDICT_MAX_COMPUTE (512),
SCOPELOOP_BACKEND_MAX_BODY_MB (64).

Input limits (bad input is a 4xx with a short message, never a 500): a body over
SCOPELOOP_BACKEND_MAX_BODY_MB -> 413 naming the limit; JSON nested deeper than MAX_JSON_DEPTH
-> 400; a project id of more than 18 digits -> 400; in /predict a task whose image key or URL
is longer than the file system allows (255 bytes a name, 4096 a path) is ONE bad task (its own
empty result and error entry) while the rest of the batch is predicted. No response or log
line repeats more than a short prefix of an offending value. Every route with a body (/versions
too) goes through the same checks; every log line has its control characters escaped and is
bounded (ml_backend.security.SafeLogFilter on the log handlers).
"""
from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from flask import Flask, jsonify, request
from redis import Redis
from werkzeug.exceptions import HTTPException

from ml_backend.predictor import UNTRAINED, Predictor, check_label_config, empty_prediction, live_model_version
from ml_backend.projects import ProjectIndex, parse_project_id
from ml_backend.queue import QUEUE_NAME, RefreshQueue
from ml_backend.security import AUTH_OFF_WARNING, BASIC_USER, auth_disabled, backend_token, install_log_filter

log = logging.getLogger(__name__)

MODEL_CLASS = "scopeloop"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_TIMEOUT_S = 0.25          # connect and read: a webhook answers in < 1 s even if Redis hangs
REDIS_BACKOFF_S = 5.0           # after a Redis failure, skip it for this long (answer at once)

LABEL_EVENTS = {"ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED",
                "ANNOTATIONS_DELETED", "TASKS_DELETED"}
REFRESH_EVENTS = {"START_TRAINING": "deep", "TASKS_CREATED": "quick"}
MAX_JSON_DEPTH = 64             # LS's bodies nest < 10 deep
MAX_ID_DIGITS = 18              # a Label Studio id fits in a 64-bit integer
NAME_MAX, PATH_MAX = 255, 4096  # Linux file-name / path limits, in bytes
ECHO_CHARS = 80                 # how much of an offending value a message repeats


def short(value: Any, n: int = ECHO_CHARS) -> str:
    """repr of `value`, cut to about `n` characters (saying how long it was)."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= n:
        return repr(value) if isinstance(value, str) else text
    return f"{text[:n]!r}... ({len(text)} characters)"


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0, [] or {} is 1), iteratively."""
    depth, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list):
            depth = max(depth, d)
            stack.extend((x, d + 1) for x in v if isinstance(x, (dict, list)))
    return depth


def bad_project_id(value: Any) -> str | None:
    """Why a project id is unacceptable (too many digits), or None."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, str)):
        digits = str(value).strip().split(".")[0] if isinstance(value, str) else str(abs(value))
        if len(digits) > MAX_ID_DIGITS:
            return f"project id {short(value, 24)} is not a Label Studio project id (at most {MAX_ID_DIGITS} digits)"
    return None


def bad_task(task: dict) -> str | None:
    """Why a /predict task cannot name an image file (an over-long key or URL), or None."""
    data = task.get("data")
    if not isinstance(data, dict):
        return None
    for field_ in ("key", "image"):
        v = data.get(field_)
        if not isinstance(v, str):
            continue
        path = unquote(v) if field_ == "image" else v
        parts = re.split(r"[/\\?=&]", path)
        if len(path.encode("utf-8", "replace")) > PATH_MAX + 100 or any(len(x.encode("utf-8", "replace")) > NAME_MAX
                                                                        for x in parts):
            return (f"task {short(task.get('id'), 24)}: data.{field_} {short(v, 40)} is longer than a file "
                    f"name may be ({NAME_MAX} bytes a name, {PATH_MAX} a path); not predicted")
    return None


def env_setting(name: str, default: str = "") -> str:
    """One environment variable (the backend's own settings are not in scopeloop.settings)."""
    return os.environ.get(name, default).strip()


def _truthy(value: str) -> bool:
    return value.lower() in ("1", "true", "yes", "on")


@dataclass
class AuthConfig:
    user: str = ""
    password: str = ""
    token: str = ""
    webhook: bool = True      # require auth on /webhook too (scopeloop gives LS's ML webhook the header)
    off: bool = False         # SCOPELOOP_BACKEND_AUTH=off: explicitly no auth (warned about)

    @classmethod
    def from_env(cls, settings=None) -> "AuthConfig":
        """Auth is on by default: the token is SCOPELOOP_BACKEND_TOKEN, `settings.backend_token`,
        or the one generated once in `<home>/backend_token` (ml_backend.security)."""
        if auth_disabled():
            return cls(off=True, webhook=False)
        token = env_setting("SCOPELOOP_BACKEND_TOKEN") or getattr(settings, "backend_token", "") or ""
        home = getattr(settings, "home", None)
        if not token and home is not None:
            token = backend_token(home)
        return cls(user=env_setting("SCOPELOOP_BACKEND_USER"),
                   password=env_setting("SCOPELOOP_BACKEND_PASSWORD"), token=token,
                   webhook=not env_setting("SCOPELOOP_BACKEND_WEBHOOK_AUTH").lower() in ("0", "false", "no", "off"))

    @property
    def enabled(self) -> bool:
        return bool((self.user and self.password) or self.token)

    def check(self, header: str | None) -> bool:
        if not self.enabled:
            return True
        scheme, _, value = (header or "").strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme in ("token", "bearer") and self.token:
            return hmac.compare_digest(value.encode(), self.token.encode())
        if scheme == "basic":  # LS's "Basic Auth": the configured user/password, or user "scopeloop" + the token
            try:
                user, _, pw = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            ok = False
            if self.user and self.password:
                ok |= (hmac.compare_digest(user.encode(), self.user.encode())
                       & hmac.compare_digest(pw.encode(), self.password.encode()))
            if self.token:
                ok |= (hmac.compare_digest(user.encode(), BASIC_USER.encode())
                       & hmac.compare_digest(pw.encode(), self.token.encode()))
            return bool(ok)
        return False


@dataclass
class Backend:
    """Per-app state: project lookup, one predictor per project, the refresh queue."""

    settings: Any
    index: ProjectIndex
    auth: AuthConfig
    redis_url: str
    queue_name: str | None = None
    refresh_every: int = 1
    max_compute: int = 512
    predictors: dict = field(default_factory=dict)
    _queue: Any = None
    _redis_down_until: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def predictor(self, ws) -> Predictor:
        key = str(ws.root)
        with self._lock:
            p = self.predictors.get(key)
            if p is None:
                p = self.predictors[key] = Predictor(ws, device=getattr(self.settings, "device", "") or None,
                                                     max_compute=self.max_compute)
            return p

    def refresh_queue(self):
        if self._queue is None:
            r = Redis.from_url(self.redis_url, socket_timeout=REDIS_TIMEOUT_S,
                               socket_connect_timeout=REDIS_TIMEOUT_S, retry_on_timeout=False,
                               health_check_interval=0)
            self._queue = RefreshQueue(r, self.queue_name or QUEUE_NAME)
        return self._queue

    def enqueue(self, root: str, action: str) -> dict:
        """Count / queue a refresh for a webhook; never raises, never waits more than ~0.5 s."""
        now = time.monotonic()
        if now < self._redis_down_until:
            return {"queued": False, "note": "Redis unavailable (recent failure); refresh not queued. "
                    "Labels are safe in Label Studio; the poller / next refresh picks them up."}
        try:
            q = self.refresh_queue()
            if action in REFRESH_EVENTS:
                kind = REFRESH_EVENTS[action]
                job = q.request(root, kind, reason=f"webhook {action}")
            else:
                kind = "quick"
                job = q.on_label_event(root, reason=f"webhook {action}", every=self.refresh_every)
        except Exception as e:  # RedisError, OSError, ...: the annotator's save must not fail
            self._redis_down_until = time.monotonic() + REDIS_BACKOFF_S
            log.warning("webhook %s for %s: cannot queue a refresh (%s: %s); labels are safe in "
                        "Label Studio, the poller reconciles", action, root, type(e).__name__, e)
            return {"queued": False, "note": f"Redis unavailable ({type(e).__name__}); refresh not "
                    "queued. Labels are safe in Label Studio; the poller / next refresh picks them up."}
        return {"queued": True, "refresh": kind, "job_id": job,
                "coalesced": job is None}


def _json_body() -> tuple[dict | None, Any]:
    """(body, None) or (None, error response) for a request that must carry a JSON object."""
    raw = request.get_data(cache=True)
    if not raw or not raw.strip():
        return None, (jsonify(error="empty request body: expected a JSON object"), 400)
    too_deep = (jsonify(error=f"JSON nested more than {MAX_JSON_DEPTH} levels deep: not a body Label Studio "
                              "sends"), 400)
    try:
        body = request.get_json(force=True, silent=True)
    except RecursionError:
        return None, too_deep
    if body is None:
        return None, (jsonify(error="malformed JSON in request body: expected a JSON object "
                              "such as Label Studio sends"), 400)
    if not isinstance(body, dict):
        return None, (jsonify(error=f"request body must be a JSON object, got {type(body).__name__}"), 400)
    if json_depth(body) > MAX_JSON_DEPTH:
        return None, too_deep
    problem = bad_project_id(body.get("project"))
    if problem:
        return None, (jsonify(error=problem), 400)
    return body, None


def create_app(settings, *, queue_name: str | None = None) -> Flask:
    """The backend app. `settings`: the application's settings (`scopeloop.settings.Settings` or
    any object with `home`, `redis_url`, `device`, `backend_token`); the entry points
    (`scopeloop backend`, `scopeloop.wsgi`) read them from the environment.

    `queue_name` overrides the RQ queue (tests); workers listen on `ml_backend.queue.QUEUE_NAME`.
    """
    app = Flask(__name__)
    app.json.sort_keys = False
    max_mb = float(env_setting("SCOPELOOP_BACKEND_MAX_BODY_MB", "64") or 64)
    app.config["MAX_CONTENT_LENGTH"] = int(max_mb * 1024 * 1024)
    backend = Backend(
        settings=settings,
        index=ProjectIndex(settings.home),
        auth=AuthConfig.from_env(settings),
        redis_url=getattr(settings, "redis_url", "") or DEFAULT_REDIS_URL,
        queue_name=queue_name,
        refresh_every=max(1, int(env_setting("SCOPELOOP_REFRESH_EVERY", "1") or 1)),
        max_compute=max(1, int(env_setting("SCOPELOOP_PREDICT_MAX_COMPUTE", "512") or 512)),
    )
    app.extensions["scopeloop"] = backend
    install_log_filter()   # every log line one bounded line (ml_backend.security)
    if backend.auth.off:
        log.warning(AUTH_OFF_WARNING)
    elif backend.auth.enabled and not backend.auth.webhook:
        log.warning("auth enabled for /setup, /predict and /versions; /webhook stays open "
                    "(SCOPELOOP_BACKEND_WEBHOOK_AUTH=0): anyone reaching the port can queue refreshes")

    @app.before_request
    def _auth():
        path = request.path.rstrip("/") or "/"
        if path in ("/", "/health") or (path == "/webhook" and not backend.auth.webhook):
            return None
        if not backend.auth.check(request.headers.get("Authorization")):
            resp = jsonify(error="authentication required: HTTP basic auth (the ML backend's "
                                 "Basic Auth user/password) or 'Authorization: Token <token>'")
            resp.status_code = 401
            resp.headers["WWW-Authenticate"] = 'Basic realm="scopeloop"'
            return resp
        return None

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException):
        if e.code == 413:
            return jsonify(error=f"413 request body too large: the limit is {max_mb:g} MB "
                                 "(SCOPELOOP_BACKEND_MAX_BODY_MB); send fewer tasks per request"), 413
        return jsonify(error=f"{e.code} {e.name}: {e.description}"), e.code

    @app.errorhandler(Exception)
    def _unexpected(e: Exception):
        log.error("unexpected error in %s %s: %s: %s", request.method, request.path[:200], type(e).__name__,
                  str(e)[:300], exc_info=len(str(e)) <= 300)
        return jsonify(error=f"internal error in the scopeloop ML backend ({type(e).__name__}: {str(e)[:200]}); "
                             "see the backend's log"), 500

    @app.get("/health")
    @app.get("/")
    def health():
        return jsonify(status="UP", model_class=MODEL_CLASS)

    @app.post("/setup")
    def setup():
        body, err = _json_body()
        if err:
            return err
        ws = backend.index.find(body.get("project"))
        if ws is None:
            pid = parse_project_id(body.get("project"))
            log.warning("/setup for Label Studio project %s: no work directory under %s/projects "
                        "has this ls_project_id (yet)", short(body.get("project")), settings.home)
            return jsonify(model_version=UNTRAINED,
                           warning=f"Label Studio project {pid if pid is not None else short(body.get('project'))} "
                                   f"is not (yet) known to scopeloop: no project.json under "
                                   f"{settings.home}/projects has ls_project_id {pid}. "
                                   "Run `scopeloop init`; predictions start after it.")
        out = {"model_version": live_model_version(ws)}
        version = ws.registry.current()
        if version and body.get("schema"):
            _, problem = check_label_config(body["schema"], backend.predictor(ws).model_classes(version))
            if problem:
                log.warning("/setup for %s: %s", ws.root, problem)
                out["warning"] = problem
        return jsonify(out)

    @app.post("/predict")
    def predict():
        body, err = _json_body()
        if err:
            return err
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            return jsonify(error="'tasks' must be a list of task objects "
                                 '({"id": ..., "data": {...}})'), 400
        project = body.get("project")
        if project is None and tasks:
            project = tasks[0].get("project")
        ws = backend.index.find(project)
        if ws is None:
            return jsonify(error=f"unknown project {short(project)}: no project.json under "
                                 f"{settings.home}/projects has this ls_project_id; run `scopeloop "
                                 "init` (or check SCOPELOOP_HOME)"), 404
        t0 = time.perf_counter()
        bad = [bad_task(t) for t in tasks]
        good = [t for t, b in zip(tasks, bad) if b is None]
        outcome = backend.predictor(ws).predict(good, body.get("label_config"))
        if len(good) < len(tasks):   # one bad task never fails the batch: its own empty item
            it = iter(outcome.results)
            outcome.results = [empty_prediction(outcome.model_version) if b else next(it) for b in bad]
            outcome.errors = [b for b in bad if b] + outcome.errors
            outcome.counts["empty"] = outcome.counts.get("empty", 0) + len(tasks) - len(good)
        outcome.errors = [e if len(e) <= 300 else e[:300] + "..." for e in outcome.errors]
        log.info("/predict %s: %d task(s) in %.2f s %s", ws.root.name, len(tasks),
                 time.perf_counter() - t0, outcome.counts)
        return jsonify(outcome.as_response())

    @app.post("/webhook")
    def webhook():
        body, err = _json_body()
        if err:
            return err
        action = body.get("action")
        if not isinstance(action, str) or not action:
            return jsonify(error="webhook body has no 'action'"), 400
        if action not in LABEL_EVENTS and action not in REFRESH_EVENTS:
            return jsonify(status="ignored", action=action[:ECHO_CHARS])
        project = body.get("project")
        if project is None and isinstance(body.get("task"), dict):
            project = body["task"].get("project")
        try:
            ws = backend.index.find(project)
        except Exception as e:  # an unreadable work dir must not fail the annotator's save
            log.exception("webhook %s: project lookup failed", action)
            return jsonify(status="error", action=action, queued=False,
                           note=f"project lookup failed ({type(e).__name__}: {str(e)[:200]})")
        if ws is None:
            return jsonify(status="unknown project", action=action,
                           error=f"unknown project {parse_project_id(project)!r}: no project.json "
                                 f"under {settings.home}/projects has this ls_project_id"), 404
        result = backend.enqueue(str(ws.root), action)
        return jsonify(status="ok", action=action, project=parse_project_id(project), **result)

    @app.route("/versions", methods=["GET", "POST"])
    def versions():
        body = {}
        if request.get_data(cache=True).strip():   # LS 1.23 GETs it without a body; a body gets every check
            body, err = _json_body()
            if err:
                return err
        ws = backend.index.find(body.get("project"))
        return jsonify(versions=[live_model_version(ws) if ws else UNTRAINED])

    return app
