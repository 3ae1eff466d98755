"""The quick refresh's promotion gate on the bundled demo sample (51 images, 5 classes, 224 px).

Two numbers: how often a candidate trained on partly scrambled labels is held back (the
first model is trained on all correct labels; then --share of the labels are permuted among
themselves, one random scramble per seed), and how many of 20 correct labels, added one by one
in the order the service suggests after the demo's 2 starter labels per class, get promoted.

    python scripts/benchmark_gate.py --seeds 10 --share 0.6
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--share", type=float, default=0.6)
    ap.add_argument("--replay", type=int, default=20)
    a = ap.parse_args(argv)

    from scopeloop.demo import SAMPLE
    from scopeloop.refresh import Refresher
    from trainer.io.folders import image_key, scan_imagefolder
    from trainer.stats.estimate import headline
    from trainer.store.workspace import Workspace

    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="gate-bench-"))
    items, classes = scan_imagefolder(SAMPLE)
    base = Workspace(tmp / "base")
    base.update_project(images_root=str(SAMPLE), classes=classes, ls_project_id=1,
                        model={"backbone": "tf_efficientnet_lite0", "weights": "imagenet", "image_size": 224, "channels": None})
    keys, emb = Refresher(base, None, log=lambda *_: None).embed_all([image_key(p, SAMPLE) for p, _ in items])
    truth = {image_key(p, SAMPLE): c for p, c in items}
    row = {k: i for i, k in enumerate(keys)}

    def fresh(name):
        ws = Workspace(tmp / name)
        ws.update_project(**base.project)
        (ws.root / "embeddings").symlink_to(base.root / "embeddings")
        return Refresher(ws, None, log=lambda *_: None), ws

    lab = sorted(keys)
    y = [classes.index(truth[k]) for k in lab]
    X = emb[[row[k] for k in lab]]
    held, diffs = 0, []
    for seed in range(a.seeds):
        r, _ = fresh(f"scramble{seed}")
        r.train_and_gate("quick", lab, y, X, emb, keys)
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(y), int(a.share * len(y)), replace=False)
        y_bad = list(y)
        for i, j in zip(idx, rng.permutation(idx)):
            y_bad[i] = y[j]
        _, _, gate = r.train_and_gate("quick", lab, y_bad, X, emb, keys)
        held += not gate["promoted"]
        c = gate["comparison"]
        diffs.append({"seed": seed, "held_back": not gate["promoted"], "n": c["n"], "diff": round(c["diff"], 3),
                      "low": round(c["low"], 3), "high": round(c["high"], 3)})

    r, ws = fresh("replay")
    labeled = [k for c in classes for k in [k for k in keys if truth[k] == c][:2]]
    promoted, lines = [], []
    for step in range(a.replay + 1):
        ls = sorted(labeled)
        version, probs, gate = r.train_and_gate("quick", ls, [classes.index(truth[k]) for k in ls],
                                                 emb[[row[k] for k in ls]], emb, keys)
        lines.append(headline(ws.registry.read_json(ws.registry.current(), "metrics.json")["estimate"]))
        if step:
            promoted.append(bool(gate["promoted"]))
        if step == a.replay:
            break
        mask = np.zeros(len(keys), bool)
        mask[[row[k] for k in labeled]] = True
        labeled.append(keys[r.rank(emb, probs, mask, keys)[0]])
    out = {"scrambled_held_back": f"{held}/{a.seeds}", "scrambles": diffs,
           "replay_promoted": f"{sum(promoted)}/{len(promoted)}", "status_before": lines[0], "status_after": lines[-1],
           "versions_kept": len(ws.registry.versions()), "versions_published": len(ws.registry.version_log()),
           "seconds": round(time.time() - t0, 1)}
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
