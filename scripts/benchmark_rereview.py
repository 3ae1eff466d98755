"""Precision of the report's "candidates for re-review" on the bundled demo sample.

All 51 sample images labeled correctly, then --flips labels changed on purpose (to another
class, seeded); the report's out-of-fold re-review list (trainer.models.cross_validation.out_of_fold +
contradicted) is computed from the 224 px embeddings. Reports how many flipped labels are in
its top 10 (precision at 10) and where each flipped label ranks, over --seeds scrambles.

    python scripts/benchmark_rereview.py --flips 5 --seeds 5
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flips", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=5)
    a = ap.parse_args(argv)

    from scopeloop.demo import SAMPLE
    from scopeloop.refresh import Refresher
    from trainer.io.folders import image_key, scan_imagefolder
    from trainer.models.cross_validation import out_of_fold
    from trainer.reports.analysis import contradicted
    from trainer.store.workspace import Workspace

    t0 = time.time()
    items, classes = scan_imagefolder(SAMPLE)
    ws = Workspace(Path(tempfile.mkdtemp(prefix="rereview-bench-")))
    ws.update_project(images_root=str(SAMPLE), classes=classes, ls_project_id=1,
                      model={"backbone": "tf_efficientnet_lite0", "weights": "imagenet", "image_size": 224, "channels": None})
    keys, emb = Refresher(ws, None, log=lambda *_: None).embed_all(sorted(image_key(p, SAMPLE) for p, _ in items))
    truth = {image_key(p, SAMPLE): classes.index(c) for p, c in items}
    y = np.array([truth[k] for k in keys])
    runs = []
    for seed in range(a.seeds):
        rng = np.random.default_rng(seed)
        flipped = rng.choice(len(y), a.flips, replace=False)
        noisy = y.copy()
        noisy[flipped] = (y[flipped] + rng.integers(1, len(classes), a.flips)) % len(classes)
        order = contradicted(out_of_fold(emb, noisy, len(classes)), noisy).tolist()
        runs.append({"seed": seed, "found_in_top10": int(len(set(order[:10]) & set(flipped.tolist()))),
                     "listed": len(order), "ranks": sorted(order.index(i) if i in order else None for i in flipped.tolist())
                     if all(i in order for i in flipped.tolist()) else [order.index(i) if i in order else -1 for i in flipped.tolist()]})
    found = [r["found_in_top10"] for r in runs]
    out = {"flips": a.flips, "images": len(y), "precision_at_10": round(float(np.mean(found)) / 10, 3),
           "flipped_found_in_top10": f"{sum(found)}/{a.flips * a.seeds}", "runs": runs, "seconds": round(time.time() - t0, 1)}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
