"""The label-efficiency benchmark runs end to end on the dev set at a tiny size."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
from tests.dev_data import BCCD as _DEV_DATA  # noqa: E402
DEV = _DEV_DATA


@pytest.mark.skipif(not DEV.is_dir(), reason="dev data set not present")
def test_benchmark_runs_end_to_end_tiny(tmp_path):
    # tiny: a 5-image-per-class subset of the dev set (Basophil keeps its 3), 2 rounds, 2 seeds
    sub = tmp_path / "data"
    for cls in sorted(p for p in DEV.iterdir() if p.is_dir()):
        (sub / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:5]:
            shutil.copy(f, sub / cls.name / f.name)
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark_label_efficiency.py"), "--data", str(sub),
           "--out", str(out), "--batch", "4", "--max-labels", "8", "--seeds", "2",
           "--strategies", "random,hybrid,kcenter", "--image-size", "64"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert (out / "learning_curves.png").stat().st_size > 1000
    assert (out / "embeddings.npz").is_file()
    assert set(report["headline"]) == {"random", "hybrid", "kcenter"}
    assert [p["labels"] for p in report["curves"]["hybrid"][0]] == [4, 8]
    assert report["class_counts"]["Basophil"] == 3
    # rerun uses the embedding cache
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "embedded" not in res.stdout
