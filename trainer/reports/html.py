"""The QC report: one self-contained HTML page built from stored results (scores, confusions, learning curve, uncertain images, labels worth a second look)."""
from __future__ import annotations

import html
import time
from pathlib import Path

import numpy as np

from sampler.uncertainty import top2_gap
from trainer.models.cross_validation import out_of_fold
from trainer.reports.analysis import _Cam, _img, _thumb, backbone_id, contradicted
from trainer.reports.plots import _bar_balance, _bar_per_class, _learning_curve

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}figure{margin:1em 0}
figcaption{color:#555;font-size:.9em;max-width:700px}.cards{display:flex;flex-wrap:wrap;gap:.6em}
.card{width:150px;font-size:.8em;word-break:break-all;border:1px solid #ddd;padding:.3em;border-radius:4px}
.card img{width:140px;height:140px;image-rendering:pixelated}.note{color:#666}.big{font-size:1.3em}"""


def _fig(fig_id: str, img: str, caption: str) -> str:
    return f'<figure id="{fig_id}">{img}<figcaption>{caption}</figcaption></figure>'


def _cards(items: list[dict], section: str) -> str:
    out = []
    for it in items:
        img = f'<img alt="{html.escape(it["key"])}" src="{it["thumb"]}">' if it["thumb"] else "<p>(unreadable)</p>"
        out.append(f'<div class="card {section}">{img}<br><b>{html.escape(it["key"])}</b><br>{html.escape(it["text"])}</div>')
    return f'<div class="cards">{"".join(out)}</div>' if out else '<p class="note">none</p>'


def build_report(workspace, out_html, version: str | None = None, max_thumbs: int = 12, folds: int = 5) -> dict:
    """Write the QC report of `version` (default: current) to `out_html`; returns a summary."""
    from trainer.models.training_qc import plot_confusion, plot_loss_curves

    t0 = time.time()
    reg = workspace.registry
    version = version or reg.current()
    project = workspace.project
    snap = workspace.labels
    images_root = Path(project.get("images_root") or ".")
    metrics = reg.read_json(version, "metrics.json") if version else {}
    classes = list((metrics.get("validation") or {}).get("classes") or project.get("classes") or [])
    from label_config import UNUSABLE  # the answer "unusable image": never a class (issue 14)

    tasks = {t["key"]: t for t in snap.get("tasks", {}).values() if t.get("label") and t.get("key") and t["label"] != UNUSABLE}
    unusable = {t["key"] for t in snap.get("tasks", {}).values() if t.get("key") and t.get("label") == UNUSABLE}
    classes += sorted({t["label"] for t in tasks.values()} - set(classes))
    labeled = {c: sum(t["label"] == c for t in tasks.values()) for c in classes}
    preds = workspace.load_predictions(version) if version else None
    body = [f"<h1>Quality control: {html.escape(str(project.get('name') or project.get('title') or workspace.root.name))}</h1>",
            f"<p>Model version <b>{html.escape(version or 'none yet')}</b> &middot; {sum(labeled.values())} labeled images "
            f"&middot; {sum(bool(t.get('disagreement')) for t in tasks.values())} with annotator disagreement &middot; "
            f"generated {time.strftime('%Y-%m-%d %H:%M')}</p>"]
    summary = {"version": version, "sections": []}

    # class balance -----------------------------------------------------------
    pred_unlab = None
    if preds is not None:
        pcls = [str(c) for c in preds["classes"]]
        unl = [i for i, k in enumerate(preds["keys"].tolist()) if k not in tasks]
        pred_unlab = {c: int(n) for c, n in zip(pcls, np.bincount(preds["probs"][unl].argmax(1), minlength=len(pcls)))} if unl else None
    body.append("<h2>Class balance</h2>" + _fig("fig-class-balance", _img(_bar_balance(classes, labeled, pred_unlab), "class balance"),
                "Labeled images per class (dark) and, for images not labeled yet, what the model predicts (light). "
                "Rare classes need more labels before their scores mean much."))
    summary["sections"].append("class-balance")

    val = metrics.get("validation") or {}
    if version is None:
        body.append('<p class="note big">No model has been trained yet: label a few images of each class first.</p>')
    else:
        # scores, learning, confusion ------------------------------------------
        from trainer.stats.estimate import from_metrics, headline

        est = from_metrics(metrics)
        summary["headline"] = headline(est)
        summary["enough"] = bool(est and est.get("enough"))
        cls = "big" if summary["enough"] else "big note"
        body.insert(2, f'<p id="headline" class="{cls}">Quality of model {html.escape(version)}: '
                    f"<b>{html.escape(summary['headline'])}</b></p>")  # first thing after the title
        from trainer.io.settings import reader_of  # what the model sees of a file (issue 13): set at init

        summary["reading"] = reader_of(reg.read_json(version, "config.json") or {}).describe()
        body.insert(3, f'<p id="reading">Images read as: {html.escape(summary["reading"])}</p>')
        reg.path(version)  # a clear error for an unknown version
        hist = reg.read_json(version, "history.json")
        with _tmpdir() as tmp:
            if hist.get("epochs"):
                img = plot_loss_curves(hist["epochs"], tmp / "loss.png", hist.get("best_epoch")).read_bytes()
                body.append("<h2>Training</h2>" + _fig("fig-loss", _img(img, "loss curves"),
                            "Loss per training round: both curves should fall and flatten; a validation loss that rises "
                            "again while training loss keeps falling means overfitting (the kept round is marked)."))
                summary["sections"].append("loss")
            if val.get("n"):
                how = (est or {}).get("method", "validation images")
                img = plot_confusion(val["confusion_matrix"], val["classes"], tmp / "cm.png",
                                     title=f"True vs predicted ({how}, {val['n']} images)").read_bytes()
                body.append("<h2>Confusions</h2>" + _fig("fig-confusion", _img(img, "confusion matrix"),
                            "Rows: the annotators' class; columns: the model's, each image judged by a model that did not "
                            "train on it. Off-diagonal cells are mistakes; colour is the share of the row."))
                judged = {c: m for c, m in val["per_class"].items() if m["support"]}
                fig = (_fig("fig-per-class", _img(_bar_per_class(judged), "per class scores"),
                            "Precision: when the model says this class, how often it is right. Recall: of the cells of this "
                            "class, how many it finds. F1 combines both. Classes without evaluated images are not drawn.")
                       if summary["enough"] else
                       '<p id="fig-per-class" class="note">Per-class scores are not drawn yet: not enough labels to '
                       "estimate them (see the table for counts).</p>")
                body.append("<h2>Per class</h2>" + fig + (_estimate_table(est) if est else _per_class_table(val["per_class"])))
                summary["sections"] += ["confusion", "per-class"]
        points = _versions(reg)
        if points:
            summary["learning_curve"] = points
            body.append("<h2>Learning curve</h2>" + _fig("fig-learning-curve", _img(_learning_curve(points), "learning curve"),
                        "Cross-validated macro-F1 of every model version (the band: 95% interval) against the number of "
                        "labels it was trained on; held-back versions in red. Still rising: more labels help. Flat: "
                        "labels now add little. Versions with too few labels to estimate are ticks at the bottom.")
                        + _versions_table(points))
            summary["sections"].append("learning-curve")

    # image quality (issue 14) --------------------------------------------------
    qc_html, qc_summary = image_quality_section(workspace.root, images_root, tasks, unusable)
    if qc_summary["images"] or qc_summary["unusable"]:  # a project from before QC: no empty section
        body.append(qc_html)
        summary["image_quality"] = qc_summary
        summary["sections"].append("image-quality")

    # predictions you can publish (issue 25), annotators (issue 26) ------------------
    if version:
        from trainer.reports.publishable_section import publishable_section

        cfg = reg.read_json(version, "config.json") or {}
        emb = workspace.embeddings(backbone_id(cfg)).load() if cfg else None
        pub_html, summary["publishable"] = publishable_section(workspace, version, set(tasks) | unusable, preds, emb)
        body.append(pub_html)
        summary["sections"].append("publishable")
    from trainer.reports.annotator_section import annotators_section

    team = annotators_section(snap, classes, project.get("reviewers") or [],
                              val.get("confusion_matrix") if val.get("n") else None, val.get("classes"))
    if team is not None:
        body.append(team[0])
        summary["annotators"] = team[1]
        summary["sections"].append("annotators")

    # images to look at -------------------------------------------------------
    cam = None
    if preds is not None and len(preds["keys"]):
        cam = _Cam(reg.path(version)) if version else None
        body.append(_uncertain_section(preds, set(tasks) | unusable, images_root, max_thumbs, cam))
        summary["sections"].append("uncertain")
    if version and cam is None:
        cam = _Cam(reg.path(version))
    rr = (_rereview_section(workspace, reg, version, tasks, classes, images_root, max_thumbs, folds, cam, matrix=val)
          if version else None)
    if rr is not None:
        html_part, summary["rereview"] = rr
        body.append(html_part)
        summary["sections"] += ["confused", "rereview"]
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    doc = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>scopeloop QC report</title>'
           f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>")
    tmp = out_html.with_name(f".{out_html.name}.part")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(out_html)
    summary.update(path=str(out_html), seconds=round(time.time() - t0, 2))
    return summary


class _tmpdir:
    def __enter__(self) -> Path:
        import tempfile

        self._d = tempfile.TemporaryDirectory(prefix="scopeloop-report-")
        return Path(self._d.name)

    def __exit__(self, *exc):
        self._d.cleanup()


def _per_class_table(per: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(c)}</td><td>{m['precision']:.2f}</td><td>{m['recall']:.2f}</td>"
                   f"<td>{m['f1']:.2f}</td><td>{m['support']}</td></tr>" for c, m in per.items())
    return f'<table id="table-per-class"><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>images</th></tr>{rows}</table>'


def _versions(reg) -> list[dict]:
    """One learning-curve point per version: the registry's version log (pruned candidates
    included), then versions published without a log line (e.g. `scopeloop train`), from their
    metrics through the same estimator."""
    from trainer.stats.estimate import from_metrics

    served = {h["version"] for h in reg.history()} | {reg.current()}
    points, logged = [], set()

    def point(version, n_labels, est, promoted):
        m = (est or {}).get("metrics", {}).get("macro_f1") or {}
        return {"version": version, "n_labels": int(n_labels), "promoted": bool(promoted),
                "enough": bool(est and est.get("enough")), "n": (est or {}).get("n", 0),
                "value": m.get("value"), "low": m.get("low"), "high": m.get("high"),
                "text": _estimate_text(est)}

    for r in reg.version_log():
        logged.add(r["version"])
        points.append(point(r["version"], r.get("labels", 0), r.get("estimate"), r["version"] in served or r.get("promoted")))
    for v in reg.versions():
        if v in logged:
            continue
        m = reg.read_json(v, "metrics.json")
        est = from_metrics(m)
        counts = m.get("counts") or {}
        n = m.get("labels") or sum((counts.get("train") or {}).values()) + sum((counts.get("validation") or {}).values())
        points.append(point(v, n, est, v in served))
    return sorted(points, key=lambda p: (p["n_labels"], p["version"]))


def _estimate_text(est) -> str:
    from trainer.stats.estimate import headline

    return headline(est) if est else "no estimate"


def _versions_table(points: list[dict]) -> str:
    rows = "".join(f'<tr class="{"promoted" if p["promoted"] else "held-back"}"><td>{html.escape(p["version"])}</td>'
                   f'<td>{p["n_labels"]}</td><td>{"served" if p["promoted"] else "held back"}</td>'
                   f'<td style="text-align:left">{html.escape(p["text"])}</td></tr>' for p in points)
    return ('<table id="table-learning-curve"><tr><th>version</th><th>labels</th><th>status</th><th>quality estimate '
            f"(95% interval, n)</th></tr>{rows}</table>")


def _estimate_table(est: dict) -> str:
    """Per class: scores from the estimate, or why there are none (never a 0.00 for no images)."""
    rows = []
    for c, r in est["per_class"].items():
        if not r["evaluated"] or not est["enough"]:
            why = ("no labeled images yet" if not r["labeled"] else f"no evaluated images ({r['labeled']} labeled)"
                   if not r["evaluated"] else "not estimated yet: not enough labels")
            rows.append(f'<tr><td>{html.escape(c)}</td><td colspan="4" class="note" style="text-align:left">{why}</td>'
                        f"<td>{r['labeled']}</td></tr>")
        else:
            rows.append(f"<tr><td>{html.escape(c)}</td><td>{r['precision']:.2f}</td><td>{r['recall']:.2f} "
                        f"({r['recall_low']:.2f}-{r['recall_high']:.2f})</td><td>{r['f1']:.2f}</td><td>{r['evaluated']}</td>"
                        f"<td>{r['labeled']}</td></tr>")
    return ('<table id="table-per-class"><tr><th>class</th><th>precision</th><th>recall (95% interval)</th><th>F1</th>'
            f'<th>images evaluated</th><th>labeled</th></tr>{"".join(rows)}</table>')


UNSURE_MARGIN = 0.5  # top-1 minus top-2 probability below this: the model hesitates


QC_MEANING = {"ok": "no defect found", "blank": "no object in the field", "out_of_focus": "blurred beyond the "
              "project's sharp images", "saturated": "many pixels at the top of the bit depth", "too_dark": "nearly black",
              "duplicate": "repeats another image", "unusual": "far from every other image"}


def image_quality_section(workdir, images_root, labeled: dict, unusable: set, per: int = 6) -> tuple[str, dict]:
    """(HTML, summary) of the image quality pass (trainer.quality): images per verdict with n and
    share, and a montage of up to `per` examples per verdict, each captioned with its deciding score.
    `labeled`: key -> task of images labeled with a class; `unusable`: keys answered "unusable"."""
    from trainer.quality.project import load_verdicts, project_settings
    from trainer.quality.settings import VERDICTS

    verdicts = load_verdicts(workdir)
    n = len(verdicts)
    counts = {v: 0 for v in VERDICTS}
    for e in verdicts.values():
        counts[e["verdict"]] = counts.get(e["verdict"], 0) + 1
    flagged_labeled = sorted(k for k in labeled if verdicts.get(k, {}).get("verdict", "ok") != "ok")
    summary = {"images": n, "counts": counts, "unusable": len(unusable), "flagged_labeled": len(flagged_labeled)}
    head = '<h2 id="image-quality">Image quality</h2>'
    answered = (f"<p>Annotators answered <b>unusable image</b> for {len(unusable)} image(s): they left the queue and are "
                "not training data.</p>" if unusable else "")
    if not n:
        return (head + '<p class="note" id="qc-none">No image quality check yet: it runs at <code>scopeloop init</code> '
                "and at every refresh.</p>" + answered), summary
    try:
        where = ("excluded from" if project_settings(workdir).flagged == "exclude" else "put at the end of")
    except ValueError:
        where = "kept out of the head of"
    rows = "".join(f'<tr id="qc-count-{v}"><td>{v}</td><td>{c}</td><td>{100.0 * c / n:.1f} %</td>'
                   f"<td>{html.escape(QC_MEANING.get(v, ''))}</td></tr>" for v, c in counts.items() if c or v == "ok")
    table = ('<table id="table-image-quality"><tr><th>verdict</th><th>images</th><th>share</th><th>meaning</th></tr>'
             f"{rows}</table>")
    text = (f"<p>{n} images checked before they reached the queue. Flagged images are {where} the suggested order "
            "(project setting <code>flagged</code> in qc_settings.json), never deleted; each one's verdict and deciding "
            "score is in its Label Studio task (column <code>qc</code>). "
            f"{len(flagged_labeled)} flagged image(s) were labeled anyway and are used as labeled.</p>")
    montage = []
    by_verdict: dict = {}
    for k in sorted(verdicts):
        by_verdict.setdefault(verdicts[k]["verdict"], []).append(k)
    for v in [v for v in VERDICTS if v != "ok"] + ["ok"]:
        ks = by_verdict.get(v, [])
        if not ks:
            continue
        pick = [ks[int(i)] for i in np.unique(np.linspace(0, len(ks) - 1, min(per, len(ks))).round().astype(int))]
        items = [{"key": k, "thumb": _thumb(Path(images_root) / k, 96),
                  "text": verdicts[k].get("reason") or "ok"} for k in pick]
        montage.append(f'<h3 id="qc-montage-{v}">{v} ({len(ks)})</h3>' + _cards(items, f"qc-{v}"))
    return head + text + table + answered + '<div id="qc-montage">' + "".join(montage) + "</div>", summary


def _uncertain_section(preds, tasks, images_root, k, cam=None) -> str:
    """Unlabeled images the model hesitates on (margin < UNSURE_MARGIN), most hesitant first;
    never labeled images, never confident ones padded in to fill the row."""
    keys, probs = preds["keys"].tolist(), preds["probs"]
    pcls = [str(c) for c in preds["classes"]]
    margin = top2_gap(probs)
    unl = [i for i in np.argsort(margin, kind="stable") if keys[i] not in tasks]
    pool = [i for i in unl if margin[i] < UNSURE_MARGIN]
    items = []
    for i in pool[:k]:
        a, b = np.argsort(probs[i])[::-1][:2]
        items.append({"key": keys[i], "thumb": (cam.thumb if cam else _thumb)(images_root / keys[i]),
                      "text": f"{pcls[a]} {probs[i][a]:.2f} vs {pcls[b]} {probs[i][b]:.2f}"})
    return ('<h2 id="uncertain">Most uncertain images</h2><p>Not yet labeled images on which the model hesitates '
            f"between two classes (top-two probability gap below {UNSURE_MARGIN}): labeling them teaches it the most. "
            f"{len(pool)} of {len(unl)} unlabeled images are this uncertain. Warm colours, where shown: where the "
            "model looked (Grad-CAM, within a time budget).</p>" + _cards(items, "uncertain"))


def _rereview_section(workspace, reg, version, tasks, classes, images_root, k, folds, cam=None, matrix=None):
    """Most confused class pairs and labels the out-of-fold model contradicts (from embeddings).

    With `matrix` (the version's validation: `classes`, `confusion_matrix`, `n`) the pairs and
    their counts are that matrix's largest off-diagonal cells, the matrix the report draws (issue
    22: the list and the drawn matrix disagreed); the examples come from the out-of-fold run."""
    cfg = reg.read_json(version, "config.json")
    if not cfg:
        return None
    ckeys, emb = workspace.embeddings(backbone_id(cfg)).load()
    if emb is None:
        return None
    thumb = cam.thumb if cam is not None else _thumb
    row = {key: i for i, key in enumerate(ckeys)}
    keys = sorted(key for key in tasks if key in row and tasks[key]["label"] in classes)
    if len(keys) < 2 * folds:
        return None
    y = np.array([classes.index(tasks[key]["label"]) for key in keys])
    logp = out_of_fold(emb[[row[key] for key in keys]], y, len(classes), folds)
    ok = ~np.isnan(logp[:, 0])
    pred = np.where(ok, np.nan_to_num(logp, nan=-np.inf).argmax(1), -1)
    wrong = contradicted(logp, y)
    probs = np.exp(logp)
    pairs = {}
    for i in wrong:
        pairs.setdefault((y[i], pred[i]), []).append(i)
    cm, mcls = (matrix or {}).get("confusion_matrix"), (matrix or {}).get("classes")
    if cm and mcls and (matrix or {}).get("n"):   # the drawn matrix: its largest off-diagonal cells
        cm = np.asarray(cm)
        cells = sorted(((int(cm[i, j]), i, j) for i in range(len(mcls)) for j in range(len(mcls))
                        if i != j and cm[i, j] > 0), key=lambda c: (-c[0], c[1], c[2]))[:4]
        confused = []
        for n, i, j in cells:
            a, b = (classes.index(mcls[i]) if mcls[i] in classes else -1), (classes.index(mcls[j]) if mcls[j] in classes else -1)
            rows = sorted((r for r in range(len(keys)) if min(a, b) >= 0 and y[r] == a and pred[r] == b), key=lambda r: -probs[r, b])
            confused.append(((i, j), n, rows, a, b))
        intro = (f"Class pairs the model mixes up most often: the largest off-diagonal cells of the confusion matrix "
                 f"above ({int(matrix['n'])} images), with examples from labeled images a model trained without them "
                 "takes for the other class.")
        names = mcls
    else:
        confused = [((a, b), len(rows), rows, a, b) for (a, b), rows in sorted(pairs.items(), key=lambda kv: -len(kv[1]))[:4]]
        intro = f"Class pairs the model mixes up most often (out-of-fold, {int(ok.sum())} labeled images), with examples."
        names = classes
    parts = [f'<h2 id="confused">Most confused classes</h2><p>{intro}</p>']
    for (ia, ib), n, rows, a, b in confused:
        items = [{"key": keys[i], "thumb": thumb(images_root / keys[i]), "text": f"labeled {classes[a]}, looks like "
                  f"{classes[b]} ({probs[i, b]:.2f})"} for i in rows[:4]]
        parts.append(f"<h3>{html.escape(names[ia])} taken for {html.escape(names[ib])}: {n} images</h3>"
                     + _cards(items, "confused"))
    if not confused:
        parts.append('<p class="note">no confusions</p>')
    items = []
    for i in wrong[:k]:
        t = tasks[keys[i]]
        items.append({"key": keys[i], "thumb": thumb(images_root / keys[i]),
                      "text": f"label {classes[y[i]]}; model {classes[pred[i]]} ({probs[i, pred[i]]:.2f})"
                              + ("; annotators disagree" if t.get("disagreement") else "")})
    parts.append('<h2 id="rereview">Candidates for re-review</h2><p>Labels that a model trained without them contradicts, '
                 "most confident first. Often a mislabel, sometimes a truly ambiguous cell: worth a second look. Warm "
                 "colours, where shown: where the model looked (Grad-CAM, within a time budget).</p>"
                 + _cards(items, "rereview"))
    return "".join(parts), [keys[i] for i in wrong]
