"""One model refresh: labels in, a better suggested order out.

    read labels from Label Studio -> embed new images (cached) -> train -> gate -> publish
    -> predict every image -> rank the unlabeled pool with the sampler -> push to Label Studio

* quick: a linear head on cached embeddings (seconds on CPU), after every few labels;
* deep: fine-tune the backbone (GPU when present), then re-embed everything in the new
  embedding space; on demand, from Label Studio's "Start training" button, and nightly.

Quality and safe promotion (trainer.stats.estimate): the quick head is fit on every label; its
quality is the k-fold cross-validated estimate (out-of-fold predictions, 95% interval, n, or
"not enough labels yet"). The candidate replaces the current model unless it is worse with
confidence: both recipes (the candidate's labels, the current model's stored training labels)
are scored out-of-fold on the same images and folds, and the candidate is held back only when
the paired bootstrap 95% interval of the difference in mean probability of the labeled class
lies wholly below -GATE_TOLERANCE, or when its training failed. A held-back model is kept as a candidate with the reason; only the
last KEEP_CANDIDATES candidates are kept (every served version stays, for rollback).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from scopeloop.loop.deep import FINETUNE_AFTER_SSL_MIN_LABELS, SSL_EPOCHS_GPU, fixed_split
from scopeloop.loop.push_sizing import head_size, labeling_rate, push_number, refresh_interval
from scopeloop.loop.versions import KEEP_CANDIDATES, TRAINING_LABELS, current_head, link_or_copy
from trainer.store.atomic import atomic_path, write_json_atomic
from trainer.store.space import DEFAULT_FEATURES, space_id_of
from trainer.store.workspace import Workspace, model_settings, read_json

GATE_TOLERANCE = float(os.environ.get("SCOPELOOP_GATE_TOLERANCE", "0.02"))
RANK_BUDGET = int(os.environ.get("SCOPELOOP_RANK_BUDGET", "50"))


def _space_id(cfg: dict, finetuned_from: str | None) -> str:
    """The project's embedding space (trainer.store.space: backbone, size, channels, reading settings, features)."""
    return space_id_of(cfg, finetuned_from, default_features=DEFAULT_FEATURES)


class Refresher:
    """Runs refreshes for one project; the Label Studio client is injected (tests, CLI).

    `run` strings the seams together; each is public so tests and tools replace one step, never
    a private method: `backbone` (the network defining the space), `deep_finetune` (the deep
    refresh: self-supervised adaptation and/or fine-tune), `embed_all` (the pool in the current
    space), `train_and_gate` (fit, estimate, gate, publish), `rank` (the sampler and the QC
    order), `push` (the head of the order to Label Studio), `prune` (old pushed predictions).
    Push sizing, the deep-refresh rules and model versions live in `scopeloop.loop`.
    """

    chunk_queue = None  # rq.Queue whose workers help embed (set by refresh_job; None: embed here only)

    def __init__(self, ws: Workspace, client, device: str | None = None, log=print):
        self.ws, self.client, self.log = ws, client, log
        self.pick_reasons: dict[int, str] = {}  # row -> why the sampler picked it (set by rank)
        self.device = device
        p = ws.project
        self.classes: list[str] = p["classes"]
        self.model_cfg = model_settings(p)
        from trainer.io.settings import reader_of

        # how every image of the project is read (stack, time point, normalisation, channels; set at init)
        self.reader = reader_of(self.model_cfg)

    # ---------------------------------------------------------------- the space
    def space(self) -> tuple[str, Path | None]:
        """Current embedding space id and the fine-tuned backbone file defining it (if any)."""
        p = self.ws.project
        ft = p.get("finetuned_backbone")
        return _space_id(self.model_cfg, p.get("finetuned_version") if ft else None), (Path(ft) if ft else None)

    def backbone(self, weights_file: Path | None):
        """(network, preprocessing, weights source) of the space: built from the same settings as
        the chunk workers' embedder (trainer.models.embedding_jobs.embedder_settings)."""
        from trainer.models.backbone import create_backbone
        from trainer.models.embedding_jobs import embedder_settings

        s = embedder_settings(self.model_cfg, weights_file, DEFAULT_FEATURES)
        return create_backbone(s["backbone"], s["weights"], s["features"])

    def embed_all(self, keys: list[str]) -> tuple[list[str], np.ndarray]:
        """Embeddings of every task image in the current space (new images only are computed)."""
        from trainer.models.inference import run_model

        space, weights_file = self.space()
        root = self.ws.images_root
        cache = self.ws.embeddings(space)
        net = {}

        def embed(paths):
            if "m" not in net:
                net["m"] = self.backbone(weights_file)
            m, pre, _ = net["m"]
            return run_model(m, paths, self.model_cfg["image_size"], pre.mean, pre.std,
                             self.reader, device=self._torch_device(), desc="embedding")

        from trainer.models.embedding_jobs import for_project  # chunks: resumable, shared with other workers

        chunked = for_project(cache.root, embed, self.model_cfg, weights_file, self.chunk_queue, self.log, DEFAULT_FEATURES)
        # only the keys not cached yet are handed over (with their paths): making 100,000 paths
        # costs ~0.8 s of every refresh; the cache returns all its rows either way
        known = set(read_json(cache.root / "keys.json", None) or [])
        new = [k for k in keys if k not in known]
        all_keys, emb, skipped = cache.update(new, [root / k for k in new], chunked)
        chunked.cleanup()
        if len(skipped):
            self.log(skipped.summary())
            write_json_atomic(self.ws.root / "skipped_images.json", skipped.skipped)
        return all_keys, emb

    def _torch_device(self):
        import torch

        from trainer.models.inference import default_device

        return torch.device(self.device) if self.device else default_device()

    def task_ids(self, pid: int, refresh: bool = False) -> dict[str, int]:
        """Image key -> task id of every task. Listing 10,000 tasks costs Label Studio seconds,
        so the map is cached in the work directory and re-read only when the task count moved."""
        cache = read_json(self.ws.root / "tasks.json", None, heal=True)  # a bad one is set aside, re-listed
        count = int(self.client.get_project(pid).get("task_number") or 0)
        if refresh or not cache or cache.get("count") != count:
            cache = {"count": count, "tasks": self.client.task_keys(pid)}
            write_json_atomic(self.ws.root / "tasks.json", cache)
        return cache["tasks"]

    # ---------------------------------------------------------------- the refresh
    def run(self, kind: str = "quick", full_sync: bool | None = None) -> dict:
        from ml_backend.labelstudio.sync import labels_by_key, sync_labels

        t0 = time.time()
        pid = self.ws.project["ls_project_id"]
        # the cached key -> task map, re-listed when the task count moved (every kind: listing
        # 100,000 tasks costs Label Studio a minute); a push that names a vanished task re-lists
        task_ids = self.task_ids(pid)
        snapshot = sync_labels(self.client, self.ws, full=(kind == "deep") if full_sync is None else full_sync)
        labels = {k: v for k, v in labels_by_key(snapshot).items() if v in self.classes and k in task_ids}
        t_sync = time.time()
        # self-supervised adaptation needs no label: the first nightly adapts the space before labeling
        if kind == "deep" and (len(set(labels.values())) >= 2 or self.ssl_epochs() > 0):
            self.deep_finetune(labels, sorted(task_ids))
        keys, emb = self.embed_all(sorted(task_ids))
        row = {k: i for i, k in enumerate(keys)}
        t_embed = time.time()
        lab_keys = [k for k in sorted(labels) if k in row]
        y = [self.classes.index(labels[k]) for k in lab_keys]
        outcome = {"kind": kind, "labels": len(lab_keys), "images": len(keys)}
        probs, version = None, self.ws.registry.current()
        if len(set(y)) >= 2:
            version, probs, gate = self.train_and_gate(kind, lab_keys, y, emb[[row[k] for k in lab_keys]], emb, keys)
            outcome.update(gate)
        else:
            outcome["note"] = "fewer than 2 classes labeled: no model yet, cold-start order"
        t_train = time.time()
        labeled = np.zeros(len(keys), bool)
        labeled[[row[k] for k in lab_keys]] = True
        # issue 14: images answered "unusable image" leave the queue like labeled ones (never a class)
        from ml_backend.labelstudio.qc_tasks import publish_verdicts
        from ml_backend.labelstudio.sync import unusable_keys

        gone = [row[k] for k in unusable_keys(snapshot) if k in row]
        labeled[gone] = True
        outcome["unusable"] = len(gone)

        order = self.rank(emb, probs, labeled, keys)
        t_rank = time.time()
        # issue 14: image quality verdicts that changed (new images, embeddings) shown in Label Studio
        outcome["qc_written"] = publish_verdicts(self.client, pid, self.ws.root, task_ids, log=self.log)["updated"]
        t_qc = time.time()
        sizing = head_size(len(order), labeling_rate(snapshot), refresh_interval(self.ws.root / "refresh_history.jsonl"))
        from ml_backend.labelstudio.client import LabelStudioError

        try:
            pushed = self.push(keys, task_ids, probs, order, order[:sizing["head"]], version)
        except LabelStudioError as exc:  # e.g. a task deleted and another added: the same count
            self.log(f"push failed ({type(exc).__name__}: {str(exc)[:200]}); re-listing the tasks and pushing again")
            task_ids = self.task_ids(pid, refresh=True)
            pushed = self.push(keys, task_ids, probs, order, order[:sizing["head"]], version)
        outcome.update(pushed)
        outcome["push"] = sizing
        outcome["seconds"] = {"sync": round(t_sync - t0, 2), "embed": round(t_embed - t_sync, 2),
                              "train": round(t_train - t_embed, 2), "rank_push": round(time.time() - t_train, 2),
                              "rank": round(t_rank - t_train, 2), "qc_publish": round(t_qc - t_rank, 2),
                              "total": round(time.time() - t0, 2)}
        outcome["finished"] = time.time()
        self.ws.update_status(**{f"last_{kind}": outcome})
        with open(self.ws.root / "refresh_history.jsonl", "a") as f:
            f.write(json.dumps(outcome) + "\n")
        return outcome

    def train_and_gate(self, kind, lab_keys, y, X, emb_all, all_keys=None):
        """Fit the candidate on every label, estimate it out-of-fold, gate it against the current model.

        The candidate and the current model are compared as *recipes* on the same images and
        folds: for each fold, the candidate's labels and the current model's own training labels
        (stored with it) each fit a head without that fold, and both predict the fold's images.
        Scoring the served head itself on labeled images would be biased: it was trained on most
        of them. Images whose label changed since the current model are left out of the
        comparison (the two label sets disagree on the truth there). The candidate is held back
        only when the paired bootstrap 95% interval of the difference in mean probability of the
        labeled class lies wholly below -GATE_TOLERANCE, or when training failed (macro-F1 of both
        is reported alongside; on a few dozen images it moves in steps too coarse to decide on).
        """
        from trainer.models.cross_validation import out_of_fold_proba
        from trainer.models.head import fit_head
        from trainer.stats.estimate import FOLDS, assign_folds, cv_inflation, estimate, headline

        yv = np.asarray(y, dtype=int)
        C = len(self.classes)
        space, _ = self.space()
        cur_head, cur_space = current_head(self.ws)
        groups = self._groups(lab_keys)
        folds = assign_folds(yv, FOLDS, groups)
        k = int(folds.max()) + 1
        judged = self._judgeable(lab_keys)
        try:
            head = fit_head(X, yv, C, seed=0)
            if not np.isfinite(head.predict_proba(X[:1])).all():
                raise ValueError("the head predicts non-finite probabilities")
            from trainer.stats.publishable import HeadRecorder

            # the fold heads are remembered: the novelty model (issue 25) reuses them
            recorder = HeadRecorder(lambda Xf, yf, n, seed=0: fit_head(Xf, yf, n, seed=seed))
            oof = out_of_fold_proba(X, yv, C, folds, seed=0, fit=recorder)
            self.publishable_inputs = {"oof": oof, "folds": folds, "fit": recorder}
            self.pool_embeddings = emb_all  # push: unseen-type flags and prediction sets of the pushed head
        except Exception as exc:  # held back: keep serving what is served
            reason = f"held back: training failed ({type(exc).__name__}: {exc})"
            self.log(reason)
            version, probs = self._serve_current(emb_all, cur_head, cur_space, space, None)
            return version, probs, {"candidate": None, "promoted": False, "gate": reason}
        ok = judged & ~np.isnan(oof[:, 0])
        pred = np.nan_to_num(oof, nan=-1.0).argmax(1)
        counts = {c: int((yv == i).sum()) for i, c in enumerate(self.classes)}
        method = f"{k}-fold cross-validation" + (" by group (project group_pattern)" if groups is not None else "") + ("" if judged.all() else
                                                 f" on the {int(judged.sum())} images the fine-tuned backbone did not train on")
        est = estimate(yv[ok], pred[ok], self.classes, None if groups is None else groups[ok], labeled_counts=counts,
                       method=method, inflation=cv_inflation(k), available=None if emb_all is None else len(emb_all))
        cmp = None
        if self.ws.registry.current() is None:
            promote, reason = True, "first model"
        else:
            cmp = self._compare_with_current(lab_keys, yv, X, folds, oof, ok, cur_space, space, all_keys, emb_all, groups)
            if cmp is None:
                promote, reason = True, "promoted without comparison: the current model has no record of its training labels"
            elif not cmp["n"]:
                promote, reason = True, "promoted: no labeled image both models could be judged on yet"
            else:
                words = (f"out-of-fold on the same {cmp['n']} labeled images, the labeled class gets mean probability "
                         f"{cmp['a']:.2f} vs {cmp['b']:.2f} from the current model's recipe (difference {cmp['diff']:+.2f}, "
                         f"95% interval {cmp['low']:+.2f} to {cmp['high']:+.2f})")
                if cmp["high"] < -GATE_TOLERANCE:
                    promote, reason = False, f"held back: worse with confidence: {words}, wholly below -{GATE_TOLERANCE}"
                else:
                    promote, reason = True, f"promoted: {words}; held back only if wholly below -{GATE_TOLERANCE}"
        version, pruned = self._save(kind, head, lab_keys, X, yv, promote, reason, est, ok, pred, cmp)
        self.log(f"model {version}: {reason}" + (f"; pruned held-back candidates {', '.join(pruned)}" if pruned else ""))
        if promote:
            probs = head.predict_proba(emb_all)
        else:  # keep serving the current model
            version, probs = self._serve_current(emb_all, cur_head, cur_space, space, head)
        return version, probs, {"candidate": version if promote else None, "promoted": promote, "gate": reason,
                                "estimate": headline(est), "comparison": cmp, "pruned": pruned}

    def _serve_current(self, emb_all, cur_head, cur_space, space, fallback):
        """(current version, its probabilities for every image) when a candidate is not promoted."""
        version = self.ws.registry.current()
        probs = cur_head.predict_proba(emb_all) if cur_head is not None and cur_space == space else None
        if probs is None:
            cached = self.ws.load_predictions(version) if version else None
            if cached is not None and len(cached["probs"]) == len(emb_all):
                probs = cached["probs"]
            elif fallback is not None:
                probs = fallback.predict_proba(emb_all)
        return version, probs

    def _groups(self, lab_keys) -> np.ndarray | None:
        """Group of each labeled image (e.g. its slide) from the project's `group_pattern`, a regular
        expression on the file name (first capture group, else the whole match; no match: the image
        is its own group). Whole groups then share a fold and are resampled together, so crops of
        one slide never judge each other. None without a pattern."""
        import re

        from trainer.io.groups import group_of

        pattern = self.ws.project.get("group_pattern")
        if not pattern:
            return None
        rx = re.compile(pattern)
        return np.array([group_of(k, rx, unmatched="own-key") for k in lab_keys])

    def _judgeable(self, lab_keys) -> np.ndarray:
        """Images an out-of-fold estimate may judge: not those a fine-tuned backbone trained on
        (its embeddings already encode their labels, out-of-fold heads would look too good)."""
        ft = self.ws.project.get("finetuned_backbone")
        seen = set(read_json(Path(ft).with_suffix(".keys.json"), [])) if ft else set()
        return np.array([k not in seen for k in lab_keys], dtype=bool)

    def _compare_with_current(self, lab_keys, yv, X, folds, oof, ok, cur_space, space, all_keys, emb_all, groups=None):
        """Paired out-of-fold comparison of the candidate with the current model's recipe (see
        `train_and_gate`); None when the current model has no stored training labels."""
        from trainer.models.cross_validation import out_of_fold_proba
        from trainer.stats.estimate import paired_difference, paired_probability_difference

        cur = self.ws.registry.current()
        old = {key: self.classes.index(c) for key, c in self.ws.registry.read_json(cur, TRAINING_LABELS).items()
               if c in self.classes}
        if not old:
            return None
        if cur_space == space:
            keys, E = (all_keys, emb_all) if all_keys is not None else (lab_keys, X)
        else:  # the current model lives in another embedding space: its recipe runs there
            keys, E = self.ws.embeddings(cur_space).load()
            if E is None:
                return None
        row = {key: i for i, key in enumerate(keys)}
        pos = {key: i for i, key in enumerate(lab_keys)}
        new = dict(zip(lab_keys, yv.tolist()))
        ev = np.flatnonzero(ok & np.array([key in row and old.get(key, lbl) == lbl for key, lbl in new.items()], dtype=bool))
        if cur_space == space and old == new:  # same labels, same space: the same recipe, the same predictions
            p_cur = oof[ev]
        else:
            tr = [key for key in sorted(old) if key in row]
            p_cur = out_of_fold_proba(E[[row[key] for key in tr]], [old[key] for key in tr], len(self.classes),
                                      np.array([folds[pos[key]] if key in pos else -1 for key in tr]), seed=0,
                                      X_eval=E[[row[lab_keys[i]] for i in ev]], y_eval=yv[ev], eval_folds=folds[ev])
        keep = ~np.isnan(p_cur[:, 0])
        rows = ev[keep]
        # no cross-validation variance correction here: both recipes share the folds and nearly
        # all training labels, so the fold-to-fold variation that inflates a single estimate
        # largely cancels in their difference; per image (not per class) weights keep a class
        # of 3 images from deciding alone
        g = None if groups is None else groups[rows]
        out = paired_probability_difference(yv[rows], oof[rows], p_cur[keep], g, balanced=False)
        f1 = paired_difference(yv[rows], oof[rows].argmax(1), p_cur[keep].argmax(1), len(self.classes), g)
        return dict(out, macro_f1=f1)

    def _save(self, kind, head, lab_keys, X, y, promote, reason, est, ok, pred, cmp) -> tuple[str, list[str]]:
        """Publish the candidate (X: embeddings of `lab_keys`, rows as in y; ok/pred: its
        out-of-fold judgement); returns (version, held-back candidates pruned)."""
        from types import SimpleNamespace

        from trainer.models.model import ScopeModel
        from trainer.models.training_qc import write_qc
        from trainer.stats.estimate import headline
        from trainer.stats.metrics import classification_metrics
        from trainer.stats.ood import build_reference

        space, weights_file = self.space()
        cfg = self._model_config(weights_file)
        source = cfg.weights_source
        # only the head is written; a fine-tuned backbone is linked, not copied: every quick
        # version of one deep refresh shares its file, so a quick refresh costs the head (plus
        # QC files and the OOD reference), not 18 MB of backbone weights
        model = ScopeModel(cfg, SimpleNamespace(head=head.to_linear()), backbone_finetuned=False)
        yv = np.asarray(y)
        metrics = {
            "estimate": est,
            "validation": dict(classification_metrics(yv[ok], pred[ok], self.classes), method=est["method"]) if ok.any() else {"n": 0},
            "counts": {"train": {c: int((yv == i).sum()) for i, c in enumerate(self.classes)},
                       "evaluated": {c: int((yv[ok] == i).sum()) for i, c in enumerate(self.classes)}},
            "gate": {"promoted": promote, "reason": reason, "comparison": cmp},
            "labels": len(lab_keys),
        }
        reg = self.ws.registry
        with reg.staging() as tmp:
            model.save(tmp)
            if weights_file is not None:
                link_or_copy(weights_file, tmp / "backbone.pt")
            write_qc(tmp, metrics, getattr(head, "history", []) or [], getattr(head, "best_epoch", None))
            build_reference(X, yv).save(tmp)  # for out-of-distribution flags
            self.save_publishable(tmp, X, yv)  # issue 25: novelty model, prediction sets, proportions' confusion
            write_json_atomic(tmp / TRAINING_LABELS, {key: self.classes[int(c)] for key, c in zip(lab_keys, yv)})
            write_json_atomic(tmp / "provenance.json", {
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "kind": kind, "embedding_space": space,
                "weights_source": source, "device": str(self._torch_device()), "labels": len(lab_keys),
                "promoted": promote, "reason": reason, "estimate": headline(est),
            })
            record = {"kind": kind, "labels": len(lab_keys), "reason": reason,
                      "estimate": {k: est[k] for k in ("method", "n", "n_labeled", "enough", "why_not", "fix", "metrics", "per_class")}}
            version = reg.publish(tmp, make_current=promote, reason=reason, record=record)
        return version, reg.prune_candidates(KEEP_CANDIDATES)

    def save_publishable(self, folder, X, y) -> None:
        """Issue 25: beside the model, the novelty model (ViM on the labeled embeddings, reusing the
        out-of-fold fold heads), the conformal calibration of prediction sets (the out-of-fold
        probabilities) and the out-of-fold confusion with the flagged-as-unseen column
        (trainer.stats.publishable). A failure here never blocks the model: it is logged."""
        from trainer.stats.publishable import build

        inp = getattr(self, "publishable_inputs", None) or {}
        try:
            stats = build(X, y, self.classes, inp.get("oof"), fit=inp.get("fit"), folds=inp.get("folds"))
            stats.save(folder)
            self.publishable_seconds = stats.info.get("seconds")
        except Exception as exc:  # noqa: BLE001 - the model is published without them, and says so
            self.log(f"novelty model / prediction sets not saved ({type(exc).__name__}: {exc})")

    def _model_config(self, weights_file):
        """The ModelConfig of a new version: the current version's when it used the same backbone
        and weights (no need to build the network to learn its normalisation), else from the backbone."""
        from trainer.io.settings import reader_of
        from trainer.models.model import ModelConfig

        source = f"file {weights_file}" if weights_file else None
        path = self.ws.registry.current_path()
        if path is not None:
            cur = read_json(path / "config.json", {})
            same = all(cur.get(k, d) == self.model_cfg.get(k, d2) for k, d, d2 in
                       (("backbone", None, None), ("weights", "imagenet", "imagenet"), ("image_size", None, None),
                        ("channels", None, None), ("features", "final", DEFAULT_FEATURES))) \
                and reader_of(cur) == self.reader
            if same and cur.get("weights_source") and (source is None) == (not (path / "backbone.pt").is_file()) \
                    and (source is None or cur["weights_source"] == source):
                return ModelConfig(**dict(cur, classes=list(self.classes), cells=self.model_cfg.get("cells")))
        _, pre, src = self.backbone(weights_file)
        return ModelConfig(self.classes, self.model_cfg["backbone"], self.model_cfg["weights"],
                           self.model_cfg["image_size"], self.model_cfg["channels"], list(pre.mean), list(pre.std), src,
                           features=self.model_cfg["features"],
                           preprocessing=self.model_cfg.get("preprocessing"), cells=self.model_cfg.get("cells"))

    def self_supervised(self, pool_keys: list[str], epochs: int) -> Path:
        """Adapt the backbone to the project's own images (trainer.models.ssl); returns its file."""
        from trainer.models.ssl import SSLConfig, adapt, save_backbone

        net, pre, _ = self.backbone(None)
        cfg = SSLConfig(epochs=epochs, device=self.device,
                        max_images=int(os.environ.get("SCOPELOOP_SSL_MAX_IMAGES", "20000")))
        res = adapt(net, [self.ws.images_root / k for k in pool_keys], self.model_cfg["image_size"], pre.mean, pre.std,
                    self.reader, cfg, log=self.log)
        path = save_backbone(res.backbone, self.ws.root / "backbones")
        self.ws.update_project(last_ssl={"epochs": epochs, "images": len(pool_keys), "history": res.history,
                                         "views_per_second": round(res.images_per_second, 1), "backbone": path.name})
        return path

    def ssl_epochs(self) -> int:
        """SCOPELOOP_SSL_EPOCHS: "auto" (default) = SSL_EPOCHS_GPU on a CUDA device, 0 on CPU
        (a 2-core CPU needs hours for what a GPU does in minutes); a number forces it."""
        value = os.environ.get("SCOPELOOP_SSL_EPOCHS", "auto").strip().lower() or "auto"
        if value != "auto":
            return int(value)
        if self._torch_device().type != "cuda":
            return 0
        import importlib.util

        if importlib.util.find_spec("lightly") is None:
            self.log("deep refresh: self-supervised adaptation skipped, the 'ssl' extra is missing "
                     "(pip install \"scopeloop[ssl]\"); fine-tuning on the labels only")
            return 0
        return SSL_EPOCHS_GPU

    def deep_finetune(self, labels: dict, pool_keys: list[str] | None = None) -> None:
        """A new embedding space for the deep refresh: the backbone adapted to the lab's images.

        With self-supervised adaptation (trainer.models.ssl; by default on a GPU) the adapted backbone
        itself is the new space: measured on bccd_wbc and pbc_blood (docs/benchmarks.md), the
        head on it beats the head on ImageNet features at every label count, and beat a
        supervised fine-tune at 100 labels, which was unstable from one label draw to the next;
        the supervised fine-tune follows only from FINETUNE_AFTER_SSL_MIN_LABELS labels on.
        Without SSL, the backbone is fine-tuned on all labels (as before)."""
        from trainer.models.training import TrainConfig, train

        keys = sorted(labels)
        root = self.ws.images_root
        ssl_epochs = self.ssl_epochs()
        start = (str(self.self_supervised(pool_keys or keys, ssl_epochs)) if ssl_epochs > 0
                 else self.model_cfg["weights"])
        if ssl_epochs > 0 and len(keys) < FINETUNE_AFTER_SSL_MIN_LABELS:
            # learned from no label: every label may judge it (empty list of training keys)
            write_json_atomic(Path(start).with_suffix(".keys.json"), [])
            self.ws.update_project(finetuned_backbone=start, finetuned_version=Path(start).stem.removeprefix("backbone-"),
                                   last_deep={"labels": len(keys), "ssl_only": True})
            self.log(f"deep refresh: backbone adapted to {len(pool_keys or keys)} images without labels -> "
                     f"{Path(start).name} (supervised fine-tune from {FINETUNE_AFTER_SSL_MIN_LABELS} labels on)")
            return
        cfg = TrainConfig(backbone=self.model_cfg["backbone"], weights=start,
                          mode="full", image_size=self.model_cfg["image_size"], channels=self.model_cfg["channels"],
                          features=self.model_cfg["features"],
                          preprocessing=self.model_cfg.get("preprocessing"),
                          epochs=int(os.environ.get("SCOPELOOP_DEEP_EPOCHS", "10")), device=self.device)
        y = [self.classes.index(labels[k]) for k in keys]
        split = fixed_split(keys, y)
        res = train([root / k for k in keys], [labels[k] for k in keys], self.classes, cfg, split=split)
        import torch

        out = self.ws.root / "backbones"
        out.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = out / f"backbone-{stamp}.pt"
        # the images this backbone learned from: quality estimates in its space leave them out
        write_json_atomic(path.with_suffix(".keys.json"), [keys[i] for i in split[0]])
        with atomic_path(path) as tmp:
            torch.save(res.model.net.backbone.state_dict(), tmp)
        self.ws.update_project(finetuned_backbone=str(path), finetuned_version=stamp,
                               last_deep={"labels": len(keys), "metrics": res.metrics.get("validation", {}).get("macro_f1"),
                                          "epochs": len(res.history), "best_epoch": res.best_epoch})
        self.log(f"deep refresh: backbone fine-tuned on {len(keys)} labels -> {path.name}")

    # ---------------------------------------------------------------- ordering
    def rank(self, emb, probs, labeled, keys) -> np.ndarray:
        """Unlabeled rows, best to label first: the sampler's picks, then by uncertainty."""
        import sampler

        unl = np.flatnonzero(~labeled)
        if len(unl) == 0:
            return unl
        picks = sampler.select(emb, probs, labeled, min(RANK_BUDGET, len(unl)), strategy="hybrid", keys=keys,
                               class_names=self.classes)
        head = [p.row for p in picks]
        self.pick_reasons = {p.row: p.reason for p in picks}  # shown with the suggestion in Label Studio
        chosen = set(head)
        rest = np.array([r for r in unl if r not in chosen], dtype=np.int64)
        if len(rest) and probs is not None:
            from sampler.uncertainty import top2_gap

            rest = rest[np.argsort(top2_gap(probs[rest]), kind="stable")]
        self.ws.update_status(last_picks=[{"key": p.key, "row": p.row, "score": p.score, "reason": p.reason} for p in picks[:20]])
        order = np.concatenate([np.asarray(head, dtype=np.int64), rest])
        from trainer.quality.project import rank_with_qc  # blank, out-of-focus, ... images leave the head (issue 14)

        return rank_with_qc(self.ws.root, self.ws.images_root, order, keys, emb, log=self.log)

    def push(self, keys, task_ids, probs, order, push_order, version) -> dict:
        from ml_backend.labelstudio.client import PredictionRow

        pid = self.ws.project["ls_project_id"]
        rank = np.full(len(keys), -1, dtype=np.int64)
        rank[order] = np.arange(len(order))
        if probs is not None and version is not None:  # the backend serves live /predict from this
            self.ws.save_predictions(version, keys, probs, self.classes, rank=rank)
            self.ws.prune_predictions()  # caches of retired versions: a bounded footprint (issue 22)
        n = self.ws.status.get("pushes", 0) + 1
        ls_version = f"scopeloop-v{version or '000'}-{n:05d}"
        rows = []
        extra = self.suggestion_extras(version, probs, push_order)
        for pos, r in enumerate(push_order):
            if keys[r] not in task_ids:
                continue  # its task was deleted in Label Studio since the images were listed
            if probs is not None:
                k = int(np.argmax(probs[r]))
                rows.append(PredictionRow(task_ids[keys[r]], self.classes[k], float(probs[r, k]), pos,
                                          self.pick_reasons.get(int(r), ""), **extra.get(int(r), {})))
            else:
                rows.append(PredictionRow(task_ids[keys[r]], None, 0.0, pos))
        # priority = rank / number of images: the score the backend's /predict gives a task opened
        # outside the pushed head (ml_backend.predictor), so both kinds of prediction sort together
        report = self.client.push_predictions(pid, rows, ls_version, from_name=self.ws.project.get("from_name", "label"),
                                              to_name=self.ws.project.get("to_name", "image"), prune=False,
                                              score_scale=len(keys), queue_length=len(order))
        self.ws.update_status(pushes=n, ls_model_version=ls_version, serving_version=version)
        return {"ls_model_version": ls_version, "pushed": report.created,
                "push_seconds": round(report.import_s + report.switch_s, 2)}

    def suggestion_extras(self, version, probs, rows) -> dict:
        """Issue 25: row -> {prediction_set, coverage, novel} for the pushed rows, from the served
        version's stored statistics (trainer.stats.publishable); {} when it has none (older
        versions: the plain suggestion) or the pool's embeddings are not at hand."""
        emb = getattr(self, "pool_embeddings", None)
        if probs is None or version is None or emb is None or len(emb) != len(probs) or not len(rows):
            return {}
        from trainer.stats.conformal import DEFAULT_COVERAGE
        from trainer.stats.publishable import VersionStats

        rows = np.asarray(rows, dtype=np.int64)
        try:  # (a held-back candidate leaves an older version served, maybe in another space)
            stats = VersionStats.load(self.ws.registry.path(version))
            if stats is None or list(stats.classes) != list(self.classes):
                return {}
            out = stats.apply(probs[rows], emb[rows], DEFAULT_COVERAGE)
        except Exception as exc:  # noqa: BLE001 - a suggestion without them, never a failed push
            self.log(f"unseen-type flags / prediction sets unavailable for model {version}: {type(exc).__name__}: {exc}")
            return {}
        novel = out["novel"] if out["novel"] is not None else np.zeros(len(rows), bool)
        cov = stats.calibrator.coverage if stats.calibrator is not None else None
        return {int(r): {"prediction_set": tuple(self.classes[c] for c in s), "coverage": cov, "novel": bool(f)}
                for r, s, f in zip(rows, out["sets"], novel)}

    def prune(self) -> dict:
        """Delete predictions of superseded versions (after the new order is already served).

        Only versions pushed before the live one (lower push number) or not ours are deleted, so
        pruning needs no lock: a push in progress always carries a higher number."""
        t0 = time.time()
        pid = self.ws.project["ls_project_id"]
        live = self.ws.status.get("ls_model_version")
        if not live:
            return {"pruned": 0, "prune_seconds": 0.0}
        live_n = push_number(live)
        stale = [v for v in self.client.model_versions(pid)
                 if v != live and (push_number(v) is None or push_number(v) < live_n)]
        n = sum(self.client.delete_model_version(pid, v) for v in stale)
        return {"pruned": n, "prune_seconds": round(time.time() - t0, 2)}


def refresh_job(root: str, kind: str = "quick", reason: str = "") -> dict:
    """The RQ job: take the project's lock, then refresh; marks the label generation covered."""
    import torch
    from rq import get_current_job

    from ml_backend.queue import LOCK_WAIT_S, RefreshQueue
    from scopeloop.settings import load_settings

    torch.set_flush_denormal(True)  # long-lived workers drift slower without it (ENVIRONMENT.md)
    settings = load_settings()
    job = get_current_job()
    q = RefreshQueue(job.connection)
    with q.lock(root, wait_s=LOCK_WAIT_S[kind]):  # within the job's timeout (ml_backend.queue.TIMEOUTS)
        q.release_pending(root, kind, job.id)
        q.mark_started(root, kind)
        gen = q.generation(root)
        client = settings.label_studio_client()
        ws = Workspace(Path(root))
        refresher = Refresher(ws, client, device=settings.device or None)
        refresher.chunk_queue = q.queue_for("deep")  # embedding chunks: to GPU workers (the GPU queue)
        try:
            outcome = refresher.run(kind)
        except Exception as exc:
            ws.update_status(last_error={"kind": kind, "time": time.time(), "error": f"{type(exc).__name__}: {exc}"})
            raise
        q.mark_done(root, "quick", gen)
        if kind == "deep":
            q.mark_done(root, "deep", gen)
            q.redis.set(q.key(root, "labels_at_deep"), outcome.get("labels", 0))
        elif _deep_due(q, root, outcome):
            q.request(root, "deep", f"{outcome['labels']} labels: enough new since the last deep refresh")
    q.request_prune(root)  # Label Studio deletes slowly: done when no refresh is waiting
    return outcome


def prune_job(root: str) -> dict:
    """Delete superseded predictions in Label Studio (see Refresher.prune: no lock needed)."""
    from rq import get_current_job

    from ml_backend.queue import RefreshQueue
    from scopeloop.settings import load_settings

    settings = load_settings()
    job = get_current_job()
    q = RefreshQueue(job.connection)
    q.release_pending(root, "prune", job.id)
    client = settings.label_studio_client()
    out = Refresher(Workspace(Path(root)), client).prune()
    Workspace(Path(root)).update_status(last_prune=dict(out, finished=time.time()))
    return out


def _deep_due(q, root: str, outcome: dict) -> bool:
    min_new = int(os.environ.get("SCOPELOOP_DEEP_MIN_NEW", "200"))
    if min_new <= 0:
        return False
    last = int(q.redis.get(q.key(root, "labels_at_deep")) or 0)
    return outcome.get("labels", 0) - last >= min_new
