#!/usr/bin/env python
"""Inference throughput on this machine (images/s), three phases measured in one run:

  decode   : decode + preprocess alone (`ImageDataset[i]` + `collate_skipping`, i.e. exactly the
             work a loader worker does), serial, one process, one torch thread: per-core cost
  model    : bare backbone forward on in-memory tensors (a real preprocessed batch repeated),
             channels_last, torch.no_grad, all torch threads
  pipeline : `trainer.models.inference.run_model` over the image paths (DataLoader + workers + model),
             timed end to end (worker start-up and first-batch latency included)

ratio = pipeline / model, the issue's target: >= 0.85 on CPU (loading must not be the bottleneck).

Every phase runs in a fresh child process (long-lived CPU processes drift, measured on
these CPUs); each child sets torch.set_flush_denormal(True) and warms the
model up with one full batch before timing. Phases are interleaved per repeat, and the ratio is
taken within each repeat, then the median over repeats is reported (other jobs share the CPU).

Image sets: the JPEG crops of --images (replicated to --n paths), and the same crops written
as 16-bit, 3-channel, channel-first TIFFs into a temporary folder (microscopy is TIFF), the
same LZW-compressed (`lzw`), and 5-plane 16-bit ImageJ Z-stacks (`stack`, projected by MIP).

--variant names code variants of the loading path, applied by monkeypatching inside the child
processes only (the trainer package is not modified): `baseline` is the code as it is, the
others are the candidate fixes described in docs/benchmarks.md ("Throughput").

    python scripts/benchmark_throughput.py                                   # defaults below
    python scripts/benchmark_throughput.py --size 128 --n 512 --repeats 1    # quick look
    python scripts/benchmark_throughput.py --variant baseline,w2 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_IMAGES = str(ROOT / "tests" / "data" / "bccd_wbc")  # the dev set in the repository
TARGET = 0.85


# ============================================================ variants (child side only)

def _patch_main_threads():
    """run_model on CPU with workers: torch threads in the main process = cores - workers
    (the decoders get their own cores instead of preempting the model's OpenMP threads)."""
    import torch

    from trainer import inference

    orig = inference.run_model

    def run_model(*a, **k):
        workers = k.get("num_workers")
        workers = inference.loader_workers() if workers is None else workers
        cores = len(os.sched_getaffinity(0))
        before = torch.get_num_threads()
        if workers:
            torch.set_num_threads(max(1, min(before, cores - workers)))
        try:
            return orig(*a, **k)
        finally:
            torch.set_num_threads(before)

    inference.run_model = run_model


# name -> loader patches (change the decode phase too), pipeline-only patches, env, workers
VARIANTS = {
    # the loading changes first measured here as "proposed" (histogram percentiles for 16-bit,
    # one-copy channels_last batches, nice-10 loader workers) are now in trainer/: "baseline"
    "baseline": {},
    "w0": {"workers": 0},
    "w2": {"workers": 2},
    "t1": {"pipeline": [_patch_main_threads]},
    "passive": {"env": {"OMP_WAIT_POLICY": "PASSIVE"}},
    # the embedding itself (trainer/models/features.py): "baseline" runs the pre-logits ("final")
    # embedding; this one the default "multiscale" (two orientations): its pipeline img/s over
    # baseline's, in the same repeat, is the embedding's cost per image (issue 15: <= 2x)
    "multiscale": {"features": "multiscale"},
}


def apply_variant(name: str, phase: str) -> None:
    v = VARIANTS[name]
    for patch in v.get("loader", []) + (v.get("pipeline", []) if phase == "pipeline" else []):
        patch()


# ============================================================ child: one phase, fresh process

def _load_paths(spec) -> list[str]:
    return json.loads(Path(spec["paths_file"]).read_text())


def _cpu() -> float:
    """CPU seconds of this process and its finished children (DataLoader workers are joined)."""
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def child(spec: dict) -> dict:
    for k, v in (spec.get("env") or {}).items():
        os.environ[k] = v
    import torch

    torch.set_flush_denormal(True)
    if spec.get("main_threads"):
        torch.set_num_threads(spec["main_threads"])
    import trainer  # noqa: F401  (torchvision shim before timm)

    apply_variant(spec["variant"], spec["phase"])
    from trainer.models.data import ImageDataset, collate_skipping

    paths = _load_paths(spec)
    size, bs, phase = spec["size"], spec["batch_size"], spec["phase"]
    res = {"phase": phase, "size": size, "fmt": spec["fmt"], "variant": spec["variant"], "n": len(paths),
           "torch_threads": torch.get_num_threads()}

    if phase == "decode":
        torch.set_num_threads(1)  # what a DataLoader worker runs with
        ds = ImageDataset(paths, None, size, (0.5,) * 3, (0.5,) * 3)
        collate_skipping([ds[i] for i in range(min(4, len(ds)))])  # imports, first-call costs
        t, c = time.perf_counter(), _cpu()
        for s in range(0, len(ds), bs):
            collate_skipping([ds[i] for i in range(s, min(len(ds), s + bs))])
        dt, dc = time.perf_counter() - t, _cpu() - c
        res.update(seconds=dt, images_per_s=len(ds) / dt, cpu_ms_per_image=1000 * dc / len(ds))
        return res

    from trainer.models.backbone import create_backbone

    try:
        net, pre, source = create_backbone(spec["model"], "imagenet", spec.get("features", "final"))
    except Exception as exc:  # no shipped weights for that name: speed is the same
        net, pre, source = create_backbone(spec["model"], "none", spec.get("features", "final"))
        source += f" ({type(exc).__name__})"
    res["weights"] = source
    net = net.eval().to(memory_format=torch.channels_last)
    ds = ImageDataset(paths[:bs], None, size, pre.mean, pre.std)
    x, *_ = collate_skipping([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        net(x)  # warm-up: oneDNN primitives for this shape

    def bare_model(n_batches):
        t, c = time.perf_counter(), _cpu()
        with torch.no_grad():
            for _ in range(n_batches):
                net(x)
        return time.perf_counter() - t, _cpu() - c

    if phase == "pair":  # bare model, pipeline, bare model: the ratio uses the mean of both model runs
        from trainer.models.inference import loader_workers, run_model

        n_batches = max(1, len(paths) // bs // 2)
        m1, mc1 = bare_model(n_batches)
        workers = spec.get("workers")
        res["workers"] = loader_workers() if workers is None else workers
        t, c = time.perf_counter(), _cpu()
        out = run_model(net, paths, size, pre.mean, pre.std, batch_size=bs, num_workers=workers)
        dt, dc = time.perf_counter() - t, _cpu() - c
        m2, mc2 = bare_model(n_batches)
        assert len(out.rows) == len(paths), f"{len(paths) - len(out.rows)} images skipped: {out.skipped.summary()}"
        model_rate = 2 * n_batches * bs / (m1 + m2)
        res.update(seconds=dt, images_per_s=len(paths) / dt, model_images_per_s=model_rate,
                   model_before=n_batches * bs / m1, model_after=n_batches * bs / m2,
                   ratio=len(paths) / dt / model_rate,
                   cpu_ms_per_image=1000 * dc / len(paths), model_cpu_ms_per_image=1000 * (mc1 + mc2) / (2 * n_batches * bs))
        return res
    raise ValueError(phase)


def run_child(spec: dict) -> dict:
    env = dict(os.environ)
    env.update(spec.get("env") or {})
    proc = subprocess.run([sys.executable, __file__, "--_child", json.dumps(spec)], capture_output=True,
                          text=True, env=env, cwd=str(ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"child {spec['phase']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ============================================================ data

def jpeg_paths(images: str) -> list[str]:
    from trainer.io.folders import list_images

    return [str(p) for p in list_images(images)]


def write_tiffs(src: list[str], dst: Path) -> list[str]:
    """16-bit, 3-channel, channel-first TIFFs of the same crops (12-bit-like range + offset)."""
    import numpy as np
    import tifffile
    from PIL import Image

    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for i, p in enumerate(src):
        a = np.asarray(Image.open(p).convert("RGB")).astype(np.uint16) * 16 + 100  # 100..4180
        q = dst / f"{i:05d}.tif"
        tifffile.imwrite(q, np.moveaxis(a, -1, 0))
        out.append(str(q))
    return out


def write_lzw(src: list[str], dst: Path) -> list[str]:
    """The same 16-bit 3-channel crops, LZW-compressed (decoded by imagecodecs)."""
    import numpy as np
    import tifffile
    from PIL import Image

    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for i, p in enumerate(src):
        a = np.asarray(Image.open(p).convert("RGB")).astype(np.uint16) * 16 + 100
        q = dst / f"{i:05d}.tif"
        tifffile.imwrite(q, np.moveaxis(a, -1, 0), compression="lzw", photometric="minisblack")
        out.append(str(q))
    return out


def write_stacks(src: list[str], dst: Path, planes: int = 5) -> list[str]:
    """ImageJ Z-stacks of 5 planes (16-bit grey, the crop defocused differently per plane):
    read as a maximum-intensity projection, the default for Z."""
    import numpy as np
    import tifffile
    from PIL import Image

    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for i, p in enumerate(src):
        g = np.asarray(Image.open(p).convert("L")).astype(np.float32)
        stack = np.stack([(g * (0.6 + 0.1 * k) * 16 + 100) for k in range(planes)]).astype(np.uint16)
        q = dst / f"{i:05d}.tif"
        tifffile.imwrite(q, stack, imagej=True, metadata={"axes": "ZYX"})
        out.append(str(q))
    return out


def replicate(paths: list[str], n: int) -> list[str]:
    return [paths[i % len(paths)] for i in range(n)]


# ============================================================ parent

def _write_json(path, obj) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=DEFAULT_IMAGES, help="folder of images (JPEG/PNG, any layout)")
    ap.add_argument("--size", type=int, nargs="+", default=[128, 224])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--n", type=int, default=1024, help="paths per phase (the image list is replicated)")
    ap.add_argument("--workers", type=int, default=None,
                    help="DataLoader workers for the pipeline (default: trainer.models.inference.loader_workers())")
    ap.add_argument("--main-threads", type=int, default=None, help="torch threads in the main process (default: torch's)")
    ap.add_argument("--formats", default="jpeg,tiff,lzw,stack",
                    help="comma list from: jpeg, tiff, lzw (LZW-compressed TIFF), stack (5-plane ImageJ Z-stack)")
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variant", default="baseline", help=f"comma list from: {', '.join(VARIANTS)}")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE set in the child processes")
    ap.add_argument("--json", dest="json_out", default=None, help="write all results here")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(child(json.loads(args._child))))
        return

    variants = args.variant.split(",")
    formats = args.formats.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    env = dict(kv.split("=", 1) for kv in args.env)
    tmp = tempfile.TemporaryDirectory(prefix="scopeloop_tp_")
    src = jpeg_paths(args.images)
    lists = {}
    if "jpeg" in formats:
        lists["jpeg"] = replicate(src, args.n)
    if "tiff" in formats:
        lists["tiff"] = replicate(write_tiffs(src, Path(tmp.name) / "tiff"), args.n)
    if "lzw" in formats:
        lists["lzw"] = replicate(write_lzw(src, Path(tmp.name) / "lzw"), args.n)
    if "stack" in formats:
        lists["stack"] = replicate(write_stacks(src, Path(tmp.name) / "stack"), args.n)
    files = {}
    for fmt, ps in lists.items():
        files[fmt] = Path(tmp.name) / f"{fmt}.json"
        files[fmt].write_text(json.dumps(ps))

    cmd = "python " + " ".join([Path(__file__).relative_to(ROOT).as_posix()] + sys.argv[1:])
    meta = {"command": cmd, "cpus": len(os.sched_getaffinity(0)), "distinct_images": len(src),
            "images": args.images, "n": args.n, "batch_size": args.batch_size, "model": args.model,
            "repeats": args.repeats, "variants": variants, "env": env, "workers": args.workers,
            "main_threads": args.main_threads, "date": time.strftime("%Y-%m-%d %H:%M")}
    print(f"# {cmd}\n# {meta['cpus']} CPUs, {len(src)} distinct images replicated to {args.n}, "
          f"batch {args.batch_size}, {args.model}, {args.repeats} repeat(s)", flush=True)
    raw = []
    base = {"batch_size": args.batch_size, "model": args.model, "env": env, "main_threads": args.main_threads}
    for rep in range(args.repeats):
        for size in args.size:
            for fmt in formats:
                decoded = {}
                for v in variants:
                    vs = VARIANTS[v]
                    spec = {**base, "size": size, "fmt": fmt, "variant": v, "paths_file": str(files[fmt]),
                            "workers": vs.get("workers", args.workers), "env": {**env, **vs.get("env", {})},
                            "features": vs.get("features", "final")}
                    key = tuple(f.__name__ for f in vs.get("loader", []))
                    if key not in decoded:  # decode cost depends only on the loader patches
                        decoded[key] = run_child({**spec, "phase": "decode"})
                        print(f"  rep {rep} size {size} {fmt} {v} decode {decoded[key]['images_per_s']:.1f} img/s",
                              flush=True)
                    raw.append({**decoded[key], "variant": v, "repeat": rep})
                    r = run_child({**spec, "phase": "pair"})
                    r["repeat"] = rep
                    raw.append(r)
                    if args.json_out:  # partial results survive an interrupted run
                        _write_json(args.json_out, {"meta": meta, "summary": None, "raw": raw})
                    print(f"  rep {rep} size {size} {fmt} {v}: model {r['model_before']:.1f} / {r['model_after']:.1f}, "
                          f"pipeline {r['images_per_s']:.1f} img/s (workers {r['workers']}), ratio {r['ratio']:.2f}",
                          flush=True)

    def med(phase, size, fmt=None, v=None, key="images_per_s"):
        vals = [r[key] for r in raw if r["phase"] == phase and r["size"] == size
                and (fmt is None or r["fmt"] == fmt) and (v is None or r["variant"] == v)]
        return statistics.median(vals) if vals else float("nan")

    summary = []
    for size in args.size:
        for fmt in formats:
            for v in variants:
                summary.append({"size": size, "format": fmt, "variant": v,
                                "decode_img_s_per_core": med("decode", size, fmt, v),
                                "decode_cpu_ms": med("decode", size, fmt, v, key="cpu_ms_per_image"),
                                "model_img_s": med("pair", size, fmt, v, key="model_images_per_s"),
                                "model_cpu_ms": med("pair", size, fmt, v, key="model_cpu_ms_per_image"),
                                "pipeline_img_s": med("pair", size, fmt, v),
                                "pipeline_cpu_ms": med("pair", size, fmt, v, key="cpu_ms_per_image"),
                                "ratio": med("pair", size, fmt, v, key="ratio")})
    print("\nmedians over repeats (ratio: median of the per-run ratios; CPU ms: per image, all processes)\n")
    print("| size | format | variant | decode+preprocess img/s (1 core) | CPU ms | bare model img/s | CPU ms "
          "| pipeline img/s | CPU ms | pipeline / model |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in summary:
        flag = "" if s["ratio"] >= TARGET else " (< 0.85)"
        print(f"| {s['size']} | {s['format']} | {s['variant']} | {s['decode_img_s_per_core']:.0f} | "
              f"{s['decode_cpu_ms']:.1f} | {s['model_img_s']:.1f} | {s['model_cpu_ms']:.1f} | "
              f"{s['pipeline_img_s']:.1f} | {s['pipeline_cpu_ms']:.1f} | {s['ratio']:.2f}{flag} |")
    if "baseline" in variants and "multiscale" in variants:
        print("\nembedding cost, multiscale / final, per image (within each repeat, then the median):")
        for size in args.size:
            for fmt in formats:
                def per_rep(key, v):
                    return {r["repeat"]: r[key] for r in raw if r["phase"] == "pair" and r["size"] == size
                            and r["fmt"] == fmt and r["variant"] == v}
                costs = {}
                for label, key, inv in (("wall, pipeline", "images_per_s", True), ("CPU, pipeline", "cpu_ms_per_image", False),
                                        ("wall, bare model", "model_images_per_s", True)):
                    b, m = per_rep(key, "baseline"), per_rep(key, "multiscale")
                    ratios = [(b[k] / m[k]) if inv else (m[k] / b[k]) for k in b if k in m]
                    costs[label] = statistics.median(ratios)
                summary.append({"size": size, "format": fmt, "embedding_cost_multiscale_over_final": costs})
                print(f"  {size} px {fmt}: " + ", ".join(f"{k} {v:.2f}x" for k, v in costs.items())
                      + f" ({args.repeats} repeat(s); target <= 2x)")
    if args.json_out:
        _write_json(args.json_out, {"meta": meta, "summary": summary, "raw": raw})
        print(f"\nwrote {args.json_out}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
