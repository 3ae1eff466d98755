#!/usr/bin/env python
"""Self-supervised adaptation (issue 15, lever 2) on a GPU: speed, adapted backbones, fine-tune.

What it measures, in one run (CUDA when present; the same code runs slowly on CPU for a check):

1. SSL training step speed: SimCLR on the multiscale embedder (trainer.models.ssl's loss and head),
   synthetic batches already on the device, at several batch sizes, with AMP (fp16 autocast)
   and channels_last on and off: views per second (2 views per image), steady state.
2. Embedding speed: the refresh's embed step (`trainer.models.inference.run_model`, read + decode +
   multiscale model) over each data set: images per second, decode included.
3. Per data set (`--data`, ImageFolder): `trainer.models.ssl.adapt` from the shipped ImageNet weights on
   every image of the set (no labels used) for `--epochs`; the adapted backbone is written as an
   fp16 state dict `<out>/<set>-ssl-e<E>.pt` (checkpoints also at `--save-at` epochs), read by
   `scripts/benchmark_label_efficiency.py --ssl-weights FILE --recipes head,multiscale,ssl`.
4. Supervised fine-tune (the deep refresh's `trainer.models.training.train(mode="full")`) on `--ft-labels`
   random labels per set and seed, starting from ImageNet or from the adapted backbone, against
   the linear head on each frozen space; macro-F1 on the benchmark's stratified 30% test split.
   Runs while `--budget-s` lasts (seed-major, so a cut run keeps balanced pairs).

Results: `<out>/ssl_gpu.json` (written after every step) and the printed log.

    python scripts/benchmark_ssl.py --data tests/data/bccd_wbc --data ../shared/data/pbc_blood \\
        --epochs 40 --out test-artifacts/ssl
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:7.1f} s] {msg}", flush=True)


def save(out, results):
    tmp = out / "ssl_gpu.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out / "ssl_gpu.json")


def step_speed(weights, size, device, batches, repeats=8):
    """Views/s of one SimCLR step (forward both views, NT-Xent, backward, AdamW) on device tensors."""
    from trainer.models.backbone import create_backbone
    from trainer.models.inference import autocast
    from trainer.models.ssl import _lightly

    NTXentLoss, Head = _lightly()
    rows = []
    for amp, cl in ((True, True), (True, False), (False, True)):
        if device.type != "cuda" and amp:
            continue
        for bs in batches:
            emb, _, _ = create_backbone("tf_efficientnet_lite0", weights, "multiscale")
            net = nn.Sequential(emb, Head(emb.num_features, 512, 128)).to(device)
            fmt = torch.channels_last if cl else torch.contiguous_format
            net = net.to(memory_format=fmt).train()
            opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
            scaler = torch.amp.GradScaler("cuda", enabled=amp)
            loss_fn = NTXentLoss(temperature=0.2)
            a = torch.randn(bs, 3, size, size, device=device).contiguous(memory_format=fmt)
            b = torch.randn(bs, 3, size, size, device=device).contiguous(memory_format=fmt)

            def step():
                with autocast(device, amp):
                    loss = loss_fn(net(a).float(), net(b).float())
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()

            try:
                for _ in range(3):
                    step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.time()
                for _ in range(repeats):
                    step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.time() - t
                rows.append({"batch": bs, "amp": amp, "channels_last": cl, "views_per_s": round(2 * bs * repeats / dt, 1),
                             "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None})
            except torch.OutOfMemoryError:
                rows.append({"batch": bs, "amp": amp, "channels_last": cl, "views_per_s": None, "error": "out of memory"})
            log(f"SSL step speed: {rows[-1]}")
            del net, opt, a, b
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
    return rows


def load_script(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", required=True, help="ImageFolder root (repeatable)")
    ap.add_argument("--weights", default="imagenet", help="starting weights (default: the shipped ImageNet file)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=40, help="SSL epochs per set")
    ap.add_argument("--save-at", default="", help="also save the backbone after these epochs, e.g. 10,20")
    ap.add_argument("--ssl-batch", type=int, default=256)
    ap.add_argument("--speed-batches", default="64,128,256")
    ap.add_argument("--adapted", action="append", help="an adapted backbone made earlier, per --data in order: "
                    "no SSL for that set, the fine-tune check starts from this file")
    ap.add_argument("--ft-labels", default="", help="per set: labels for the fine-tune check, e.g. 100,300 (in --data order)")
    ap.add_argument("--ft-seeds", type=int, default=3)
    ap.add_argument("--ft-epochs", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=1e9, help="skip remaining fine-tunes past this many seconds")
    ap.add_argument("--out", default=str(ROOT / "test-artifacts" / "ssl"))
    args = ap.parse_args()

    from trainer.io.folders import scan_imagefolder
    from trainer.models.backbone import create_backbone
    from trainer.models.inference import default_device, run_model
    from trainer.models.ssl import SSLConfig, adapt

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = default_device()
    results = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "image_size": args.image_size, "weights": args.weights,
               "loader_workers": os.environ.get("SCOPELOOP_LOADER_WORKERS"), "sets": {}}
    log(f"device {results['device']}, torch {torch.__version__}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    results["ssl_step"] = step_speed(args.weights, args.image_size, device,
                                     [int(b) for b in args.speed_batches.split(",") if b])
    save(out, results)

    save_at = {int(e) for e in args.save_at.split(",") if e} | {args.epochs}
    spaces = {}
    adapted = dict(zip([Path(d).name for d in args.data], args.adapted or []))
    for root in args.data:
        root = Path(root)
        name = root.name
        if name in adapted:  # adapted earlier: only the fine-tune check runs on it
            spaces[(name, args.epochs)] = Path(adapted[name])
            continue
        items, classes = scan_imagefolder(root)
        paths = [p for p, _ in items]
        res_set = results["sets"].setdefault(name, {"images": len(paths), "classes": classes})
        emb, pre, src = create_backbone("tf_efficientnet_lite0", args.weights, "multiscale")
        t = time.time()
        r = run_model(emb, paths, args.image_size, pre.mean, pre.std, batch_size=256, device=device, desc="embedding")
        res_set["embed_images_per_s"] = round(len(r.rows) / (time.time() - t), 1)
        log(f"{name}: embedded {len(r.rows)} images at {res_set['embed_images_per_s']} images/s (decode included)")
        def checkpoint(entry, backbone, name=name):
            if entry["epoch"] in save_at:
                f = out / f"{name}-ssl-e{entry['epoch']}.pt"
                torch.save({k: v.half() if v.is_floating_point() else v for k, v in backbone.state_dict().items()}, f)
                spaces[(name, entry["epoch"])] = f
                log(f"{name}: SSL epoch {entry['epoch']}, loss {entry['loss']:.4f}, saved {f.name}")

        cfg = SSLConfig(epochs=args.epochs, batch_size=args.ssl_batch, device=str(device))
        batch = min(args.ssl_batch, max(32, len(paths) // 8))  # what adapt uses (>= ~8 steps per epoch)
        t = time.time()
        res = adapt(emb, paths, args.image_size, pre.mean, pre.std, config=cfg, log=lambda m: None, on_epoch=checkpoint)
        history = [{"epoch": h["epoch"], "loss": round(h["loss"], 4), "seconds": h["seconds"]} for h in res.history]
        res_set["ssl"] = {"epochs": args.epochs, "batch": batch, "history": history,
                          "seconds": round(time.time() - t, 1),
                          "views_per_s": round(2 * len(paths) * args.epochs / (time.time() - t), 1)}
        log(f"{name}: SSL {args.epochs} epochs in {res_set['ssl']['seconds']} s "
            f"({res_set['ssl']['views_per_s']} views/s with loading), loss {history[0]['loss']} -> {history[-1]['loss']}")
        save(out, results)

    ft_labels = [int(n) for n in args.ft_labels.split(",") if n]
    if not ft_labels:
        return
    from trainer.models.training import TrainConfig, train

    le = load_script("benchmark_label_efficiency")
    for seed in range(args.ft_seeds):
        for root, n_labels in zip(args.data, ft_labels):
            root = Path(root)
            name = root.name
            items, classes = scan_imagefolder(root)
            y = np.array([classes.index(c) for _, c in items])
            test = le.stratified_split(y, 0.3, seed, set())
            pool = np.flatnonzero(~test)
            rng = np.random.default_rng(seed)
            picked = rng.choice(pool, min(n_labels, len(pool)), replace=False)
            tpaths = [items[i][0] for i in np.flatnonzero(test)]
            yt = y[test]
            starts = {"imagenet": args.weights, "ssl": str(spaces[(name, args.epochs)])}
            for start, weights in starts.items():
                for mode in ("head", "full"):
                    if time.time() - T0 > args.budget_s:
                        log(f"budget of {args.budget_s:.0f} s spent: fine-tune checks stop here")
                        save(out, results)
                        return
                    t = time.time()
                    cfg = TrainConfig(weights=weights, mode=mode, image_size=args.image_size, epochs=args.ft_epochs,
                                      seed=seed, device=str(device))
                    tr = train([items[i][0] for i in picked], [items[i][1] for i in picked], classes, cfg)
                    pr = run_model(tr.model.net, tpaths, args.image_size, tr.model.config.mean, tr.model.config.std,
                                   batch_size=256, device=device)
                    # a class with no picked label is dropped from the model: map its outputs back
                    to_set = np.array([classes.index(c) for c in tr.model.config.classes])
                    f1 = le.macro_f1(yt[pr.rows], to_set[pr.probs.argmax(1)], sorted(set(yt.tolist())))
                    row = {"seed": seed, "labels": int(len(picked)), "start": start, "mode": mode,
                           "macro_f1": round(f1, 4), "seconds": round(time.time() - t, 1)}
                    results["sets"].setdefault(name, {}).setdefault("finetune", []).append(row)
                    log(f"{name}: {row}")
                    save(out, results)


if __name__ == "__main__":
    main()
