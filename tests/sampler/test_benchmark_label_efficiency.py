"""The label-efficiency benchmark runs end to end on the dev set at a tiny size."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
from tests.dev_data import BCCD as _DEV_DATA  # noqa: E402

DEV = _DEV_DATA


def _dev_subset(sub: Path, per_class: int) -> Path:
    """The first `per_class` images of each class of the dev set, as an ImageFolder at `sub`."""
    for cls in sorted(p for p in DEV.iterdir() if p.is_dir()):
        (sub / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:per_class]:
            shutil.copy(f, sub / cls.name / f.name)
    return sub


@pytest.mark.skipif(not DEV.is_dir(), reason="dev data set not present")
def test_benchmark_runs_end_to_end_tiny(tmp_path):
    # tiny: a 5-image-per-class subset of the dev set (Basophil keeps its 3), 2 rounds, 2 seeds
    sub = _dev_subset(tmp_path / "data", 5)
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark_label_efficiency.py"), "--data", str(sub),
           "--out", str(out), "--batch", "4", "--max-labels", "8", "--seeds", "2",
           "--strategies", "random,hybrid,kcenter", "--image-size", "64"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert (out / "learning_curves.png").stat().st_size > 1000
    assert (out / "embeddings.npz").is_file()
    # today's head (the reference) and the quick learner, each with every strategy
    assert set(report["headline"]) == {f"{r}/{s}" for r in ("head", "multiscale") for s in ("random", "hybrid", "kcenter")}
    assert report["reference"] == "head" and set(report["ceilings"]) == {"head", "multiscale"}
    h = report["headline"]["multiscale/hybrid"]
    assert {"product_ratio_95", "active_learning_ratio_95", "rounds_significantly_worse_than_random"} <= set(h)
    assert report["headline"]["head/random"]["product_ratio_95"] in (1.0, None)  # the reference against itself
    assert len(report["summary"]["multiscale/hybrid"]["diff_ci95"]) == 2
    assert [p["labels"] for p in report["curves"]["multiscale/hybrid"][0]] == [4, 8]
    assert report["class_counts"]["Basophil"] == 3
    # rerun uses the embedding cache (both embeddings from one pass); the self-training recipe runs too
    old = "hybrid:rare_frac=0.1:deficit=inf"  # a strategy with changed options (the sampler before)
    res = subprocess.run(cmd + ["--recipes", "head,multiscale+self", "--strategies", f"random,hybrid,{old}"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "embedded" not in res.stdout, res.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert "multiscale+self" in report["recipes"]
    assert [p["labels"] for p in report["curves"]["multiscale+self/hybrid"][1]] == [4, 8]
    assert "product_ratio_95" in report["headline"][f"multiscale+self/{old}"]
    res = subprocess.run(cmd + ["--strategies", "random,hybrid:nosuch=1,bogus"], capture_output=True, text=True)
    assert res.returncode == 2 and "unknown strategy ['bogus']" in res.stderr


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_label_efficiency",
                                                  ROOT / "scripts" / "benchmark_label_efficiency.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_paired_difference_flags_only_consistent_losses():
    bench = _bench_module()
    rng = __import__("numpy").random.default_rng(0)
    labels = [10, 20, 30, 40]

    def curves(values_per_seed):
        return [[{"labels": n, "macro_f1": v} for n, v in zip(labels, vals)] for vals in values_per_seed]

    base = rng.uniform(0.3, 0.7, (8, 4))
    random_curves = curves(base)
    # round 30: worse on every seed by 0.05; round 40: +-0.05 noise, below random on average
    # (-0.0125) but not consistently: a mean-only rule would call it worse
    other = base.copy()
    other[:, 2] -= 0.05
    other[:, 3] += [-0.05, 0.05, -0.05, 0.05, -0.05, 0.05, -0.05, -0.05]
    res = bench.paired_difference(curves(other), random_curves)
    assert res["rounds_significantly_worse_than_random"] == [30]
    assert abs(res["diff_mean"][2] + 0.05) < 1e-3 and res["diff_ci95"][2] < 1e-3
    assert res["diff_mean"][3] < 0 and res["diff_ci95"][3] > 0.02


def test_synthetic_blur_matches_the_usual_gaussian():
    # the synthetic set must not need scipy; its blur is the standard mirrored-edge Gaussian
    bench = _bench_module()
    np = __import__("numpy")
    img = np.zeros((21, 21), np.float32)
    img[10, 10] = 1.0
    out = bench.gaussian_filter(img, 1.5)
    assert abs(out.sum() - 1.0) < 1e-5
    r = np.hypot(*np.mgrid[-10:11, -10:11])
    ring = out[np.isclose(r, 3.0)]
    assert np.allclose(ring, ring[0], rtol=1e-5)  # isotropic
    expected = np.exp(-0.5 * 9 / 1.5 ** 2) / (2 * np.pi * 1.5 ** 2)
    assert abs(ring[0] - expected) / expected < 0.02


@pytest.mark.skipif(not DEV.is_dir(), reason="dev data set not present")
def test_ssl_recipe_runs_on_a_backbone_adapted_by_the_ssl_benchmark(tmp_path):
    # scripts/benchmark_ssl.py adapts the backbone without labels (CPU, tiny) and writes it;
    # the label-efficiency benchmark's `ssl` recipe embeds the set with that file, beside `head`
    pytest.importorskip("lightly")
    sub = _dev_subset(tmp_path / "data", 4)
    ssl_out = tmp_path / "ssl"
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark_ssl.py"), "--data", str(sub),
                          "--image-size", "64", "--epochs", "1", "--speed-batches", "", "--out", str(ssl_out)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "SCOPELOOP_LOADER_WORKERS": "0"})
    assert res.returncode == 0, res.stderr[-3000:]
    adapted = ssl_out / "data-ssl-e1.pt"
    summary = json.loads((ssl_out / "ssl_gpu.json").read_text())["sets"]["data"]
    assert summary["images"] == 19 and len(summary["ssl"]["history"]) == 1 and summary["embed_images_per_s"] > 0
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark_label_efficiency.py"), "--data", str(sub),
           "--out", str(out), "--batch", "4", "--max-labels", "8", "--seeds", "1", "--strategies", "random",
           "--image-size", "64", "--recipes", "head,ssl"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and "--ssl-weights" in res.stderr  # the recipe says what it needs
    res = subprocess.run(cmd + ["--ssl-weights", str(adapted)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert set(report["ceilings"]) == {"head", "ssl"} and (out / "embeddings-data-ssl-e1.npz").is_file()
    assert [p["labels"] for p in report["curves"]["ssl/random"][0]] == [4, 8]
    # the adapted space is not the ImageNet one
    a = np.load(out / "embeddings.npz")["raw"]
    b = np.load(out / "embeddings-data-ssl-e1.npz")["raw"]
    assert a.shape == b.shape and not np.allclose(a, b, atol=1e-3)
