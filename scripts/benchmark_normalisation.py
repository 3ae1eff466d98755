#!/usr/bin/env python
"""Intensity normalisation options compared by label efficiency, on a 16-bit set where absolute
brightness carries part of the class (as DNA content separates G1 from G2 nuclei).

Synthetic set (seeded, written as 16-bit single-channel TIFFs into a temporary folder): three
classes of nuclei on a dim camera background (offset 100, noise): `G1` round, integrated
intensity 1x; `G2` round, 2x (same size: only brightness tells it from G1); `elongated` 1.4x.
Each image also gets a plate exposure gain drawn from 0.8-1.25 (drift between plates). Camera
offset and noise are fixed, so a dim nucleus is also a noisier one after a per-image stretch;
`--equal-snr` scales offset and noise with brightness too, leaving brightness the only cue.

Options (each read exactly as the product reads it, `trainer.io`):
  per-image     the 0.5-99.8 percentile stretch of each image (the default)
  per-dataset   one fixed range per channel from a sample of the pool (`dataset_ranges`)
  bit-depth     a fixed /4095 (`estimate_bit_depth` finds 12 bits)
  both          R and B per-image, G the per-dataset mapping (a single channel leaves two of the
                backbone's three inputs as copies: one can carry the fixed range)

Frozen ImageNet tf_efficientnet_lite0 embeddings, a linear head (`trainer.models.head.fit_head`) on
k labeled images per class, macro-F1 on a fixed held-out half, mean and 95 % interval
(t-based) over seeds; paired difference to per-image per seed.

    python scripts/benchmark_normalisation.py --n-per-class 80 --size 224 --seeds 10 --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLASSES = ["G1", "G2", "elongated"]


def make_set(root: Path, n_per_class: int, seed: int = 0, size: int = 96,
             equal_snr: bool = False) -> tuple[list[Path], list[int]]:
    """equal_snr: the whole image (offset, noise, nucleus) scales with brightness, so after a
    per-image stretch G1 and G2 are alike in distribution (brightness is then the only cue)."""
    import tifffile

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    paths, labels = [], []
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            c = size / 2 + rng.uniform(-10, 10, 2)
            r = rng.uniform(12, 16)
            if name == "elongated":
                d = ((yy - c[0]) / (r * 1.5)) ** 2 + ((xx - c[1]) / (r / 1.5)) ** 2
            else:
                d = ((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / r ** 2
            texture = 1 + 0.15 * rng.standard_normal((size, size))
            amount = {"G1": 1.0, "G2": 2.0, "elongated": 1.4}[name] * rng.uniform(0.9, 1.1)
            plate_gain = rng.uniform(0.8, 1.25)
            if equal_snr:
                img = (100 + 700 * np.exp(-d ** 2) * texture + rng.normal(0, 6, (size, size))) * amount * plate_gain
            else:
                nucleus = 700 * amount * plate_gain * np.exp(-d ** 2) * texture
                img = 100 + nucleus + rng.normal(0, 6, (size, size))
            p = root / name / f"{i:04d}.tif"
            tifffile.imwrite(p, np.clip(img, 0, 4095).astype(np.uint16))
            paths.append(p)
            labels.append(k)
    return paths, labels


def embed(paths, option: str, prep, size: int, net, mean, std) -> np.ndarray:
    import torch

    from trainer.io.read import load_for_model

    out = []
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    for b in range(0, len(paths), 32):
        arrs = []
        for p in paths[b:b + 32]:
            if option == "both":
                a = load_for_model(p, size, prep["per-image"]).copy()
                a[..., 1] = load_for_model(p, size, prep["per-dataset"])[..., 1]
            else:
                a = load_for_model(p, size, prep[option])
            arrs.append(a)
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)
        x = ((x - m) / s).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            out.append(net(x).numpy())
    return np.concatenate(out)


def macro_f1(y, p, n):
    f = []
    for c in range(n):
        tp = np.sum((p == c) & (y == c))
        fp = np.sum((p == c) & (y != c))
        fn = np.sum((p != c) & (y == c))
        f.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f))


def ci95(v):
    from scipy import stats

    v = np.asarray(v, float)
    if len(v) < 2:
        return float(v.mean()), float("nan")
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-per-class", type=int, default=80)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--labels", type=int, nargs="+", default=[2, 5, 10, 20])
    ap.add_argument("--equal-snr", action="store_true",
                    help="scale offset and noise with brightness too (per-image stretch then removes the class cue)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    torch.set_flush_denormal(True)
    from trainer.io.normalise import dataset_ranges, estimate_bit_depth
    from trainer.io.settings import Preprocessing
    from trainer.models.backbone import create_backbone
    from trainer.models.head import fit_head

    t0 = time.time()
    tmp = tempfile.TemporaryDirectory(prefix="scopeloop_norm_")
    paths, y = make_set(Path(tmp.name), args.n_per_class, equal_snr=args.equal_snr)
    y = np.array(y)
    bits = estimate_bit_depth(paths)
    prep = {"per-image": Preprocessing(),
            "per-dataset": Preprocessing(normalisation="per-dataset", ranges=dataset_ranges(paths, sample=200)),
            "bit-depth": Preprocessing(normalisation="bit-depth", bit_depth=bits)}
    net, pre, source = create_backbone("tf_efficientnet_lite0", "imagenet")
    net = net.eval().to(memory_format=torch.channels_last)
    options = ["per-image", "per-dataset", "bit-depth", "both"]
    emb = {o: embed(paths, o, prep, args.size, net, pre.mean, pre.std) for o in options}
    rng = np.random.default_rng(12345)
    test = np.zeros(len(y), bool)
    for c in range(len(CLASSES)):
        rows = np.flatnonzero(y == c)
        test[rng.choice(rows, len(rows) // 2, replace=False)] = True
    pool = np.flatnonzero(~test)
    scores = {o: {k: [] for k in args.labels} for o in options}
    for seed in range(args.seeds):
        r = np.random.default_rng(seed)
        for k in args.labels:
            lab = np.concatenate([r.choice(pool[y[pool] == c], k, replace=False) for c in range(len(CLASSES))])
            for o in options:
                head = fit_head(emb[o][lab], y[lab], len(CLASSES), seed=seed)
                pred = head.predict_proba(emb[o][test]).argmax(1)
                scores[o][k].append(macro_f1(y[test], pred, len(CLASSES)))
    cmd = "python " + " ".join([Path(__file__).relative_to(ROOT).as_posix()] + sys.argv[1:])
    print(f"# {cmd}\n# {len(paths)} images ({args.n_per_class} per class), test {int(test.sum())}, "
          f"{args.size} px, {args.seeds} seeds, bit depth found {bits}, {time.time() - t0:.0f} s")
    print("| labels per class | " + " | ".join(options) + " | per-dataset - per-image (paired) |")
    print("|--:|" + "--:|" * (len(options) + 1))
    table = []
    for k in args.labels:
        cells = []
        for o in options:
            m, h = ci95(scores[o][k])
            cells.append(f"{m:.3f} ± {h:.3f}")
        dm, dh = ci95(np.array(scores["per-dataset"][k]) - np.array(scores["per-image"][k]))
        print(f"| {k} | " + " | ".join(cells) + f" | {dm:+.3f} ± {dh:.3f} |")
        table.append({"labels_per_class": k, **{o: scores[o][k] for o in options}})
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"command": cmd, "bits": bits, "test": int(test.sum()),
                                               "n": len(paths), "size": args.size, "results": table}, indent=1))


if __name__ == "__main__":
    main()
