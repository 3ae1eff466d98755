#!/usr/bin/env python
"""Image quality control benchmark: defects of known strength mixed into real image sets.

For every --data folder (e.g. an ImageFolder of real microscopy crops), each round:

  * takes every image as "clean" (linked, not copied),
  * makes defects from randomly chosen clean images, 10 % of the clean count (--fraction),
    spread evenly over these kinds and strengths:
      blur_<s>        Gaussian blur sigma s = 1, 2, 3, 4, 6, 8 px, camera-like noise added back
                      at the source's own level (Immerkaer estimate), saved losslessly (PNG)
      disk_<r>        pillbox (disk) blur of radius r = 6, 12 px (geometric defocus; the focus model
                      is trained on Gaussians only, so this tests another point-spread function)
      blank           an empty field made of the image's own background: mean colour of the least
                      textured window (1/6 of the side), its fine texture tiled (native noise and
                      compression), a 3 % illumination gradient; no cell
      saturated_<g>   gain g = 1.5, 2, 3, clipped at the top of the bit depth
      dark_<g>        gain 0.04 (a nearly black exposure)
      dup_exact       a byte copy of the file
      dup_flip        mirrored left-right
      dup_shift       shifted by 3 % of the side (the uncovered border cropped off)
      dup_jpeg        re-encoded as JPEG quality 75
    Defect files are named `zz_qc_<kind>_<n>` so they sort after their source: a duplicate is
    reported as the copy of its source, never the other way round,
  * embeds every image with the product's default backbone (tf_efficientnet_lite0 at 224 px,
    cached by file content in --work), runs `trainer.quality.assess.assess` with the default settings,
  * counts, per defect kind: recall (the expected verdict) with a Wilson 95 % interval and the
    number of images, and the false-flag rate on the clean images (any verdict but ok).

Both focus methods are scored on the same images: the learned defocus model (the default) and
the normalised variance of the Laplacian calibrated on the same synthetic defocus; for each,
recall per blur sigma at the default threshold and at the threshold that flags 2 % of the clean
images, plotted in <out>/qc_blur_recall.png. <out>/qc_montage_<set>.png shows examples per verdict; <out>/qc_<set>_round<r>.csv every score.

Run (2 CPU cores shared with other jobs: ~4 min once the embeddings are cached, plus ~3 min
per 1,000 new images to embed); the results in docs/benchmarks.md come from:

    flock /tmp/scopeloop-heavy.lock nice -n 10 .venv/bin/python scripts/benchmark_image_qc.py \\
        --data ../shared/data/bccd_wbc --rounds 6 --data ../shared/data/pbc_blood --rounds 2 --limit 1200 \\
        --work test-artifacts/image_qc --out test-artifacts/image_qc/all
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BLURS = (1, 2, 3, 4, 6, 8)
GAINS = (1.5, 2.0, 3.0)
DISKS = (6, 12)  # pillbox (disk) blur radius in px: a PSF the focus model never saw (~ sigma r/2)
KINDS = ([f"blur_{s}" for s in BLURS] + [f"disk_{r}" for r in DISKS] + ["blank"] + [f"saturated_{g:g}" for g in GAINS] + ["dark_0.04"]
         + ["dup_exact", "dup_flip", "dup_shift", "dup_jpeg"])
EXPECTED = {k: ("out_of_focus" if k.startswith(("blur", "disk")) else "saturated" if k.startswith("saturated")
                else "too_dark" if k.startswith("dark") else "duplicate" if k.startswith("dup") else k) for k in KINDS}
TARGET_RECALL, TARGET_FALSE = 0.95, 0.02


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


# ---------------------------------------------------------------- defects

def _named(stem: Path, suffix: str) -> Path:
    """stem + suffix (Path.with_suffix would eat the '.5' of 'saturated_1.5_0007')."""
    return stem.with_name(stem.name + suffix)


def _save_png(arr: np.ndarray, path: Path) -> None:
    import tifffile
    from PIL import Image

    if arr.dtype == np.uint8:
        Image.fromarray(arr).save(_named(path, ".png"))
    else:
        tifffile.imwrite(_named(path, ".tif"), arr)


def _top(arr: np.ndarray) -> float:
    return 255.0 if arr.dtype == np.uint8 else float(np.iinfo(arr.dtype).max) if arr.dtype.kind in "ui" else float(arr.max())


def _blur(raw: np.ndarray, sigma: float, rng) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    from trainer.quality.pixels import grey_plane, immerkaer_noise

    noise = immerkaer_noise(grey_plane(raw)[0])
    a = raw.astype(np.float32)
    s = (sigma, sigma) + ((0,) if a.ndim == 3 else ())
    b = gaussian_filter(a, s, mode="reflect") + rng.normal(0, noise, a.shape).astype(np.float32)
    return np.clip(np.round(b), 0, _top(raw)).astype(raw.dtype)


def _disk(raw: np.ndarray, radius: int, rng) -> np.ndarray:
    """Pillbox (geometric defocus) blur of `radius` px, camera-like noise added back."""
    from scipy.ndimage import convolve

    from trainer.quality.pixels import grey_plane, immerkaer_noise

    noise = immerkaer_noise(grey_plane(raw)[0])
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    k = ((yy ** 2 + xx ** 2) <= radius ** 2).astype(np.float32)
    k /= k.sum()
    a = raw.astype(np.float32)
    chans = [a] if a.ndim == 2 else [a[..., c] for c in range(a.shape[-1])]
    b = np.stack([convolve(c, k, mode="reflect") for c in chans], -1) if a.ndim == 3 else convolve(a, k, mode="reflect")
    b = b + rng.normal(0, noise, b.shape).astype(np.float32)
    return np.clip(np.round(b), 0, _top(raw)).astype(raw.dtype)


def _blank(raw: np.ndarray) -> np.ndarray:
    """An empty field from the image's own background: the least textured window (side/6) gives
    the mean colour and, tiled, its fine texture (the window minus its sigma-2 blur: camera
    noise, compression at the native pixel scale); a 3 % linear illumination gradient across
    the field is added (vignetting)."""
    from scipy.ndimage import gaussian_filter

    from trainer.quality.pixels import grey_plane

    g = grey_plane(raw)[0]
    h, w = g.shape
    side = max(16, min(h, w) // 6)
    mag = np.hypot(*np.gradient(gaussian_filter(g, 1.0)))
    best, pos = None, (0, 0)
    step = max(4, side // 4)
    for y in range(0, h - side + 1, step):
        for x in range(0, w - side + 1, step):
            v = float(mag[y:y + side, x:x + side].max())
            if best is None or v < best:
                best, pos = v, (y, x)
    y, x = pos
    crop = raw[y:y + side, x:x + side].astype(np.float32)
    sig = (2.0, 2.0) + ((0,) if crop.ndim == 3 else ())
    fine = crop - gaussian_filter(crop, sig, mode="reflect")
    reps = (math.ceil(h / side), math.ceil(w / side)) + ((1,) if crop.ndim == 3 else ())
    tex = np.tile(fine, reps)[:h, :w]
    mean = crop.reshape(-1, *crop.shape[2:]).mean(0)
    ramp = 1.0 + 0.03 * (np.linspace(-0.5, 0.5, w)[None, :] + np.linspace(-0.5, 0.5, h)[:, None]) / 2
    if crop.ndim == 3:
        ramp = ramp[..., None]
    return np.clip(np.round(mean * ramp + tex), 0, _top(raw)).astype(raw.dtype)


def _gain(raw: np.ndarray, g: float) -> np.ndarray:
    return np.clip(np.round(raw.astype(np.float32) * g), 0, _top(raw)).astype(raw.dtype)


def _shift(raw: np.ndarray) -> np.ndarray:
    h, w = raw.shape[:2]
    dy, dx = max(1, round(0.03 * h)), max(1, round(0.03 * w))
    return np.ascontiguousarray(raw[dy:, dx:])


def make_defect(kind: str, src: Path, dst_stem: Path, rng) -> Path:
    from PIL import Image

    from trainer.io.decode import read_raw

    if kind == "dup_exact":
        dst = _named(dst_stem, src.suffix.lower())
        shutil.copyfile(src, dst)
        return dst
    raw = read_raw(src)
    if kind.startswith("blur_"):
        out = _blur(raw, float(kind.split("_")[1]), rng)
    elif kind.startswith("disk_"):
        out = _disk(raw, int(kind.split("_")[1]), rng)
    elif kind == "blank":
        out = _blank(raw)
    elif kind.startswith("saturated_") or kind.startswith("dark_"):
        out = _gain(raw, float(kind.split("_")[1]))
    elif kind == "dup_flip":
        out = np.ascontiguousarray(raw[:, ::-1])
    elif kind == "dup_shift":
        out = _shift(raw)
    elif kind == "dup_jpeg":
        a = raw if raw.dtype == np.uint8 else (raw / max(raw.max(), 1) * 255).astype(np.uint8)
        dst = _named(dst_stem, ".jpg")
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=75)
        dst.write_bytes(buf.getvalue())
        return dst
    else:
        raise ValueError(kind)
    _save_png(out, dst_stem)
    return next(p for p in (_named(dst_stem, ".png"), _named(dst_stem, ".tif")) if p.exists())


def build_round(clean: list[Path], data_root: Path, folder: Path, fraction: float, rng) -> dict:
    """Folder with links to the clean images plus the defects; {key: (kind, source key)}."""
    from trainer.io.folders import image_key

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for p in clean:
        dst = folder / image_key(p, data_root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(p.resolve(), dst)
    n_def = max(len(KINDS), int(round(fraction * len(clean))))
    kinds = [KINDS[i % len(KINDS)] for i in range(n_def)]
    srcs = rng.choice(len(clean), n_def, replace=n_def > len(clean))
    truth = {}
    for i, (kind, s) in enumerate(zip(kinds, srcs)):
        dst = make_defect(kind, clean[s], folder / f"zz_qc_{kind}_{i:04d}", rng)
        truth[dst.relative_to(folder).as_posix()] = (kind, image_key(clean[s], data_root))
    return truth


# ---------------------------------------------------------------- embeddings (cached by content)

def embed_cached(paths: list[Path], cache_file: Path) -> tuple[np.ndarray, float, int]:
    """Embeddings of `paths` (rows in order), the seconds spent embedding new files, how many."""
    from trainer.models.inference import embed_paths

    cache = {}
    if cache_file.is_file():
        z = np.load(cache_file)
        cache = dict(zip(z["digests"].tolist(), z["emb"]))
    digests = [hashlib.sha1(p.read_bytes()).hexdigest() for p in paths]
    todo = sorted({d for d in digests if d not in cache})
    secs = 0.0
    if todo:
        first = {d: p for p, d in zip(paths, digests)}
        t0 = time.perf_counter()
        emb, rows, skipped = embed_paths([first[d] for d in todo], progress=True)
        secs = time.perf_counter() - t0
        if len(skipped):
            print(skipped.summary())
        for r, e in zip(rows, emb):
            cache[todo[r]] = e
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        ks = sorted(cache)
        np.savez(cache_file, digests=np.array(ks), emb=np.stack([cache[k] for k in ks]).astype(np.float32))
    return np.stack([cache[d] for d in digests]), secs, len(todo)


# ---------------------------------------------------------------- scoring

def score_round(report, truth: dict) -> dict:
    res = report.by_key()
    out = {"clean": {"n": 0, "flagged": 0, "by_verdict": {}},
           "kinds": {k: {"n": 0, "hit": 0, "flagged": 0, "verdicts": {}} for k in KINDS},
           "focus": {"learned": {}, "laplacian": {}}}
    for key, r in res.items():
        if key in truth:
            kind, src = truth[key]
            d = out["kinds"][kind]
            d["n"] += 1
            ok = r.verdict == EXPECTED[kind]
            if ok and kind.startswith("dup"):
                ok = r.duplicate_of == src
            d["hit"] += int(ok)
            d["flagged"] += int(r.verdict != "ok")
            d["verdicts"][r.verdict] = d["verdicts"].get(r.verdict, 0) + 1
        else:
            out["clean"]["n"] += 1
            if r.verdict != "ok":
                out["clean"]["flagged"] += 1
                out["clean"]["by_verdict"][r.verdict] = out["clean"]["by_verdict"].get(r.verdict, 0) + 1
                if r.verdict == "duplicate" and r.duplicate_of not in truth:
                    out["clean"].setdefault("source_pairs", []).append([key, r.duplicate_of, round(r.pixel_match, 3)])
    # focus methods alone: the defocus estimates of clean and blurred images
    for m, attr in (("learned", "defocus_px"), ("laplacian", "laplacian_defocus_px")):
        out["focus"][m] = {
            "clean": [getattr(r, attr) for k, r in res.items() if k not in truth],
            **{f"blur_{s}": [getattr(res[k], attr) for k, (kind, _) in truth.items()
                             if kind == f"blur_{s}" and k in res] for s in BLURS}}
    return out


def merge(a: dict | None, b: dict) -> dict:
    if a is None:
        return b
    a["clean"]["n"] += b["clean"]["n"]
    a["clean"]["flagged"] += b["clean"]["flagged"]
    for v, c in b["clean"]["by_verdict"].items():
        a["clean"]["by_verdict"][v] = a["clean"]["by_verdict"].get(v, 0) + c
    for pair in b["clean"].get("source_pairs", []):
        if pair not in a["clean"].setdefault("source_pairs", []):
            a["clean"]["source_pairs"].append(pair)
    for k, d in b["kinds"].items():
        for f in ("n", "hit", "flagged"):
            a["kinds"][k][f] += d[f]
        for v, c in d["verdicts"].items():
            a["kinds"][k]["verdicts"][v] = a["kinds"][k]["verdicts"].get(v, 0) + c
    for m in b["focus"]:
        for k, v in b["focus"][m].items():
            a["focus"][m].setdefault(k, []).extend(v)
    return a


def focus_curves(agg: dict, default_thr: float) -> dict:
    """Per method: recall per blur sigma at the default threshold and at the clean 98th percentile."""
    out = {}
    for m, d in agg["focus"].items():
        clean = np.nan_to_num(np.asarray(d["clean"], float), nan=-1.0)
        blurred = np.concatenate([np.nan_to_num(np.asarray(d[f"blur_{s}"], float), nan=-1.0) for s in BLURS])
        # lowest threshold (flag at >=) that flags at most 2 % of the clean images (ties counted)
        cands = np.unique(np.concatenate([clean, blurred, [np.inf]]))
        thr2 = float(next(t for t in cands if (clean >= t).mean() <= TARGET_FALSE))
        row = {"threshold_2pct": thr2, "false_default": float((clean >= default_thr).mean()),
               "false_2pct": float((clean >= thr2).mean())}
        for s in BLURS:
            v = np.nan_to_num(np.asarray(d[f"blur_{s}"], float), nan=-1.0)
            row[f"blur_{s}"] = {"n": len(v), "recall_default": float((v >= default_thr).mean()) if len(v) else float("nan"),
                                "recall_2pct": float((v >= thr2).mean()) if len(v) else float("nan")}
        out[m] = row
    return out


def table(name: str, agg: dict, curves: dict, meta: dict) -> str:
    c = agg["clean"]
    lo, hi = wilson(c["flagged"], c["n"])
    lines = [f"### {name}", "",
             f"{meta['n_clean']} clean images, {meta['rounds']} round(s), {meta['n_defects']} defect images in all; "
             f"false flags on clean: **{c['flagged']}/{c['n']} = {c['flagged'] / max(c['n'], 1):.1%}** "
             f"(95 % CI {lo:.1%}-{hi:.1%}); by verdict: {json.dumps(c['by_verdict'])}", "",
             f"Duplicates flagged between two clean images (pairs already in the source set, counted above as "
             f"false flags; check them in the montage): {len(c.get('source_pairs', []))} distinct: "
             + ", ".join(f"{a} ~ {b} ({m})" for a, b, m in c.get("source_pairs", [])[:8]), "",
             "| defect | expected verdict | n | recall (95 % CI) | flagged at all | verdicts |", "|---|---|--:|--:|--:|---|"]
    for k in KINDS:
        d = agg["kinds"][k]
        lo, hi = wilson(d["hit"], d["n"])
        r = d["hit"] / max(d["n"], 1)
        mark = " **<0.95**" if (k in ("blank", "dup_exact") or k.startswith(("saturated", "disk"))
                                or (k.startswith("blur") and int(k.split("_")[1]) >= 3)) and r < TARGET_RECALL else ""
        lines.append(f"| {k} | {EXPECTED[k]} | {d['n']} | {r:.2f} ({lo:.2f}-{hi:.2f}){mark} | "
                     f"{d['flagged'] / max(d['n'], 1):.2f} | {json.dumps(d['verdicts'])} |")
    lines += ["", "Focus methods alone (defocus estimate in px, same images):", "",
              "| method | false flags at default | " + " | ".join(f"sigma {s}" for s in BLURS)
              + " | threshold at 2 % clean flagged | " + " | ".join(f"sigma {s} @2%" for s in BLURS) + " |",
              "|---|--:|" + "--:|" * len(BLURS) + "--:|" + "--:|" * len(BLURS)]
    for m, row in curves.items():
        lines.append(f"| {m} | {row['false_default']:.1%} | "
                     + " | ".join(f"{row[f'blur_{s}']['recall_default']:.2f}" for s in BLURS)
                     + f" | {row['threshold_2pct']:.2f} px | "
                     + " | ".join(f"{row[f'blur_{s}']['recall_2pct']:.2f}" for s in BLURS) + " |")
    t = meta["timing"]
    if not np.isfinite(t["embed_ms_per_image"]):
        lines += ["", f"Time: QC pass {t['qc_ms_per_image']:.1f} ms/image (read {t['read_ms']:.1f} + measure "
                  f"{t['measure_ms']:.1f} + focus fit/predict {t['focus_ms']:.1f} + FAISS {t['faiss_ms']:.2f}); "
                  "embedding not timed in this run (embeddings came from the cache).", ""]
        return "\n".join(lines)
    lines += ["", f"Time: QC pass {t['qc_ms_per_image']:.1f} ms/image (read {t['read_ms']:.1f} + measure "
              f"{t['measure_ms']:.1f} + focus fit/predict {t['focus_ms']:.1f} + FAISS {t['faiss_ms']:.2f}); "
              f"embedding {t['embed_ms_per_image']:.1f} ms/image on this CPU: the pixel pass without the read "
              f"(which embedding shares) is {t['ratio_no_read']:.0%} of embedding, {t['ratio_all']:.0%} with the focus fit.", ""]
    return "\n".join(lines)


def plot_curves(all_curves: dict, default_thr: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(all_curves), figsize=(5.2 * len(all_curves), 4), squeeze=False)
    for ax, (name, curves) in zip(axes[0], all_curves.items()):
        for m, colour in (("learned", "tab:blue"), ("laplacian", "tab:orange")):
            row = curves[m]
            ax.plot(BLURS, [row[f"blur_{s}"]["recall_default"] for s in BLURS], "-o", color=colour,
                    label=f"{m}, default {default_thr:g} px ({row['false_default']:.1%} clean flagged)")
            ax.plot(BLURS, [row[f"blur_{s}"]["recall_2pct"] for s in BLURS], "--", color=colour,
                    label=f"{m}, threshold at 2 % clean flagged")
        ax.axhline(TARGET_RECALL, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("Gaussian blur sigma (px)")
        ax.set_ylabel("recall (out of focus)")
        n = curves["learned"]["blur_3"]["n"]
        ax.set_title(f"{name} ({n} images per sigma)")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def montage(report, folder: Path, path: Path, per: int = 6, size: int = 96) -> Path:
    """Examples per verdict (rows), with the deciding score under each tile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainer.io.read import read_image
    from trainer.quality.settings import VERDICTS

    rows = [v for v in VERDICTS if any(r.verdict == v for r in report.results)]
    fig, axes = plt.subplots(len(rows), per, figsize=(per * 1.6, len(rows) * 1.85), squeeze=False)
    rng = np.random.default_rng(0)
    for i, v in enumerate(rows):
        rs = [r for r in report.results if r.verdict == v]
        pick = rng.choice(len(rs), min(per, len(rs)), replace=False)
        for j in range(per):
            ax = axes[i, j]
            ax.axis("off")
            if j >= len(pick):
                continue
            r = rs[pick[j]]
            ax.imshow(read_image(folder / r.key))
            ax.set_title(r.reason[:34] if r.reason else "ok", fontsize=5.5)
        axes[i, 0].text(-0.1, 0.5, v, transform=axes[i, 0].transAxes, ha="right", va="center", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", action="append", required=True, help="image folder (repeatable)")
    ap.add_argument("--rounds", action="append", type=int, help="rounds per --data (default 1)")
    ap.add_argument("--fraction", type=float, default=0.10, help="defects per round, share of the clean count")
    ap.add_argument("--work", default="test-artifacts/image_qc", help="scratch folder (round folders, embedding cache)")
    ap.add_argument("--out", default="test-artifacts/image_qc", help="results: JSON, Markdown table, PNG plots")
    ap.add_argument("--limit", type=int, help="use at most this many clean images per data set (quick look)")
    ap.add_argument("--no-embed", action="store_true", help="skip embeddings (near duplicates, unusual not judged)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from trainer.io.folders import list_images
    from trainer.quality.assess import assess, write_csv
    from trainer.quality.settings import QCSettings

    settings = QCSettings()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rounds = (args.rounds or []) + [1] * (len(args.data) - len(args.rounds or []))
    md, all_curves, summary = [], {}, {}
    for data, n_rounds in zip(args.data, rounds):
        root = Path(data)
        name = root.resolve().name
        clean = list_images(root)
        if not clean:
            print(f"error: no images under '{root}'", file=sys.stderr)
            return 2
        rng = np.random.default_rng(args.seed)
        if args.limit and len(clean) > args.limit:
            clean = [clean[i] for i in sorted(rng.choice(len(clean), args.limit, replace=False))]
        agg, timing, n_def = None, [], 0
        for rd in range(n_rounds):
            folder = Path(args.work) / name / f"round{rd}"
            truth = build_round(clean, root, folder, args.fraction, rng)
            n_def += len(truth)
            paths = list_images(folder)
            keys = [p.relative_to(folder).as_posix() for p in paths]
            emb, esecs, n_new = (None, 0.0, 0) if args.no_embed else embed_cached(paths, Path(args.work) / name / "embeddings.npz")
            report = assess(paths, keys, emb, keys if emb is not None else None, settings, seed=args.seed + rd)
            print(f"{name} round {rd}: {report.summary()}\n  seconds {report.seconds}", flush=True)
            timing.append((report.seconds, len(paths), esecs, n_new))
            write_csv(report.results, out / f"qc_{name}_round{rd}.csv")  # every score, for the thresholds
            agg = merge(agg, score_round(report, truth))
            if rd == 0:
                montage(report, folder, out / f"qc_montage_{name}.png")
        curves = focus_curves(agg, settings.out_of_focus)
        all_curves[name] = curves
        n_img = sum(t[1] for t in timing)
        emb_ms = [1000 * t[2] / t[3] for t in timing if t[3] >= 32]
        tm = {"read_ms": 1000 * sum(t[0]["read"] for t in timing) / n_img,
              "measure_ms": 1000 * sum(t[0]["measure"] for t in timing) / n_img,
              "focus_ms": 1000 * sum(t[0]["focus_fit_predict"] for t in timing) / n_img,
              "faiss_ms": 1000 * sum(t[0]["embedding_scores"] for t in timing) / n_img,
              "qc_ms_per_image": 1000 * sum(t[0]["total"] for t in timing) / n_img,
              "embed_ms_per_image": float(np.median(emb_ms)) if emb_ms else float("nan")}
        tm["ratio_no_read"] = tm["measure_ms"] / tm["embed_ms_per_image"]
        tm["ratio_all"] = (tm["measure_ms"] + tm["focus_ms"] + tm["faiss_ms"]) / tm["embed_ms_per_image"]
        meta = {"n_clean": len(clean), "rounds": n_rounds, "n_defects": n_def, "timing": tm}
        md.append(table(name, agg, curves, meta))
        summary[name] = {"meta": meta, "clean": agg["clean"], "kinds": agg["kinds"], "focus_curves": curves}
    plot_curves(all_curves, settings.out_of_focus, out / "qc_blur_recall.png")
    (out / "image_qc.json").write_text(json.dumps(summary, indent=1))
    (out / "image_qc.md").write_text("\n".join(md))
    print("\n".join(md))
    print(f"written: {out / 'image_qc.md'}, {out / 'image_qc.json'}, {out / 'qc_blur_recall.png'}, montages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
