"""The report's "Annotators" section (issue 26): how well the team agrees, from the labels snapshot.

Shown when some tasks have two or more annotators: Krippendorff's alpha (nominal) for the project
with its 95% bootstrap interval and n (`trainer.stats.agreement.agreement`), per class, each
annotator's agreement with the consensus of the others, and the between-annotator confusion
(Krippendorff's coincidence matrix: which classes annotators confuse with each other) drawn next
to the model's confusion matrix.
"""
from __future__ import annotations

import html
from collections.abc import Collection, Sequence

import numpy as np

from trainer.reports.analysis import _img
from trainer.reports.plots import plot_matrix

N_BOOT = 1000


def shared_tasks(snapshot: dict) -> int:
    """Tasks of the snapshot answered by two or more annotators."""
    return sum(len({a.get("annotator") or f"#{a.get('id')}" for a in t.get("annotations") or [] if a.get("label")}) >= 2
               for t in (snapshot.get("tasks") or {}).values())


def _fmt(x: float, spec: str = ".2f") -> str:
    return format(x, spec) if np.isfinite(x) else "n/a"


def annotators_section(snapshot: dict, classes: Sequence[str], reviewers: Collection = (),
                       model_confusion=None, model_classes: Sequence[str] | None = None) -> tuple[str, dict] | None:
    """(HTML, summary) of the section, or None when no task has two annotators (no section).

    model_confusion / model_classes: the model's validation confusion matrix, drawn beside the
    annotators' (None: only the annotators')."""
    from trainer.stats.agreement import agreement
    from trainer.stats.consensus import votes_from_snapshot

    n_shared = shared_tasks(snapshot)
    if not n_shared or not classes:
        return None
    classes = list(classes)
    ag = agreement(votes_from_snapshot(snapshot), classes, set(reviewers), n_boot=N_BOOT)
    p = ag.project
    summary = {"shared_tasks": n_shared, **ag.to_dict()}
    head = '<h2 id="annotators">Annotators</h2>'
    if np.isfinite(p.alpha):
        text = (f'<p id="agreement-headline" class="big">Agreement between annotators: Krippendorff\'s alpha '
                f"<b>{p.alpha:.2f}</b> (95% interval {p.low:.2f} to {p.high:.2f}, n = {p.n_tasks} tasks with 2+ "
                f"annotators, {p.n_values} annotations)</p>")
    else:
        text = (f'<p id="agreement-headline" class="note big">Agreement between annotators: not measurable yet '
                f"({p.n_tasks} tasks with 2+ annotators; alpha needs at least two classes among their answers)</p>")
    text += ("<p>Alpha is 1 when annotators always agree, 0 when they agree only as often as chance would "
             "give, below 0 when worse; it takes any number of annotators per task and tasks each person did not "
             "see. The interval is a bootstrap over tasks. Reviewers' answers settle tasks but are left out of alpha"
             + (f" ({', '.join(html.escape(str(r)) for r in sorted(map(str, reviewers)))})" if reviewers else "")
             + ". The model trains on each task's consensus label (column <code>consensus</code> in Label Studio, "
             "<code>annotations.csv</code> in the dataset export).</p>")
    rows = []
    for a in sorted(ag.per_annotator.values(), key=lambda a: (-a.n, str(a.annotator))):
        if a.n:
            rows.append(f'<tr><td>{html.escape(str(a.annotator))}</td><td>{a.agreement:.0%} '
                        f"({a.interval[0]:.0%} to {a.interval[1]:.0%})</td><td>{_fmt(a.alpha.alpha)}</td><td>{a.n}</td></tr>")
        else:
            rows.append(f'<tr><td>{html.escape(str(a.annotator))}</td><td colspan="2" class="note" '
                        'style="text-align:left">no task shared with someone else yet</td><td>0</td></tr>')
    per_ann = ('<table id="table-annotators"><tr><th>annotator</th><th>agrees with the others\' consensus '
               "(95% interval)</th><th>alpha with it</th><th>tasks shared</th></tr>" + "".join(rows) + "</table>")
    crows = "".join(f"<tr><td>{html.escape(c)}</td><td>{_fmt(e.alpha)}</td><td>"
                    + (f"{e.low:.2f} to {e.high:.2f}" if np.isfinite(e.alpha) else "n/a") + f"</td><td>{e.n_tasks}</td></tr>"
                    for c, e in ag.per_class.items())
    per_class = ('<table id="table-agreement-per-class"><tr><th>class</th><th>alpha (this class vs the rest)</th>'
                 f"<th>95% interval</th><th>tasks</th></tr>{crows}</table>")
    figs = ['<figure id="fig-annotator-confusion">'
            + _img(plot_matrix(ag.coincidence, classes, f"Between annotators ({p.n_tasks} shared tasks)",
                               "another annotator's class", "one annotator's class"), "between-annotator confusion")
            + "<figcaption>Between annotators: how often one annotator's class (row) meets another's (column) on the "
              "same task (Krippendorff's coincidences, symmetric). Off-diagonal cells are classes people "
              "confuse with each other.</figcaption></figure>"]
    if model_confusion is not None and model_classes:
        figs.append('<figure id="fig-model-confusion-beside">'
                    + _img(plot_matrix(model_confusion, list(model_classes), "The model vs the labels",
                                       "predicted", "true (annotator)"), "model confusion")
                    + "<figcaption>The model, for comparison: the labels (rows) against its out-of-fold "
                      "predictions (columns). A confusion both make is a hard pair; one only the model makes "
                      "needs labels.</figcaption></figure>")
    pairs = ag.confused_pairs()
    confused = ("<p>Classes annotators confuse most: " + "; ".join(f"{html.escape(a)} / {html.escape(b)} ({n:.1f})"
                                                                  for a, b, n in pairs) + ".</p>") if pairs else ""
    return (head + text + per_ann + '<div style="display:flex;flex-wrap:wrap;gap:1em">' + "".join(figs) + "</div>"
            + confused + per_class), summary
