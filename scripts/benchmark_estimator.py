"""Coverage of the quality estimator's 95% intervals (trainer.stats.estimate) on synthetic projects.

Each repetition draws a labeled set of --n images from 3 Gaussian classes (d = --dim, class
shares 0.5/0.3/0.2), runs the estimator (5-fold cross-validation with the chosen learner) and
checks whether its intervals contain the *true* scores of the model fit on all --n labels,
measured on 20,000 fresh images. Reported for the raw intervals and for the default ones (with
the cross-validation variance correction, trainer.stats.estimate.cv_inflation).

    python scripts/benchmark_estimator.py --reps 100 --learner head   # the quick head (slow on CPU)
    python scripts/benchmark_estimator.py --reps 200 --learner mean   # nearest class mean (fast)
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--n", type=int, default=80)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--separation", type=float, default=0.8)
    ap.add_argument("--learner", choices=["head", "mean"], default="head")
    a = ap.parse_args(argv)

    from trainer.models.cross_validation import cross_validate
    from trainer.stats.estimate import METRICS
    from trainer.stats.metrics import confusion_matrix
    from trainer.stats.metrics import scores_from_confusions as _scores

    if a.learner == "head":
        from trainer.models.head import fit_head as fit
    else:
        from trainer.models.nearest_mean import fit_nearest_mean as fit
    centres = np.random.default_rng(123).normal(0, 1, (3, a.dim)) * a.separation

    def draw(rng, m):
        y = rng.choice(3, m, p=[0.5, 0.3, 0.2])
        return (centres[y] + rng.normal(0, 1, (m, a.dim))).astype(np.float32), y

    Xt, yt = draw(np.random.default_rng(999), 20000)
    hits = {f"{v}/{k}": 0 for v in ("raw", "default") for k in METRICS}
    half = {k: [] for k in hits}
    t0 = time.time()
    for r in range(a.reps):
        X, y = draw(np.random.default_rng(r), a.n)
        pred = fit(X, y, 3, seed=0).predict_proba(Xt).argmax(1)
        truth = {k: float(v[0]) for k, v in _scores(confusion_matrix(yt, pred, 3)[None]).items()}
        for variant, infl in (("raw", 1.0), ("default", None)):
            est, _ = cross_validate(X, y, ["a", "b", "c"], fit=fit, inflation=infl)
            for k in METRICS:
                m = est["metrics"][k]
                hits[f"{variant}/{k}"] += m["low"] <= truth[k] <= m["high"]
                half[f"{variant}/{k}"].append((m["high"] - m["low"]) / 2)
    out = {"args": vars(a), "coverage": {k: v / a.reps for k, v in hits.items()},
           "mean_half_width": {k: round(float(np.mean(v)), 3) for k, v in half.items()},
           "seconds": round(time.time() - t0, 1)}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
