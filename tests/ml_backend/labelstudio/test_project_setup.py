"""`init_project` against a real Label Studio: the BCCD dev set and generated microscopy files."""
from __future__ import annotations

import numpy as np
import pytest
import requests
import tifffile
from PIL import Image

from ml_backend.labelstudio.client import PredictionRow
from ml_backend.labelstudio.project_setup import init_project
from tests.ml_backend.conftest import BCCD_CLASSES

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]


def _init(ls_client, images, tmp_path, **kw):
    return init_project(ls_client, images, kw.pop("classes", BCCD_CLASSES), document_root="/",
                        previews_dir=tmp_path / "previews", **kw)


def test_bccd_project_reinit_labels_and_ordering(ls_client, bccd, tmp_path, project_title):
    rep = _init(ls_client, bccd, tmp_path, title=project_title)
    assert (rep.created, rep.existing, rep.skipped, rep.previews) == (351, 0, [], 0)
    pid = rep.project_id
    keys = ls_client.task_keys(pid)
    assert len(keys) == 351 and "Neutrophil/BloodImage_00001_1.jpg" in keys
    task = next(t for t in ls_client.list_tasks(pid, fields="task_only", include="id,data"))
    # the browser URL is served by LS (local-files storage) and is the original JPEG
    r = requests.get(ls_client.url + task["data"]["image"],
                     headers={"Authorization": f"Token {ls_client.token}"}, timeout=10)
    assert r.status_code == 200 and r.content[:2] == b"\xff\xd8"

    # re-running adds nothing
    again = _init(ls_client, bccd, tmp_path, title=project_title)
    assert (again.project_id, again.created, again.existing) == (pid, 0, 351)

    # labels for existing tasks from a CSV (path or bare unique file name)
    csv = tmp_path / "labels.csv"
    csv.write_text("file,label\nBasophil/BloodImage_00008_1.jpg,Basophil\n"
                   "BloodImage_00001_1.jpg,Neutrophil\nMonocyte/BloodImage_00009_1.jpg,Nope\n")
    lab = _init(ls_client, bccd, tmp_path, title=project_title, labels=csv)
    assert lab.labels_imported == 2 and len(lab.labels_skipped) == 1
    assert ls_client.read_labels(pid) == {"Basophil/BloodImage_00008_1.jpg": "Basophil",
                                          "Neutrophil/BloodImage_00001_1.jpg": "Neutrophil"}
    assert _init(ls_client, bccd, tmp_path, title=project_title, labels=csv).labels_imported == 0

    # predictions under a new version: "Label All Tasks" serves the sampler's top pick
    labeled = ls_client.read_labels(pid)
    unlabeled = sorted(k for k in keys if k not in labeled)
    top = unlabeled[-1]
    rows = [PredictionRow(keys[top], "Neutrophil", 0.42, 0)] + [
        PredictionRow(keys[k], "Eosinophil", 0.9, i + 1) for i, k in enumerate(unlabeled[:-1])]
    ls_client.push_predictions(pid, rows, "v001")
    nxt = ls_client.next_task(pid)
    assert nxt["data"]["key"] == top and nxt["predictions"][0]["model_version"] == "v001"


def test_tiff_previews_corrupt_files_and_imagefolder_labels(ls_client, tmp_path, project_title):
    root = tmp_path / "images"
    (root / "round").mkdir(parents=True)
    (root / "long").mkdir()
    rng = np.random.default_rng(0)
    tifffile.imwrite(root / "round" / "cell16.tif", rng.integers(0, 4000, (96, 80), dtype=np.uint16))
    Image.fromarray(rng.integers(0, 60000, (64, 64)).astype(np.uint16)).save(root / "long" / "c16.png")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "long" / "c8.png")
    (root / "round" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "long" / "broken.tif").write_bytes(b"II*\x00garbage")

    rep = init_project(ls_client, root, None, labels="imagefolder", title=project_title,
                       document_root="/", previews_dir=tmp_path / "previews")
    assert rep.created == 3 and rep.previews == 2 and rep.labels_imported == 3
    assert sorted(s["path"].rsplit("/", 1)[-1] for s in rep.skipped) == ["broken.jpg", "broken.tif"]
    tasks = {t["data"]["key"]: t["data"] for t in ls_client.list_tasks(rep.project_id, fields="task_only")}
    assert tasks["round/cell16.tif"]["image"].endswith("previews/round/cell16.tif.png")
    assert tasks["round/cell16.tif"]["path"] == str(root / "round" / "cell16.tif")
    assert tasks["long/c8.png"]["image"].endswith("images/long/c8.png")   # 8-bit: served as is
    r = requests.get(ls_client.url + tasks["round/cell16.tif"]["image"],
                     headers={"Authorization": f"Token {ls_client.token}"}, timeout=10)
    assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(tmp_path / "previews" / "round" / "cell16.tif.png") as im:
        assert im.mode in ("L", "RGB") and np.asarray(im).max() > 200   # contrast-stretched
    assert ls_client.read_labels(rep.project_id) == {
        "round/cell16.tif": "round", "long/c16.png": "long", "long/c8.png": "long"}

    # a new image appears: only it is added
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(root / "round" / "new.png")
    again = init_project(ls_client, root, None, labels="imagefolder", title=project_title,
                         document_root="/", previews_dir=tmp_path / "previews")
    assert (again.created, again.existing, again.labels_imported) == (1, 3, 1)


def test_symlink_out_of_the_image_folder_is_not_imported(ls_client, tmp_path, project_title):
    """Issue 23, probe 3: a link inside the image folder to a file outside it was imported as a
    task and served by Label Studio (/etc/passwd came back through one). Refused now, named in
    one line; a link that stays inside the folder is an image like any other."""
    root = tmp_path / "images"
    (root / "round").mkdir(parents=True)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(root / "round" / "a.png")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(outside / "private.png")
    (root / "round" / "leak.png").symlink_to(outside / "private.png")
    (root / "round" / "alias.png").symlink_to(root / "round" / "a.png")
    rep = init_project(ls_client, root, ["round", "long"], title=project_title, document_root="/",
                       previews_dir=tmp_path / "previews")
    assert rep.refused == ["round/leak.png"]
    assert rep.created == 2
    keys = {t["data"]["key"] for t in ls_client.list_tasks(rep.project_id, fields="task_only")}
    assert keys == {"round/a.png", "round/alias.png"}
    line = [x for x in rep.summary().splitlines() if "refused" in x]
    assert len(line) == 1 and "round/leak.png" in line[0]
