#!/usr/bin/env python
"""Peak memory of reading one plane from a large BigTIFF stack (the reader must not read the
whole file to take one plane).

Writes an uncompressed OME BigTIFF of T x Z x H x W uint16 (default 16 x 8 x 2048 x 2048 = 1 GiB)
into --dir, then in fresh child processes reads it with `trainer.io.decode.read_raw` under three
stack settings and reports each child's peak RSS (ru_maxrss) and time, next to the file size and
a child that reads the whole file with `tifffile.imread` for comparison.

    python scripts/benchmark_reader_memory.py --dir /tmp/scopeloop_mem
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
from trainer.io.decode import read_raw
import tifffile
mode, path = sys.argv[1], sys.argv[2]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if mode == "imread":
    arr = tifffile.imread(path)
else:
    arr = read_raw(path, prep=json.loads(mode))
dt = time.perf_counter() - t
print(json.dumps({{"shape": list(arr.shape), "seconds": dt, "base_mib": base / 1024,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/scopeloop_mem")
    ap.add_argument("--shape", type=int, nargs=4, default=[16, 8, 2048, 2048], metavar=("T", "Z", "H", "W"))
    ap.add_argument("--skip-imread", action="store_true")
    args = ap.parse_args()
    import numpy as np
    import tifffile

    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "stack.ome.tif"
    t, z, h, w = args.shape
    if not path.is_file():
        with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
            plane = (np.arange(h * w, dtype=np.uint32).reshape(h, w) % 4000).astype(np.uint16)
            tw.write(shape=(t, z, h, w), dtype=np.uint16, metadata={"axes": "TZYX"},
                     data=(plane for _ in range(t * z)))
    size_mib = path.stat().st_size / 2 ** 20
    cmd = "python " + " ".join([Path(__file__).relative_to(ROOT).as_posix()] + sys.argv[1:])
    print(f"# {cmd}\n# {path.name}: T{t} Z{z} {h}x{w} uint16, BigTIFF, {size_mib:.0f} MiB")
    print("| read | plane shape | peak RSS MiB (interpreter + libs before: base) | s |\n|---|---|--:|--:|")
    modes = [("MIP over Z of time point 0 (default)", "{}"),
             ("one Z plane of time point 3", json.dumps({"stack": "plane", "plane": 2, "timepoint": 3}))]
    if not args.skip_imread:
        modes.append(("tifffile.imread, whole file (comparison)", "imread"))
    for label, mode in modes:
        proc = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT)), mode, str(path)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"| {label} | failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode} | | |")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"| {label} | {'x'.join(map(str, r['shape']))} | {r['peak_mib']:.0f} (base {r['base_mib']:.0f}) | {r['seconds']:.2f} |")
        time.sleep(0.5)


if __name__ == "__main__":
    main()
