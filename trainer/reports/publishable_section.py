"""The report's "Predictions you can publish" section (issue 25), from a version's stored statistics.

What the version's unseen-type flag does on its own labels (share flagged out-of-fold, with n;
each class left out in turn where that check ran), the prediction sets' coverage with its n
(`trainer.stats.publishable.VersionStats.summary`), and the class proportions, with 95%
intervals corrected for the model's known errors, of the project's images nobody has labeled yet
(the version's cached predictions, unseen-type flags from the project's embedding cache). A
version saved before these statistics gets a sentence saying so and how to get them.
"""
from __future__ import annotations

import html

import numpy as np

from trainer.reports.analysis import _img


def publishable_section(workspace, version: str, labeled_keys, preds=None, embeddings=None) -> tuple[str, dict]:
    """(HTML, summary) for `version`. labeled_keys: keys already labeled (left out of the
    proportions); preds: `workspace.load_predictions(version)`; embeddings: (keys, (N, D) array)
    of the model's embedding space, or None (no unseen-type flags in the proportions)."""
    from trainer.stats.publishable import MISSING, VersionStats

    head = '<h2 id="publishable">Predictions you can publish</h2>'
    stats = VersionStats.load(workspace.registry.path(version))
    if stats is None:
        return (head + f'<p id="publishable-none" class="note">Model {html.escape(version)}: {html.escape(MISSING)}.</p>',
                {"stats": False})
    s = stats.summary()
    out = {"stats": True, **s}
    parts = [head]
    nov = s.get("novelty")
    if nov:
        n = int(np.asarray(stats.confusion).sum()) if stats.confusion is not None else nov["n"]
        rate = s.get("flagged_labeled")
        line = (f"<b>Unseen types</b>: an image is counted as \"unseen type\" instead of a class when its novelty "
                f"score ({html.escape(nov['method'])}) is higher than nearly all the labeled images' (conformal p-value "
                f"&le; {nov['alpha']:g}, set from the project's own {nov['n']} labels).")
        if rate is not None:
            line += (f" Of this version's labeled images, judged by models that did not train on them, "
                     f"<b>{rate:.1%}</b> were flagged (n = {n}; about {nov['alpha']:.0%} is expected).")
        uf = nov.get("unseen_flagged")
        if uf:
            line += (" With each class left out in turn, the share of its images flagged (how well a type nobody "
                     "labeled is caught): " + ", ".join(f"{html.escape(c)} {v:.0%}" for c, v in uf.items()) + ".")
        parts.append(f'<p id="publishable-novelty">{line}</p>')
    else:
        parts.append('<p id="publishable-novelty" class="note">No unseen-type flag for this version (too few labels '
                     "to calibrate it): every image is forced into a trained class.</p>")
    conf = s.get("conformal")
    if conf:
        parts.append(f'<p id="publishable-sets"><b>Prediction sets</b> (<code>scopeloop predict</code>, column '
                     f"<code>prediction_set</code>): {html.escape(conf['describe'])}. A set holds the true class for at "
                     f"least {conf['coverage']:.0%} of new images of the trained types (n = {conf['n']}); "
                     "<code>--coverage</code> changes the level.</p>")
    else:
        parts.append('<p id="publishable-sets" class="note">No prediction-set calibration for this version (too few '
                     "labels judged out-of-fold): <code>predict</code> gives the top class alone.</p>")
    plot, table, flagged = _pool_proportions(stats, labeled_keys, preds, embeddings)
    out["proportions"] = table
    if table:
        from trainer.reports.plots import plot_proportions

        n_pool = sum(int(r["count"]) for r in table)
        flags = "with unseen-type flags" if flagged else "without unseen-type flags (no cached embeddings for them)"
        parts.append('<figure id="fig-proportions">' + _img(plot_proportions(
            table, title=f"Images not labeled yet: proportions (95% intervals, n = {n_pool})"), "class proportions")
            + f"<figcaption>The project's {n_pool} images nobody has labeled yet, as model {html.escape(version)} "
              f"sees them ({flags}): the share of each type with its 95% interval, corrected for the model's "
              "cross-validated confusion (Bayesian quantification). <code>scopeloop predict --input DIR</code> "
              "writes the same per folder and per group.</figcaption></figure>")
    else:
        parts.append(f'<p id="fig-proportions" class="note">{html.escape(plot)}</p>')
    return "".join(parts), out


def _pool_proportions(stats, labeled_keys, preds, embeddings) -> tuple[str, list[dict] | None, bool]:
    """(why none, None, False) or ("", proportions_table rows, whether unseen types were flagged)
    for the unlabeled images of `preds`."""
    from trainer.stats.proportions import proportions_table

    cal = stats.calibration()
    if cal is None:
        return "No proportions: this version stores no confusion of its labels to correct them with.", None, False
    if preds is None or not len(preds["keys"]):
        return "No proportions: no cached predictions for this version yet.", None, False
    if [str(c) for c in preds["classes"]] != list(stats.classes):
        return "No proportions: the cached predictions are for other classes than this version's.", None, False
    labeled = set(labeled_keys)
    keys = [str(k) for k in preds["keys"].tolist()]
    rows = [i for i, k in enumerate(keys) if k not in labeled]
    if not rows:
        return "No proportions: every image of the project is labeled.", None, False
    probs = np.asarray(preds["probs"])[rows]
    X = None
    if embeddings is not None:
        ekeys, emb = embeddings
        at = {k: i for i, k in enumerate(ekeys)}
        if emb is not None and all(keys[i] in at for i in rows):
            X = emb[[at[keys[i]] for i in rows]]
    cat = stats.apply(probs, X)["category"]
    return "", proportions_table(cat, cal, stats.classes), X is not None and stats.novelty is not None
