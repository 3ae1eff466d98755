#!/usr/bin/env python
"""Read every file of a folder of real microscopy files the way the model does, and say whether
it was read as its manifest says (axes, shape, dtype) or refused with a message.

The folder holds the files and a `manifest.csv` (file, format, axes, shape, dtype, ...), e.g. the
repository's tests/data/formats or a larger shared collection. Writes a markdown table (stdout
and --table) and a montage PNG (--montage) of what the model sees for each readable file
(224 px, default preprocessing: MIP over Z, first time point, per-image stretch).

    python scripts/check_formats.py tests/data/formats --montage formats_montage.png
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _sizes(axes: str, shape) -> dict:
    """letter -> size for T, C, Z, Y, X, S (size-1 axes and reader placeholders dropped)."""
    out = {}
    for a, n in zip(axes, shape):
        if n > 1 and a in "TCZYXS":
            out[a] = out.get(a, 1) * int(n)
    return out


def check(folder: Path, size: int = 224):
    from trainer.io.errors import ImageReadError
    from trainer.io.read import describe, load_for_model

    rows, tiles = [], []
    for r in csv.DictReader(open(folder / "manifest.csv")):
        path = folder / r["file"]
        shape_txt = r["shape"].split(" ")[0].split("|")[0]
        expected = [int(x) for x in shape_txt.split("x")] if "x" in shape_txt else []
        t0 = time.time()
        try:
            d = describe(path)
            img = load_for_model(path, size)
        except ImageReadError as exc:
            rows.append({"file": r["file"], "manifest": f"{r['axes']} {r['shape']} {r['dtype']}",
                         "read": "refused", "ok": "refused", "model": exc.reason, "s": time.time() - t0})
            continue
        want = _sizes(r["axes"].split(" ")[0], expected)
        got = _sizes(d["axes"], d["shape"])
        scenes = want.pop("S", None) if r["axes"].startswith("B") else None  # czifile's S = scenes
        if "S" in want and "S" not in got and "C" in got:  # RGB samples vs a reader's C
            want["C"] = want.pop("S")
        same = want == got and d["dtype"] == r["dtype"]
        note = "; ".join(d["notes"] + ([f"scene 1 of {scenes}"] if scenes and "scene" not in " ".join(d["notes"]) else []))
        rows.append({"file": r["file"], "manifest": f"{r['axes']} {r['shape']} {r['dtype']}",
                     "read": f"{d['format']}: {d['axes']} {'x'.join(map(str, d['shape']))} {d['dtype']}"
                             f" (axes from {d['axes_from']})",
                     "ok": "yes" if same else "NO", "model": f"plane {'x'.join(map(str, d['plane']))}"
                     + (f"; {note}" if note else ""), "s": time.time() - t0})
        tiles.append((r["file"], img))
    return rows, tiles


def table(rows) -> str:
    lines = ["| file | manifest (axes, shape, dtype) | read as | matches | what the model gets / why refused | s |",
             "|---|---|---|---|---|--:|"]
    for r in rows:
        cells = [f"`{r['file']}`", r["manifest"], r["read"], r["ok"], r["model"]]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + f" | {r['s']:.1f} |")
    return "\n".join(lines)


def montage(tiles, out: Path, size: int = 224) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(tiles)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axs = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.5 * rows), squeeze=False)
    for ax in axs.flat:
        ax.axis("off")
    for ax, (name, img) in zip(axs.flat, tiles):
        ax.imshow(img)
        ax.set_title(name if len(name) < 34 else name[:31] + "...", fontsize=7)
    fig.suptitle(f"what the model sees ({size} px, default preprocessing)", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, **({"pil_kwargs": {"quality": 85}} if out.suffix.lower() in (".jpg", ".jpeg") else {}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--montage", type=Path, default=None)
    ap.add_argument("--table", type=Path, default=None)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--montage-skip", default=None, help="leave files whose name starts with this out of the montage "
                                                         "(e.g. gpl-3.0/: their pixels stay out of the repository)")
    args = ap.parse_args()
    rows, tiles = check(args.folder, args.size)
    text = table(rows)
    print(text)
    if args.table:
        args.table.write_text(text + "\n")
    if args.montage_skip:
        tiles = [t for t in tiles if not t[0].startswith(args.montage_skip)]
    if args.montage and tiles:
        montage(tiles, args.montage, args.size)


if __name__ == "__main__":
    main()
