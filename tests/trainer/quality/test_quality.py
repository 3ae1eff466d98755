"""Image quality control (trainer/quality.py) on small generated sets, one per verdict.

tests/data/qc holds real files (regenerate with tests/data/qc/generate.py): each file's name is
the verdict it must get. Embedding-based verdicts use hand-made embeddings in a real FAISS index.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from trainer.io.folders import list_images
from trainer.quality.assess import CSV_FIELDS, assess
from trainer.quality.embedding_scores import embedding_scores
from trainer.quality.pixels import pixel_match, thumbnail
from trainer.quality.project import QC_DIR, load_verdicts, project_qc, rank_with_qc
from trainer.quality.settings import SETTINGS_FILE, QCSettings
from trainer.reports.batch_qc import qc_folder

QC = Path(__file__).resolve().parents[2] / "data" / "qc"


def _expected(name: str) -> str:
    for v in ("out_of_focus", "too_dark", "saturated", "blank", "duplicate", "unusual"):
        if name.startswith(v) or name.startswith("zz_" + v):
            return v
    return "ok"


@pytest.fixture(scope="module")
def qc_report():
    paths = list_images(QC)
    assert len(paths) == 21, "tests/data/qc changed: regenerate with tests/data/qc/generate.py"
    return assess(paths, [p.name for p in paths])


def test_every_generated_image_gets_its_verdict(qc_report):
    got = {r.key: r.verdict for r in qc_report.results}
    assert got == {k: _expected(k) for k in got}
    assert qc_report.counts() == {"ok": 16, "blank": 1, "out_of_focus": 1, "saturated": 1, "too_dark": 1,
                                  "duplicate": 1, "unusual": 0}


def test_verdict_names_the_deciding_score(qc_report):
    r = qc_report.by_key()
    assert r["blank_01.png"].decided_by == "structure" and "< 0.004" in r["blank_01.png"].reason
    assert r["out_of_focus_01.png"].decided_by == "defocus_px"
    assert r["saturated_01.png"].decided_by == "saturated_share" and r["saturated_01.png"].saturated_share > 0.5
    assert r["too_dark_01.png"].decided_by == "brightness" and r["too_dark_01.png"].brightness < 0.05
    dup = r["zz_duplicate_of_ok_03.tif"]
    assert dup.decided_by == "identical pixels" and dup.duplicate_of == "ok_03.png"  # PNG and TIFF, same pixels
    assert r["ok_03.png"].verdict == "ok" and r["ok_03.png"].reason == ""


def test_focus_scores_blank_is_uncertain_not_sharp(qc_report):
    r = qc_report.by_key()
    assert qc_report.focus is not None and qc_report.focus.n_images >= 2
    blank = r["blank_01.png"]
    assert math.isnan(blank.defocus_px) and math.isnan(blank.defocus_sd)  # no structured patch: not "in focus"
    ok = [x for k, x in r.items() if k.startswith("ok_")]
    assert max(x.defocus_px for x in ok) < 1.5 < r["out_of_focus_01.png"].defocus_px
    assert all(x.defocus_sd >= 0 for x in ok)
    assert all(x.laplacian_focus > 0 for x in ok)  # the classical measure is recorded for every image


def test_defocus_grows_with_blur(tmp_path):
    from scipy.ndimage import gaussian_filter

    for p in sorted(QC.glob("ok_*.png")):
        shutil.copy(p, tmp_path / p.name)
    src = np.asarray(Image.open(QC / "ok_05.png")).astype(np.float32)
    rng = np.random.default_rng(0)
    for s in (1, 2, 3, 5):
        b = gaussian_filter(src, (s, s, 0)) + rng.normal(0, 2, src.shape)
        Image.fromarray(np.clip(np.round(b), 0, 255).astype(np.uint8)).save(tmp_path / f"zblur_{s}.png")
    res = assess(list_images(tmp_path), [p.name for p in list_images(tmp_path)]).by_key()
    est = [res[f"zblur_{s}.png"].defocus_px for s in (1, 2, 3, 5)]
    assert est == sorted(est), est
    assert est[0] < 1.5 and est[2] > est[0] + 1.0 and est[3] >= 2.0, est  # a 16-image pool: a coarse scale
    assert res["zblur_5.png"].verdict == "out_of_focus"


def _camera_12bit(rng, saturate=False):
    yy, xx = np.mgrid[:128, :128].astype(np.float32)
    img = 200 + 1800 * np.exp(-(((yy - 64) ** 2 + (xx - 60) ** 2) / 300.0))
    img += 600 * (rng.random((128, 128)) < 0.02)  # bright specks: fine detail
    img = img + rng.normal(0, 15, img.shape)
    if saturate:
        img = img * 6
    return np.clip(img, 0, 4095).astype(np.uint16)  # a 12-bit camera, saved as 16-bit TIFF


def test_saturation_uses_the_real_bit_depth(tmp_path):
    rng = np.random.default_rng(3)
    for i in range(8):
        tifffile.imwrite(tmp_path / f"cell_{i}.tif", _camera_12bit(rng))
    tifffile.imwrite(tmp_path / "over.tif", _camera_12bit(rng, saturate=True))
    paths = list_images(tmp_path)
    rep = assess(paths, [p.name for p in paths])
    assert rep.bit_depth == 12 and rep.full_scale == 4095
    r = rep.by_key()
    assert r["over.tif"].verdict == "saturated" and r["over.tif"].saturated_share > 0.05
    assert all(r[f"cell_{i}.tif"].saturated_share < 0.01 for i in range(8))
    # told that the camera has 16 bits, nothing reaches 65535: not saturated
    rep16 = assess(paths, [p.name for p in paths], settings=QCSettings(bit_depth=16))
    assert rep16.by_key()["over.tif"].saturated_share == 0.0



def _nuclei(rng, n, peak=3000.0, bg=100.0, size=128):
    """A 12-bit fluorescence field: `n` small nuclei (radius ~4 px) on a dark background."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    img = np.full((size, size), bg, np.float32)
    for cy, cx in rng.integers(12, size - 12, (n, 2)):
        img += peak * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 32.0)
    return img + rng.normal(0, 10, img.shape)


def test_brightness_judged_against_the_camera_and_the_field(tmp_path):
    """Issue 22 (6): well-exposed 12-bit images (one file with a hot pixel at 65535), float
    images and a field with a single nucleus were called too dark (brightness 0.0009-0.047)."""
    rng = np.random.default_rng(5)
    for i in range(5):
        tifffile.imwrite(tmp_path / f"cells_{i}.tif", np.clip(_nuclei(rng, 10), 0, 4095).astype(np.uint16))
    hot = np.clip(_nuclei(rng, 10), 0, 4095).astype(np.uint16)
    hot[3, 3] = 65535  # a hot pixel (or a burnt-in mark): not the camera's depth
    tifffile.imwrite(tmp_path / "hot_pixel.tif", hot)
    tifffile.imwrite(tmp_path / "one_nucleus.tif", np.clip(_nuclei(rng, 1), 0, 4095).astype(np.uint16))
    tifffile.imwrite(tmp_path / "float_deconvolved.tif", (_nuclei(rng, 10) * 7.5).astype(np.float32))
    tifffile.imwrite(tmp_path / "float_ratio.tif", (_nuclei(rng, 10) / 4095).astype(np.float32))
    tifffile.imwrite(tmp_path / "dark.tif", np.clip(_nuclei(rng, 10, peak=60.0, bg=20.0), 0, 4095).astype(np.uint16))
    paths = list_images(tmp_path)
    rep = assess(paths, [p.name for p in paths])
    assert rep.bit_depth == 12 and rep.full_scale == 4095
    r = rep.by_key()
    assert r["one_nucleus.tif"].brightness > 0.5 and r["hot_pixel.tif"].brightness > 0.5
    assert all(r[k].verdict != "too_dark" for k in r if k != "dark.tif"), {k: r[k].reason for k in r}
    assert r["dark.tif"].verdict == "too_dark"  # a really dark 12-bit exposure still is
    assert r["float_ratio.tif"].brightness > 0.5 and r["float_deconvolved.tif"].brightness > 0.5


def test_mixed_pool_8bit_files_keep_their_own_full_scale(tmp_path):
    rng = np.random.default_rng(4)
    for i in range(6):
        tifffile.imwrite(tmp_path / f"cell_{i}.tif", _camera_12bit(rng))
    for name in ("ok_00.png", "ok_01.png", "saturated_01.png"):
        shutil.copy(QC / name, tmp_path / name)
    paths = list_images(tmp_path)
    r = assess(paths, [p.name for p in paths]).by_key()
    assert r["ok_00.png"].brightness > 0.5 and r["ok_00.png"].verdict != "too_dark"  # not judged against 4095
    assert r["saturated_01.png"].verdict == "saturated"


def test_near_duplicate_and_unusual_from_embeddings(tmp_path):
    for p in sorted(QC.glob("ok_*.png")):
        shutil.copy(p, tmp_path / p.name)
    flipped = np.asarray(Image.open(QC / "ok_04.png"))[:, ::-1]
    Image.fromarray(np.ascontiguousarray(flipped)).save(tmp_path / "ok_04_mirrored.png")
    paths = list_images(tmp_path)
    keys = [p.name for p in paths]
    row = {k: i for i, k in enumerate(keys)}
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(keys), 64)).astype(np.float32)
    emb[row["ok_04_mirrored.png"]] = emb[row["ok_04.png"]] + 0.05 * rng.normal(size=64)  # the mirror image
    emb[row["ok_07.png"]] = emb[row["ok_06.png"]] + 0.05 * rng.normal(size=64)  # look-alike, other pixels
    emb[row["ok_09.png"]] = 40 * rng.normal(size=64)  # far from everything
    r = assess(paths, keys, embeddings=emb).by_key()
    m = r["ok_04_mirrored.png"]
    assert m.verdict == "duplicate" and m.duplicate_of == "ok_04.png" and m.decided_by == "pixel_match"
    assert m.pixel_match > 0.99 and m.duplicate_similarity >= 0.8
    assert r["ok_04.png"].verdict == "ok"  # the first of a pair stays ok
    assert r["ok_07.png"].verdict == "ok" and r["ok_07.png"].duplicate_of == ""  # embedding alone is not enough
    assert r["ok_09.png"].verdict == "unusual" and r["ok_09.png"].unusual_z >= 6
    others = [x for k, x in r.items() if k not in ("ok_04_mirrored.png", "ok_09.png")]
    assert all(x.verdict == "ok" for x in others), [(x.key, x.reason) for x in others if x.verdict != "ok"]


@pytest.mark.parametrize("d,kind", [(32, "ivf"), (256, "pca-ivf")])
def test_embedding_scores_approximate_above_the_threshold_same_neighbours(d, kind):
    """Every image asks for its neighbours: exact search is n^2 (minutes at 100,000 images), so a
    large pool's neighbours are found approximately (wide embeddings: in a PCA projection) and
    scored exactly; the planted near duplicate and the far image are still found."""
    rng = np.random.default_rng(1)
    n = 3000
    centers = rng.normal(size=(20, 16))  # low-rank, as CNN embeddings are
    latent = centers[np.arange(n) % 20] + 0.5 * rng.normal(size=(n, 16))
    emb = (latent @ rng.normal(size=(16, d)) + 0.05 * rng.normal(size=(n, d))).astype(np.float32)
    emb[7] = emb[3] + 0.01 * rng.normal(size=d)  # a near duplicate of image 3
    emb[11] = 30 * rng.normal(size=d)  # far from everything
    keys = [f"k{i}" for i in range(n)]
    exact = embedding_scores(emb, keys, approx_threshold=10 * n)
    approx = embedding_scores(emb, keys, approx_threshold=1000)
    assert exact["index"] == "flat" and approx["index"] == kind
    for es in (exact, approx):
        assert es["rows"][7, 0] == 3 and es["sims"][7, 0] > 0.99 and 7 not in es["rows"][7]
        assert es["unusual_z"][11] > 6 and np.nanargmax(es["unusual_z"]) == 11
    same = (approx["rows"] == exact["rows"]).all(1).mean()
    assert same > 0.9, same  # recall of the approximate search
    ok = approx["rows"] >= 0
    assert np.allclose(approx["sims"][ok & (approx["rows"] == exact["rows"])],
                       exact["sims"][ok & (approx["rows"] == exact["rows"])], atol=1e-5)


def test_pixel_match_sees_mirror_shift_not_other_cells():
    a = np.asarray(Image.open(QC / "ok_00.png")).astype(np.float32).mean(-1)
    t = thumbnail(a)
    assert pixel_match(t, thumbnail(np.ascontiguousarray(a[::-1]))) > 0.99
    assert pixel_match(t, thumbnail(np.ascontiguousarray(np.rot90(a)))) > 0.99
    assert pixel_match(t, np.roll(t, 2, axis=1)) > 0.9
    other = thumbnail(np.asarray(Image.open(QC / "ok_01.png")).astype(np.float32).mean(-1))
    assert pixel_match(t, other) < 0.8


def test_priority_blank_black_frames_are_too_dark_not_duplicates(tmp_path):
    for i in range(3):
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / f"black_{i}.png")
    paths = list_images(tmp_path)
    rep = assess(paths, [p.name for p in paths])
    assert [r.verdict for r in rep.results] == ["too_dark"] * 3


def test_unreadable_file_is_skipped_and_named(tmp_path):
    shutil.copy(QC / "ok_00.png", tmp_path / "a.png")
    shutil.copy(QC / "ok_01.png", tmp_path / "b.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    paths = list_images(tmp_path)
    rep = assess(paths, [p.name for p in paths])
    assert [r.key for r in rep.results] == ["a.png", "b.png"]
    assert len(rep.skipped) == 1 and "broken.png" in rep.skipped.skipped[0]["path"]


def test_settings_per_project(tmp_path):
    assert QCSettings.from_dict({"blank": 0.01}).blank == 0.01
    with pytest.raises(ValueError, match="blnk"):
        QCSettings.from_dict({"blnk": 0.01})
    with pytest.raises(ValueError, match="focus_method"):
        QCSettings(focus_method="guess")
    f = tmp_path / "qc.json"
    f.write_text("{not json")
    with pytest.raises(ValueError, match="qc.json"):
        QCSettings.load(f)
    f.write_text(json.dumps({"saturated": 0.9, "focus_method": "laplacian"}))
    s = QCSettings.load(f)
    assert (s.saturated, s.focus_method) == (0.9, "laplacian")
    assert QCSettings.load(tmp_path / "missing.json") == QCSettings()


def test_laplacian_method_decides_when_chosen(qc_report):
    paths = list_images(QC)
    rep = assess(paths, [p.name for p in paths], settings=QCSettings(focus_method="laplacian", out_of_focus=2.0))
    r = rep.by_key()["out_of_focus_01.png"]
    assert r.verdict == "out_of_focus" and r.decided_by == "laplacian_defocus_px"


def test_qc_folder_writes_csv(tmp_path):
    out = tmp_path / "qc.csv"
    rep = qc_folder(QC, out, embed=False)
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == len(rep.results) == 21
    assert set(rows[0]) == set(CSV_FIELDS)
    by = {r["key"]: r for r in rows}
    assert by["blank_01.png"]["verdict"] == "blank" and by["blank_01.png"]["decided_by"] == "structure"
    assert by["zz_duplicate_of_ok_03.tif"]["duplicate_of"] == "ok_03.png"


def test_cli_qc(tmp_path, capsys):
    from scopeloop.cli import main

    out = tmp_path / "qc.csv"
    assert main(["qc", "--images", str(QC), "--out", str(out), "--no-embed"]) == 0
    text = capsys.readouterr().out
    assert "21 images checked" in text and "blank" in text and str(out) in text
    assert main(["qc", "--images", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "nope" in capsys.readouterr().err
    bad = tmp_path / "s.json"
    bad.write_text(json.dumps({"blnk": 1}))
    assert main(["qc", "--images", str(QC), "--out", str(out), "--no-embed", "--settings", str(bad)]) == 2
    assert "blnk" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_adds_quality_column(tmp_path):
    from trainer.models.training import TrainConfig, save_version, train
    from trainer.reports.batch_predict import predict_folder, resolve_model_dir
    from trainer.store.registry import ModelRegistry

    train_dir = tmp_path / "train"
    for i, p in enumerate(sorted(QC.glob("ok_*.png"))):
        (train_dir / ("a" if i % 2 else "b")).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, train_dir / ("a" if i % 2 else "b") / p.name)
    items = sorted(train_dir.rglob("*.png"))
    cfg = TrainConfig(image_size=64)
    res = train(items, [p.parent.name for p in items], ["a", "b"], cfg)
    save_version(res, cfg, ModelRegistry(tmp_path / "models" / "registry"))
    out = tmp_path / "pred.csv"
    summary = predict_folder(resolve_model_dir(tmp_path / "models"), QC, out, progress=False, plot=False)
    rows = {r["file"]: r for r in csv.DictReader(open(out))}
    for name in ("blank_01.png", "out_of_focus_01.png", "saturated_01.png", "too_dark_01.png", "zz_duplicate_of_ok_03.tif"):
        assert rows[name]["quality"] == _expected(name), (name, rows[name]["quality_reason"])
    assert rows["blank_01.png"]["quality_reason"].startswith("structure")
    assert summary["quality"]["blank"] == 1 and sum(summary["quality"].values()) == 21


# ---------------------------------------------------------------- in the loop

def test_project_qc_keeps_flagged_images_out_of_the_head(tmp_path, monkeypatch):
    work = tmp_path / "work"
    keys = [p.name for p in list_images(QC)]
    order = np.arange(len(keys))[::-1]  # some suggested order
    logs = []
    new = rank_with_qc(work, QC, order, keys, log=logs.append)
    flagged = {k for k in keys if _expected(k) != "ok"}
    assert sorted(new) == sorted(order)  # nothing dropped by default ("end")
    head = [keys[r] for r in new[:len(keys) - len(flagged)]]
    assert not flagged & set(head) and {keys[r] for r in new[-len(flagged):]} == flagged
    assert [r for r in new if keys[r] not in flagged] == [r for r in order if keys[r] not in flagged]  # ok order kept
    assert "5 of 21 flagged" in logs[-1]
    v = load_verdicts(work)
    assert v["blank_01.png"] == {"verdict": "blank", "reason": v["blank_01.png"]["reason"]}
    assert (work / "qc" / "qc.csv").is_file()
    # the same pool again: judged from the stored verdicts, no image read
    monkeypatch.setattr("trainer.quality.assess.read_raw", lambda *a, **k: pytest.fail("re-read an image"))
    assert list(rank_with_qc(work, QC, order, keys, log=logs.append)) == list(new)
    # the project says "exclude": flagged images leave the order (the files stay)
    (work / SETTINGS_FILE).write_text(json.dumps({"flagged": "exclude"}))
    monkeypatch.undo()
    out = rank_with_qc(work, QC, order, keys, log=logs.append)
    assert len(out) == len(keys) - len(flagged) and not {keys[r] for r in out} & flagged
    assert (QC / "blank_01.png").is_file()


def test_project_qc_measures_only_new_images(tmp_path):
    imgs, work = tmp_path / "imgs", tmp_path / "work"
    imgs.mkdir()
    for p in sorted(QC.glob("ok_*.png"))[:10]:
        shutil.copy(p, imgs / p.name)
    keys = sorted(p.name for p in imgs.iterdir())
    logs = []
    project_qc(work, imgs, keys, log=logs.append)
    assert "10 new image(s) measured" in logs[-1]
    shutil.copy(QC / "blank_01.png", imgs / "new_blank.png")  # TASKS_CREATED: one new image
    v = project_qc(work, imgs, keys + ["new_blank.png"], log=logs.append)
    assert "1 new image(s) measured" in logs[-1] and v["new_blank.png"]["verdict"] == "blank"


def test_project_qc_rewrites_the_measurements_only_when_new_images_were_measured(tmp_path):
    """stats.pkl holds ~10 KB an image (1 GB at 100,000): a pass that measured nothing new (new
    embeddings after a deep refresh, the first refresh's embedding verdicts) leaves it alone."""
    imgs, work = tmp_path / "imgs", tmp_path / "work"
    imgs.mkdir()
    for p in sorted(QC.glob("ok_*.png"))[:10]:
        shutil.copy(p, imgs / p.name)
    keys = sorted(p.name for p in imgs.iterdir())
    project_qc(work, imgs, keys, log=lambda *_: None)
    stats = work / QC_DIR / "stats.pkl"
    before = stats.stat().st_ino
    emb = np.random.default_rng(0).normal(size=(len(keys), 16)).astype(np.float32)
    project_qc(work, imgs, keys, emb, log=lambda *_: None)  # judged again (embeddings), nothing new to read
    assert json.loads((work / QC_DIR / "verdicts.json").read_text())["embeddings"] is True
    assert stats.stat().st_ino == before
    shutil.copy(QC / "blank_01.png", imgs / "new_blank.png")
    project_qc(work, imgs, keys + ["new_blank.png"], log=lambda *_: None)
    assert stats.stat().st_ino != before


def test_failing_quality_pass_never_blocks_the_order(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / SETTINGS_FILE).write_text("{broken")
    logs = []
    out = rank_with_qc(tmp_path / "work", QC, np.array([2, 0, 1]), ["a", "b", "c"], log=logs.append)
    assert list(out) == [2, 0, 1] and "skipped this time" in logs[-1] and SETTINGS_FILE in logs[-1]
