"""What a model version stores so its predictions can be published (issue 25), and applying it.

Beside a version's model files (registry version folder):

* ``novelty.npz``: the unseen-type scorer and flag (`trainer.stats.openset.NoveltyModel`, ViM,
  cross-conformal threshold from the project's own labels);
* ``publishable.json``: the conformal calibration of the prediction sets
  (`trainer.stats.conformal`, on the out-of-fold probabilities the estimator computes), the
  out-of-fold confusion of the labeled images with the "flagged as unseen" column (C, C+1), and
  the row for types nobody labeled (how an unseen type gets predicted) that
  `trainer.stats.proportions.calibration_matrix` needs, with where that row came from.

`build(...)` makes them from the labeled embeddings, their labels, the out-of-fold probabilities
and the head's recipe (`fit`, passed in: this module stays torch-free); `VersionStats.load(folder)`
reads them back (None for a version saved before issue 25: callers then say so and go on
without flags, sets or corrected proportions); `VersionStats.apply(probs, embeddings)` gives the
per-image novelty score, flag and prediction set.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer.stats.conformal import DEFAULT_COVERAGE, ConformalCalibrator, calibrate
from trainer.stats.openset import NoveltyModel
from trainer.stats.proportions import UNSEEN, calibration_matrix, confusion_counts

FILE = "publishable.json"
NOVELTY_FILE = "novelty.npz"
MISSING = ("this model version has no novelty model or prediction-set calibration (saved before they "
           "existed): no unseen-type flags, prediction sets or corrected proportions; retrain it "
           "(scopeloop refresh / scopeloop train) to get them")
UNSEEN_WEIGHT = 5.0


@dataclass
class VersionStats:
    """A version's publishable statistics (module docstring)."""
    classes: list[str]
    novelty: NoveltyModel | None = None
    calibrator: ConformalCalibrator | None = None
    confusion: np.ndarray | None = None     # (C, C+1) out-of-fold (true class, predicted category; C = flagged)
    unseen_row: np.ndarray | None = None    # (C+1,) predicted categories of a type nobody labeled
    info: dict = field(default_factory=dict)

    # ------------------------------------------------------------ storage
    def save(self, folder) -> Path:
        folder = Path(folder)
        if self.novelty is not None:
            self.novelty.save(folder / NOVELTY_FILE)
        doc = {"classes": list(self.classes), "info": self.info,
               "conformal": self.calibrator.to_dict() if self.calibrator is not None else None,
               "confusion": None if self.confusion is None else np.asarray(self.confusion).tolist(),
               "unseen_row": None if self.unseen_row is None else np.asarray(self.unseen_row).tolist()}
        path = folder / FILE
        path.write_text(json.dumps(doc))
        return path

    @classmethod
    def load(cls, folder) -> VersionStats | None:
        """The statistics stored in the version folder `folder`; None when it has neither file."""
        folder = Path(folder)
        nov = NoveltyModel.load(folder / NOVELTY_FILE) if (folder / NOVELTY_FILE).is_file() else None
        p = folder / FILE
        doc = json.loads(p.read_text()) if p.is_file() else None
        if nov is None and doc is None:
            return None
        doc = doc or {}
        classes = doc.get("classes")
        if classes is None:
            cfg = folder / "config.json"
            classes = json.loads(cfg.read_text()).get("classes", []) if cfg.is_file() else []
        conf = doc.get("conformal")
        return cls(list(classes), nov, ConformalCalibrator.from_dict(conf) if conf else None,
                   None if doc.get("confusion") is None else np.asarray(doc["confusion"], float),
                   None if doc.get("unseen_row") is None else np.asarray(doc["unseen_row"], float),
                   doc.get("info", {}))

    # ------------------------------------------------------------ use
    def calibration(self) -> np.ndarray | None:
        """`trainer.stats.proportions.calibration_matrix` for proportions_table, or None."""
        if self.confusion is None:
            return None
        return calibration_matrix(self.confusion, self.unseen_row, UNSEEN_WEIGHT)

    def apply(self, probs, embeddings=None, coverage: float = DEFAULT_COVERAGE) -> dict:
        """Per row: "novel" (bool, None without a novelty model), "score" (novelty score, NaN
        without), "sets" (class-index lists, most probable first; the top class alone without a
        calibration), "category" (predicted class, or C for rows flagged as unseen)."""
        p = np.asarray(probs, dtype=float)
        n = len(p)
        top = p.argmax(1) if n else np.zeros(0, int)
        novel = score = None
        if self.novelty is not None and embeddings is not None and n:
            score = self.novelty.score(embeddings)
            novel = self.novelty.flag(embeddings)
        if self.calibrator is not None and n:
            sets = self.calibrator.at(coverage).sets(p)
        else:
            sets = [[int(k)] for k in top]
        cat = np.where(novel, len(self.classes), top) if novel is not None else top
        return {"novel": novel, "score": score if score is not None else np.full(n, np.nan), "sets": sets,
                "category": np.asarray(cat, int)}

    def set_names(self, sets: Sequence[Sequence[int]]) -> list[str]:
        return ["|".join(self.classes[c] for c in s) for s in sets]

    def summary(self) -> dict:
        """What the report shows: flag rate on the labels, the calibration's n and coverage."""
        out = {"novelty": None, "conformal": None}
        if self.novelty is not None:
            out["novelty"] = {"method": self.novelty.method, "alpha": self.novelty.alpha, "n": self.novelty.n,
                              "unseen_flagged": self.info.get("unseen_flagged")}
        if self.calibrator is not None:
            out["conformal"] = {"n": self.calibrator.n, "coverage": self.calibrator.coverage,
                                "describe": self.calibrator.describe(self.classes)}
        if self.confusion is not None:
            cm = np.asarray(self.confusion)
            out["flagged_labeled"] = float(cm[:, -1].sum() / max(cm.sum(), 1))
        return out


def build(X, y, classes: Sequence[str], oof_probs=None, fit: Callable | None = None, folds=None,
          loco: bool = False, method: str = "vim") -> VersionStats:
    """The statistics of a model fit on labeled embeddings X (n, D) with class indices y (n,).

    oof_probs (n, C): out-of-fold class probabilities (NaN rows: not judged) for the conformal
    calibration and the confusion; fit: the head's recipe fit(X, y, n_classes) -> head with
    ``.weight``/``.bias`` (needed by "vim"); folds: fold index per row (the estimator's, keeps
    groups together) or None (5 stratified folds). loco: estimate how a type nobody labeled is
    predicted by leaving each class out in turn (`openset.leave_one_class_out`: C x folds head
    fits, offline only); otherwise that row is an uninformative guess (equal odds of every
    category), weighted as `UNSEEN_WEIGHT` images. Parts that cannot be made (too few labels)
    are left None and named in ``info["missing"]``.
    """
    from trainer.stats.openset import DEFAULT_FOLDS, leave_one_class_out

    t0 = time.perf_counter()
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=int)
    C = len(classes)
    info: dict = {"missing": []}
    nov = None
    fold_arg = DEFAULT_FOLDS if folds is None else np.asarray(folds, dtype=int)
    try:
        nov = NoveltyModel.fit(X, y, method=method, folds=fold_arg, fit=fit)
    except ValueError as exc:
        info["missing"].append(f"novelty: {exc}")
    cal = cm = None
    if oof_probs is not None:
        p = np.asarray(oof_probs, dtype=float)
        ok = np.isfinite(p).all(1)
        try:
            cal = calibrate(p, y)
        except ValueError as exc:
            info["missing"].append(f"prediction sets: {exc}")
        if ok.any():
            cat = p[ok].argmax(1)
            if nov is not None and nov.oof_flags is not None:
                cat = np.where(nov.oof_flags[ok], C, cat)
            cm = confusion_counts(y[ok], cat, C, C + 1)
    unseen = None
    if nov is not None:
        if loco:
            r = leave_one_class_out(X, y, method=method, folds=fold_arg, fit=fit)
            f = r["mean_flagged"]
            info["unseen_flagged"] = {classes[c]: v for c, v in r["flagged"].items()}
            info["unseen_auroc"] = {classes[c]: v for c, v in r["auroc"].items()}
        else:
            f = float("nan")
        if np.isfinite(f):
            unseen = np.r_[np.full(C, (1 - f) / C), f]
            info["unseen_row"] = "leave-one-class-out: each labeled class left out in turn, share flagged"
        else:
            unseen = np.full(C + 1, 1.0 / (C + 1))
            info["unseen_row"] = "uninformative: equal odds of every category (no leave-one-class-out check run)"
    info.update(seconds=round(time.perf_counter() - t0, 3), n=len(y), unseen_label=UNSEEN)
    if not info["missing"]:
        info.pop("missing")
    return VersionStats(list(classes), nov, cal, cm, unseen, info)


class HeadRecorder:
    """A fit(X, y, n_classes, seed=0) recipe that remembers each head by its training rows, so the
    novelty model reuses the fold heads the out-of-fold estimate already fit (same folds: the same
    training sets) instead of fitting them again."""

    def __init__(self, fit: Callable):
        self._fit = fit
        self._heads: dict = {}
        self.hits = 0

    @staticmethod
    def _key(X, y):
        import hashlib

        X = np.ascontiguousarray(X, dtype=np.float32)
        h = hashlib.blake2b(X.tobytes(), digest_size=16)
        h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
        return X.shape, h.hexdigest()

    def __call__(self, X, y, n_classes, seed: int = 0, **kw):
        key = self._key(X, y)
        if key in self._heads:
            self.hits += 1
            return self._heads[key]
        head = self._fit(X, y, n_classes, seed=seed, **kw)
        self._heads[key] = head
        return head
