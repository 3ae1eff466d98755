"""The report's "Predictions you can publish" (issue 25) and "Annotators" (issue 26) sections, on a
synthetic project (embeddings, a version's stored statistics, a labels snapshot with a team): fast."""
import base64
import io
import json
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from trainer.reports.analysis import backbone_id
from trainer.reports.annotator_section import annotators_section
from trainer.reports.publishable_section import publishable_section
from trainer.stats.publishable import build
from trainer.store.workspace import Workspace

CLASSES = ["Eosinophil", "Lymphocyte", "Neutrophil"]
CFG = {"backbone": "resnet18", "image_size": 64, "classes": CLASSES}


class _Head:
    def __init__(self, weight, bias):
        self.weight, self.bias = weight, bias

    def predict_proba(self, X):
        z = X @ self.weight.T + self.bias
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)


def _fit(X, y, n_classes, seed=0):
    W = np.stack([X[y == c].mean(0) if (y == c).any() else np.zeros(X.shape[1]) for c in range(n_classes)])
    b = -0.5 * (W ** 2).sum(1) - 1e6 * ~np.isin(np.arange(n_classes), y)
    return _Head(W.astype(np.float32), b.astype(np.float32))


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.imgs = set(), []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs.append(a.get("src", ""))


def _parse(doc: str) -> _Ids:
    p = _Ids()
    p.feed(doc)
    return p


def _team_snapshot(keys, truth) -> dict:
    """alice and bob label every task, carol (careless) every third; bob takes Eosinophil for
    Neutrophil on 4 tasks, carol is wrong on half of hers."""
    tasks = {}
    for i, (k, t) in enumerate(zip(keys, truth), start=1):
        votes = {"alice": t, "bob": "Neutrophil" if (t == "Eosinophil" and i % 3 == 0) else t}
        if i % 3 == 1:
            votes["carol"] = CLASSES[(CLASSES.index(t) + 1) % 3] if i % 2 else t
        anns = [{"id": 100 * i + j, "label": lab, "annotator": who, "created_at": f"2024-05-01T10:{j:02d}:00",
                 "updated_at": f"2024-05-01T10:{j:02d}:00"} for j, (who, lab) in enumerate(votes.items())]
        tasks[str(i)] = {"key": k, "label": anns[-1]["label"], "annotations": anns,
                         "disagreement": len(set(votes.values())) > 1}
    return {"cursor": "x", "project_id": 1, "tasks": tasks}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """120 labeled images of 3 types, 60 unlabeled of a different mix plus 20 of a type nobody
    labeled; a version with its publishable statistics, its cached predictions and embeddings."""
    rng = np.random.default_rng(0)
    D = 64
    centres = rng.normal(size=(4, D)) * 3
    y = np.repeat(np.arange(3), 40)
    X = (centres[y] + rng.normal(size=(len(y), D))).astype(np.float32)
    yu = np.r_[np.zeros(40, int), np.ones(10, int), np.full(10, 2), np.full(20, 3)]
    Xu = (centres[yu] + rng.normal(size=(len(yu), D))).astype(np.float32)
    folds = np.arange(len(y)) % 5
    oof = np.full((len(y), 3), np.nan)
    for f in range(5):
        oof[folds == f] = _fit(X[folds != f], y[folds != f], 3).predict_proba(X[folds == f])
    stats = build(X, y, CLASSES, oof, fit=_fit, folds=folds, loco=True)
    ws = Workspace(tmp_path_factory.mktemp("sections") / "work")
    ws.update_project(images_root=str(ws.root), classes=CLASSES, name="sections test")
    reg = ws.registry
    with reg.staging() as tmp:
        (tmp / "config.json").write_text(json.dumps(CFG))
        stats.save(tmp)
        version = reg.publish(tmp)
    keys = [f"{CLASSES[c]}/lab{i:03d}.png" for i, c in enumerate(y)] + [f"new/img{i:03d}.png" for i in range(len(yu))]
    allX = np.vstack([X, Xu])
    ws.embeddings(backbone_id(CFG))._save(keys, allX)
    ws.save_predictions(version, keys, _fit(X, y, 3).predict_proba(allX), CLASSES)
    ws.save_labels(_team_snapshot(keys[:120], [CLASSES[c] for c in y]))
    return ws, version, keys[:120]


def test_publishable_section_states_flag_rate_coverage_and_pool_proportions(project):
    ws, version, labeled = project
    doc, s = publishable_section(ws, version, set(labeled), ws.load_predictions(version),
                                 ws.embeddings(backbone_id(CFG)).load())
    p = _parse(doc)
    assert {"publishable", "publishable-novelty", "publishable-sets", "fig-proportions"} <= p.ids
    assert s["stats"] and 0 <= s["flagged_labeled"] <= 0.2
    assert f"n = {s['conformal']['n']}" in doc and "90%" in doc and "were flagged" in doc
    assert "left out in turn" in doc  # the leave-one-class-out check ran (loco=True)
    rows = {r["class"]: r for r in s["proportions"] if r["group"] == "all"}
    assert sum(r["count"] for r in rows.values()) == 80  # the unlabeled pool only
    # the mix differs from the labels (40/10/10 + 20 unseen): the intervals hold the truth
    for cls, share in zip(CLASSES + ["unseen type"], [0.5, 0.125, 0.125, 0.25]):
        assert rows[cls]["lower"] - 0.02 <= share <= rows[cls]["upper"] + 0.02, (cls, rows[cls])
    im = Image.open(io.BytesIO(base64.b64decode(p.imgs[0].split(",", 1)[1])))
    assert im.width > 300 and np.asarray(im.convert("L")).std() > 10


def test_publishable_section_without_stats_says_so(project, tmp_path):
    ws, _, labeled = project
    with ws.registry.staging() as tmp:
        (tmp / "config.json").write_text(json.dumps(CFG))
        old = ws.registry.publish(tmp, make_current=False)
    doc, s = publishable_section(ws, old, set(labeled), None, None)
    assert s == {"stats": False} and "publishable-none" in _parse(doc).ids and "retrain" in doc


def test_annotators_section_reports_alpha_per_annotator_and_confusion(project):
    ws, _, _ = project
    snap = ws.labels
    cm = [[38, 0, 2], [1, 39, 0], [0, 0, 40]]
    doc, s = annotators_section(snap, CLASSES, [], model_confusion=cm, model_classes=CLASSES)
    p = _parse(doc)
    assert {"annotators", "agreement-headline", "table-annotators", "table-agreement-per-class",
            "fig-annotator-confusion", "fig-model-confusion-beside"} <= p.ids
    proj = s["project"]
    assert s["shared_tasks"] == 120 and proj["n_tasks"] == 120
    assert 0 < proj["interval"][0] <= proj["alpha"] <= proj["interval"][1] < 1
    assert f"{proj['alpha']:.2f}" in doc and "n = 120 tasks" in doc
    by = {a["annotator"]: a for a in s["per_annotator"]}
    assert by["carol"]["agreement"] < by["bob"]["agreement"] <= by["alice"]["agreement"]
    assert "Eosinophil / Neutrophil" in doc  # the pair bob confuses
    assert len([i for i in p.imgs if i.startswith("data:image/png")]) == 2
    single = {"cursor": None, "project_id": 1, "tasks": {"1": {"key": "a", "label": "Eosinophil", "annotations": [
        {"id": 1, "label": "Eosinophil", "annotator": "alice"}]}}}
    assert annotators_section(single, CLASSES) is None  # nobody overlapped: no section


@pytest.mark.slow  # the report's re-review list fits torch heads: about a minute on 2 busy cores
def test_build_report_has_both_sections(project, tmp_path):
    from trainer.reports.html import build_report

    ws, _, _ = project
    summary = build_report(ws, tmp_path / "r.html")
    assert {"publishable", "annotators"} <= set(summary["sections"])
    ids = _parse((tmp_path / "r.html").read_text(encoding="utf-8")).ids
    assert {"publishable", "fig-proportions", "annotators", "fig-annotator-confusion"} <= ids
