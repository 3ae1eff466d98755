import subprocess
import sys

import numpy as np
import tifffile

from trainer.cells import CellSettings, find_cells, segment_field
from trainer.cells.reading import FieldSource
from trainer.cells.synthetic import make_field, score


def test_tiled_field_finds_each_cell_once(tmp_path):
    f = make_field((700, 640), n=220, pairs=25, seed=3)
    d = tmp_path / "fields"
    d.mkdir()
    tifffile.imwrite(d / "f.tif", f.image)
    out = tmp_path / "out"
    rep = find_cells(d, out, CellSettings(tile=256, crops=False))
    assert rep.fields["f.tif"]["tiled"]
    lab = tifffile.imread(out / "masks" / "f_masks.tif").astype(np.int64)
    s = score(f.labels, lab, f.pairs)
    whole = score(f.labels, segment_field(f.image), f.pairs)  # the same field in one piece
    assert s["recall"] >= whole["recall"] - 0.01 and s["split"] <= whole["split"] + 1 and s["merged_pairs"] == 0
    # no cell found twice: every true nucleus overlaps at most one found object by >= 50 %
    inter = np.zeros((f.labels.max() + 1, lab.max() + 1))
    np.add.at(inter, (f.labels.ravel(), lab.ravel()), 1)
    assert (inter[1:, 1:] / inter[1:, 1:].sum(1, keepdims=True) >= 0.5).sum(1).max() == 1
    assert rep.cells == lab.max() == len(np.unique(lab)) - 1


def test_band_reader_reads_rows_by_offset(tmp_path):
    img = np.random.default_rng(0).integers(0, 4000, (300, 200), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "x.tif", img)
    src = FieldSource(tmp_path / "x.tif", band_bytes=0)
    assert src.banded and src.shape == (300, 200)
    assert np.array_equal(src.read_rows(40, 90), img[40:90])
    assert np.array_equal(src.sample(7), img[::7, ::7])


def test_large_field_memory_bounded(tmp_path):
    """A 4000 x 4000 uint16 field (32 MB on disk) is processed in bands: the child's peak RSS
    stays well below what reading it whole as float RGB would take (192 MB), let alone its float working copies."""
    path = tmp_path / "big" / "big.tif"
    path.parent.mkdir()
    mm = tifffile.memmap(path, shape=(4000, 4000), dtype=np.uint16)
    tile = make_field((1000, 1000), n=150, pairs=10, seed=5).image
    for y in range(0, 4000, 1000):
        for x in range(0, 4000, 1000):
            mm[y:y + 1000, x:x + 1000] = tile
    mm.flush()
    del mm
    code = ("import resource, sys; from trainer.cells import find_cells, CellSettings; "
            "from trainer.cells import reading; reading.BAND_BYTES = 1 << 20; "
            f"r = find_cells(r'{path.parent}', r'{tmp_path / 'out'}', CellSettings(crops=False, tile=1024)); "
            "print(r.cells, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    cells, rss_kb = map(int, res.stdout.split()[-2:])
    assert cells >= 16 * 150
    base = subprocess.run([sys.executable, "-c", "import resource, trainer.cells; "
                           "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
                          capture_output=True, text=True, check=True)
    assert rss_kb - int(base.stdout.split()[-1]) < 250_000
