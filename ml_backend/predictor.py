"""Predictions for Label Studio tasks, as the ML backend's `/predict` returns them.

Where a prediction comes from, in order:
1. the prediction cache of the current model version (`Workspace.load_predictions()`:
   keys, probs, classes), looked up by the task's image key;
2. otherwise the current model itself (`ScopeModel.load(registry.current_path())`) on the
   image `images_root / key`, kept in memory (reloaded when `registry/current` changes) and
   remembered per version, so asking twice does not compute twice.

The image key is `task["data"]["key"]`; a task without it gets its key derived from the
local-files URL in `data["image"]` (`/data/local-files/?d=<path>`), see `task_key`.

Encoding (the same as the bulk push in `ml_backend.labelstudio.client.push_predictions`, so a
prediction looks alike whichever way it reached Label Studio):
* top-level `score` = the sampler's PRIORITY in [0, 1], 0 = label first (LS "Uncertainty
  sampling" serves ascending score). Taken from the cache's optional `priority` (float per
  row, NaN = not ranked; best: exactly the pushed `rank / n`) or `rank` (int per row, 0 =
  first, negative = not ranked; -> rank / n_keys) arrays; a task the sampler has not ranked
  gets its model confidence as priority, i.e. least confident first.
* region `score` = the model's confidence in the predicted class, `meta.text` says it.
* `model_version` = `live_model_version(ws)`, exactly what `/setup` answers (the version of
  the predictions pushed to LS; LS re-predicts tasks whose prediction version differs).

Nothing here fails the whole request for one bad task: an unknown key, a vanished or
unreadable image gives that task an empty result (`[]`, score 1: label last, so a task
opened outside the pushed head never jumps the sampler's order) and a line in `errors`.
Uncached images are computed batch by batch within a time budget (SCOPELOOP_PREDICT_BUDGET_S,
60 s: Label Studio gives up after 100 s), then the request answers with what it has: the rest
get empty results and one error line. No model yet (cold start) gives every task no prediction at
all (an empty list: nothing for Label Studio to show), not an error. A labeling config
whose choices lack one of the model's classes gives every task an empty result and an error
saying so: never a label the config does not offer.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, Sequence
from urllib.parse import unquote, urlparse

import numpy as np

from label_config import LabelConfigError, ParsedConfig, choice_result, parse_config
from ml_backend.security import inside
from trainer.store.workspace import Workspace

log = logging.getLogger(__name__)

UNTRAINED = "untrained"        # model_version before any prediction was pushed to LS
DEFAULT_FROM_NAME = "label"    # label_config.build_config's defaults
DEFAULT_TO_NAME = "image"
COMPUTED_CACHE_SIZE = 50_000   # remembered live predictions (per process; a few MB)
BUDGET_ENV, DEFAULT_BUDGET_S = "SCOPELOOP_PREDICT_BUDGET_S", 60.0  # compute time per /predict (LS waits 100 s)


def live_model_version(ws: Workspace) -> str:
    """The model version live in Label Studio for this project (what `/setup` must answer)."""
    v = ws.status.get("ls_model_version")
    return str(v) if v else UNTRAINED


@lru_cache(maxsize=64)
def _parse_config_cached(xml: str) -> tuple[ParsedConfig | None, str | None]:
    try:
        return parse_config(xml), None
    except LabelConfigError as e:
        return None, str(e)


def check_label_config(xml: str | None, model_classes: Sequence[str] | None
                       ) -> tuple[ParsedConfig | None, str | None]:
    """(parsed config, None) if predictions of `model_classes` fit the config, else (.., error).

    The config may offer more classes than the model knows (a class added before the next
    training); every class the model can predict must be one of its choices.
    """
    if not xml:
        return None, None
    parsed, err = _parse_config_cached(xml)
    if err:
        return None, f"labeling config rejected: {err}"
    if model_classes is not None:
        missing = [c for c in model_classes if c not in parsed.classes]
        if missing:
            return parsed, (f"labeling config choices {parsed.classes} lack the model's class(es) "
                            f"{missing} (model classes: {list(model_classes)}): predictions withheld. "
                            "Make the <Choice> values match the class names the model was trained "
                            "on, or retrain with the new classes (deep refresh)")
    return parsed, None


# ------------------------------------------------------------------ task -> key

def _safe_key(key: str) -> str | None:
    """A relative posix key that stays inside the image root, else None. Windows separators
    become "/", except the `\\xNN` escapes of non-UTF-8 bytes (`trainer.io.folders.image_key`)."""
    key = re.sub(r"\\(?!x[0-9a-fA-F]{2})", "/", key).strip()
    p = PurePosixPath(key)
    if not key or p.is_absolute() or ".." in p.parts:
        return None
    return str(p)


def _url_path(url: str) -> str | None:
    """The file path a task's image URL points to (local-files `?d=` or a bare path).

    Percent-decoded exactly once (a name such as `serum 10%FBS A1.png`, sent as
    `10%25FBS`, stays `10%FBS`); `+` stays `+` (only `%2B`/`+` as written), and an unencoded
    `#` stays part of the name rather than becoming a URL fragment."""
    parsed = urlparse(url)
    if "local-files" in parsed.path:
        query = url.split("?", 1)[1] if "?" in url else ""
        for part in query.split("&"):
            if part.startswith("d="):
                return unquote(part[2:]) or None
        return None
    if not parsed.scheme and not parsed.netloc and parsed.path:
        return unquote(parsed.path)
    return None  # http(s)://, s3://, gs://, data: URLs name no local file


def task_key(task: dict, images_root: Path | None = None, known: set | None = None,
             value_key: str = "image", document_root: Path | None = None) -> str | None:
    """The image key of a task: `data.key`, or derived from the local-files URL of its image.

    The URL's `d=` path is relative to Label Studio's LOCAL_FILES_DOCUMENT_ROOT, which the
    backend may not know: with `document_root` it is exact; otherwise the longest trailing part
    of the path that is a known key (`known`) or a file under `images_root` is taken.
    """
    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict):
        return None
    key = data.get("key")
    if isinstance(key, str) and key:
        return _safe_key(key)
    url = data.get(value_key) or data.get("image")
    rel = _url_path(url) if isinstance(url, str) else None
    if not rel:
        return None
    root = Path(images_root).resolve() if images_root else None
    if root is not None:
        candidates = [Path(document_root) / rel.lstrip("/")] if document_root else []
        candidates.append(Path("/") / rel.lstrip("/"))  # document root "/" or an absolute path
        for c in candidates:
            try:
                return _safe_key(Path(c).resolve().relative_to(root).as_posix())
            except (ValueError, OSError):
                pass
    parts = PurePosixPath(rel.lstrip("/")).parts
    tails = ["/".join(parts[i:]) for i in range(len(parts))]
    if known:
        for t in tails:
            if t in known:
                return t
    if root is not None:
        from trainer.io.folders import path_for_key

        for t in tails:
            if path_for_key(root, t).is_file():
                return _safe_key(t)
    return None


# ------------------------------------------------------------------ predictor

@dataclass
class PredictOutcome:
    results: list                           # one per task, in order: a prediction, or [] for none
    model_version: str
    errors: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=lambda: {"cached": 0, "computed": 0, "empty": 0})

    def as_response(self) -> dict:
        out = {"results": self.results, "model_version": self.model_version, "counts": self.counts}
        if self.errors:
            out["errors"] = self.errors
        return out


def empty_prediction(model_version: str) -> dict:
    """A task's answer when there is nothing to suggest (no model yet, unreadable image, bad
    task): no result, score 1 = last in Label Studio's order (the pushed order's scores are < 1)."""
    return {"result": [], "score": 1.0, "model_version": model_version}


class Predictor:
    """Serves one project's predictions; keep one per workspace for the process's life."""

    def __init__(self, workspace: Workspace, device: str | None = None, max_compute: int = 512,
                 batch_size: int = 32, time_budget_s: float | None = None):
        self.ws = workspace
        self.device = device or None
        self.max_compute = max_compute
        # seconds one request may spend computing (Label Studio gives up after 100 s): what is not
        # computed by then gets an empty result and an error line; the next refresh caches it
        self.time_budget_s = float(os.environ.get(BUDGET_ENV, DEFAULT_BUDGET_S)) if time_budget_s is None \
            else float(time_budget_s)
        self.batch_size = batch_size
        self._lock = threading.RLock()
        self._cache: dict | None = None          # {"version", "mtime", "index", "probs", ...}
        self._model = None                       # (version, ScopeModel)
        self._computed: OrderedDict = OrderedDict()   # (version, key) -> probs
        self._novel: dict = {}                        # (version, key) -> flagged as an unseen type (issue 25)
        self._stats = None                            # (version, trainer.stats.publishable.VersionStats | None)

    # --------------------------------------------------------------- state
    def current_version(self) -> str | None:
        return self.ws.registry.current()

    def model_classes(self, version: str) -> list[str] | None:
        cfg = self.ws.registry.read_json(version, "config.json")
        return list(cfg["classes"]) if cfg.get("classes") else None

    def _prediction_cache(self, version: str) -> dict | None:
        path = self.ws.predictions_path(version)
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return None
        c = self._cache
        if c is not None and c["version"] == version and c["mtime"] == mtime:
            return c
        data = self.ws.load_predictions(version)
        if data is None:
            return None
        keys = [str(k) for k in data["keys"]]
        n = max(len(keys), 1)
        # optional sampler order saved with the cache: `priority` (LS score, NaN = not ranked)
        # or `rank` (0 = first, negative = not ranked)
        priority = rank = None
        if "rank" in data and len(data["rank"]) == len(keys):
            rank = np.asarray(data["rank"], np.int64)
        if "priority" in data and len(data["priority"]) == len(keys):
            priority = np.clip(np.asarray(data["priority"], np.float64), 0.0, 1.0)
        elif rank is not None:
            priority = np.where(rank >= 0, np.clip(rank / n, 0.0, 1.0), np.nan)
        self._cache = c = {"version": version, "mtime": mtime, "index": {k: i for i, k in enumerate(keys)},
                           "probs": np.asarray(data["probs"], np.float32),
                           "classes": [str(x) for x in data["classes"]], "priority": priority,
                           "rank": rank,
                           "novel": np.asarray(data["novel"], bool) if "novel" in data and len(data["novel"]) == len(keys)
                           else None}
        log.info("prediction cache of model %s loaded: %d images", version, len(keys))
        return c

    def _load_model(self, version: str):
        if self._model is not None and self._model[0] == version:
            return self._model[1]
        import torch

        from trainer.models.model import ScopeModel

        torch.set_flush_denormal(True)  # long-lived CPU processes drift slower without it
        model = ScopeModel.load(self.ws.registry.path(version))
        self._model = (version, model)
        self._computed.clear()
        self._novel.clear()
        log.info("model %s loaded from %s", version, self.ws.registry.path(version))
        return model

    # --------------------------------------------------------------- predict
    def predict(self, tasks: Sequence[dict], label_config: str | None = None) -> PredictOutcome:
        deadline = time.monotonic() + self.time_budget_s
        mv = live_model_version(self.ws)
        out = PredictOutcome([], mv)
        empty = empty_prediction(mv)

        def all_empty(error: str | None = None) -> PredictOutcome:
            out.results = [dict(empty) for _ in tasks]
            out.counts["empty"] = len(tasks)
            if error:
                out.errors.append(error)
                log.warning("project %s: %s", self.ws.root, error)
            return out

        with self._lock:
            version = self.current_version()
            if version is None:
                # cold start: no model yet. One item per task, each an empty list: LS stores no
                # prediction (an empty one showed as a tab "untrained · 100.00%", issue 22) and serves
                # tasks without one after the pushed cold-start order, as score 1 did
                out.results = [[] for _ in tasks]
                out.counts["empty"] = len(tasks)
                return out
            cache = self._prediction_cache(version)
            classes = cache["classes"] if cache else self.model_classes(version)
            parsed, err = check_label_config(label_config, classes)
            if err:
                return all_empty(err)
            from_name, to_name, value_key = self._names(parsed)
            try:
                images_root = self.ws.images_root
            except FileNotFoundError:
                images_root = None
            known = set(cache["index"]) if cache else None
            docroot = self.ws.project.get("document_root")

            # resolve each task to (key, probs, priority, rank) or an error
            rows: list[tuple[str | None, np.ndarray | None, float | None, int | None]] = []
            todo: dict[str, list[int]] = {}
            for i, task in enumerate(tasks):
                key = task_key(task, images_root, known, value_key, Path(docroot) if docroot else None)
                if key is None:
                    out.errors.append(f"task {_tid(task)}: no image key (data.key missing and no "
                                      "local-files image URL under the project's images)")
                    rows.append((None, None, None, None))
                    continue
                if cache and key in cache["index"]:
                    r = cache["index"][key]
                    prio = float(cache["priority"][r]) if cache["priority"] is not None else None
                    prio = None if prio is not None and np.isnan(prio) else prio
                    rank = int(cache["rank"][r]) if cache["rank"] is not None else None
                    rank = None if rank is not None and rank < 0 else rank
                    rows.append((key, cache["probs"][r], prio, rank))
                    out.counts["cached"] += 1
                    continue
                hit = self._computed.get((version, key))
                if hit is not None:
                    rows.append((key, hit, None, None))
                    out.counts["computed"] += 1
                    continue
                rows.append((key, None, None, None))
                todo.setdefault(key, []).append(i)

            live_classes = classes
            if cache is not None and out.counts["cached"] < len(tasks):
                live_classes = self.model_classes(version)  # computed rows: the model's own order
                if live_classes != classes:
                    _, err = check_label_config(label_config, live_classes)
                    if err:
                        return all_empty(err)
            if todo:
                self._compute(version, todo, rows, images_root, out, deadline)

        for task, (key, probs, prio, rank) in zip(tasks, rows):
            if probs is None:
                out.results.append(dict(empty))
                out.counts["empty"] += 1
                continue
            cls_list = classes if (cache and key in cache["index"]) else live_classes
            k = int(np.argmax(probs))
            conf = float(probs[k])
            pset, cov, novel = self._suggestion(version, key, probs, cls_list)
            out.results.append({
                "result": [choice_result(from_name, to_name, cls_list[k], conf, None if rank is None else rank + 1,
                                         pset, cov, novel)],
                "score": round(prio if prio is not None else conf, 6),
                "model_version": mv,
            })
        if out.errors:
            log.warning("project %s: %d of %d task(s) without prediction: %s", self.ws.root,
                        out.counts["empty"], len(tasks), "; ".join(out.errors[:5]))
        return out

    def _version_stats(self, version: str):
        """The version's unseen-type model and prediction-set calibration (None: saved before issue 25)."""
        if self._stats is None or self._stats[0] != version:
            from trainer.stats.publishable import VersionStats

            try:
                stats = VersionStats.load(self.ws.registry.path(version))
            except Exception as exc:  # noqa: BLE001 - suggestions without them
                log.warning("model %s: novelty model / prediction sets unreadable (%s: %s)", version,
                            type(exc).__name__, exc)
                stats = None
            self._stats = (version, stats)
        return self._stats[1]

    def _suggestion(self, version: str, key: str, probs, classes) -> tuple[list | None, float | None, bool]:
        """(prediction set as class names, its coverage, flagged as unseen) of one row: the set
        from the version's conformal calibration; the flag for images computed here (their
        embeddings were at hand) or from the prediction cache's optional `novel` array."""
        stats = self._version_stats(version)
        if stats is None or list(stats.classes) != list(classes):
            return None, None, False
        pset = cov = None
        if stats.calibrator is not None:
            pset = [classes[c] for c in stats.calibrator.sets(np.asarray(probs, float)[None, :])[0]]
            cov = stats.calibrator.coverage
        novel = self._novel.get((version, key))
        c = self._cache
        if novel is None and c is not None and c["version"] == version and c.get("novel") is not None \
                and key in c["index"]:
            novel = bool(c["novel"][c["index"][key]])
        return pset, cov, bool(novel)

    def _names(self, parsed: ParsedConfig | None) -> tuple[str, str, str]:
        if parsed is not None:
            return parsed.from_name, parsed.to_name, parsed.value_key or "image"
        p = self.ws.project
        if p.get("label_config"):
            stored, _ = _parse_config_cached(p["label_config"])
            if stored is not None:
                return stored.from_name, stored.to_name, stored.value_key or "image"
        return p.get("from_name", DEFAULT_FROM_NAME), p.get("to_name", DEFAULT_TO_NAME), "image"

    def _compute(self, version: str, todo: dict[str, list[int]], rows: list, images_root: Path | None,
                 out: PredictOutcome, deadline: float | None = None) -> None:
        """Run the current model on the images of `todo` (key -> task positions); fill `rows`.
        Batch by batch until `deadline` (time.monotonic()): the rest is reported, not computed."""
        from trainer.models.inference import run_model

        if images_root is None:
            out.errors.append("project has no images folder (project.json images_root): "
                              f"{sum(map(len, todo.values()))} task(s) cannot be predicted")
            return
        from trainer.io.folders import path_for_key
        from trainer.io.plane_keys import image_exists, split_plane

        root = images_root.resolve()
        keys, paths = [], []
        for key in todo:
            p = path_for_key(root, key)  # keys of non-UTF-8 names carry \xNN escapes
            if len(keys) >= self.max_compute:
                out.errors.append(f"image {key}: not predicted, over {self.max_compute} images to "
                                  "compute in one request (the next refresh caches them)")
                continue
            if not image_exists(p):  # a file, or a Z plane <file>#z<k> of one (stack "planes")
                out.errors.append(f"image {key}: file not found under {root}")
                continue
            if not inside(split_plane(p)[0], root):  # a link out of the image folder is never read
                out.errors.append(f"image {key}: its real location is outside the image folder {root}; not read")
                continue
            keys.append(key)
            paths.append(p)
        if not keys:
            return
        try:
            model = self._load_model(version)
        except Exception as e:  # a broken model folder must not take the service down
            log.exception("cannot load model %s of %s", version, self.ws.root)
            out.errors.append(f"model {version} cannot be loaded ({type(e).__name__}: {e}); "
                              f"{len(keys)} task(s) not predicted")
            return
        cfg = model.config
        import torch
        device = torch.device(self.device) if self.device else None
        step = max(1, self.batch_size)
        for start in range(0, len(keys), step):
            if deadline is not None and start and time.monotonic() > deadline:
                left = keys[start:]
                out.errors.append(f"{len(left)} image(s) not predicted within this request's time budget "
                                  f"({self.time_budget_s:g} s, {BUDGET_ENV}; Label Studio waits 100 s): "
                                  f"{', '.join(left[:3])}{' ...' if len(left) > 3 else ''} (the next refresh caches them)")
                break
            res = run_model(model.net, paths[start:start + step], cfg.image_size, cfg.mean, cfg.std, cfg.reader,
                            batch_size=self.batch_size, device=device, num_workers=0)
            for s in res.skipped.skipped:
                out.errors.append(f"image {s['path']}: {s['reason']}")
            stats = self._version_stats(version)
            flags = None
            if stats is not None and stats.novelty is not None and len(res.rows):
                try:
                    flags = stats.novelty.flag(res.embeddings)
                except Exception:  # noqa: BLE001 - e.g. another embedding width: no flag
                    flags = None
            for j, row in enumerate(res.rows.tolist()):
                key, probs = keys[start + row], res.probs[j]
                self._computed[(version, key)] = probs
                if flags is not None:
                    self._novel[(version, key)] = bool(flags[j])
                for i in todo[key]:
                    rows[i] = (key, probs, None, None)
                    out.counts["computed"] += 1
        while len(self._computed) > COMPUTED_CACHE_SIZE:
            gone, _ = self._computed.popitem(last=False)
            self._novel.pop(gone, None)


def _tid(task: Any) -> Any:
    """A task's id as it may appear in a message or log line: an int as is, anything else a
    short repr (an id with a newline cannot forge log lines, a huge one cannot flood them)."""
    tid = task.get("id", "?") if isinstance(task, dict) else "?"
    if isinstance(tid, int) and not isinstance(tid, bool):
        return tid
    text = repr(tid)
    return text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"
